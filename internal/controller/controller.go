// Package controller is kube-ipam-controller: it frees allocations whose
// owner is gone (a node crashed, a pod was force-deleted, no CNI DEL ran)
// and StatefulSet addresses whose StatefulSet is gone or scaled down, and
// exports pool metrics.
//
// An allocation is freed only when it is safe: the owner is confirmed gone
// by a fresh read from the API (an informer miss or another UID is
// confirmed by a GET, or by one consistent LIST per pass when there are
// many), it was seen leaked on two passes at least Grace apart with
// unchanged revisions, and the release is one etcd transaction guarded by
// the revisions read. The rules themselves are pure functions (rules.go).
package controller

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"

	"kubeipam/internal/allocator"
	"kubeipam/internal/config"
	"kubeipam/internal/store"
)

// Network is one kube-ipam network the controller looks after.
type Network struct {
	Cfg    *config.Network
	Store  store.Backend
	Policy store.ReusePolicy
}

// NewNetwork ties a parsed config to its store.
func NewNetwork(cfg *config.Network, b store.Backend) *Network {
	return &Network{Cfg: cfg, Store: b, Policy: allocator.ReusePolicy(cfg)}
}

// Options configure the reconciler.
type Options struct {
	// Grace: an allocation must be seen leaked on two passes at least this
	// far apart before it is freed.
	Grace time.Duration
	// ReleaseTerminatingOnNotReady > 0 treats a pod Terminating on a NotReady
	// node for that long as gone. 0 keeps its allocation until the pod object
	// is deleted.
	ReleaseTerminatingOnNotReady time.Duration
	// Workers bounds the concurrent API lookups and etcd releases of a pass
	// (default DefaultWorkers).
	Workers int
	// MaxGets: up to this many owners the informer does not vouch for are
	// confirmed with a GET each; more with one LIST (default
	// DefaultMaxGets).
	MaxGets int
	// PageSize is the Limit of each page of that LIST (default
	// DefaultPageSize).
	PageSize int64
	Now      func() time.Time
	Log      *slog.Logger
}

// Reconciler runs passes over the networks.
type Reconciler struct {
	Networks []*Network
	Kube     kubernetes.Interface
	Pods     corelisters.PodLister
	Metrics  *Metrics
	Opts     Options

	mu   sync.Mutex
	seen map[string]time.Time // candidate key -> first seen leaked

	// beforeRelease, in tests, runs between a pass's decision and its release.
	beforeRelease func(att *store.Attachment)
}

// NewReconciler returns a reconciler; pods is the informer's lister.
func NewReconciler(nets []*Network, kube kubernetes.Interface, pods corelisters.PodLister, m *Metrics, o Options) *Reconciler {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.MaxGets <= 0 {
		o.MaxGets = DefaultMaxGets
	}
	if o.PageSize <= 0 {
		o.PageSize = DefaultPageSize
	}
	return &Reconciler{Networks: nets, Kube: kube, Pods: pods, Metrics: m, Opts: o, seen: map[string]time.Time{}}
}

// Result summarises one pass over one network.
type Result struct {
	Attachments   int
	StickyRecords int
	Checked       int // attachments and sticky records looked at
	// Alive: attachments whose pod exists, and sticky records whose
	// StatefulSet still wants the ordinal.
	Alive      int
	Candidates int // leaked (owner confirmed gone), released or not
	Released   int // attachments released
	FreedIPs   int
	Stickies   int // sticky records released
	// Kept, by why: candidates within their grace period, attachments of
	// gone pods whose StatefulSet still wants the ordinal, and candidates
	// that changed between the read and the release (looked at again on
	// the next pass).
	KeptGrace, KeptStatefulSet, KeptChanged int
	// Skipped: allocations the pass could not decide (a failed API lookup:
	// API error, client rate limiter, deadline) or whose release it did not
	// attempt because it stopped early. They are kept. SkipCauses counts
	// them by cause.
	Skipped    int
	SkipCauses map[string]int
	Duration   time.Duration
}

func (r *Result) skip(cause string) {
	r.Skipped++
	if r.SkipCauses == nil {
		r.SkipCauses = map[string]int{}
	}
	r.SkipCauses[cause]++
}

// SkipSummary lists the skip causes, most frequent first, as "N × cause".
func (r *Result) SkipSummary() []string {
	type c struct {
		cause string
		n     int
	}
	var cs []c
	for k, v := range r.SkipCauses {
		cs = append(cs, c{k, v})
	}
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].n != cs[j].n {
			return cs[i].n > cs[j].n
		}
		return cs[i].cause < cs[j].cause
	})
	out := make([]string, len(cs))
	for i, x := range cs {
		out[i] = fmt.Sprintf("%d × %s", x.n, x.cause)
	}
	return out
}

// snapshot is one network's state as the rules read it: records by
// address, attachments and sticky records, from one store.Snapshot.
type snapshot struct {
	records map[netip.Addr]recEntry
	atts    []*store.Attachment
	sticky  []store.StickyEntry
	full    *store.Snapshot
}

type recEntry struct {
	Rec *store.Record
	Rev store.Version
}

func readSnapshot(ctx context.Context, n *Network) (*snapshot, error) {
	full, err := n.Store.Snapshot(ctx)
	if err != nil {
		return nil, fmt.Errorf("network %s: reading %s: %w", n.Cfg.Name, n.Store.Describe(), err)
	}
	s := &snapshot{records: make(map[netip.Addr]recEntry, len(full.Records)), atts: full.Attachments, sticky: full.Stickies, full: full}
	for _, e := range full.Records {
		s.records[e.IP] = recEntry{Rec: e.Record, Rev: e.Version}
	}
	return s, nil
}

// candidate notes k as leaked and reports whether it was first seen at least
// Grace ago.
func (r *Reconciler) candidate(k string, now time.Time, live map[string]bool) bool {
	live[k] = true
	r.mu.Lock()
	defer r.mu.Unlock()
	first, ok := r.seen[k]
	if !ok {
		r.seen[k] = now
		if r.Metrics != nil {
			r.Metrics.newCandidates.WithLabelValues(k[:strings.IndexByte(k, '|')]).Inc()
		}
		return false
	}
	return now.Sub(first) >= r.Opts.Grace
}
