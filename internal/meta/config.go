// Package meta is kube-multus: a multus-compatible meta plugin (delegates
// mode) that calls a master delegate for eth0 and secondary delegates for
// net1, net2, ..., with the tier security of package tier.
package meta

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"kubeipam/internal/netattach"
	"kubeipam/internal/tier"
)

// Defaults, as in multus.
const (
	DefaultCNIDir  = "/var/lib/cni/multus"
	DefaultBinDir  = "/opt/cni/bin"
	DefaultConfDir = "/etc/cni/multus/net.d"
	// ExtensionKey is the per-delegate key of kube-multus's own settings. It
	// is removed before the delegate's config reaches the delegate.
	ExtensionKey = "kubeMultus"
)

// Conf is the meta plugin's network config.
type Conf struct {
	CNIVersion             string            `json:"cniVersion"`
	Name                   string            `json:"name"`
	Type                   string            `json:"type"`
	RawDelegates           []json.RawMessage `json:"delegates"`
	CNIDir                 string            `json:"cniDir"`
	BinDir                 string            `json:"binDir"`
	ConfDir                string            `json:"confDir"`
	LogFile                string            `json:"logFile"`
	LogLevel               string            `json:"logLevel"`
	LogToStderr            *bool             `json:"logToStderr"`
	LogOptions             json.RawMessage   `json:"logOptions"`
	ReadinessIndicatorFile string            `json:"readinessindicatorfile"`
	RetryDeleteOnError     bool              `json:"retryDeleteOnError"`
	Kubeconfig             string            `json:"kubeconfig"`
	RuntimeConfig          map[string]any    `json:"runtimeConfig"`

	// Kubernetes mode (multus's keys and defaults).
	ClusterNetwork     string   `json:"clusterNetwork"`
	DefaultNetworks    []string `json:"defaultNetworks"`
	MultusNamespace    string   `json:"multusNamespace"`
	SystemNamespaces   []string `json:"systemNamespaces"`
	NamespaceIsolation bool     `json:"namespaceIsolation"`
	GlobalNamespaces   string   `json:"globalNamespaces"`
	// HasSystemNamespaces tells an empty list from none (default).
	HasSystemNamespaces bool `json:"-"`

	// Injected by the runtime for GC.
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments"`
	// HasValidAttachments tells an empty list (nothing is valid) from none.
	HasValidAttachments bool `json:"-"`

	Delegates []*Delegate `json:"-"`
}

// Isolation is the namespace rule for the pod annotation's networks.
func (c *Conf) Isolation() netattach.Isolation {
	global := []string{DefaultGlobalNamespace}
	if c.GlobalNamespaces != "" {
		global = netattach.SplitList(c.GlobalNamespaces)
	}
	return netattach.Isolation{Enabled: c.NamespaceIsolation, Global: global}
}

// KubernetesMode reports whether kube-multus reads the pod (annotations,
// NetworkAttachmentDefinitions) and writes network-status and Events: it
// has a kubeconfig, as multus.
func (c *Conf) KubernetesMode() bool { return c.Kubeconfig != "" }

// Delegate is one entry of "delegates", ready to run.
type Delegate struct {
	Index      int
	Name, Type string
	// CNIVersion is the delegate's own, or the meta config's when it had
	// none (multus would run it as 0.1.0).
	CNIVersion string
	Inherited  bool // CNIVersion came from the meta config
	IsList     bool // a conflist ("plugins")
	// Bytes is what the delegate receives: the original config without
	// the kubeMultus key, with cniVersion filled in when inherited.
	Bytes []byte
	Ext   tier.Config
	// Network is the name network-status gives it: the config's name, or
	// namespace/name for a NetworkAttachmentDefinition.
	Network string
	// Source says where the config came from, for messages.
	Source string
	// Sel is the pod annotation's element that asked for it (nil for the
	// config's networks).
	Sel *netattach.Selection
}

// ConfigError is an invalid meta config (CNI code 7, or Code when set).
type ConfigError struct {
	Code uint
	Msg  string
}

func (e *ConfigError) Error() string { return e.Msg }

func configErr(format string, a ...any) error {
	return &ConfigError{Code: types.ErrInvalidNetworkConfig, Msg: fmt.Sprintf(format, a...)}
}

// Defaults of the Kubernetes-mode keys, as in multus v4.
const (
	DefaultMultusNamespace = "kube-system"
	DefaultGlobalNamespace = "default"
)

// DefaultSystemNamespaces get no defaultNetworks (multus's default).
var DefaultSystemNamespaces = []string{"kube-system"}

// unsupportedKeys are multus settings kube-multus does not implement; it
// refuses them rather than pretending to honour them.
var unsupportedKeys = map[string]string{
	"auxiliarycnichainname": "the thick plugin's auxiliary CNI chain is not implemented: chain the plugin in the network's conflist instead",
	"multusautoconfigdir":   "it is a setting of multus's daemon, not of a network config: kube-ipam-install --cluster-network=auto builds the config",
	"multusconfigfile":      "it is a setting of multus's daemon, not of a network config: kube-ipam-install --cluster-network=auto builds the config",
}

// Parse reads and validates the meta config.
func Parse(data []byte) (*Conf, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, &ConfigError{Code: types.ErrDecodingFailure, Msg: fmt.Sprintf("meta config is not a JSON object: %v", err)}
	}
	for k := range keys {
		if why, ok := unsupportedKeys[strings.ToLower(k)]; ok {
			return nil, &ConfigError{Code: types.ErrUnsupportedField, Msg: fmt.Sprintf("meta config key %q is not supported: %s", k, why)}
		}
	}
	c := &Conf{}
	if err := json.Unmarshal(data, c); err != nil {
		return nil, &ConfigError{Code: types.ErrDecodingFailure, Msg: fmt.Sprintf("meta config: %v", err)}
	}
	_, c.HasValidAttachments = keys["cni.dev/valid-attachments"]
	_, c.HasSystemNamespaces = keys["systemNamespaces"]
	if c.Name == "" {
		return nil, configErr("meta config: missing \"name\"")
	}
	if c.CNIVersion != "" {
		if _, _, _, err := version.ParseVersion(c.CNIVersion); err != nil {
			return nil, &ConfigError{Code: types.ErrIncompatibleCNIVersion, Msg: fmt.Sprintf("meta config cniVersion %q: %v", c.CNIVersion, err)}
		}
	}
	if len(c.RawDelegates) == 0 && c.ClusterNetwork == "" {
		return nil, configErr("no cluster network: set \"delegates\" (delegates mode) or \"clusterNetwork\" (Kubernetes mode)")
	}
	if c.ClusterNetwork != "" && len(c.RawDelegates) > 0 {
		// multus ignores delegates then; refusing says which one wins.
		return nil, configErr("both \"clusterNetwork\" and \"delegates\" are set: keep one (clusterNetwork names the cluster network; defaultNetworks and the pod annotation add the others)")
	}
	if c.MultusNamespace == "" {
		c.MultusNamespace = DefaultMultusNamespace
	}
	if !c.HasSystemNamespaces {
		c.SystemNamespaces = DefaultSystemNamespaces
	}
	for i, n := range c.DefaultNetworks {
		if strings.TrimSpace(n) == "" {
			return nil, configErr("defaultNetworks[%d]: empty network name", i)
		}
	}
	if c.CNIDir == "" {
		c.CNIDir = DefaultCNIDir
	}
	if c.BinDir == "" {
		c.BinDir = DefaultBinDir
	}
	if c.ConfDir == "" {
		c.ConfDir = DefaultConfDir
	}
	if c.LogLevel == "" {
		c.LogLevel = "error"
	}
	if _, ok := levels[strings.ToLower(c.LogLevel)]; !ok {
		return nil, configErr("logLevel %q: want debug, verbose, info, warn, warning, error or panic", c.LogLevel)
	}
	for i, raw := range c.RawDelegates {
		d, err := parseDelegate(i, fmt.Sprintf("delegates[%d]", i), raw, c.CNIVersion)
		if err != nil {
			return nil, err
		}
		if i == 0 && d.Ext.Attach != nil {
			return nil, configErr("delegates[0] (%s) is the master network: every pod gets it, so it cannot have %s.attach", d.Name, ExtensionKey)
		}
		if d.Ext.NeedsLabels() && c.Kubeconfig == "" {
			return nil, configErr("delegates[%d] (%s) selects pods by label: set the meta config's \"kubeconfig\" so kube-multus can read the pod", i, d.Name)
		}
		c.Delegates = append(c.Delegates, d)
	}
	return c, nil
}

// parseDelegate reads one network config (a delegates entry, a
// NetworkAttachmentDefinition's config, a file); where names it in errors.
func parseDelegate(i int, where string, raw json.RawMessage, metaVersion string) (*Delegate, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil || keys == nil {
		return nil, configErr("%s: not a JSON object", where)
	}
	var head struct {
		Name       string            `json:"name"`
		Type       string            `json:"type"`
		CNIVersion string            `json:"cniVersion"`
		Plugins    []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, configErr("%s: %v", where, err)
	}
	d := &Delegate{Index: i, Name: head.Name, Type: head.Type, CNIVersion: head.CNIVersion, IsList: keys["plugins"] != nil,
		Network: head.Name, Source: where}
	if d.Name == "" {
		return nil, configErr("%s: missing network \"name\"", where)
	}
	if d.IsList {
		if len(head.Plugins) == 0 {
			return nil, configErr("%s (%s): empty \"plugins\"", where, d.Name)
		}
	} else if d.Type == "" {
		return nil, configErr("%s (%s): missing \"type\"", where, d.Name)
	}
	changed := false
	if ext, ok := keys[ExtensionKey]; ok {
		dec := json.NewDecoder(bytes.NewReader(ext))
		dec.DisallowUnknownFields() // a typo must not silently disable a policy
		if err := dec.Decode(&d.Ext); err != nil {
			return nil, configErr("%s (%s).%s: %v", where, d.Name, ExtensionKey, err)
		}
		if err := d.Ext.Validate(fmt.Sprintf("%s (%s).%s", where, d.Name, ExtensionKey)); err != nil {
			return nil, configErr("%v", err)
		}
		delete(keys, ExtensionKey)
		changed = true
	}
	if d.CNIVersion == "" && metaVersion != "" {
		d.CNIVersion, d.Inherited = metaVersion, true
		keys["cniVersion"], _ = json.Marshal(metaVersion)
		changed = true
	}
	if d.CNIVersion != "" {
		if _, _, _, err := version.ParseVersion(d.CNIVersion); err != nil {
			return nil, configErr("%s (%s): cniVersion %q: %v", where, d.Name, d.CNIVersion, err)
		}
	}
	d.Bytes = slices.Clone(raw)
	if changed {
		b, err := json.Marshal(keys)
		if err != nil {
			return nil, configErr("%s: %v", where, err)
		}
		d.Bytes = b
	}
	return d, nil
}

// IfName is the interface name a delegate gets: the runtime's (eth0) for
// the master, net<i> for delegate i, as multus >= 3.0.
func IfName(index int, runtimeIfName string) string {
	if index == 0 {
		return runtimeIfName
	}
	return fmt.Sprintf("net%d", index)
}
