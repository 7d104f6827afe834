// Package controller is kube-ipam-controller: it frees allocations whose
// owner is gone (a node crashed, a pod was force-deleted, no CNI DEL ran)
// and StatefulSet addresses whose StatefulSet is gone or scaled down, and
// exports pool metrics.
//
// An allocation is freed only when it is safe: the owner is confirmed gone
// (informer miss confirmed by a live GET, or a different UID), it was seen
// leaked on two passes at least Grace apart with unchanged revisions, and
// the release is one etcd transaction guarded by the revisions read.
package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"

	"kubeipam/internal/allocator"
	"kubeipam/internal/config"
	"kubeipam/internal/store"
)

// Network is one kube-ipam network the controller looks after.
type Network struct {
	Cfg    *config.Network
	Store  *store.Store
	Policy store.ReusePolicy
}

// NewNetwork ties a parsed config to an etcd client.
func NewNetwork(cfg *config.Network, cli *clientv3.Client) *Network {
	return &Network{Cfg: cfg, Store: store.New(cli, cfg.Etcd.Prefix, cfg.Name), Policy: allocator.ReusePolicy(cfg)}
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
	Now                          func() time.Time
	Log                          *slog.Logger
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
	return &Reconciler{Networks: nets, Kube: kube, Pods: pods, Metrics: m, Opts: o, seen: map[string]time.Time{}}
}

// Result summarises one pass over one network.
type Result struct {
	Attachments int
	Checked     int // attachments and sticky records looked at
	Candidates  int
	Released    int // attachments released
	FreedIPs    int
	Stickies    int // sticky records released
}

// snapshot is one network's key space read in one range read.
type snapshot struct {
	records map[netip.Addr]recEntry
	tombs   map[netip.Addr]*store.Tombstone
	rel     []relEntry
	atts    []*store.Attachment
	sticky  []store.StickyEntry
}

type recEntry struct {
	Rec *store.Record
	Rev int64
}

type relEntry struct {
	Key string
	At  time.Time
	IP  netip.Addr
}

func readSnapshot(ctx context.Context, n *Network) (*snapshot, error) {
	base := n.Store.Base()
	resp, err := n.Store.Client().Get(ctx, base, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("network %s: reading etcd: %w", n.Cfg.Name, err)
	}
	s := &snapshot{records: map[netip.Addr]recEntry{}, tombs: map[netip.Addr]*store.Tombstone{}}
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		parts := strings.Split(strings.TrimPrefix(k, base), "/")
		switch parts[0] {
		case "ip":
			a, tomb, ok := n.Store.ParseIPKey(k)
			if !ok {
				continue
			}
			if tomb {
				var t store.Tombstone
				if json.Unmarshal(kv.Value, &t) == nil {
					s.tombs[a] = &t
				}
				continue
			}
			var r store.Record
			if json.Unmarshal(kv.Value, &r) == nil {
				s.records[a] = recEntry{Rec: &r, Rev: kv.ModRevision}
			}
		case "att":
			var a store.Attachment
			if json.Unmarshal(kv.Value, &a) == nil {
				a.Rev = kv.ModRevision
				s.atts = append(s.atts, &a)
			}
		case "sticky":
			var e store.StickyEntry
			if json.Unmarshal(kv.Value, &e.Sticky) == nil {
				e.Key, e.Rev = k, kv.ModRevision
				s.sticky = append(s.sticky, e)
			}
		case "rel":
			if len(parts) != 5 {
				continue
			}
			var nanos int64
			fmt.Sscanf(parts[2], "%x", &nanos)
			a, _, ok := n.Store.ParseIPKey(base + "ip/" + parts[3] + "/" + parts[4])
			if ok {
				s.rel = append(s.rel, relEntry{Key: k, At: time.Unix(0, nanos), IP: a})
			}
		}
	}
	return s, nil
}

// podState says whether a pod identity is still there.
type ownerState int

const (
	ownerAlive ownerState = iota
	ownerGone
	ownerUnknown // API error: never free
)

// pod finds ns/name: the informer first, a live GET to confirm a miss.
func (r *Reconciler) pod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	if r.Pods != nil {
		if p, err := r.Pods.Pods(ns).Get(name); err == nil {
			return p, nil
		}
	}
	p, err := r.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return p, err
}

func (r *Reconciler) podOwner(ctx context.Context, ns, name, uid string, cache map[string]ownerState) ownerState {
	key := ns + "/" + name + "/" + uid
	if st, ok := cache[key]; ok {
		return st
	}
	st := func() ownerState {
		p, err := r.pod(ctx, ns, name)
		if err != nil {
			return ownerUnknown
		}
		if p == nil || (uid != "" && string(p.UID) != uid) {
			return ownerGone
		}
		if r.terminatingOnNotReady(ctx, p) {
			return ownerGone
		}
		return ownerAlive
	}()
	cache[key] = st
	return st
}

func (r *Reconciler) terminatingOnNotReady(ctx context.Context, p *corev1.Pod) bool {
	d := r.Opts.ReleaseTerminatingOnNotReady
	if d <= 0 || p.DeletionTimestamp == nil || p.Spec.NodeName == "" {
		return false
	}
	if r.Opts.Now().Sub(p.DeletionTimestamp.Time) < d {
		return false
	}
	node, err := r.Kube.CoreV1().Nodes().Get(ctx, p.Spec.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true
	}
	if err != nil {
		return false
	}
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status != corev1.ConditionTrue
		}
	}
	return true // no Ready condition: never reported
}

// stsState: alive when the StatefulSet with that UID exists and ordinal < replicas.
func (r *Reconciler) stsOwner(ctx context.Context, ns, name, uid string, ordinal int, cache map[string]*appsv1.StatefulSet, errs map[string]bool) ownerState {
	key := ns + "/" + name
	sts, ok := cache[key]
	if !ok && !errs[key] {
		s, err := r.Kube.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			sts = nil
		case err != nil:
			errs[key] = true
		default:
			sts = s
		}
		if !errs[key] {
			cache[key] = sts
		}
	}
	if errs[key] {
		return ownerUnknown
	}
	if sts == nil || string(sts.UID) != uid {
		return ownerGone
	}
	replicas := 1
	if sts.Spec.Replicas != nil {
		replicas = int(*sts.Spec.Replicas)
	}
	if ordinal >= replicas {
		return ownerGone
	}
	return ownerAlive
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

// Pass reconciles one network once.
func (r *Reconciler) Pass(ctx context.Context, n *Network) (Result, error) {
	return r.pass(ctx, n, passMode{})
}

// passMode is how a pass treats the candidates it finds. The zero value is
// the controller's: release a candidate only once it has been seen leaked,
// with unchanged revisions, at least Grace ago.
type passMode struct {
	// once releases on first sight (RunOnce): one run cannot observe a
	// candidate twice. The seen-since clock is neither read nor kept.
	once bool
	// dryRun decides and reports but releases nothing.
	dryRun bool
	// progress is called after each attachment and sticky record checked.
	progress func(done, total int)
	// report is called once per candidate, after its release (if any).
	report func(Candidate)
}

// pass is the GC rules, applied once to one network:
//   - an attachment without a pod (e.g. a kube-ipamctl reservation) is never
//     touched;
//   - a pod is gone only when it is not in the informer and a live GET says
//     NotFound, or it has another UID (or, with ReleaseTerminatingOnNotReady,
//     it has been Terminating on a NotReady node that long); any other API
//     error keeps the allocation;
//   - an attachment whose records are StatefulSet ordinals still wanted
//     (StatefulSet of that UID exists, ordinal < replicas) is kept;
//   - a sticky record is freed when its StatefulSet is gone (or has another
//     UID) or is scaled below its ordinal;
//   - a candidate is released once seen leaked on two passes at least Grace
//     apart with unchanged revisions (m.once: on this pass);
//   - every release is store.ReleaseAttachment / ReleaseSticky, one etcd
//     transaction guarded by the revisions read.
func (r *Reconciler) pass(ctx context.Context, n *Network, m passMode) (Result, error) {
	var res Result
	start := time.Now()
	snap, err := readSnapshot(ctx, n)
	if err != nil {
		return res, err
	}
	now := r.Opts.Now()
	// Metrics describe the controller's passes, not one-shot runs.
	metrics := r.Metrics
	if m.once {
		metrics = nil
	}
	if metrics != nil {
		metrics.observeSnapshot(n, snap, now)
	}
	name := n.Cfg.Name
	live := map[string]bool{}
	pods := map[string]ownerState{}
	stss := map[string]*appsv1.StatefulSet{}
	stsErr := map[string]bool{}
	res.Attachments = len(snap.atts)
	total := len(snap.atts) + len(snap.sticky)
	checked := func() error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("network %s: %w", name, err)
		}
		res.Checked++
		if m.progress != nil {
			m.progress(res.Checked, total)
		}
		return nil
	}
	due := func(k string) bool {
		if m.once {
			return true
		}
		return r.candidate(k, now, live)
	}

	for _, att := range snap.atts {
		if err := checked(); err != nil {
			return res, err
		}
		if att.PodName == "" {
			continue // never touched: no owner to check
		}
		// The records this attachment still holds, and their revisions.
		var held []recEntry
		revs := []string{fmt.Sprint(att.Rev)}
		for _, s := range att.IPs {
			a, err := netip.ParseAddr(s)
			if err != nil {
				continue
			}
			e, ok := snap.records[a]
			if ok && e.Rec.ContainerID == att.ContainerID && e.Rec.IfName == att.IfName {
				held = append(held, e)
			}
			revs = append(revs, fmt.Sprint(e.Rev))
		}
		state := r.podOwner(ctx, att.PodNamespace, att.PodName, att.PodUID, pods)
		if state != ownerGone {
			continue
		}
		// A StatefulSet ordinal is kept while its StatefulSet (same UID) wants it.
		keep := false
		for _, e := range held {
			if e.Rec.StatefulSetUID == "" {
				continue
			}
			if r.stsOwner(ctx, e.Rec.PodNamespace, e.Rec.StatefulSet, e.Rec.StatefulSetUID, e.Rec.Ordinal, stss, stsErr) != ownerGone {
				keep = true
			}
		}
		if keep {
			continue
		}
		res.Candidates++
		c := Candidate{Network: name, Kind: KindAttachment, Namespace: att.PodNamespace, Pod: att.PodName, ContainerID: att.ContainerID,
			IfName: att.IfName, Node: att.Node, IPs: append([]string{}, att.IPs...)}
		k := name + "|att|" + att.ContainerID + "|" + att.IfName + "|" + strings.Join(revs, ",")
		if !due(k) || m.dryRun {
			m.emit(c)
			continue
		}
		if r.beforeRelease != nil {
			r.beforeRelease(att)
		}
		freed, ok, err := n.Store.ReleaseAttachment(ctx, att, now, n.Policy)
		if err != nil {
			m.emit(c)
			return res, fmt.Errorf("network %s: releasing container %s interface %s: %w", name, store.ShortID(att.ContainerID), att.IfName, err)
		}
		if !ok {
			m.emit(c)
			r.Opts.Log.Info("release lost a race; will re-check", "network", name, "container", store.ShortID(att.ContainerID))
			continue
		}
		c.Released, c.Freed = true, freed
		m.emit(c)
		res.Released++
		res.FreedIPs += len(freed)
		r.Opts.Log.Info("released leaked allocation", "network", name, "pod", att.PodNamespace+"/"+att.PodName,
			"container", store.ShortID(att.ContainerID), "ifname", att.IfName, "ips", freed)
	}

	for _, e := range snap.sticky {
		if err := checked(); err != nil {
			return res, err
		}
		if r.stsOwnerByUID(ctx, e, stss, stsErr) != ownerGone {
			continue
		}
		res.Candidates++
		c := Candidate{Network: name, Kind: KindSticky, Namespace: e.Namespace, StatefulSet: e.StatefulSet, Ordinal: e.Ordinal,
			IfName: e.IfName, IPs: append([]string{}, e.IPs...)}
		k := fmt.Sprintf("%s|sticky|%s|%d", name, e.Key, e.Rev)
		if !due(k) || m.dryRun {
			m.emit(c)
			continue
		}
		freed, ok, err := n.Store.ReleaseSticky(ctx, e, now, n.Policy)
		if err != nil {
			m.emit(c)
			return res, fmt.Errorf("network %s: releasing sticky %s/%s ordinal %d: %w", name, e.Namespace, e.StatefulSet, e.Ordinal, err)
		}
		if ok {
			c.Released, c.Freed = true, freed
			res.Stickies++
			res.FreedIPs += len(freed)
			r.Opts.Log.Info("released sticky addresses", "network", name, "statefulSet", e.Namespace+"/"+e.StatefulSet, "ordinal", e.Ordinal, "ips", freed)
		}
		m.emit(c)
	}

	if !m.once {
		// Forget candidates of this network not seen this pass.
		r.mu.Lock()
		for k := range r.seen {
			if strings.HasPrefix(k, name+"|") && !live[k] {
				delete(r.seen, k)
			}
		}
		r.mu.Unlock()
	}
	if metrics != nil {
		metrics.observePass(name, res, time.Since(start))
	}
	return res, nil
}

func (m passMode) emit(c Candidate) {
	if m.report != nil {
		m.report(c)
	}
}

func (r *Reconciler) stsOwnerByUID(ctx context.Context, e store.StickyEntry, cache map[string]*appsv1.StatefulSet, errs map[string]bool) ownerState {
	return r.stsOwner(ctx, e.Namespace, e.StatefulSet, e.StatefulSetUID, e.Ordinal, cache, errs)
}
