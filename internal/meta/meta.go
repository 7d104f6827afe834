package meta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"kubeipam/internal/tier"
)

// Error codes of kube-multus (documented in docs/kube-multus.md). Delegate
// errors keep the delegate's own code.
const (
	// 120, the pod could not be read for a label selector (not transient),
	// and 121, the nftables policy could not be installed, removed or
	// found, are the tier policy's, shared with kube-tier.
	CodePodLookup    = tier.CodePodLookup
	CodePolicy       = tier.CodePolicy
	CodeIfaceExists  = 122 // an interface kube-multus would create already exists (duplicate ADD)
	CodeDelegateExec = 124 // a delegate could not be run or failed without a CNI error
)

// Plugin holds what a call needs; tests replace parts of it.
type Plugin struct {
	Out, Stderr io.Writer
	// NewKube builds the Kubernetes API client of Kubernetes mode
	// (default NewKube).
	NewKube func(kubeconfig string, timeout time.Duration) (Kube, error)
	// LookupTimeout bounds each API request.
	LookupTimeout time.Duration
	// ReadinessTimeout and ReadinessPoll govern readinessindicatorfile.
	ReadinessTimeout, ReadinessPoll time.Duration
	// Exec runs delegates (nil: real processes).
	Exec invoke.Exec
}

// Default is the production wiring.
func Default() *Plugin {
	return &Plugin{
		Out: os.Stdout, Stderr: os.Stderr, NewKube: NewKube,
		LookupTimeout: 10 * time.Second, ReadinessTimeout: 45 * time.Second, ReadinessPoll: time.Second,
	}
}

// Funcs returns the skel callbacks.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

type call struct {
	p        *Plugin
	verb     string
	args     *skel.CmdArgs
	conf     *Conf
	pod      PodArgs
	log      *slog.Logger
	closeLog func()
	cni      *libcni.CNIConfig
	ctx      context.Context
	kubeAPI  Kube
	podObj   *Pod      // read in Kubernetes mode during ADD
	started  time.Time // the call's start, for the "ms" of its last log line
}

func (p *Plugin) begin(verb string, args *skel.CmdArgs) (*call, error) {
	conf, err := Parse(args.StdinData)
	if err != nil {
		return nil, toCNI(err)
	}
	c := &call{p: p, verb: verb, args: args, conf: conf, ctx: context.Background(), started: time.Now()}
	c.log, c.closeLog = openLog(conf, p.Stderr)
	c.log = c.log.With("verb", verb, "network", conf.Name, "container", short(args.ContainerID))
	if c.pod, err = ParseArgs(args.Args); err != nil {
		c.closeLog()
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(), "")
	}
	if c.pod.Name != "" {
		c.log = c.log.With("pod", c.pod.Namespace+"/"+c.pod.Name)
	}
	paths := append([]string{conf.BinDir}, filepath.SplitList(args.Path)...)
	c.cni = libcni.NewCNIConfigWithCacheDir(paths, conf.CNIDir, p.Exec)
	for _, d := range conf.Delegates {
		if d.Inherited {
			c.log.Debug("delegate has no cniVersion; it inherits the meta config's", "delegate", d.Name, "cniVersion", d.CNIVersion)
		}
	}
	return c, nil
}

// end logs the outcome, with the call's time in ms (every delegate's
// included), and returns err as a CNI error.
func (c *call) end(err error, attrs ...any) error {
	defer c.closeLog()
	attrs = append(attrs, "ms", time.Since(c.started).Milliseconds())
	if err != nil {
		e := toCNI(err)
		c.log.Error("failed", append(attrs, "code", e.Code, "err", e.Msg)...)
		return e
	}
	c.log.Info("ok", attrs...)
	return nil
}

func short(id string) string { return id[:min(len(id), 12)] }

// step is one delegate to attach to this pod.
type step struct {
	CacheEntry
	rules []tier.NFTRule
}

// Add attaches the master and every selected secondary delegate, in order.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	c, err := p.begin("ADD", args)
	if err != nil {
		return err
	}
	res, attached, err := c.add()
	if err != nil {
		c.failed(toCNI(err), err)
		return c.end(err)
	}
	if res == nil {
		res = &current.Result{CNIVersion: current.ImplementedSpecVersion}
	}
	v := c.conf.CNIVersion
	if v == "" {
		v = "0.1.0"
	}
	out, err := res.GetAsVersion(v)
	if err != nil {
		return c.end(types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("cannot express the master's result as cniVersion %s: %v", v, err), ""))
	}
	if err := c.end(nil, "attached", attached); err != nil {
		return err
	}
	return out.PrintTo(p.Out)
}

func (c *call) add() (types.Result, []string, error) {
	if err := c.waitReady(); err != nil {
		return nil, nil, err
	}
	if err := requireNetns(c.args); err != nil {
		return nil, nil, err
	}
	plan, err := c.plan()
	if err != nil {
		return nil, nil, err
	}
	// Refuse a duplicate ADD before touching anything: the interfaces that
	// exist belong to an earlier, live attachment (multus would tear the
	// live eth0 down in its rollback).
	if err := c.checkFree(plan); err != nil {
		return nil, nil, err
	}
	entries := make([]CacheEntry, len(plan))
	for i, s := range plan {
		entries[i] = s.CacheEntry
	}
	if err := WriteCache(c.conf.CNIDir, c.args.ContainerID, entries); err != nil {
		return nil, nil, types.NewError(types.ErrIOFailure, fmt.Sprintf("writing the scratch cache in %s: %v", c.conf.CNIDir, err), "")
	}
	var master types.Result
	var attached []string
	results := make([]types.Result, len(plan))
	for i, s := range plan {
		if len(s.rules) > 0 {
			// Before the delegate: the rules match by name, so the
			// interface never exists unfiltered.
			if err := tier.Apply(c.args.Netns, s.IfName, s.rules); err != nil {
				c.rollback(plan[:i+1])
				return nil, nil, types.NewError(CodePolicy, fmt.Sprintf("[%s:%s]: installing the ingress policy on %s: %v", c.pod.Label(), s.Name, s.IfName, err), "")
			}
			c.log.Debug("policy installed", "ifname", s.IfName, "rules", len(s.rules))
		}
		r, err := c.invoke("ADD", s.CacheEntry)
		if err != nil {
			c.rollback(plan[:i+1])
			return nil, nil, c.delegateErr("adding container to", s.CacheEntry, err)
		}
		if i == 0 {
			master = r
		}
		results[i] = r
		attached = append(attached, s.Name+":"+s.IfName)
	}
	for _, s := range plan {
		if len(s.Gateways) > 0 {
			if err := setDefaultRoutes(c.args.Netns, s.IfName, s.Gateways); err != nil {
				c.rollback(plan)
				return nil, nil, types.NewError(CodeNetwork, fmt.Sprintf("[%s:%s]: default-route %v on %s: %v", c.pod.Label(), s.Name, s.Gateways, s.IfName, err), "")
			}
		}
	}
	if err := c.publish(plan, results); err != nil {
		c.rollback(plan)
		return nil, nil, err
	}
	return master, attached, nil
}

func requireNetns(args *skel.CmdArgs) error {
	if args.Netns == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS is required for ADD", "")
	}
	return nil
}

// plan decides which networks this pod gets, their interface names and
// their policies. In Kubernetes mode it reads the pod once (labels,
// annotations, UID) and the NetworkAttachmentDefinitions it needs.
func (c *call) plan() ([]step, error) {
	pod := tier.Pod{Namespace: c.pod.Namespace, Name: c.pod.Name}
	obj, err := c.readPod()
	if err != nil {
		return nil, err
	}
	nets, err := c.networks(obj)
	if err != nil {
		return nil, err
	}
	needLabels, needNamespace := false, ""
	for i, d := range nets {
		if (i > 0 && d.Ext.Attach.NeedsLabels()) || d.Ext.NeedsLabels() {
			needLabels = true
		}
		if (i > 0 && !d.Ext.Attach.Empty()) || hasTargets(d.Ext.Ingress) {
			needNamespace = d.Name
		}
	}
	if needNamespace != "" && pod.Namespace == "" {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf(
			"network %s selects pods, but CNI_ARGS has no K8S_POD_NAMESPACE: refusing to guess", needNamespace), "")
	}
	if needLabels {
		if obj == nil {
			return nil, types.NewError(types.ErrInvalidEnvironmentVariables, "a podSelector needs the pod's labels, but CNI_ARGS has no K8S_POD_NAME", "")
		}
		pod.Labels = obj.Labels
	}
	var plan []step
	used := map[string]string{}
	for i, d := range nets {
		ifname := IfName(i, c.args.IfName)
		if d.Sel != nil && d.Sel.InterfaceRequest != "" {
			ifname = d.Sel.InterfaceRequest
		}
		if i > 0 && ifname == c.args.IfName {
			return nil, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf(
				"CNI_IFNAME %s is also the interface name of network %s (%s)", c.args.IfName, d.Network, d.Source), "")
		}
		if prev, ok := used[ifname]; ok {
			return nil, &NetworkError{Msg: fmt.Sprintf("interface %s is asked for twice: by %s and by %s", ifname, prev, d.Source)}
		}
		if i > 0 && d.Sel == nil {
			if d.Ext.Attach.Empty() {
				if c.conf.ClusterNetwork == "" {
					c.noteUnselected(d, ifname)
				}
			} else {
				ok, err := d.Ext.Attach.Matches(pod)
				if err != nil {
					return nil, types.NewError(CodePodLookup, fmt.Sprintf("network %s: %v", d.Name, err), "")
				}
				if !ok {
					c.log.Info("pod not selected by the network's attach rule: no interface", "delegate", d.Name, "ifname", ifname)
					continue
				}
			}
		}
		used[ifname] = d.Source
		policy, err := d.Ext.PolicyFor(pod)
		if err != nil {
			return nil, types.NewError(CodePodLookup, fmt.Sprintf("network %s: %v", d.Name, err), "")
		}
		rules, err := tier.Rules(ifname, policy)
		if err != nil {
			return nil, types.NewError(CodePolicy, fmt.Sprintf("network %s: %v", d.Name, err), "")
		}
		rc, args := requests(d.Sel)
		e := CacheEntry{Name: d.Name, Bytes: d.Bytes, IfName: ifname, Index: i, Policy: len(rules) > 0,
			DropArgs: d.Ext.DropArgs, Network: d.Network, RuntimeConfig: rc, Args: args}
		if d.Sel != nil {
			for _, gw := range d.Sel.GatewayRequest {
				e.Gateways = append(e.Gateways, gw.String())
			}
		}
		plan = append(plan, step{CacheEntry: e, rules: rules})
	}
	return plan, nil
}

// readPod reads the pod in Kubernetes mode (nil otherwise, or when the
// runtime named no pod). A pod whose UID is not the sandbox's is another
// instance of that name: its annotations are not this sandbox's.
func (c *call) readPod() (*Pod, error) {
	if !c.conf.KubernetesMode() || c.pod.Name == "" || c.pod.Namespace == "" {
		return nil, nil
	}
	k, err := c.kube()
	if err != nil {
		return nil, err
	}
	obj, err := k.Pod(c.ctx, c.pod.Namespace, c.pod.Name)
	var nf *NotFoundError
	if errors.As(err, &nf) {
		return nil, &tier.LookupError{Msg: err.Error()}
	}
	if err != nil {
		return nil, err
	}
	if c.pod.UID != "" && obj.UID != c.pod.UID && obj.Annotations["kubernetes.io/config.mirror"] == "" {
		return nil, &tier.LookupError{Msg: fmt.Sprintf("pod %s/%s has UID %s, but the sandbox is for UID %s (the pod was deleted and re-created): refusing its annotations",
			c.pod.Namespace, c.pod.Name, obj.UID, c.pod.UID)}
	}
	c.podObj = obj
	return obj, nil
}

// kube is the API client, built once per call.
func (c *call) kube() (Kube, error) {
	if c.kubeAPI != nil {
		return c.kubeAPI, nil
	}
	if !c.conf.KubernetesMode() {
		return nil, &NetworkError{Msg: "this network is a NetworkAttachmentDefinition: set the meta config's \"kubeconfig\" so kube-multus can read it"}
	}
	k, err := c.p.NewKube(c.conf.Kubeconfig, c.p.LookupTimeout)
	if err != nil {
		return nil, err
	}
	c.kubeAPI = k
	return k, nil
}

func hasTargets(rules []tier.Rule) bool {
	for _, r := range rules {
		if len(r.Namespaces) > 0 || r.PodSelector != "" {
			return true
		}
	}
	return false
}

// noteUnselected logs, once per node (a marker file in cniDir), that a
// secondary network attaches to every pod.
func (c *call) noteUnselected(d *Delegate, ifname string) {
	marker := filepath.Join(c.conf.CNIDir, ".unselected-"+d.Name)
	if _, err := os.Stat(marker); err == nil {
		return
	}
	c.log.Warn("network has no kubeMultus.attach selection: every pod on this node gets it, as with multus", "delegate", d.Name, "ifname", ifname)
	if err := os.MkdirAll(c.conf.CNIDir, 0o700); err == nil {
		_ = os.WriteFile(marker, nil, 0o600)
	}
}

// checkFree fails with CodeIfaceExists when an interface of the plan is
// already in the pod's namespace.
func (c *call) checkFree(plan []step) error {
	h, err := netns.GetFromPath(c.args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("opening network namespace %s: %v", c.args.Netns, err), "")
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("netlink in %s: %v", c.args.Netns, err), "")
	}
	defer nl.Close()
	for _, s := range plan {
		if _, err := nl.LinkByName(s.IfName); err == nil {
			return types.NewError(CodeIfaceExists, fmt.Sprintf(
				"interface %s already exists in %s (duplicate ADD for container %s?); nothing was changed", s.IfName, c.args.Netns, c.args.ContainerID), "")
		}
	}
	return nil
}

// rollback deletes, in reverse order, what this ADD attached (the failing
// delegate included: its interface name was verified free, so whatever is
// there now is this call's). Errors are logged; the scratch cache is kept,
// so the runtime's DEL repeats the work.
func (c *call) rollback(done []step) {
	for i := len(done) - 1; i >= 0; i-- {
		s := done[i]
		if _, err := c.invoke("DEL", s.CacheEntry); err != nil {
			c.log.Error("rollback: delegate DEL failed", "delegate", s.Name, "ifname", s.IfName, "err", err)
			continue
		}
		if s.Policy {
			if err := tier.Remove(c.args.Netns, s.IfName); err != nil {
				c.log.Error("rollback: removing the policy failed", "ifname", s.IfName, "err", err)
			}
		}
	}
}

// invoke runs one verb (ADD, DEL, CHECK) of a delegate through libcni,
// which also maintains the result cache under <cniDir>/results.
func (c *call) invoke(verb string, e CacheEntry) (types.Result, error) {
	rt := &libcni.RuntimeConf{
		ContainerID: c.args.ContainerID, NetNS: c.args.Netns, IfName: e.IfName,
		Args: append(DelegateArgs(c.pod, e.DropArgs), e.Args...), CapabilityArgs: c.conf.RuntimeConfig,
	}
	if len(e.RuntimeConfig) > 0 {
		rt.CapabilityArgs = maps.Clone(c.conf.RuntimeConfig)
		if rt.CapabilityArgs == nil {
			rt.CapabilityArgs = map[string]any{}
		}
		maps.Copy(rt.CapabilityArgs, e.RuntimeConfig)
	}
	if isList(e.Bytes) {
		list, err := libcni.ConfListFromBytes(e.Bytes)
		if err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, err.Error(), "")
		}
		switch verb {
		case "ADD":
			return c.cni.AddNetworkList(c.ctx, list, rt)
		case "DEL":
			return nil, c.cni.DelNetworkList(c.ctx, list, rt)
		default:
			return nil, c.cni.CheckNetworkList(c.ctx, list, rt)
		}
	}
	conf, err := libcni.NetworkPluginConfFromBytes(e.Bytes)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	switch verb {
	case "ADD":
		return c.cni.AddNetwork(c.ctx, conf, rt)
	case "DEL":
		return nil, c.cni.DelNetwork(c.ctx, conf, rt)
	default:
		return nil, c.cni.CheckNetwork(c.ctx, conf, rt)
	}
}

func isList(b []byte) bool {
	var head struct {
		Plugins json.RawMessage `json:"plugins"`
	}
	return json.Unmarshal(b, &head) == nil && head.Plugins != nil
}

// delegateErr keeps a delegate's CNI error code and details (multus
// flattens them to 999) and prefixes the message as multus does.
func (c *call) delegateErr(action string, e CacheEntry, err error) *types.Error {
	prefix := fmt.Sprintf("[%s:%s]: error %s network %q (%s): ", c.pod.Label(), e.Name, action, e.Name, e.IfName)
	var te *types.Error
	if errors.As(err, &te) {
		return &types.Error{Code: te.Code, Msg: prefix + te.Msg, Details: te.Details}
	}
	return types.NewError(CodeDelegateExec, prefix+err.Error(), "")
}

func (c *call) waitReady() error {
	f := c.conf.ReadinessIndicatorFile
	if f == "" {
		return nil
	}
	deadline := time.Now().Add(c.p.ReadinessTimeout)
	for {
		if _, err := os.Stat(f); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("readiness indicator file %s does not exist after %s: the cluster network is not ready", f, c.p.ReadinessTimeout), "")
		}
		time.Sleep(c.p.ReadinessPoll)
	}
}

// Del detaches in reverse order, tolerating a missing network namespace,
// attempting every delegate and reporting all failures together. Without a
// usable scratch cache it falls back to the configured delegates (multus
// deletes nothing then, leaking secondary addresses). It never waits for
// the readiness file.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	c, err := p.begin("DEL", args)
	if err != nil {
		return err
	}
	entries, err := ReadCache(c.conf.CNIDir, args.ContainerID, args.IfName)
	fromCache := err == nil
	if err != nil {
		if !errors.Is(err, ErrNoCache) {
			c.log.Warn("scratch cache unusable; deleting every configured delegate", "err", err)
		} else {
			c.log.Info("no scratch cache; deleting every configured delegate")
		}
		entries = c.configEntries()
	}
	nsPresent := false
	if args.Netns != "" {
		if _, err := os.Stat(args.Netns); err == nil {
			nsPresent = true
		}
	}
	var errs []*types.Error
	for i := len(entries) - 1; i >= 0; i-- {
		e := entries[i]
		if _, err := c.invoke("DEL", e); err != nil {
			errs = append(errs, c.delegateErr("deleting container from", e, err))
			continue
		}
		// The rules go with the interface; a vanished namespace took them.
		if nsPresent && e.Policy {
			if err := tier.Remove(args.Netns, e.IfName); err != nil && !tier.IsNotExist(err) {
				errs = append(errs, types.NewError(CodePolicy, fmt.Sprintf("removing the policy of %s: %v", e.IfName, err), ""))
			}
		}
	}
	if len(errs) == 0 || !c.conf.RetryDeleteOnError || allMissing(errs) {
		if err := RemoveCache(c.conf.CNIDir, args.ContainerID); err != nil {
			errs = append(errs, types.NewError(types.ErrIOFailure, "removing the scratch cache: "+err.Error(), ""))
		}
	}
	return c.end(joinErrs(errs), "delegates", len(entries), "fromCache", fromCache)
}

// configured is the config's own networks (delegates, or clusterNetwork
// and defaultNetworks resolved now), for the verbs that have no pod to ask:
// DEL without a cache, GC, STATUS. A network that cannot be resolved is
// logged and left out.
func (c *call) configured() []*Delegate {
	if c.conf.ClusterNetwork == "" {
		return c.conf.Delegates
	}
	ds, err := c.networks(nil)
	if err != nil {
		c.log.Warn("cannot resolve the config's networks", "err", err)
	}
	return ds
}

func (c *call) configEntries() []CacheEntry {
	var out []CacheEntry
	for i, d := range c.configured() {
		// Policy: a table may exist if the network has ingress rules.
		out = append(out, CacheEntry{Name: d.Name, Bytes: d.Bytes, IfName: IfName(i, c.args.IfName), Index: i,
			DropArgs: d.Ext.DropArgs, Policy: len(d.Ext.Ingress) > 0})
	}
	return out
}

func allMissing(errs []*types.Error) bool {
	for _, e := range errs {
		if !strings.Contains(e.Msg, "no such file or directory") {
			return false
		}
	}
	return true
}

// joinErrs keeps the first error's code and joins the messages as multus
// does ("a / b").
func joinErrs(errs []*types.Error) error {
	if len(errs) == 0 {
		return nil
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Msg
	}
	return &types.Error{Code: errs[0].Code, Msg: strings.Join(msgs, " / "), Details: errs[0].Details}
}

// Check checks every attached delegate (and that its policy is in place).
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, err := p.begin("CHECK", args)
	if err != nil {
		return err
	}
	entries, err := ReadCache(c.conf.CNIDir, args.ContainerID, args.IfName)
	if err != nil {
		return c.end(types.NewError(types.ErrUnknownContainer, fmt.Sprintf("container %s: %v", args.ContainerID, err), ""))
	}
	for _, e := range entries {
		if _, err := c.invoke("CHECK", e); err != nil {
			return c.end(c.delegateErr("checking container on", e, err))
		}
		if e.Policy {
			ok, err := tier.Installed(args.Netns, e.IfName)
			if err != nil || !ok {
				return c.end(types.NewError(CodePolicy, fmt.Sprintf("the ingress policy of %s is missing (%v)", e.IfName, err), ""))
			}
		}
	}
	return c.end(nil, "delegates", len(entries))
}

// GC forwards garbage collection to every delegate (multus: master only),
// each with the attachments of its own network derived from the runtime's
// valid attachments and the scratch caches. libcni also DELs cached
// attachments that are no longer valid, and GC proper reaches delegates of
// cniVersion >= 1.1.0. Scratch caches of invalid containers are removed
// once every delegate succeeded.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	c, err := p.begin("GC", args)
	if err != nil {
		return err
	}
	if !c.conf.HasValidAttachments {
		// Without the list every attachment would count as stale.
		return c.end(types.NewError(types.ErrInvalidNetworkConfig, "GC without cni.dev/valid-attachments: refusing to treat every attachment as stale", ""))
	}
	valid := map[string][]types.GCAttachment{} // delegate name -> attachments
	validCID := map[string]bool{}
	for _, a := range c.conf.ValidAttachments {
		validCID[a.ContainerID] = true
		entries, err := ReadCache(c.conf.CNIDir, a.ContainerID, a.IfName)
		if err != nil { // unknown: keep everything it could hold
			entries = c.configEntriesFor(a.IfName)
		}
		for _, e := range entries {
			valid[e.Name] = append(valid[e.Name], types.GCAttachment{ContainerID: a.ContainerID, IfName: e.IfName})
		}
	}
	var errs []*types.Error
	for _, d := range c.gcNetworks() {
		list, err := delegateList(d)
		if err != nil {
			errs = append(errs, types.NewError(types.ErrDecodingFailure, err.Error(), ""))
			continue
		}
		if err := c.cni.GCNetworkList(c.ctx, list, &libcni.GCArgs{ValidAttachments: valid[d.Name]}); err != nil {
			errs = append(errs, c.delegateErr("collecting garbage on", CacheEntry{Name: d.Name}, err))
		}
	}
	removed := 0
	if len(errs) == 0 {
		des, _ := os.ReadDir(c.conf.CNIDir)
		for _, de := range des {
			if de.Type().IsRegular() && !strings.HasPrefix(de.Name(), ".") && !validCID[de.Name()] {
				if RemoveCache(c.conf.CNIDir, de.Name()) == nil {
					removed++
				}
			}
		}
	}
	return c.end(joinErrs(errs), "staleCaches", removed)
}

func (c *call) configEntriesFor(ifname string) []CacheEntry {
	saved := c.args.IfName
	c.args.IfName = ifname
	defer func() { c.args.IfName = saved }()
	return c.configEntries()
}

func delegateList(d *Delegate) (*libcni.NetworkConfigList, error) {
	if d.IsList {
		return libcni.ConfListFromBytes(d.Bytes)
	}
	conf, err := libcni.NetworkPluginConfFromBytes(d.Bytes)
	if err != nil {
		return nil, err
	}
	//nolint:staticcheck // the single-plugin form is what delegates use
	return libcni.ConfListFromConf(conf)
}

// Status asks every delegate (multus: master only). It reports 50 while the
// readiness indicator file is missing, without waiting.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	c, err := p.begin("STATUS", args)
	if err != nil {
		return err
	}
	if f := c.conf.ReadinessIndicatorFile; f != "" {
		if _, err := os.Stat(f); err != nil {
			return c.end(types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("readiness indicator file %s: %v", f, err), ""))
		}
	}
	for _, d := range c.configured() {
		list, err := delegateList(d)
		if err != nil {
			return c.end(types.NewError(types.ErrDecodingFailure, err.Error(), ""))
		}
		if err := c.cni.GetStatusNetworkList(c.ctx, list); err != nil {
			var te *types.Error
			if errors.As(err, &te) {
				return c.end(&types.Error{Code: te.Code, Msg: fmt.Sprintf("delegate %s: %s", d.Name, te.Msg), Details: te.Details})
			}
			return c.end(types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("delegate %s: %v", d.Name, err), ""))
		}
	}
	return c.end(nil)
}

// toCNI maps an error to a CNI error with a meaningful code.
func toCNI(err error) *types.Error {
	var (
		te  *types.Error
		ce  *ConfigError
		ne  *NetworkError
		nf  *NotFoundError
		lk  *tier.LookupError
		una *tier.UnavailableError
	)
	switch {
	case errors.As(err, &te):
		return te
	case errors.As(err, &ce):
		return types.NewError(ce.Code, ce.Msg, "")
	case errors.As(err, &ne):
		return networkErr(ne)
	case errors.As(err, &nf):
		return types.NewError(CodePodLookup, err.Error(), "")
	case errors.As(err, &una):
		return types.NewError(types.ErrTryAgainLater, "Kubernetes API unavailable, try again later: "+err.Error(), "")
	case errors.As(err, &lk):
		return types.NewError(CodePodLookup, err.Error(), "")
	}
	return types.NewError(types.ErrInternal, err.Error(), "")
}

// gcNetworks are the networks GC reaches: the config's, then every other
// network a scratch cache names (the NADs pods asked for), with the exact
// bytes it was attached with.
func (c *call) gcNetworks() []*Delegate {
	out := slices.Clone(c.configured())
	seen := map[string]bool{}
	for _, d := range out {
		seen[d.Name] = true
	}
	des, _ := os.ReadDir(c.conf.CNIDir)
	for _, de := range des {
		if !de.Type().IsRegular() || strings.HasPrefix(de.Name(), ".") {
			continue
		}
		entries, err := ReadCache(c.conf.CNIDir, de.Name(), "")
		if err != nil {
			continue
		}
		for _, e := range entries {
			if seen[e.Name] || len(e.Bytes) == 0 {
				continue
			}
			seen[e.Name] = true
			out = append(out, &Delegate{Name: e.Name, Bytes: e.Bytes, IsList: isList(e.Bytes), Network: e.Network})
		}
	}
	return out
}
