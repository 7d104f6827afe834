package tier

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	cniversion "github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
)

// Error codes of the tier policy, shared by kube-multus and kube-tier
// (docs/errors.md, docs/kube-multus.md, docs/kube-tier.md).
const (
	// CodePodLookup: the pod could not be read for a podSelector, and
	// retrying will not help (not found, forbidden, unusable kubeconfig).
	CodePodLookup = 120
	// CodePolicy: the nftables policy could not be installed, removed or
	// found.
	CodePolicy = 121
)

// ChainedVersions are the CNI versions kube-tier speaks: those with
// prevResult, which a chained plugin cannot do without.
func ChainedVersions() cniversion.PluginInfo {
	return cniversion.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
}

// ChainedConf is the network config of kube-tier, the tier policy as a
// chained plugin: the last entry of a conflist's "plugins", after the
// plugin that creates CNI_IFNAME (macvlan).
type ChainedConf struct {
	types.PluginConf
	// Ingress are the rules, exactly as kube-multus's kubeMultus.ingress.
	// Decoded strictly by ParseChained (an unknown key is an error).
	Ingress []Rule `json:"-"`
	// Kubeconfig reads the pod's labels; required when a rule has a
	// podSelector, unused otherwise.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// LogFile, when set, is appended one line per call (mode 0600).
	LogFile string `json:"logFile,omitempty"`
	// LogLevel is debug, info (default), warn or error.
	LogLevel string `json:"logLevel,omitempty"`
}

// chainedKeys are the keys a kube-tier config may have: the CNI spec's
// (including what runtimes inject: prevResult, runtimeConfig, args) and
// kube-tier's own. Any other key is refused, so that a typo ("ingres")
// cannot leave pods unprotected. Keys with a "/" are runtime-namespaced
// (cni.dev/valid-attachments) and always accepted.
var chainedKeys = map[string]bool{
	"cniversion": true, "name": true, "type": true, "capabilities": true, "runtimeconfig": true, "args": true,
	"prevresult": true, "dns": true,
	"ingress": true, "kubeconfig": true, "logfile": true, "loglevel": true,
}

var logLevels = map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}

func confErr(name, format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("kube-tier config of network %q: ", name)+fmt.Sprintf(format, a...), "")
}

// ParseChained reads and validates a kube-tier config. Errors are CNI
// errors: 6 (not JSON), 2 ("attach", which a chained plugin cannot honour)
// or 7 (anything else), naming the key.
func ParseChained(data []byte) (*ChainedConf, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil || keys == nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("kube-tier: the network config is not a JSON object: %v", err), "")
	}
	var head struct {
		Name string `json:"name"`
		IPAM struct {
			Type string `json:"type"`
		} `json:"ipam"`
	}
	_ = json.Unmarshal(data, &head) // best effort: only names things in errors
	name := head.Name
	var rawIngress json.RawMessage
	haveIngress := false
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		lk := strings.ToLower(k)
		switch {
		case lk == "ipam" && head.IPAM.Type == "kube-tier":
			return nil, confErr(name, "kube-tier is a chained plugin, not an IPAM plugin: list it in the conflist's \"plugins\" after the plugin that creates the interface (macvlan), not as its \"ipam\"")
		case lk == "attach":
			return nil, types.NewError(types.ErrUnsupportedField, fmt.Sprintf("kube-tier config of network %q: key \"attach\" (%s) is not supported: a chained plugin runs after the interface exists and cannot skip it; select the network per pod with the k8s.v1.cni.cncf.io/networks annotation instead", name, compact(keys[k])), "")
		case lk == "ingress":
			rawIngress, haveIngress = keys[k], true
		case strings.Contains(k, "/") || chainedKeys[lk]:
		default:
			return nil, confErr(name, "unknown key %q (kube-tier's keys: ingress, kubeconfig, logFile, logLevel)", k)
		}
	}
	c := &ChainedConf{}
	if err := json.Unmarshal(data, c); err != nil {
		return nil, confErr(name, "%v", err)
	}
	if c.Name == "" {
		return nil, confErr(name, "missing \"name\"")
	}
	if !haveIngress {
		return nil, confErr(name, "missing \"ingress\": kube-tier without rules protects no pod")
	}
	var rules []json.RawMessage
	if err := json.Unmarshal(rawIngress, &rules); err != nil {
		return nil, confErr(name, "ingress: want a list of rules: %v", err)
	}
	if len(rules) == 0 {
		return nil, confErr(name, "\"ingress\" is empty: kube-tier without rules protects no pod")
	}
	for i, raw := range rules {
		where := fmt.Sprintf("ingress[%d]", i)
		var r Rule
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields() // a typo must not silently disable a policy
		if err := dec.Decode(&r); err != nil {
			msg := err.Error()
			if field, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
				msg = "unknown key " + field
			}
			return nil, confErr(name, "%s: %s", where, msg)
		}
		if err := r.Validate(where); err != nil {
			return nil, confErr(name, "%v", err)
		}
		if r.NeedsLabels() && c.Kubeconfig == "" {
			return nil, confErr(name, "%s.podSelector %q needs the pod's labels: set \"kubeconfig\" (a kubeconfig allowed to get pods)", where, r.PodSelector)
		}
		c.Ingress = append(c.Ingress, r)
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if _, ok := logLevels[strings.ToLower(c.LogLevel)]; !ok {
		return nil, confErr(name, "logLevel %q: want debug, info, warn or error", c.LogLevel)
	}
	return c, nil
}

func compact(raw json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}

// Chained is the kube-tier plugin: the tier ingress policy as a chained
// CNI plugin, for any meta plugin (upstream multus with a
// NetworkAttachmentDefinition, kube-multus, or a plain conflist).
type Chained struct {
	Out io.Writer
	// LookupTimeout bounds the pod read a podSelector needs.
	LookupTimeout time.Duration
}

// DefaultChained is the production wiring.
func DefaultChained() *Chained {
	return &Chained{Out: os.Stdout, LookupTimeout: 10 * time.Second}
}

// Funcs returns the skel callbacks.
func (p *Chained) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

// Add installs the policy of the rules that protect this pod on CNI_IFNAME
// and passes prevResult on unchanged. A pod no rule protects gets no table.
func (p *Chained) Add(args *skel.CmdArgs) error {
	c, err := ParseChained(args.StdinData)
	if err != nil {
		return err
	}
	log, done := c.openLog("ADD", args)
	defer done()
	if err := c.add(args, p.LookupTimeout, log); err != nil {
		return logged(log, err)
	}
	out, err := c.PrevResult.GetAsVersion(c.CNIVersion)
	if err != nil {
		return logged(log, types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("cannot express prevResult as cniVersion %s: %v", c.CNIVersion, err), ""))
	}
	return out.PrintTo(p.Out)
}

func (c *ChainedConf) add(args *skel.CmdArgs, timeout time.Duration, log *slog.Logger) error {
	if err := c.requirePrev("ADD"); err != nil {
		return err
	}
	if args.Netns == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS is required for ADD", "")
	}
	rules, err := c.decide(args, timeout, log)
	if err != nil {
		return err
	}
	table := ChainedTableName(args.IfName)
	if len(rules) == 0 {
		log.Debug("no rule protects the pod: no table")
		return nil
	}
	if err := ApplyTable(args.Netns, table, rules); err != nil {
		return types.NewError(CodePolicy, fmt.Sprintf("installing the ingress policy of %s (table inet %s): %v", args.IfName, table, err), "")
	}
	log.Info("policy installed", "table", table, "rules", len(rules))
	return nil
}

// requirePrev parses prevResult, which a chained plugin must be given.
func (c *ChainedConf) requirePrev(verb string) error {
	if c.RawPrevResult == nil {
		return confErr(c.Name, "%s without prevResult: kube-tier is a chained plugin; list it in a conflist's \"plugins\" after the plugin that creates the interface (macvlan), not as a network's only plugin", verb)
	}
	if err := cniversion.ParsePrevResult(&c.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("kube-tier config of network %q: prevResult: %v", c.Name, err), "")
	}
	return nil
}

// decide returns the nftables rules protecting this pod on CNI_IFNAME
// (none: the pod is not protected). Namespaces come from CNI_ARGS; a
// podSelector whose namespaces include the pod's reads its labels.
func (c *ChainedConf) decide(args *skel.CmdArgs, timeout time.Duration, log *slog.Logger) ([]NFTRule, error) {
	pod, err := podFromArgs(args.Args)
	if err != nil {
		return nil, err
	}
	targeted, needLabels := false, false
	for i := range c.Ingress {
		r := &c.Ingress[i]
		if len(r.Namespaces) > 0 || r.PodSelector != "" {
			targeted = true
		}
		if r.NeedsLabels() && (len(r.Namespaces) == 0 || slices.Contains(r.Namespaces, pod.Namespace)) {
			needLabels = true
		}
	}
	if targeted && pod.Namespace == "" {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf(
			"network %s: the ingress rules select pods, but CNI_ARGS has no K8S_POD_NAMESPACE: refusing to guess", c.Name), "")
	}
	if needLabels {
		if pod.Name == "" {
			return nil, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf(
				"network %s: a podSelector needs the pod's labels, but CNI_ARGS has no K8S_POD_NAME", c.Name), "")
		}
		lbls, err := ReadLabels(context.Background(), c.Kubeconfig, pod.Namespace, pod.Name, timeout)
		var una *UnavailableError
		switch {
		case errors.As(err, &una):
			return nil, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("network %s: Kubernetes API unavailable, try again later: %v", c.Name, err), "")
		case err != nil:
			return nil, types.NewError(CodePodLookup, fmt.Sprintf("network %s: %v (kubeconfig %s)", c.Name, err, c.Kubeconfig), "")
		}
		pod.Labels = lbls
	}
	cfg := Config{Ingress: c.Ingress}
	policy, err := cfg.PolicyFor(pod)
	if err != nil {
		return nil, types.NewError(CodePodLookup, fmt.Sprintf("network %s: %v", c.Name, err), "")
	}
	rules, err := Rules(args.IfName, policy)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_IFNAME: %v", err), "")
	}
	log.Debug("decided", "rules", len(policy), "of", len(c.Ingress))
	return rules, nil
}

// podFromArgs reads the pod's namespace and name from CNI_ARGS
// ("K=V;K=V"); other keys are ignored.
func podFromArgs(args string) (Pod, error) {
	var p Pod
	for _, kv := range strings.Split(args, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return p, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_ARGS: %q is not KEY=VALUE", kv), "")
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			p.Namespace = v
		case "K8S_POD_NAME":
			p.Name = v
		}
	}
	return p, nil
}

// Del removes the table of CNI_IFNAME. It needs nothing but CNI_NETNS and
// CNI_IFNAME: it never reads the pod, and a config that no longer
// validates still lets the pod go. A vanished namespace took the table
// with it.
func (p *Chained) Del(args *skel.CmdArgs) error {
	c, err := ParseChained(args.StdinData)
	if err != nil {
		c = &ChainedConf{}
		_ = json.Unmarshal(args.StdinData, c) // for the log only
		if _, ok := logLevels[strings.ToLower(c.LogLevel)]; !ok {
			c.LogLevel = "info"
		}
	}
	log, done := c.openLog("DEL", args)
	defer done()
	if err != nil {
		log.Warn("invalid config; removing the table anyway", "err", err)
	}
	table := ChainedTableName(args.IfName)
	if args.Netns == "" {
		log.Info("no CNI_NETNS: nothing to remove")
		return nil
	}
	n, err := ns.GetNS(args.Netns)
	if errors.As(err, &ns.NSPathNotExistErr{}) || errors.As(err, &ns.NSPathNotNSErr{}) {
		log.Info("the network namespace is gone, and its table with it", "netns", args.Netns)
		return nil
	}
	if err != nil {
		return logged(log, types.NewError(CodePolicy, fmt.Sprintf("removing the ingress policy of %s: %v", args.IfName, err), ""))
	}
	_ = n.Close()
	if err := RemoveTable(args.Netns, table); err != nil && !IsNotExist(err) {
		return logged(log, types.NewError(CodePolicy, fmt.Sprintf("removing the ingress policy of %s (table inet %s): %v", args.IfName, table, err), ""))
	}
	log.Info("policy removed", "table", table)
	return nil
}

// Check verifies that a protected pod's table is in place (code 121 when
// not). It decides which rules protect the pod exactly as ADD does.
func (p *Chained) Check(args *skel.CmdArgs) error {
	c, err := ParseChained(args.StdinData)
	if err != nil {
		return err
	}
	log, done := c.openLog("CHECK", args)
	defer done()
	if err := c.requirePrev("CHECK"); err != nil {
		return logged(log, err)
	}
	if args.Netns == "" {
		return logged(log, types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS is required for CHECK", ""))
	}
	rules, err := c.decide(args, p.LookupTimeout, log)
	if err != nil {
		return logged(log, err)
	}
	if len(rules) == 0 {
		log.Debug("no rule protects the pod: nothing to check")
		return nil
	}
	table := ChainedTableName(args.IfName)
	ok, err := TableInstalled(args.Netns, table)
	if err != nil || !ok {
		msg := fmt.Sprintf("the ingress policy of %s (table inet %s) is missing", args.IfName, table)
		if err != nil {
			msg += ": " + err.Error()
		}
		return logged(log, types.NewError(CodePolicy, msg, ""))
	}
	log.Info("policy present", "table", table)
	return nil
}

// GC succeeds: the tables live in the pods' namespaces and go with them.
func (p *Chained) GC(*skel.CmdArgs) error { return nil }

// Status succeeds: kube-tier depends on nothing that can be down (a
// podSelector's API server is needed per ADD, and reported there).
func (p *Chained) Status(*skel.CmdArgs) error { return nil }

// openLog returns the call's logger (discarding without logFile) and its
// closer.
func (c *ChainedConf) openLog(verb string, args *skel.CmdArgs) (*slog.Logger, func()) {
	if c.LogFile == "" {
		return slog.New(slog.DiscardHandler), func() {}
	}
	f, err := os.OpenFile(c.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		// Logging must never fail a call; the runtime shows stderr.
		fmt.Fprintf(os.Stderr, "kube-tier: cannot open logFile %s: %v\n", c.LogFile, err)
		return slog.New(slog.DiscardHandler), func() {}
	}
	h := slog.NewTextHandler(f, &slog.HandlerOptions{Level: logLevels[strings.ToLower(c.LogLevel)]})
	pod, _ := podFromArgs(args.Args)
	return slog.New(h).With("plugin", "kube-tier", "verb", verb, "network", c.Name, "container", args.ContainerID[:min(len(args.ContainerID), 12)],
		"pod", pod.Namespace+"/"+pod.Name, "ifname", args.IfName), func() { f.Close() }
}

func logged(log *slog.Logger, err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		log.Error("failed", "code", te.Code, "err", te.Msg)
	} else {
		log.Error("failed", "err", err)
	}
	return err
}
