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
	// Injected by the runtime for GC.
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments"`
	// HasValidAttachments tells an empty list (nothing is valid) from none.
	HasValidAttachments bool `json:"-"`

	Delegates []*Delegate `json:"-"`
}

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

// kubernetesModeKeys are multus settings that only make sense with
// NetworkAttachmentDefinitions; kube-multus refuses them rather than
// pretending to honour them.
var kubernetesModeKeys = []string{"clusternetwork", "defaultnetworks", "multusnamespace", "systemnamespaces",
	"namespaceisolation", "globalnamespaces", "auxiliarycnichainname", "multusautoconfigdir", "multusconfigfile"}

// Parse reads and validates the meta config.
func Parse(data []byte) (*Conf, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, &ConfigError{Code: types.ErrDecodingFailure, Msg: fmt.Sprintf("meta config is not a JSON object: %v", err)}
	}
	for k := range keys {
		if slices.Contains(kubernetesModeKeys, strings.ToLower(k)) {
			return nil, &ConfigError{Code: types.ErrUnsupportedField, Msg: fmt.Sprintf(
				"%q is a multus Kubernetes-mode setting (NetworkAttachmentDefinitions); kube-multus runs delegates mode only: list the networks in \"delegates\"", k)}
		}
	}
	c := &Conf{}
	if err := json.Unmarshal(data, c); err != nil {
		return nil, &ConfigError{Code: types.ErrDecodingFailure, Msg: fmt.Sprintf("meta config: %v", err)}
	}
	_, c.HasValidAttachments = keys["cni.dev/valid-attachments"]
	if c.Name == "" {
		return nil, configErr("meta config: missing \"name\"")
	}
	if c.CNIVersion != "" {
		if _, _, _, err := version.ParseVersion(c.CNIVersion); err != nil {
			return nil, &ConfigError{Code: types.ErrIncompatibleCNIVersion, Msg: fmt.Sprintf("meta config cniVersion %q: %v", c.CNIVersion, err)}
		}
	}
	if len(c.RawDelegates) == 0 {
		return nil, configErr("at least one delegate must be specified in \"delegates\"")
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
		d, err := parseDelegate(i, raw, c.CNIVersion)
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

func parseDelegate(i int, raw json.RawMessage, metaVersion string) (*Delegate, error) {
	where := fmt.Sprintf("delegates[%d]", i)
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
	d := &Delegate{Index: i, Name: head.Name, Type: head.Type, CNIVersion: head.CNIVersion, IsList: keys["plugins"] != nil}
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
