package cli

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/kubernetes"

	"kubeipam/internal/config"
	"kubeipam/internal/ipam"
	"kubeipam/internal/store"
)

// Network is one configured kube-ipam network and its store.
type Network struct {
	Cfg   *config.Network
	Store *store.Store
	// Prefix is Cfg.Etcd.Prefix.
	Prefix string
	// Kube is the Kubernetes API client of check, release and gc; nil when
	// the API is not configured or usable, and KubeNote says why.
	Kube     kubernetes.Interface
	KubeNote string
	// KubeConfig is the kubeconfig path in effect for this network
	// (--kubeconfig, else ipam.kubeConfig).
	KubeConfig string
}

// NewNetwork ties a parsed config to an etcd client.
func NewNetwork(cfg *config.Network, cli *clientv3.Client) *Network {
	return &Network{Cfg: cfg, Store: store.New(cli, cfg.Etcd.Prefix, cfg.Name), Prefix: cfg.Etcd.Prefix}
}

func (n *Network) base() string {
	return strings.TrimRight(n.Prefix, "/") + "/v1/networks/" + n.Cfg.Name + "/"
}

// recEntry is an allocation record and the key it was read from.
type recEntry struct {
	Key string
	IP  netip.Addr
	Rec *store.Record
}

type attEntry struct {
	Key string
	Att *store.Attachment
}

type relEntry struct {
	Key string
	Set int
	At  time.Time
	IP  netip.Addr
}

// problem is an inconsistency found while reading or checking.
type problem struct {
	Kind    string
	Network string
	IP      string
	Key     string
	Detail  string
}

// Problem kinds reported by check.
const (
	ProblemStale      = "stale-attachment"
	ProblemOrphan     = "orphan"
	ProblemOutOfRange = "out-of-range"
	ProblemLeaked     = "leaked"
	ProblemCorrupt    = "corrupt"
	ProblemDuplicate  = "duplicate"
)

// snapshot is everything stored for one network, read in one range read.
type snapshot struct {
	net     *Network
	records []recEntry // by address
	byIP    map[netip.Addr]recEntry
	tombs   map[netip.Addr]*store.Tombstone
	rel     []relEntry
	atts    []attEntry // by key
	sticky  int
	corrupt []problem
}

// read loads the network's whole key space. Keys that do not parse are
// kept as corrupt problems; they never stop the read.
func read(ctx context.Context, n *Network) (*snapshot, error) {
	base := n.base()
	resp, err := n.Store.Client().Get(ctx, base, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("network %s: reading etcd: %w", n.Cfg.Name, err)
	}
	s := &snapshot{net: n, byIP: map[netip.Addr]recEntry{}, tombs: map[netip.Addr]*store.Tombstone{}}
	bad := func(k, ip, format string, a ...any) {
		s.corrupt = append(s.corrupt, problem{Kind: ProblemCorrupt, Network: n.Cfg.Name, IP: ip, Key: k, Detail: fmt.Sprintf(format, a...)})
	}
	keysOf := map[netip.Addr][]string{}
	var podIndex [][4]string // key, pod UID, ifname, container ID
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		rel := strings.TrimPrefix(k, base)
		parts := strings.Split(rel, "/")
		switch parts[0] {
		case "ip":
			if len(parts) < 3 || len(parts) > 4 || (len(parts) == 4 && parts[3] != "r") {
				bad(k, "", "unexpected key under ip/")
				continue
			}
			a, canon, ok := parseAddrKey(parts[1], parts[2])
			if !ok {
				bad(k, "", "address part %q is not a hex address of family IPv%s", parts[2], parts[1])
				continue
			}
			if len(parts) == 4 {
				if !canon {
					bad(k, a.String(), "tombstone key is not in the store's canonical form")
					continue
				}
				var t store.Tombstone
				if err := json.Unmarshal(kv.Value, &t); err != nil {
					bad(k, a.String(), "tombstone is not valid JSON: %v", err)
					continue
				}
				s.tombs[a] = &t
				continue
			}
			var r store.Record
			if err := json.Unmarshal(kv.Value, &r); err != nil {
				bad(k, a.String(), "allocation record is not valid JSON: %v", err)
				continue
			}
			if ra, err := netip.ParseAddr(r.IP); err != nil || ra.Unmap() != a {
				bad(k, a.String(), "record says ip %q but its key is for %s", r.IP, a)
				continue
			}
			keysOf[a] = append(keysOf[a], k)
			if !canon {
				continue // the plugin never reads it: reported below
			}
			e := recEntry{Key: k, IP: a, Rec: &r}
			s.records = append(s.records, e)
			s.byIP[a] = e
		case "rel":
			if len(parts) != 5 {
				bad(k, "", "unexpected key under rel/")
				continue
			}
			set, err1 := strconv.Atoi(parts[1])
			nanos, err2 := strconv.ParseUint(parts[2], 16, 64)
			a, _, ok := parseAddrKey(parts[3], parts[4])
			if err1 != nil || err2 != nil || !ok {
				bad(k, "", "release-log key does not parse")
				continue
			}
			s.rel = append(s.rel, relEntry{Key: k, Set: set, At: time.Unix(0, int64(nanos)), IP: a})
		case "att":
			if len(parts) != 3 {
				bad(k, "", "unexpected key under att/")
				continue
			}
			var a store.Attachment
			if err := json.Unmarshal(kv.Value, &a); err != nil {
				bad(k, "", "attachment is not valid JSON: %v", err)
				continue
			}
			if a.ContainerID != parts[1] || a.IfName != parts[2] {
				bad(k, "", "attachment names container %s interface %s but its key says %s/%s", store.ShortID(a.ContainerID), a.IfName, store.ShortID(parts[1]), parts[2])
				continue
			}
			a.Rev = kv.ModRevision
			s.atts = append(s.atts, attEntry{Key: k, Att: &a})
		case "sticky":
			var st store.Sticky
			if len(parts) != 5 {
				bad(k, "", "unexpected key under sticky/")
			} else if err := json.Unmarshal(kv.Value, &st); err != nil {
				bad(k, "", "sticky record is not valid JSON: %v", err)
			} else {
				s.sticky++
			}
		case "cursor":
			if _, err := netip.ParseAddr(string(kv.Value)); len(parts) != 2 || err != nil {
				bad(k, "", "cursor hint %q is not an address", kv.Value)
			}
		case "pod":
			// The pod index: pod/<podUID>/<ifname>/<containerID>, one entry
			// per attachment of a pod, written and deleted with it.
			if len(parts) != 4 || parts[1] == "" || parts[2] == "" || parts[3] == "" {
				bad(k, "", "unexpected key under pod/")
				continue
			}
			podIndex = append(podIndex, [4]string{k, parts[1], parts[2], parts[3]})
		case "note":
			// A reservation's note, written by kube-ipamctl reserve.
			if len(parts) != 2 {
				bad(k, "", "unknown key")
			}
		default:
			bad(k, "", "unknown key")
		}
	}
	if len(podIndex) > 0 {
		atts := map[string]*store.Attachment{}
		for _, e := range s.atts {
			atts[e.Att.ContainerID+"/"+e.Att.IfName] = e.Att
		}
		for _, e := range podIndex {
			if a := atts[e[3]+"/"+e[2]]; a == nil || a.PodUID != e[1] {
				bad(e[0], "", "pod index entry without its attachment %satt/%s/%s of pod UID %s (the allocator ignores it; delete the key)", base, e[3], e[2], e[1])
			}
		}
	}
	for a, keys := range keysOf {
		canonical := s.byIP[a].Key != ""
		var odd []string
		for _, k := range keys {
			if k != s.byIP[a].Key {
				odd = append(odd, k)
			}
		}
		sort.Strings(odd)
		for _, k := range odd {
			if canonical {
				s.corrupt = append(s.corrupt, problem{Kind: ProblemDuplicate, Network: n.Cfg.Name, IP: a.String(), Key: k,
					Detail: "second allocation record for the address under a non-canonical key (the plugin reads " + s.byIP[a].Key + ")"})
			} else {
				s.corrupt = append(s.corrupt, problem{Kind: ProblemCorrupt, Network: n.Cfg.Name, IP: a.String(), Key: k,
					Detail: "allocation record under a non-canonical key: the plugin never sees it, so the address looks free"})
			}
		}
	}
	sort.Slice(s.records, func(i, j int) bool { return s.records[i].IP.Less(s.records[j].IP) })
	return s, nil
}

// parseAddrKey reads <4|6>/<hex>. canonical reports the exact form the store
// writes (lower-case, fixed width, matching family); other spellings of an
// address (upper-case hex, IPv4-mapped IPv6) still decode, so that check can
// tell a duplicate from garbage.
func parseAddrKey(fam, h string) (a netip.Addr, canonical, ok bool) {
	b, err := hex.DecodeString(h)
	if err != nil || (fam != "4" && fam != "6") {
		return netip.Addr{}, false, false
	}
	a, ok = netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}, false, false
	}
	canonical = hex.EncodeToString(b) == h && (fam == "4") == a.Is4()
	return a.Unmap(), canonical, true
}

// stats is one row of `networks`.
type stats struct {
	Pool, Used, Free, Blocked, Fixed, Sticky, Cooling int64
}

func (s *snapshot) stats(now time.Time) stats {
	cfg := s.net.Cfg
	var st stats
	var dyn [][]ipam.Interval
	for i := range cfg.RangeSets {
		d := ipam.DynamicIntervals(cfg, i)
		dyn = append(dyn, d)
		st.Pool += satInt64(ipam.Size(d).String())
	}
	inPool := func(a netip.Addr) bool {
		set, _, ok := cfg.SetFor(a)
		return ok && ipam.InAny(dyn[set], a)
	}
	for _, e := range s.records {
		if e.Rec.Kind == store.KindFixed {
			st.Fixed++
		}
		if inPool(e.IP) {
			st.Used++
		}
	}
	for a, t := range s.tombs {
		if _, held := s.byIP[a]; !held && t.Log == "" && inPool(a) {
			st.Blocked++ // released fixed address inside the pool: never reused dynamically
		}
	}
	cutoff := now.Add(-cfg.ReleaseCooldown)
	for _, r := range s.rel {
		t := s.tombs[r.IP]
		if _, held := s.byIP[r.IP]; held || t == nil || t.Log != r.Key {
			continue // stale log entry: the allocator drops it
		}
		if r.At.After(cutoff) && inPool(r.IP) {
			st.Cooling++
		}
	}
	st.Sticky = int64(s.sticky)
	st.Free = max(st.Pool-st.Used-st.Cooling-st.Blocked, 0)
	return st
}

// satInt64 parses a decimal count, saturating at MaxInt64 (an IPv6 /64 pool
// has more addresses than an int64 counts).
func satInt64(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 1<<63 - 1
	}
	return n
}
