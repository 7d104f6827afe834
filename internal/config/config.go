// Package config turns the network configuration that a container runtime
// hands to kube-ipam on stdin into a validated, immutable Network value.
//
// It accepts every key of cloudnativer/kube-ipam v0.2.0 unchanged (including
// the misspelled etcdConfig.etcdTrustedCAFileFile and the legacy single-range
// subnet/rangeStart/rangeEnd/gateway keys), host-local style "ranges", and the
// keys this project adds (fixedStart/fixedEnd, releaseCooldown, ...). Parsing
// does no I/O: files named by the config are only checked where they are used.
// LoadNetworks reads a whole network config file (single, conflist or multus
// meta config) and parses every kube-ipam network in it; it is the one loader
// of kube-ipamctl, kube-ipam-controller, its webhook and kube-ipam-install.
package config

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// Defaults for keys the user may leave out.
const (
	DefaultKubeConfig      = "/etc/kubernetes/pki/kubectl.kubeconfig"
	DefaultEtcdPrefix      = "/kube-ipam"
	DefaultLogFile         = "/var/log/kube-ipam.log"
	DefaultReleaseCooldown = 30 * time.Second
	DefaultTimeout         = 30 * time.Second
)

// Stores (ipam.store).
const (
	StoreEtcd       = "etcd"
	StoreKubernetes = "kubernetes"
)

// Range is one contiguous block of a subnet that addresses may come from.
type Range struct {
	Subnet  netip.Prefix
	Start   netip.Addr // inclusive
	End     netip.Addr // inclusive
	Gateway netip.Addr // may be invalid (no gateway)
}

// RangeSet is a pool of disjoint ranges of one address family; an ADD gets one
// address from each set.
type RangeSet []Range

// Family is 4 or 6.
func (s RangeSet) Family() int {
	if s[0].Subnet.Addr().Is4() {
		return 4
	}
	return 6
}

// Etcd says how to reach the store.
type Etcd struct {
	Endpoints []string
	CertFile  string
	KeyFile   string
	CAFile    string
	Prefix    string
}

// TLS reports whether the endpoints are https (the original's rule: the whole
// list is TLS when it starts with https).
func (e Etcd) TLS() bool {
	return len(e.Endpoints) > 0 && strings.HasPrefix(strings.ToLower(e.Endpoints[0]), "https")
}

// Network is a validated network configuration.
type Network struct {
	CNIVersion string
	Name       string
	RangeSets  []RangeSet
	// Fixed is the block reserved for fixed (annotated) addresses; the dynamic
	// allocator never hands it out. Invalid addresses mean "no fixed block".
	FixedStart, FixedEnd netip.Addr
	// Exclude (ipam.exclude) lists blocks that are never handed out:
	// neither by the dynamic allocator nor as fixed addresses.
	Exclude    []Exclusion
	Routes     []*types.Route
	ResolvConf string
	KubeConfig string
	PodLookup  bool
	// StickyStatefulSets: a StatefulSet pod without a fixed address keeps
	// the dynamic address its ordinal was first given.
	StickyStatefulSets bool
	Etcd               Etcd
	// Store is where allocations live: StoreEtcd (default) or
	// StoreKubernetes (custom resources in the cluster's API).
	Store string
	// Cluster identifies this cluster in every record it writes, so that
	// clusters sharing one etcd prefix or one API never free each other's
	// addresses ("" for records written before it existed, or one cluster).
	Cluster         string
	ReleaseCooldown time.Duration
	Timeout         time.Duration
	LogFile         string
	LogLevel        string
	NodeName        string
	// RequestedIPs come from runtimeConfig.ips, args.cni.ips (CNI conventions).
	RequestedIPs     []IPSpec
	ValidAttachments []types.GCAttachment
	RawPrevResult    map[string]any
	// Warnings are risky settings worth a warning on ADD; Notes are
	// harmless compatibility remarks (debug level).
	Warnings []string
	Notes    []string
}

// HasFixedBlock reports whether fixedStart/fixedEnd are configured.
func (n *Network) HasFixedBlock() bool { return n.FixedStart.IsValid() }

// InFixedBlock reports whether ip lies in the configured fixed block.
func (n *Network) InFixedBlock(ip netip.Addr) bool {
	return n.HasFixedBlock() && ip.BitLen() == n.FixedStart.BitLen() &&
		ip.Compare(n.FixedStart) >= 0 && ip.Compare(n.FixedEnd) <= 0
}

// Exclusion is one entry of ipam.exclude: the inclusive block [Lo, Hi] of
// one address family, and the entry as written (for messages).
type Exclusion struct {
	Entry  string
	Lo, Hi netip.Addr
}

// Contains reports whether ip lies in the block.
func (x Exclusion) Contains(ip netip.Addr) bool {
	return ip.BitLen() == x.Lo.BitLen() && ip.Compare(x.Lo) >= 0 && ip.Compare(x.Hi) <= 0
}

// Excluded returns the ipam.exclude entry that holds ip, if any. It is the
// one test of "never hand this address out" for a single address; the
// dynamic allocator subtracts the same blocks from its intervals
// (ipam.DynamicIntervals) instead of testing address by address.
func (n *Network) Excluded(ip netip.Addr) (Exclusion, bool) {
	for _, x := range n.Exclude {
		if x.Contains(ip) {
			return x, true
		}
	}
	return Exclusion{}, false
}

// SetFor returns the index of the range set and the range whose subnet holds ip.
func (n *Network) SetFor(ip netip.Addr) (int, Range, bool) {
	for i, set := range n.RangeSets {
		for _, r := range set {
			if r.Subnet.Contains(ip) {
				return i, r, true
			}
		}
	}
	return -1, Range{}, false
}

// Error is a configuration error; the plugin reports it as CNI code 7.
type Error struct{ Msg string }

func (e *Error) Error() string { return e.Msg }

func errorf(format string, a ...any) error { return &Error{Msg: fmt.Sprintf(format, a...)} }

type rawRange struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart"`
	RangeEnd   string `json:"rangeEnd"`
	Gateway    string `json:"gateway"`
}

type rawEtcd struct {
	EtcdURL                string `json:"etcdURL"`
	EtcdCertFile           string `json:"etcdCertFile"`
	EtcdKeyFile            string `json:"etcdKeyFile"`
	EtcdTrustedCAFileFile  string `json:"etcdTrustedCAFileFile"`
	EtcdTrustedCAFile      string `json:"etcdTrustedCAFile"`
	EtcdPrefix             string `json:"etcdPrefix"`
	KubeConfigMisplacement string `json:"kubeConfig"`
}

type rawIPAM struct {
	Type            string          `json:"type"`
	Name            string          `json:"name"`
	KubeConfig      string          `json:"kubeConfig"`
	PodLookup       *bool           `json:"podLookup"`
	Sticky          *bool           `json:"stickyStatefulSets"`
	EtcdConfig      *rawEtcd        `json:"etcdConfig"`
	Subnet          string          `json:"subnet"`
	RangeStart      string          `json:"rangeStart"`
	RangeEnd        string          `json:"rangeEnd"`
	Gateway         string          `json:"gateway"`
	FixedStart      string          `json:"fixedStart"`
	FixedEnd        string          `json:"fixedEnd"`
	Exclude         json.RawMessage `json:"exclude"`
	Ranges          [][]rawRange    `json:"ranges"`
	Routes          []*types.Route  `json:"routes"`
	ResolvConf      string          `json:"resolvConf"`
	ReleaseCooldown *string         `json:"releaseCooldown"`
	Timeout         string          `json:"timeout"`
	LogFile         string          `json:"logFile"`
	LogLevel        string          `json:"logLevel"`
	NodeName        string          `json:"nodeName"`
	Store           string          `json:"store"`
	Cluster         string          `json:"cluster"`
}

type rawNet struct {
	CNIVersion    string   `json:"cniVersion"`
	Name          string   `json:"name"`
	IPAM          *rawIPAM `json:"ipam"`
	RuntimeConfig struct {
		IPRanges [][]rawRange `json:"ipRanges"`
		IPs      []string     `json:"ips"`
	} `json:"runtimeConfig"`
	Args struct {
		CNI struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args"`
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments"`
	RawPrevResult    map[string]any       `json:"prevResult"`
}

// Parse validates stdin bytes into a Network. Every error is a *Error naming
// the offending key and value.
func Parse(data []byte) (*Network, error) {
	var raw rawNet
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, errorf("network config is not valid JSON: %v", err)
	}
	if raw.IPAM == nil {
		return nil, errorf("IPAM config missing 'ipam' key")
	}
	ip := raw.IPAM
	n := &Network{
		CNIVersion:         raw.CNIVersion,
		Name:               raw.Name,
		Routes:             ip.Routes,
		ResolvConf:         ip.ResolvConf,
		KubeConfig:         ip.KubeConfig,
		PodLookup:          ip.PodLookup == nil || *ip.PodLookup,
		StickyStatefulSets: ip.Sticky == nil || *ip.Sticky,
		LogFile:            ip.LogFile,
		LogLevel:           strings.ToLower(ip.LogLevel),
		NodeName:           ip.NodeName,
		RawPrevResult:      raw.RawPrevResult,
	}
	if n.Name == "" {
		n.Name = ip.Name
	}
	if n.Name == "" {
		return nil, errorf("network config needs a 'name' (it keys the address pool)")
	}
	if strings.ContainsAny(n.Name, "/\x00") || strings.TrimSpace(n.Name) != n.Name {
		return nil, errorf("network name %q must not contain '/' or surrounding spaces", n.Name)
	}
	if ip.Name != "" && raw.Name != "" && ip.Name != raw.Name {
		n.Notes = append(n.Notes, fmt.Sprintf("ipam.name %q is ignored: the network name %q keys the pool (as in kube-ipam v0.2)", ip.Name, raw.Name))
	}
	switch n.Store = strings.ToLower(ip.Store); n.Store {
	case "", StoreEtcd:
		n.Store = StoreEtcd
		if err := parseEtcd(n, ip.EtcdConfig); err != nil {
			return nil, err
		}
	case StoreKubernetes:
		if ip.EtcdConfig != nil {
			n.Notes = append(n.Notes, "ipam.etcdConfig is ignored: ipam.store is \"kubernetes\"")
		}
	default:
		return nil, errorf("ipam.store %q: want %q (the default) or %q", ip.Store, StoreEtcd, StoreKubernetes)
	}
	n.Cluster = ip.Cluster
	if len(n.Cluster) > 63 || strings.ContainsAny(n.Cluster, "/ \t\n\x00") {
		return nil, errorf("ipam.cluster %q: at most 63 characters, no '/' or spaces", ip.Cluster)
	}
	if n.KubeConfig == "" {
		n.KubeConfig = DefaultKubeConfig
	}
	if n.LogFile == "" {
		n.LogFile = DefaultLogFile
	}
	switch n.LogLevel {
	case "":
		n.LogLevel = "info"
	case "debug", "info", "warn", "error":
	default:
		return nil, errorf("ipam.logLevel %q: want debug, info, warn or error", ip.LogLevel)
	}
	var err error
	if n.ReleaseCooldown, err = duration("ipam.releaseCooldown", ip.ReleaseCooldown, DefaultReleaseCooldown); err != nil {
		return nil, err
	}
	if n.Timeout, err = duration("ipam.timeout", strPtr(ip.Timeout), DefaultTimeout); err != nil {
		return nil, err
	}
	if n.Timeout == 0 {
		return nil, errorf("ipam.timeout must be positive")
	}
	if n.NodeName == "" {
		n.NodeName = os.Getenv("KUBE_IPAM_NODE_NAME")
	}
	if n.NodeName == "" {
		n.NodeName, _ = os.Hostname()
	}

	// Order as in kube-ipam v0.2 / host-local: runtime ipRanges, then the legacy
	// single subnet, then "ranges".
	var sets [][]rawRange
	sets = append(sets, raw.RuntimeConfig.IPRanges...)
	if ip.Subnet != "" {
		sets = append(sets, []rawRange{{Subnet: ip.Subnet, RangeStart: ip.RangeStart, RangeEnd: ip.RangeEnd, Gateway: ip.Gateway}})
	} else if ip.RangeStart != "" || ip.RangeEnd != "" || ip.Gateway != "" {
		return nil, errorf("ipam.rangeStart/rangeEnd/gateway need ipam.subnet")
	}
	sets = append(sets, ip.Ranges...)
	if len(sets) == 0 {
		return nil, errorf("ipam needs 'subnet' or 'ranges'")
	}
	for i, rs := range sets {
		set, err := parseSet(i, rs)
		if err != nil {
			return nil, err
		}
		n.RangeSets = append(n.RangeSets, set)
	}
	if err := checkOverlap(n.RangeSets); err != nil {
		return nil, err
	}
	if err := checkLegacyVersion(n); err != nil {
		return nil, err
	}
	if err := parseFixed(n, ip.FixedStart, ip.FixedEnd); err != nil {
		return nil, err
	}
	if err := parseExclude(n, ip.Exclude); err != nil {
		return nil, err
	}
	for i, r := range n.Routes {
		if r == nil || r.Dst.IP == nil {
			return nil, errorf("ipam.routes[%d] needs a 'dst' CIDR", i)
		}
		if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			n.Warnings = append(n.Warnings, "ipam.routes has a default route: on a secondary network it competes with the cluster network's default route")
		}
	}
	for _, s := range append(append([]string{}, raw.RuntimeConfig.IPs...), raw.Args.CNI.IPs...) {
		p, err := ParseIPOrCIDR(s)
		if err != nil {
			return nil, errorf("requested IP %q (runtimeConfig.ips / args.cni.ips): %v", s, err)
		}
		n.RequestedIPs = append(n.RequestedIPs, p)
	}
	n.ValidAttachments = raw.ValidAttachments
	return n, nil
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func duration(key string, s *string, def time.Duration) (time.Duration, error) {
	if s == nil {
		return def, nil
	}
	d, err := time.ParseDuration(*s)
	if err != nil || d < 0 {
		return 0, errorf("%s %q: want a non-negative duration such as \"30s\"", key, *s)
	}
	return d, nil
}

func parseEtcd(n *Network, e *rawEtcd) error {
	if e == nil {
		return errorf("ipam.etcdConfig is required (etcdURL and, for https, etcdCertFile/etcdKeyFile/etcdTrustedCAFileFile)")
	}
	for _, u := range strings.Split(e.EtcdURL, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			continue
		}
		lu := strings.ToLower(u)
		if !strings.HasPrefix(lu, "http://") && !strings.HasPrefix(lu, "https://") {
			return errorf("ipam.etcdConfig.etcdURL entry %q: want http://host:port or https://host:port", u)
		}
		n.Etcd.Endpoints = append(n.Etcd.Endpoints, u)
	}
	if len(n.Etcd.Endpoints) == 0 {
		return errorf("ipam.etcdConfig.etcdURL is empty: give a comma-separated list of etcd endpoints")
	}
	n.Etcd.CertFile, n.Etcd.KeyFile = e.EtcdCertFile, e.EtcdKeyFile
	n.Etcd.CAFile = e.EtcdTrustedCAFileFile
	if n.Etcd.CAFile == "" {
		n.Etcd.CAFile = e.EtcdTrustedCAFile
	} else if e.EtcdTrustedCAFile != "" && e.EtcdTrustedCAFile != e.EtcdTrustedCAFileFile {
		return errorf("ipam.etcdConfig: etcdTrustedCAFileFile %q and etcdTrustedCAFile %q disagree", e.EtcdTrustedCAFileFile, e.EtcdTrustedCAFile)
	}
	if (n.Etcd.CertFile == "") != (n.Etcd.KeyFile == "") {
		return errorf("ipam.etcdConfig: etcdCertFile and etcdKeyFile must be given together")
	}
	n.Etcd.Prefix = strings.TrimRight(e.EtcdPrefix, "/")
	if e.EtcdPrefix == "" {
		n.Etcd.Prefix = DefaultEtcdPrefix
	} else if !strings.HasPrefix(e.EtcdPrefix, "/") {
		return errorf("ipam.etcdConfig.etcdPrefix %q must start with '/'", e.EtcdPrefix)
	}
	if e.KubeConfigMisplacement != "" {
		if n.KubeConfig == "" {
			n.KubeConfig = e.KubeConfigMisplacement
			n.Warnings = append(n.Warnings, "ipam.etcdConfig.kubeConfig belongs directly under ipam; it was used because ipam.kubeConfig is not set")
		} else {
			n.Warnings = append(n.Warnings, "ipam.etcdConfig.kubeConfig belongs directly under ipam; it is ignored because ipam.kubeConfig is set")
		}
	}
	return nil
}

func parseAddr(key, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, errorf("%s %q is not an IP address", key, s)
	}
	return a.Unmap(), nil
}

func parseSet(i int, raw []rawRange) (RangeSet, error) {
	if len(raw) == 0 {
		return nil, errorf("range set %d is empty", i)
	}
	set := make(RangeSet, 0, len(raw))
	for j, rr := range raw {
		r, err := parseRange(fmt.Sprintf("range set %d, range %d", i, j), rr)
		if err != nil {
			return nil, err
		}
		if j > 0 && r.Subnet.Addr().Is4() != set[0].Subnet.Addr().Is4() {
			return nil, errorf("range set %d mixes IPv4 and IPv6", i)
		}
		for k, o := range set {
			if r.Start.Compare(o.End) <= 0 && o.Start.Compare(r.End) <= 0 {
				return nil, errorf("range set %d: ranges %d and %d overlap", i, k, j)
			}
		}
		set = append(set, r)
	}
	return set, nil
}

func parseRange(where string, rr rawRange) (Range, error) {
	var r Range
	p, err := netip.ParsePrefix(strings.TrimSpace(rr.Subnet))
	if err != nil {
		return r, errorf("%s: subnet %q is not a CIDR", where, rr.Subnet)
	}
	if p.Masked() != p {
		return r, errorf("%s: subnet %q has host bits set (did you mean %s?)", where, rr.Subnet, p.Masked())
	}
	r.Subnet = p
	bits := p.Addr().BitLen()
	if (bits == 32 && p.Bits() > 30) || (bits == 128 && p.Bits() > 126) {
		return r, errorf("%s: subnet %s is too small to allocate from", where, p)
	}
	network := p.Addr()
	last := LastAddr(p)
	if rr.Gateway != "" {
		if r.Gateway, err = parseAddr(where+": gateway", rr.Gateway); err != nil {
			return r, err
		}
		if !p.Contains(r.Gateway) {
			return r, errorf("%s: gateway %s is outside subnet %s", where, r.Gateway, p)
		}
	} else {
		r.Gateway = network.Next()
	}
	r.Start = network.Next()
	if rr.RangeStart != "" {
		if r.Start, err = parseAddr(where+": rangeStart", rr.RangeStart); err != nil {
			return r, err
		}
	}
	r.End = last
	if bits == 32 {
		r.End = last.Prev() // broadcast
	}
	if rr.RangeEnd != "" {
		if r.End, err = parseAddr(where+": rangeEnd", rr.RangeEnd); err != nil {
			return r, err
		}
	}
	for _, a := range []struct {
		k string
		v netip.Addr
	}{{"rangeStart", r.Start}, {"rangeEnd", r.End}} {
		if !p.Contains(a.v) {
			return r, errorf("%s: %s %s is outside subnet %s", where, a.k, a.v, p)
		}
		if a.v == network || (bits == 32 && a.v == last) {
			return r, errorf("%s: %s %s is the network or broadcast address of %s", where, a.k, a.v, p)
		}
	}
	if r.Start.Compare(r.End) > 0 {
		return r, errorf("%s: rangeStart %s is after rangeEnd %s", where, r.Start, r.End)
	}
	return r, nil
}

// LastAddr is the highest address of p.
func LastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func checkOverlap(sets []RangeSet) error {
	for i := range sets {
		for j := i + 1; j < len(sets); j++ {
			for _, a := range sets[i] {
				for _, b := range sets[j] {
					if a.Subnet.Overlaps(b.Subnet) {
						return errorf("range sets %d and %d overlap (%s and %s)", i, j, a.Subnet, b.Subnet)
					}
				}
			}
		}
	}
	return nil
}

// checkLegacyVersion: results before 0.3.0 have one ip4 and one ip6 slot.
func checkLegacyVersion(n *Network) error {
	if n.CNIVersion != "" && n.CNIVersion != "0.1.0" && n.CNIVersion != "0.2.0" {
		return nil
	}
	count := map[int]int{}
	for _, s := range n.RangeSets {
		count[s.Family()]++
		if count[s.Family()] > 1 {
			return errorf("cniVersion %q can carry one IPv%d address only, but %d IPv%d range sets are configured", n.CNIVersion, s.Family(), count[s.Family()], s.Family())
		}
	}
	return nil
}

func parseFixed(n *Network, start, end string) error {
	if start == "" && end == "" {
		return nil
	}
	if start == "" || end == "" {
		return errorf("ipam.fixedStart and ipam.fixedEnd must be given together")
	}
	var err error
	if n.FixedStart, err = parseAddr("ipam.fixedStart", start); err != nil {
		return err
	}
	if n.FixedEnd, err = parseAddr("ipam.fixedEnd", end); err != nil {
		return err
	}
	_, r, ok := n.SetFor(n.FixedStart)
	if !ok || !r.Subnet.Contains(n.FixedEnd) {
		return errorf("ipam.fixedStart %s .. fixedEnd %s must lie in one configured subnet", start, end)
	}
	if n.FixedStart.Compare(n.FixedEnd) > 0 {
		return errorf("ipam.fixedStart %s is after fixedEnd %s", start, end)
	}
	return nil
}

// parseExclude reads ipam.exclude: a list of addresses ("10.1.0.7"), CIDRs
// ("10.1.0.0/28") and ranges ("10.1.0.20-10.1.0.29"), IPv4 or IPv6. An
// entry that touches no configured subnet is refused: it can only be a typo
// or a leftover of another network, and silently ignoring it would hide
// that the address the operator meant is still handed out.
func parseExclude(n *Network, raw json.RawMessage) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var entries []string
	if err := json.Unmarshal(raw, &entries); err != nil {
		return errorf("ipam.exclude: want a list of strings (addresses, CIDRs or ranges \"a-b\"), got %s", raw)
	}
	for i, e := range entries {
		x, err := parseExclusion(e)
		if err != nil {
			return errorf("ipam.exclude[%d] %q: %v", i, e, err)
		}
		if !n.touchesSubnet(x) {
			return errorf("ipam.exclude[%d] %q lies outside every subnet of network %q", i, e, n.Name)
		}
		n.Exclude = append(n.Exclude, x)
	}
	return nil
}

func parseExclusion(e string) (Exclusion, error) {
	s := strings.TrimSpace(e)
	x := Exclusion{Entry: s}
	addr := func(s string) (netip.Addr, error) {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil || a.Zone() != "" {
			return netip.Addr{}, fmt.Errorf("%q is not an IP address", strings.TrimSpace(s))
		}
		return a.Unmap(), nil
	}
	var err error
	switch {
	case s == "":
		return x, fmt.Errorf("empty entry")
	case strings.Contains(s, "-"):
		lo, hi, _ := strings.Cut(s, "-")
		if x.Lo, err = addr(lo); err != nil {
			return x, err
		}
		if x.Hi, err = addr(hi); err != nil {
			return x, err
		}
		if x.Lo.BitLen() != x.Hi.BitLen() {
			return x, fmt.Errorf("the range mixes IPv4 and IPv6")
		}
		if x.Lo.Compare(x.Hi) > 0 {
			return x, fmt.Errorf("%s is after %s", x.Lo, x.Hi)
		}
	case strings.Contains(s, "/"):
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Addr().Zone() != "" {
			return x, fmt.Errorf("not a CIDR")
		}
		if p.Addr().Is4In6() {
			return x, fmt.Errorf("write an IPv4 block as IPv4 CIDR")
		}
		if p.Masked() != p {
			return x, fmt.Errorf("host bits set (did you mean %s?)", p.Masked())
		}
		x.Lo, x.Hi = p.Addr(), LastAddr(p)
	default:
		if x.Lo, err = addr(s); err != nil {
			return x, fmt.Errorf("not an address, CIDR or range \"a-b\"")
		}
		x.Hi = x.Lo
	}
	return x, nil
}

// touchesSubnet reports whether x shares an address with a configured subnet.
func (n *Network) touchesSubnet(x Exclusion) bool {
	for _, set := range n.RangeSets {
		for _, r := range set {
			lo, hi := r.Subnet.Addr(), LastAddr(r.Subnet)
			if lo.BitLen() == x.Lo.BitLen() && x.Lo.Compare(hi) <= 0 && lo.Compare(x.Hi) <= 0 {
				return true
			}
		}
	}
	return false
}

// IPSpec is a requested address, with the prefix length the user wrote
// (Bits < 0 when only the address was given).
type IPSpec struct {
	Addr netip.Addr
	Bits int
}

// ParseIPOrCIDR accepts "10.0.0.5", "10.0.0.5/16", "fd00::5" or "fd00::5/64".
func ParseIPOrCIDR(s string) (IPSpec, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return IPSpec{}, fmt.Errorf("empty address")
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Addr().Zone() != "" {
			return IPSpec{}, fmt.Errorf("not an IP address or CIDR")
		}
		a := p.Addr().Unmap()
		bits := p.Bits()
		if p.Addr().Is4In6() {
			if bits < 96 {
				return IPSpec{}, fmt.Errorf("prefix /%d of an IPv4-mapped address is shorter than /96", bits)
			}
			bits -= 96
		}
		return IPSpec{Addr: a, Bits: bits}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return IPSpec{}, fmt.Errorf("not an IP address")
	}
	return IPSpec{Addr: a.Unmap(), Bits: -1}, nil
}

// MergeRequests joins the addresses a runtime asks for through several CNI
// conventions at once (multus sends an annotation's "ips" both as CNI_ARGS
// IP= and as runtimeConfig.ips): the same address twice is one request,
// keeping the prefix length whichever gave one; the same address with two
// different prefix lengths is an error.
func MergeRequests(specs []IPSpec) ([]IPSpec, error) {
	var out []IPSpec
	at := map[netip.Addr]int{}
	for _, s := range specs {
		i, ok := at[s.Addr]
		if !ok {
			at[s.Addr] = len(out)
			out = append(out, s)
			continue
		}
		switch prev := out[i]; {
		case s.Bits == -1 || s.Bits == prev.Bits:
		case prev.Bits == -1:
			out[i] = s
		default:
			return nil, fmt.Errorf("%s is asked for as /%d and as /%d", s.Addr, prev.Bits, s.Bits)
		}
	}
	return out, nil
}

// HostFile is one file of the node that a call of the network reads or
// writes, named by its key in the config.
type HostFile struct {
	Key  string
	Path *string
	// Written: the call creates the file if needed (its directory must
	// exist), rather than reading it.
	Written bool
}

// HostFiles lists the node's files that calls of n use. A process that
// sees the node's filesystem under another root (the node agent in its
// container) rewrites them through these pointers. Only the files a call
// really opens are listed: the kubeconfig with pod lookups or the
// Kubernetes store, the etcd TLS files with the etcd store.
func (n *Network) HostFiles() []HostFile {
	files := []HostFile{{"ipam.logFile", &n.LogFile, true}}
	if n.ResolvConf != "" {
		files = append(files, HostFile{"ipam.resolvConf", &n.ResolvConf, false})
	}
	if n.PodLookup || n.Store == StoreKubernetes {
		files = append(files, HostFile{"ipam.kubeConfig", &n.KubeConfig, false})
	}
	if n.Store != StoreKubernetes {
		for _, f := range []HostFile{
			{"ipam.etcdConfig.etcdCertFile", &n.Etcd.CertFile, false},
			{"ipam.etcdConfig.etcdKeyFile", &n.Etcd.KeyFile, false},
			{"ipam.etcdConfig.etcdTrustedCAFileFile", &n.Etcd.CAFile, false},
		} {
			if *f.Path != "" {
				files = append(files, f)
			}
		}
	}
	return files
}
