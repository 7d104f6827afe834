package kubestore

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"kubeipam/internal/store"
)

// The API group and kinds (crds/ has their definitions).
const (
	Group       = "ipam.kube-ipam.io"
	Version     = "v1alpha1"
	apiPath     = "/apis/" + Group + "/" + Version
	allocations = "ipallocations"
	stickies    = "ipstickies"
)

// Labels of the objects, for selection (every value is also in the spec,
// which is the truth; a label value too long or with characters a label
// cannot hold is shortened, see labelValue).
const (
	LabelNetwork   = Group + "/network"   // network id (NetworkID)
	LabelState     = Group + "/state"     // held or released
	LabelContainer = Group + "/container" // holder's container ID
	LabelIfName    = Group + "/ifname"    // holder's interface
	LabelPodUID    = Group + "/pod-uid"   // holder's pod UID, when it has one
	LabelNode      = Group + "/node"      // holder's node
	LabelRangeSet  = Group + "/range-set" // range set of the address
	LabelCluster   = Group + "/cluster"   // holder's cluster identity, when set
	// LabelReleasedAt is on released addresses in the release log only:
	// the release time in Unix nanoseconds, so that the release log is read
	// from object metadata alone.
	LabelReleasedAt = Group + "/released-at"
	// IPSticky labels.
	LabelStatefulSetUID = Group + "/statefulset-uid"
	LabelOrdinal        = Group + "/ordinal"
)

// Address states.
const (
	StateHeld     = "held"
	StateReleased = "released"
)

// objectMeta is the part of ObjectMeta the store reads and writes.
type objectMeta struct {
	Name            string            `json:"name"`
	ResourceVersion string            `json:"resourceVersion,omitempty"`
	UID             string            `json:"uid,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
}

// ipAllocation is one address of one network: held by an attachment, or
// released (a tombstone). Its name is <hex address>.<network id>.
type ipAllocation struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Metadata   objectMeta     `json:"metadata"`
	Spec       allocationSpec `json:"spec"`
}

type allocationSpec struct {
	// Network is the network's real name (the object name and labels carry
	// its DNS-safe id).
	Network string `json:"network"`
	Address string `json:"address"`
	State   string `json:"state"`
	// Kind is the record's kind (dynamic, fixed, sticky); for a released
	// address, the kind it had.
	Kind string `json:"kind"`
	// RangeSet is the range set of the address.
	RangeSet int           `json:"rangeSet"`
	Held     *heldSpec     `json:"held,omitempty"`
	Released *releasedSpec `json:"released,omitempty"`
}

// heldSpec is store.Record's holder fields and the attachment-level fields
// the etcd store keeps in att/ and note/ keys.
type heldSpec struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
	// Pod is namespace/name, for kubectl's columns only.
	Pod            string    `json:"pod,omitempty"`
	PodNamespace   string    `json:"podNamespace,omitempty"`
	PodName        string    `json:"podName,omitempty"`
	PodUID         string    `json:"podUID,omitempty"`
	StatefulSet    string    `json:"statefulSet,omitempty"`
	StatefulSetUID string    `json:"statefulSetUID,omitempty"`
	Ordinal        int       `json:"ordinal,omitempty"`
	Node           string    `json:"node,omitempty"`
	Cluster        string    `json:"cluster,omitempty"`
	Created        time.Time `json:"created"`
	AddMillis      int64     `json:"addMillis,omitempty"`
	LostRaces      int       `json:"lostRaces,omitempty"`
	// ClaimIPs are all the addresses of the claim that wrote this object
	// (one per range set): an attachment missing one of them was cut short.
	ClaimIPs          []string  `json:"claimIPs"`
	AttachmentCreated time.Time `json:"attachmentCreated"`
	Note              string    `json:"note,omitempty"`
}

type releasedSpec struct {
	At time.Time `json:"at"`
	// Reusable: in the release log, given again dynamically after the
	// cooldown; false for fixed and sticky addresses inside a dynamic range.
	Reusable bool `json:"reusable,omitempty"`
}

// ipSticky remembers the addresses of one StatefulSet ordinal and interface.
type ipSticky struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       stickySpec `json:"spec"`
}

type stickySpec struct {
	Network        string    `json:"network"`
	Namespace      string    `json:"namespace"`
	StatefulSet    string    `json:"statefulSet"`
	StatefulSetUID string    `json:"statefulSetUID"`
	Ordinal        int       `json:"ordinal"`
	IfName         string    `json:"ifname"`
	Addresses      []string  `json:"addresses"`
	Cluster        string    `json:"cluster,omitempty"`
	Created        time.Time `json:"created"`
}

// objectList is a LIST answer (full objects or PartialObjectMetadata).
type objectList[T any] struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
		Continue        string `json:"continue"`
	} `json:"metadata"`
	Items []T `json:"items"`
}

// partial is one PartialObjectMetadata item.
type partial struct {
	Metadata objectMeta `json:"metadata"`
}

// NetworkID is the DNS-label-safe form of a network name used in object
// names and labels: lower-case letters, digits and '-', at most 63
// characters. A name that already is one is its own id; otherwise every
// other character becomes '-' and a hash of the real name is appended, so
// that "Net_1" and "net-1" do not share objects. (A network literally named
// like another's mapped id plus that hash would collide; the store notices,
// since every object also names its network in full, and refuses.)
func NetworkID(name string) string {
	if isLabel(name) {
		return name
	}
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	sum := sha256.Sum256([]byte(name))
	id := b.String()
	if len(id) > 54 {
		id = id[:54]
	}
	id = strings.Trim(id, "-")
	if id == "" {
		id = "net"
	}
	return id + "-" + hex.EncodeToString(sum[:4])
}

// isLabel: a DNS label (RFC 1123): [a-z0-9-], at most 63, alphanumeric at
// both ends.
func isLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// labelValue is s as a label value: itself when it is a valid one; cut to
// 63 characters when only too long (a 64-character container ID); else a
// hash. Lookups by label always check the full value in the spec.
func labelValue(s string) string {
	if validLabelValue(s) {
		return s
	}
	if len(s) > 63 {
		if t := strings.TrimRight(s[:63], "-_."); validLabelValue(t) {
			return t
		}
	}
	sum := sha256.Sum256([]byte(s))
	return "sha256-" + hex.EncodeToString(sum[:16])
}

func validLabelValue(s string) bool {
	if s == "" {
		return true
	}
	if len(s) > 63 || !alnum(s[0]) || !alnum(s[len(s)-1]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

func alnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }

// allocName is the object name of address a: fixed-width hex, then the
// network id.
func (s *Store) allocName(a netip.Addr) string {
	return hex.EncodeToString(a.AsSlice()) + "." + s.netID
}

// addrOfName reads the address out of an IPAllocation name of this
// network; canonical reports the exact form the store writes (an IPv4
// address as 8 hex digits, not IPv4-mapped in 32).
func (s *Store) addrOfName(name string) (a netip.Addr, canonical, ok bool) {
	h, ok := strings.CutSuffix(name, "."+s.netID)
	if !ok || (len(h) != 8 && len(h) != 32) {
		return netip.Addr{}, false, false
	}
	b, err := hex.DecodeString(h)
	if err != nil {
		return netip.Addr{}, false, false
	}
	a, ok = netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}, false, false
	}
	return a.Unmap(), a.Is4() || !a.Is4In6(), true
}

// stickyName is the IPSticky name of a StatefulSet ordinal's interface.
func (s *Store) stickyName(ns, uid string, ordinal int, ifname string) string {
	sum := sha256.Sum256([]byte(strings.Join([]string{s.network, ns, uid, strconv.Itoa(ordinal), ifname}, "\x00")))
	return hex.EncodeToString(sum[:16]) + "." + s.netID
}

// logKey is the release-log key of a released address: Tombstone.Log and
// ReleasedRef.Key, the same string for one release.
func logKey(name string, at time.Time) string {
	return name + "@" + strconv.FormatInt(at.UnixNano(), 10)
}

// heldObject is the IPAllocation holding rec for a claim of claimIPs.
func (s *Store) heldObject(rec *store.Record, claimIPs []string, attCreated time.Time, note string) *ipAllocation {
	a := netip.MustParseAddr(rec.IP)
	if claimIPs == nil {
		claimIPs = []string{}
	}
	h := &heldSpec{
		ContainerID: rec.ContainerID, IfName: rec.IfName,
		PodNamespace: rec.PodNamespace, PodName: rec.PodName, PodUID: rec.PodUID,
		StatefulSet: rec.StatefulSet, StatefulSetUID: rec.StatefulSetUID, Ordinal: rec.Ordinal,
		Node: rec.Node, Cluster: rec.Cluster, Created: rec.Created.UTC(),
		AddMillis: rec.AddMillis, LostRaces: rec.LostRaces,
		ClaimIPs: claimIPs, AttachmentCreated: attCreated.UTC(), Note: note,
	}
	if rec.PodName != "" {
		h.Pod = rec.PodNamespace + "/" + rec.PodName
	}
	o := &ipAllocation{
		APIVersion: Group + "/" + Version, Kind: "IPAllocation",
		Metadata: objectMeta{Name: s.allocName(a)},
		Spec:     allocationSpec{Network: s.network, Address: a.String(), State: StateHeld, Kind: rec.Kind, RangeSet: rec.Set, Held: h},
	}
	o.Metadata.Labels = s.labels(&o.Spec)
	return o
}

// releasedObject is the tombstone of address a (kind it had, range set).
func (s *Store) releasedObject(a netip.Addr, kind string, set int, at time.Time, reusable bool) *ipAllocation {
	o := &ipAllocation{
		APIVersion: Group + "/" + Version, Kind: "IPAllocation",
		Metadata: objectMeta{Name: s.allocName(a)},
		Spec: allocationSpec{Network: s.network, Address: a.String(), State: StateReleased, Kind: kind, RangeSet: set,
			Released: &releasedSpec{At: at.UTC(), Reusable: reusable}},
	}
	o.Metadata.Labels = s.labels(&o.Spec)
	return o
}

// labels are the labels an IPAllocation with spec sp must carry.
func (s *Store) labels(sp *allocationSpec) map[string]string {
	l := map[string]string{LabelNetwork: s.netID, LabelState: sp.State, LabelRangeSet: strconv.Itoa(sp.RangeSet)}
	if h := sp.Held; h != nil {
		l[LabelContainer] = labelValue(h.ContainerID)
		l[LabelIfName] = labelValue(h.IfName)
		for k, v := range map[string]string{LabelPodUID: h.PodUID, LabelNode: h.Node, LabelCluster: h.Cluster} {
			if v != "" {
				l[k] = labelValue(v)
			}
		}
	}
	if r := sp.Released; r != nil && r.Reusable {
		l[LabelReleasedAt] = strconv.FormatInt(r.At.UnixNano(), 10)
	}
	return l
}

// stickyObject is the IPSticky of st.
func (s *Store) stickyObject(st *store.Sticky) *ipSticky {
	o := &ipSticky{
		APIVersion: Group + "/" + Version, Kind: "IPSticky",
		Metadata: objectMeta{Name: s.stickyName(st.Namespace, st.StatefulSetUID, st.Ordinal, st.IfName)},
		Spec: stickySpec{Network: s.network, Namespace: st.Namespace, StatefulSet: st.StatefulSet, StatefulSetUID: st.StatefulSetUID,
			Ordinal: st.Ordinal, IfName: st.IfName, Addresses: st.IPs, Cluster: st.Cluster, Created: st.Created.UTC()},
	}
	o.Metadata.Labels = map[string]string{LabelNetwork: s.netID, LabelStatefulSetUID: labelValue(st.StatefulSetUID), LabelOrdinal: strconv.Itoa(st.Ordinal)}
	if st.Cluster != "" {
		o.Metadata.Labels[LabelCluster] = labelValue(st.Cluster)
	}
	if o.Spec.Addresses == nil {
		o.Spec.Addresses = []string{}
	}
	return o
}

// parsed is one IPAllocation of this network as the store understands it.
type parsed struct {
	obj  *ipAllocation
	addr netip.Addr
	rv   store.Version
	rec  *store.Record    // held
	tomb *store.Tombstone // released
}

func (p *parsed) held() *heldSpec { return p.obj.Spec.Held }

// parse checks an IPAllocation of this network. err: it cannot be used
// (wrong name, network or address, an impossible state); labelProblem: it
// can, but its labels do not match its spec, so lookups by label miss it.
func (s *Store) parse(o *ipAllocation) (p *parsed, labelProblem string, err error) {
	sp := &o.Spec
	a, canon, ok := s.addrOfName(o.Metadata.Name)
	switch {
	case !ok:
		return nil, "", fmt.Errorf("name is not <hex address>.%s", s.netID)
	case !canon:
		return nil, "", fmt.Errorf("name is not in the store's canonical form (IPv4 as 8 hex digits)")
	case sp.Network != s.network:
		return nil, "", fmt.Errorf("spec.network is %q, not %q (network id collision?)", sp.Network, s.network)
	}
	if sa, err := netip.ParseAddr(sp.Address); err != nil || sa.Unmap() != a {
		return nil, "", fmt.Errorf("spec.address %q is not the address of its name, %s", sp.Address, a)
	}
	p = &parsed{obj: o, addr: a, rv: store.Version(o.Metadata.ResourceVersion)}
	switch {
	case sp.State == StateHeld && sp.Held != nil && sp.Released == nil:
		h := sp.Held
		if h.ContainerID == "" || h.IfName == "" {
			return nil, "", fmt.Errorf("held without a container ID or interface")
		}
		p.rec = &store.Record{
			Network: sp.Network, IP: a.String(), Kind: sp.Kind, Set: sp.RangeSet, IfName: h.IfName, ContainerID: h.ContainerID,
			PodNamespace: h.PodNamespace, PodName: h.PodName, PodUID: h.PodUID,
			StatefulSet: h.StatefulSet, StatefulSetUID: h.StatefulSetUID, Ordinal: h.Ordinal,
			Node: h.Node, Cluster: h.Cluster, Created: h.Created, AddMillis: h.AddMillis, LostRaces: h.LostRaces,
		}
	case sp.State == StateReleased && sp.Released != nil && sp.Held == nil:
		p.tomb = &store.Tombstone{Released: sp.Released.At, Kind: sp.Kind}
		if sp.Released.Reusable {
			p.tomb.Log = logKey(o.Metadata.Name, sp.Released.At)
		}
	default:
		return nil, "", fmt.Errorf("state %q with held %v and released %v: not one of held (with spec.held) or released (with spec.released)", sp.State, sp.Held != nil, sp.Released != nil)
	}
	want := s.labels(sp)
	var bad []string
	for k, v := range want {
		if got, ok := o.Metadata.Labels[k]; !ok || got != v {
			bad = append(bad, fmt.Sprintf("%s=%q (want %q)", k, got, v))
		}
	}
	for _, k := range []string{LabelContainer, LabelIfName, LabelPodUID, LabelNode, LabelCluster, LabelReleasedAt} {
		if v, extra := o.Metadata.Labels[k]; extra {
			if _, w := want[k]; !w {
				bad = append(bad, fmt.Sprintf("%s=%q (want none)", k, v))
			}
		}
	}
	if len(bad) > 0 {
		slices.Sort(bad)
		labelProblem = "labels do not match the spec, so lookups by label miss it: " + strings.Join(bad, ", ")
	}
	return p, labelProblem, nil
}

// parseSticky checks an IPSticky of this network.
func (s *Store) parseSticky(o *ipSticky) (*store.StickyEntry, error) {
	sp := &o.Spec
	if sp.Network != s.network {
		return nil, fmt.Errorf("spec.network is %q, not %q", sp.Network, s.network)
	}
	if want := s.stickyName(sp.Namespace, sp.StatefulSetUID, sp.Ordinal, sp.IfName); o.Metadata.Name != want {
		return nil, fmt.Errorf("name is not the one its spec gives (%s): the plugin never reads it", want)
	}
	for _, ip := range sp.Addresses {
		if _, err := netip.ParseAddr(ip); err != nil {
			return nil, fmt.Errorf("spec.addresses lists %q, not an address", ip)
		}
	}
	return &store.StickyEntry{Key: o.Metadata.Name, Rev: store.Version(o.Metadata.ResourceVersion), Sticky: store.Sticky{
		Namespace: sp.Namespace, StatefulSet: sp.StatefulSet, StatefulSetUID: sp.StatefulSetUID, Ordinal: sp.Ordinal,
		IfName: sp.IfName, IPs: sp.Addresses, Cluster: sp.Cluster, Created: sp.Created,
	}}, nil
}
