package cli

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"k8s.io/client-go/kubernetes"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
)

// Network is one configured kube-ipam network and its store.
type Network struct {
	Cfg   *config.Network
	Store store.Backend
	// Kube is the Kubernetes API client of check, release and gc; nil when
	// the API is not configured or usable, and KubeNote says why.
	Kube     kubernetes.Interface
	KubeNote string
	// KubeConfig is the kubeconfig path in effect for this network
	// (--kubeconfig, else ipam.kubeConfig).
	KubeConfig string
}

// NewNetwork ties a parsed config to its store.
func NewNetwork(cfg *config.Network, b store.Backend) *Network {
	return &Network{Cfg: cfg, Store: b}
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
	ProblemExcluded   = "excluded"
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
	full    *store.Snapshot
}

// read loads the network's whole state in one read. Entries that do not
// parse are kept as corrupt problems; they never stop the read.
func read(ctx context.Context, n *Network) (*snapshot, error) {
	full, err := n.Store.Snapshot(ctx)
	if err != nil {
		return nil, fmt.Errorf("network %s: reading %s: %w", n.Cfg.Name, n.Store.Describe(), err)
	}
	s := &snapshot{net: n, full: full, byIP: map[netip.Addr]recEntry{}, tombs: full.Tombs, sticky: len(full.Stickies)}
	for _, p := range full.Problems {
		s.corrupt = append(s.corrupt, problem{Kind: p.Kind, Network: n.Cfg.Name, IP: p.IP, Key: p.Key, Detail: p.Detail})
	}
	for _, e := range full.Records {
		re := recEntry{Key: e.Key, IP: e.IP, Rec: e.Record}
		s.records = append(s.records, re)
		s.byIP[e.IP] = re
	}
	for _, r := range full.Released {
		s.rel = append(s.rel, relEntry{Key: r.Key, Set: r.Set, At: r.At, IP: r.IP})
	}
	for _, a := range full.Attachments {
		s.atts = append(s.atts, attEntry{Key: a.Key, Att: a})
	}
	return s, nil
}

// stats is one row of `networks`.
type stats struct {
	Pool, Used, Free, Blocked, Fixed, Sticky, Cooling int64
}

func (s *snapshot) stats(now time.Time) stats {
	st := s.full.Stats(s.net.Cfg, now)
	return stats{Pool: st.PoolInt64(), Used: st.Used, Free: st.Free(), Blocked: st.Blocked, Fixed: st.Fixed, Sticky: st.Sticky, Cooling: st.Cooling}
}
