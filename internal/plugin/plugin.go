// Package plugin is the CNI face of kube-ipam: it wires config parsing, pod
// lookup, allocation and the etcd store into the ADD, DEL, CHECK, GC and
// STATUS verbs, maps every failure to a CNI error code, and logs each call.
package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	clientv3 "go.etcd.io/etcd/client/v3"

	"kubeipam/internal/allocator"
	"kubeipam/internal/config"
	"kubeipam/internal/pod"
	"kubeipam/internal/store"
)

// Plugin holds the dependencies a call needs; tests may replace them.
type Plugin struct {
	// Pods builds the pod reader for a network (default: client-go from kubeConfig).
	Pods func(n *config.Network) (pod.Getter, error)
	// Now is the clock.
	Now func() time.Time
	// Out receives the ADD result (stdout for the real plugin).
	Out io.Writer
	// Etcd gives a call its etcd client (default: a new one, closed at
	// the end). done(reusable) hands it back: reusable when the call left
	// it as it got it (no member dropped, no etcd failure).
	Etcd func(e config.Etcd, dialTimeout time.Duration) (cli *clientv3.Client, done func(reusable bool), err error)
	// Kube opens a network's Kubernetes API store (default: openKube).
	Kube func(n *config.Network) (store.Backend, error)
	// Root is where the node's filesystem is seen ("" for the plugin
	// process, which runs on the node): the node agent in its container
	// sees it under its host root. Every file of the config is looked up
	// under it.
	Root string
	// InFlight, shared by the calls of one long-lived process (the node
	// agent), steers concurrent ADDs of the same network to different
	// first picks; nil in the plugin process, alone in its process.
	InFlight *allocator.InFlight
}

// Default is the production wiring.
func Default() *Plugin {
	return &Plugin{
		Pods: func(n *config.Network) (pod.Getter, error) {
			return pod.NewClient(n.KubeConfig, n.Timeout)
		},
		Now:  time.Now,
		Out:  os.Stdout,
		Etcd: connectEtcd,
		Kube: func(n *config.Network) (store.Backend, error) { return openKube(n, n.Timeout) },
	}
}

// connectEtcd opens a new client for one call; it is closed at the end.
func connectEtcd(e config.Etcd, dialTimeout time.Duration) (*clientv3.Client, func(bool), error) {
	cli, err := store.Connect(e, dialTimeout)
	if err != nil {
		return nil, nil, err
	}
	return cli, func(bool) { cli.Close() }, nil
}

// Funcs returns the skel callbacks.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

// call is the per-invocation context shared by the verbs.
type call struct {
	p     *Plugin
	verb  string
	args  *skel.CmdArgs
	net   *config.Network
	log   *slog.Logger
	close func()
	ctx   context.Context
	stop  context.CancelFunc
	cli   *clientv3.Client
	// cliDone hands cli back (see Plugin.Etcd).
	cliDone func(reusable bool)
	st      store.Backend
	// started is when the call began.
	started time.Time
	// claimed: this ADD's own claim was applied (rolled back if the ADD
	// fails afterwards).
	claimed bool
}

func (p *Plugin) begin(verb string, args *skel.CmdArgs) (*call, error) {
	n, err := config.Parse(args.StdinData)
	if err == nil && p.Root != "" {
		for _, f := range n.HostFiles() {
			*f.Path = filepath.Join(p.Root, *f.Path)
		}
	}
	if err != nil {
		// The config is unusable, but its logFile may still be readable.
		var partial struct {
			IPAM struct {
				LogFile string `json:"logFile"`
			} `json:"ipam"`
		}
		path := config.DefaultLogFile
		if json.Unmarshal(args.StdinData, &partial) == nil && partial.IPAM.LogFile != "" {
			path = partial.IPAM.LogFile
		}
		lg, closeLog := openLog(path, "info")
		defer closeLog()
		lg.Error("invalid network config", "verb", verb, "container", args.ContainerID, "err", err)
		return nil, toCNI(err)
	}
	c := &call{p: p, verb: verb, args: args, net: n, started: p.Now()}
	c.log, c.close = openLog(n.LogFile, n.LogLevel)
	c.log = c.log.With("verb", verb, "network", n.Name, "container", short(args.ContainerID), "ifname", args.IfName)
	// Logged at info on ADD only: the seed's own config has a default route,
	// and a warning on every call would drown real ones.
	for _, w := range n.Warnings {
		if verb == "ADD" {
			c.log.Info(w)
		} else {
			c.log.Debug(w)
		}
	}
	for _, w := range n.Notes {
		c.log.Debug(w)
	}
	c.ctx, c.stop = context.WithTimeout(context.Background(), n.Timeout)
	return c, nil
}

// DialTimeout bounds how long a call waits for a connection to etcd before
// it fails with code 11 ("unreachable"); a shorter ipam.timeout wins.
const DialTimeout = 5 * time.Second

// connect opens the network's store. For etcd it opens the client and
// waits (at most DialTimeout) until it is connected, so that an unreachable
// etcd fails the call in seconds rather than after the whole ipam.timeout.
// On a reachable etcd the wait is the connection set-up the first request
// would do anyway.
func (c *call) connect() error {
	if c.net.Store == config.StoreKubernetes {
		b, err := c.p.Kube(c.net)
		if err != nil {
			return err
		}
		c.st = b
		return nil
	}
	dial := min(c.net.Timeout, DialTimeout)
	cli, done, err := c.p.Etcd(c.net.Etcd, dial)
	if err != nil {
		return err
	}
	c.cli, c.cliDone = cli, done
	es := store.New(cli, c.net.Etcd.Prefix, c.net.Name)
	wd := store.DefaultWatchdog()
	wd.Log = c.log.Info
	es.SetWatchdog(wd)
	c.st = es
	start := time.Now()
	if err := store.WaitReady(c.ctx, cli, c.net.Etcd, dial); err != nil {
		return err
	}
	c.log.Debug("etcd connected", "endpoints", fmt.Sprint(c.net.Etcd.Endpoints), "ms", time.Since(start).Milliseconds())
	return nil
}

func (c *call) end(err error, attrs ...any) error {
	defer c.close()
	defer c.stop()
	if c.cli != nil {
		// Reusable only as it was lent: every endpoint still in use (the
		// watchdog drops the members that stall) and no etcd failure.
		reusable := err == nil && slices.Equal(c.cli.Endpoints(), c.net.Etcd.Endpoints)
		defer c.cliDone(reusable)
	}
	if err != nil {
		e := toCNI(err)
		c.log.Error("failed", append(attrs, "code", e.Code, "err", e.Msg)...)
		return e
	}
	c.log.Info("ok", attrs...)
	return nil
}

func short(id string) string { return store.ShortID(id) }

// Add allocates. Whatever it claimed is released again when the call fails
// after the claim (the result cannot be built or printed), so a failed ADD
// leaves nothing for its container and interface.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	c, err := p.begin("ADD", args)
	if err != nil {
		return err
	}
	start := p.Now()
	res, err := p.add(c)
	if err == nil {
		var ips []string
		for _, ip := range res.IPs {
			ips = append(ips, ip.Address.String())
		}
		version := c.net.CNIVersion
		if version == "" {
			version = "0.1.0"
		}
		var out types.Result
		if out, err = res.GetAsVersion(version); err != nil {
			err = types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("cannot express the result as cniVersion %s: %v", version, err), "")
		} else if err = out.PrintTo(p.Out); err != nil {
			err = types.NewError(types.ErrIOFailure, fmt.Sprintf("writing the result: %v", err), "")
		}
		if err == nil {
			return c.end(nil, "ips", ips, "ms", p.Now().Sub(start).Milliseconds())
		}
	}
	if c.claimed {
		c.rollback()
	}
	return c.end(err)
}

// RollbackTimeout bounds the release of a claim whose ADD failed afterwards;
// it runs even when the call's own deadline has passed.
const RollbackTimeout = 5 * time.Second

// rollback releases what this call claimed (guarded by the revisions it
// reads, so nothing another container holds is touched).
func (c *call) rollback() {
	ctx, cancel := context.WithTimeout(context.Background(), RollbackTimeout)
	defer cancel()
	freed, err := c.st.Release(ctx, c.args.ContainerID, c.args.IfName, time.Now(), allocator.ReusePolicy(c.net))
	if err != nil {
		c.log.Error("releasing the claim of this failed ADD failed; the runtime's DEL, the pod's next ADD or GC frees it", "err", err)
		return
	}
	c.log.Info("released the claim of this failed ADD", "ips", fmt.Sprint(freed))
}

// HoldAfterCommitEnv names a directory for fault tests: after its own
// claim committed, ADD creates <dir>/<containerID>_<ifname> and waits until
// the file is removed (or the call's deadline) before it answers, so that
// a test can kill the plugin between the commit and the result.
const HoldAfterCommitEnv = "KUBE_IPAM_TEST_HOLD_AFTER_COMMIT"

func (c *call) holdAfterCommit() {
	dir := os.Getenv(HoldAfterCommitEnv)
	if dir == "" {
		return
	}
	path := filepath.Join(dir, c.args.ContainerID+"_"+c.args.IfName)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		c.log.Warn("fault hook: cannot create its file", "path", path, "err", err)
		return
	}
	c.log.Debug("fault hook: holding after the commit", "path", path)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return
		}
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Error codes of kube-ipam (documented in docs/errors.md).
const (
	CodeConflict       = 100
	CodeExhausted      = 101
	CodePodLookup      = 102
	CodeAnnotation     = 103
	CodeOutOfRange     = 104
	CodeCheckMismatch  = 105
	CodeStoreRejected  = 106
	CodeRequestInvalid = 107
)

func (p *Plugin) add(c *call) (*current.Result, error) {
	a, err := pod.ParseArgs(c.args.Args)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(), "")
	}
	req := allocator.Request{
		ContainerID: c.args.ContainerID, IfName: c.args.IfName,
		PodNamespace: a.Namespace, PodName: a.Name, PodUID: a.UID, Node: c.net.NodeName,
	}
	// Addresses asked for through CNI conventions (IP=, runtimeConfig/args ips).
	var requested []config.IPSpec
	for _, s := range a.IPs {
		spec, err := config.ParseIPOrCIDR(s)
		if err != nil {
			return nil, &codedError{CodeRequestInvalid, fmt.Sprintf("CNI_ARGS IP=%q: %v", s, err)}
		}
		requested = append(requested, spec)
	}
	requested, err = config.MergeRequests(append(requested, c.net.RequestedIPs...))
	if err != nil {
		return nil, &codedError{CodeRequestInvalid, fmt.Sprintf("requested addresses (CNI_ARGS IP=, runtimeConfig.ips, args.cni.ips): %v", err)}
	}

	wants := pod.Wants{Netmask: -1}
	if a.Name != "" && c.net.PodLookup {
		if c.net.Store == config.StoreKubernetes {
			// The kubeconfig is the store's too: one that cannot be used
			// is a configuration error (code 7), as on DEL and CHECK, not
			// a failed pod lookup. Opening the store reads only the file.
			if err := c.connect(); err != nil {
				return nil, err
			}
		}
		getter, err := p.Pods(c.net)
		if err != nil {
			return nil, err
		}
		info, err := getter.Get(c.ctx, a.Namespace, a.Name)
		if err != nil {
			return nil, err
		}
		if a.UID != "" && info.UID != a.UID {
			return nil, &pod.LookupError{Msg: fmt.Sprintf("pod %s/%s has UID %s, but this ADD is for UID %s (the pod was deleted and re-created)", a.Namespace, a.Name, info.UID, a.UID)}
		}
		if req.PodUID == "" {
			req.PodUID = info.UID
		}
		if wants, err = pod.ParseAnnotationsFor(info.Annotations, c.net.Name); err != nil {
			return nil, err
		}
		if info.StatefulSetUID != "" && info.Ordinal >= 0 {
			req.StatefulSet, req.StatefulSetUID, req.Ordinal = info.StatefulSet, info.StatefulSetUID, info.Ordinal
			req.Sticky = c.net.StickyStatefulSets
		}
		if len(wants.Pool) > 0 {
			if req.StatefulSetUID == "" {
				return nil, &pod.AnnotationError{Key: pod.AnnotationIPPool, Value: fmt.Sprint(addrs(wants.Pool)), Reason: "only applies to pods of a StatefulSet (pod N gets entry N)"}
			}
			if req.Ordinal >= len(wants.Pool) {
				return nil, &pod.AnnotationError{Key: pod.AnnotationIPPool, Value: fmt.Sprint(addrs(wants.Pool)), Reason: fmt.Sprintf("has %d entries but this pod is ordinal %d of StatefulSet %s", len(wants.Pool), req.Ordinal, req.StatefulSet)}
			}
			wants.IPs = wants.Pool[req.Ordinal : req.Ordinal+1]
		}
		c.log.Debug("pod read", "pod", a.Namespace+"/"+a.Name, "uid", info.UID, "statefulSet", info.StatefulSet, "ordinal", info.Ordinal, "fixed", len(wants.IPs))
	}
	fixed := wants.IPs
	if len(requested) > 0 {
		if len(fixed) > 0 && !sameAddrs(fixed, requested) {
			return nil, &codedError{CodeRequestInvalid, fmt.Sprintf("the pod annotation %s asks for %v but the runtime asks for %v; refusing to pick one silently", pod.AnnotationIP, addrs(fixed), addrs(requested))}
		}
		fixed = requested
	}
	req.Fixed = addrs(fixed)
	// Everything that can refuse the ADD is checked before the claim.
	alloc := allocator.New(c.net, nil)
	for _, ip := range req.Fixed {
		if _, err := alloc.ValidateFixed(ip); err != nil {
			return nil, err
		}
		if _, _, err := fixedShape(c.net, ip, fixed, wants); err != nil {
			return nil, err
		}
	}
	if c.net.ResolvConf != "" {
		if _, err := readResolvConf(c.net.ResolvConf); err != nil {
			return nil, types.NewError(types.ErrIOFailure, fmt.Sprintf("ipam.resolvConf %s: %v", c.net.ResolvConf, err), "")
		}
	}

	if c.st == nil {
		if err := c.connect(); err != nil {
			return nil, err
		}
	}
	alloc.Store, alloc.Now, alloc.Started = c.st, p.Now, c.started
	alloc.InFlight, alloc.Pool = p.InFlight, poolKey(c.net)
	c.log.Debug("allocating", "fixed", fmt.Sprint(req.Fixed), "sticky", req.Sticky, "endpoints", fmt.Sprint(c.net.Etcd.Endpoints))
	got, err := alloc.Allocate(c.ctx, req)
	if alloc.Conflicts > 0 {
		c.log.Debug("claim races lost", "count", alloc.Conflicts)
	}
	if alloc.Unknown > 0 {
		c.log.Info("claim outcome was unknown and was read back", "count", alloc.Unknown, "held", err == nil)
	}
	if alloc.Retired > 0 {
		c.log.Info("replaced the pod's earlier attachment(s) on this interface", "count", alloc.Retired)
	}
	if err != nil {
		return nil, err
	}
	c.claimed = alloc.Committed
	if c.claimed {
		c.holdAfterCommit()
	}
	return buildResult(c.net, got, fixed, wants)
}

type codedError struct {
	code uint
	msg  string
}

func (e *codedError) Error() string { return e.msg }

func addrs(specs []config.IPSpec) []netip.Addr {
	out := make([]netip.Addr, len(specs))
	for i, s := range specs {
		out[i] = s.Addr
	}
	return out
}

func sameAddrs(a, b []config.IPSpec) bool {
	x, y := addrs(a), addrs(b)
	slices.SortFunc(x, netip.Addr.Compare)
	slices.SortFunc(y, netip.Addr.Compare)
	return slices.Equal(x, y)
}

// fixedShape is the prefix length and gateway a fixed address is returned
// with: a length written with the address wins over kube-ipam.netmask (a
// dotted mask in v0.2, IPv4 only), kube-ipam.gateway over the subnet's
// gateway. A gateway the pod could not reach on that prefix is refused
// before anything is claimed.
func fixedShape(n *config.Network, ip netip.Addr, fixed []config.IPSpec, wants pod.Wants) (int, netip.Addr, error) {
	_, r, ok := n.SetFor(ip)
	if !ok {
		return 0, netip.Addr{}, nil // refused by the allocator (code 104)
	}
	bits, gw := r.Subnet.Bits(), r.Gateway
	written := writtenBits(fixed, ip)
	netmaskKey := wants.NetmaskKey
	if netmaskKey == "" {
		netmaskKey = pod.AnnotationNetmask
	}
	switch {
	case written >= 0:
		bits = written
	case wants.Netmask > 32 && ip.Is4():
		return 0, netip.Addr{}, &pod.AnnotationError{Key: netmaskKey, Value: fmt.Sprint(wants.Netmask), Reason: "prefix length too long for IPv4"}
	case wants.Netmask >= 0 && ip.Is4():
		bits = wants.Netmask
	}
	fromAnnotation := wants.Gateway.IsValid() && wants.Gateway.Is4() == ip.Is4()
	if fromAnnotation {
		gw = wants.Gateway
	}
	if !gw.IsValid() {
		return bits, gw, nil
	}
	onLink := netip.PrefixFrom(ip, bits).Masked()
	var reason string
	switch {
	case gw == ip:
		reason = fmt.Sprintf("is the pod's own address %s", ip)
	case !onLink.Contains(gw):
		reason = fmt.Sprintf("is outside the pod's subnet %s (address %s, prefix length %d): the pod could not reach it", onLink, ip, bits)
	default:
		return bits, gw, nil
	}
	if fromAnnotation {
		key := wants.GatewayKey
		if key == "" {
			key = pod.AnnotationGateway
		}
		return 0, netip.Addr{}, &pod.AnnotationError{Key: key, Value: gw.String(), Reason: reason}
	}
	// The subnet's own gateway falls outside a narrower prefix the pod asked for.
	return 0, netip.Addr{}, &pod.AnnotationError{Key: netmaskKey, Value: fmt.Sprint(bits), Reason: fmt.Sprintf("makes the network's gateway %s unreachable: it %s; set %s too", gw, reason, pod.AnnotationGateway)}
}

func buildResult(n *config.Network, got []allocator.Allocated, fixed []config.IPSpec, wants pod.Wants) (*current.Result, error) {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: n.Routes}
	for _, g := range got {
		_, r, _ := n.SetFor(g.IP)
		bits := r.Subnet.Bits()
		gw := r.Gateway
		if g.Kind == store.KindFixed {
			var err error
			if bits, gw, err = fixedShape(n, g.IP, fixed, wants); err != nil {
				return nil, err
			}
		}
		ipc := &current.IPConfig{Address: net.IPNet{IP: g.IP.AsSlice(), Mask: net.CIDRMask(bits, g.IP.BitLen())}}
		if gw.IsValid() {
			ipc.Gateway = gw.AsSlice()
		}
		res.IPs = append(res.IPs, ipc)
	}
	if n.ResolvConf != "" {
		dns, err := readResolvConf(n.ResolvConf)
		if err != nil {
			return nil, types.NewError(types.ErrIOFailure, fmt.Sprintf("ipam.resolvConf %s: %v", n.ResolvConf, err), "")
		}
		res.DNS = dns
	}
	return res, nil
}

// writtenBits is the prefix length written with ip in the request, or -1.
func writtenBits(fixed []config.IPSpec, ip netip.Addr) int {
	for _, f := range fixed {
		if f.Addr == ip {
			return f.Bits
		}
	}
	return -1
}

// Del releases what this container and interface hold. It never contacts
// Kubernetes and succeeds when there is nothing to free.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	c, err := p.begin("DEL", args)
	if err != nil {
		return err
	}
	if err := c.connect(); err != nil {
		return c.end(err)
	}
	freed, err := c.st.Release(c.ctx, args.ContainerID, args.IfName, p.Now(), allocator.ReusePolicy(c.net))
	return c.end(err, "freed", fmt.Sprint(freed))
}

// Check verifies that the allocation exists, is still owned by this
// container and interface, and matches the previous result.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, err := p.begin("CHECK", args)
	if err != nil {
		return err
	}
	if err := c.connect(); err != nil {
		return c.end(err)
	}
	return c.end(p.check(c))
}

func (p *Plugin) check(c *call) error {
	att, err := c.st.Attachment(c.ctx, c.args.ContainerID, c.args.IfName)
	if err != nil {
		return err
	}
	if att == nil {
		return &codedError{CodeCheckMismatch, fmt.Sprintf("no allocation on network %q for container %s interface %s", c.net.Name, c.args.ContainerID, c.args.IfName)}
	}
	for _, s := range att.IPs {
		ip, _ := netip.ParseAddr(s)
		st, err := c.st.State(c.ctx, ip)
		if err != nil {
			return err
		}
		if st.Record == nil || st.Record.ContainerID != c.args.ContainerID || st.Record.IfName != c.args.IfName {
			holder := "nobody"
			if st.Record != nil {
				holder = st.Record.Owner()
			}
			return &codedError{CodeCheckMismatch, fmt.Sprintf("IP %s of this attachment is now held by %s", ip, holder)}
		}
	}
	if c.net.RawPrevResult == nil {
		return nil
	}
	prev, err := prevIPs(c.net)
	if err != nil {
		return err
	}
	want := slices.Clone(att.IPs)
	slices.Sort(want)
	slices.Sort(prev)
	if !slices.Equal(want, prev) {
		return &codedError{CodeCheckMismatch, fmt.Sprintf("prevResult has IPs %v but the store holds %v for this attachment", prev, want)}
	}
	return nil
}

func prevIPs(n *config.Network) ([]string, error) {
	raw, ok := n.RawPrevResult["ips"].([]any)
	if !ok {
		return nil, nil
	}
	var out []string
	for _, e := range raw {
		m, _ := e.(map[string]any)
		s, _ := m["address"].(string)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult address %q is not a CIDR", s), "")
		}
		out = append(out, p.Addr().String())
	}
	return out, nil
}

// GC releases this node's allocations on the network that are not in the
// runtime's list of valid attachments. Allocations of other nodes are never
// touched: one runtime only knows its own containers.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	c, err := p.begin("GC", args)
	if err != nil {
		return err
	}
	if err := c.connect(); err != nil {
		return c.end(err)
	}
	valid := map[types.GCAttachment]bool{}
	for _, v := range c.net.ValidAttachments {
		valid[v] = true
	}
	atts, err := c.st.Attachments(c.ctx)
	if err != nil {
		return c.end(err)
	}
	released, skipped := 0, 0
	policy := allocator.ReusePolicy(c.net)
	for _, att := range atts {
		if valid[types.GCAttachment{ContainerID: att.ContainerID, IfName: att.IfName}] {
			continue
		}
		if att.Node != c.net.NodeName {
			skipped++
			continue
		}
		freed, ok, err := c.st.ReleaseAttachment(c.ctx, att, p.Now(), policy)
		if err != nil {
			return c.end(err)
		}
		if ok {
			released++
			c.log.Info("gc released", "gcContainer", short(att.ContainerID), "gcIfname", att.IfName, "ips", fmt.Sprint(freed))
		}
	}
	return c.end(nil, "released", released, "otherNodes", skipped)
}

// Status reports whether ADD can be served: etcd reachable and an address
// available in every range set.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	c, err := p.begin("STATUS", args)
	if err != nil {
		return err
	}
	if err := c.connect(); err != nil {
		if store.IsUnavailable(err) {
			return c.end(types.NewError(types.ErrPluginNotAvailable, err.Error(), ""))
		}
		return c.end(err)
	}
	if err := c.st.Ping(c.ctx); err != nil {
		what := "etcd"
		if c.net.Store == config.StoreKubernetes {
			what = "the Kubernetes API"
		}
		if store.IsUnavailable(err) {
			what += " is unreachable: "
		} else {
			what += " refused the check: "
		}
		return c.end(types.NewError(types.ErrPluginNotAvailable, what+err.Error(), ""))
	}
	alloc := allocator.New(c.net, c.st)
	alloc.Now = p.Now
	if err := alloc.CanAllocate(c.ctx); err != nil {
		return c.end(types.NewError(types.ErrPluginNotAvailable, err.Error(), ""))
	}
	return c.end(nil)
}

// toCNI maps any error to a CNI error with a meaningful code.
func toCNI(err error) *types.Error {
	var (
		te   *types.Error
		ce   *config.Error
		sce  *store.ConfigError
		cod  *codedError
		conf *allocator.ConflictError
		exh  *allocator.ExhaustedError
		cool *allocator.CoolingError
		cont *allocator.ContentionError
		oor  *allocator.OutOfRangeError
		lk   *pod.LookupError
		tr   *pod.TransientError
		ann  *pod.AnnotationError
		unr  *store.UnreachableError
	)
	switch {
	case errors.As(err, &te):
		return te
	case errors.As(err, &ce), errors.As(err, &sce):
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	case errors.As(err, &cod):
		return types.NewError(cod.code, cod.msg, "")
	case errors.As(err, &conf):
		return types.NewError(CodeConflict, err.Error(), "")
	case errors.As(err, &exh):
		return types.NewError(CodeExhausted, err.Error(), "")
	case errors.As(err, &cool), errors.As(err, &cont), errors.As(err, &tr):
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	case errors.As(err, &oor):
		return types.NewError(CodeOutOfRange, err.Error(), "")
	case errors.As(err, &lk):
		return types.NewError(CodePodLookup, err.Error(), "")
	case errors.As(err, &ann):
		return types.NewError(CodeAnnotation, err.Error(), "")
	case errors.As(err, &unr):
		return types.NewError(types.ErrTryAgainLater, err.Error()+"; try again later", "")
	case store.IsUnavailable(err):
		return types.NewError(types.ErrTryAgainLater, storeName(err)+" did not answer in time, try again later: "+err.Error(), "")
	}
	return types.NewError(CodeStoreRejected, "store error: "+err.Error(), "")
}

// storeName names the store an unavailability error comes from: the
// Kubernetes API store's errors say so themselves (store.Unavailable).
func storeName(err error) string {
	var un store.Unavailable
	if errors.As(err, &un) {
		return "the Kubernetes API"
	}
	return "etcd"
}

// openLog appends to path (mode 0600); when it cannot, it logs to stderr,
// never to stdout, which carries the CNI result.
func openLog(path, level string) (*slog.Logger, func()) {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		lg := slog.New(slog.NewTextHandler(os.Stderr, opts))
		lg.Warn("cannot open log file, logging to stderr", "path", path, "err", err)
		return lg, func() {}
	}
	return slog.New(slog.NewTextHandler(f, opts)).With("pid", os.Getpid()), func() { f.Close() }
}

// poolKey names n's address pool for InFlight: the same network name in
// the same store is the same pool.
func poolKey(n *config.Network) string {
	if n.Store == config.StoreKubernetes {
		return "kubernetes\x00" + n.KubeConfig + "\x00" + n.Name
	}
	return "etcd\x00" + strings.Join(n.Etcd.Endpoints, ",") + "\x00" + n.Etcd.Prefix + "\x00" + n.Name
}
