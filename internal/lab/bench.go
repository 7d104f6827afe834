package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/stores"
)

// The pod-start benchmark (issue 14, "Pod start on real nodes"): on the
// lab's real nodes, one Deployment per variant is scaled from 0 to N at
// once, timed until all N pods are Running and Ready, then scaled back to
// 0, timed until every pod is gone and every net1 address is free again in
// its store. The variants differ only in net1: none, the guide's database
// network with kube-ipam (NAD db-net), and the same macvlan + kube-tier
// network with whereabouts as the IPAM (NAD wb-net).

// BenchNamespace is where the benchmark's Deployments run: the NADs'
// namespace.
const BenchNamespace = "default"

// benchApp labels every object of the benchmark (app=kilab-bench), so that
// a reused lab's own workloads are never touched.
const benchApp = "kilab-bench"

// DefaultBenchPods is N unless told otherwise (issue 14: at least 150 over
// the 3 nodes).
const DefaultBenchPods = 150

// BenchOptions say how to run the benchmark.
type BenchOptions struct {
	// Pods is N, the Deployment's scale.
	Pods int
	// Deadline bounds each phase (scale up to all Ready; scale down to
	// all gone and free): a variant that does not get there fails the run.
	Deadline time.Duration
	// Settle bounds the wait for the addresses once every pod is gone:
	// every CNI DEL has returned by then, so what is still held after it
	// is a leak (reported; for kube-ipam the run fails, the other variants
	// still run).
	Settle time.Duration
	// Rounds is how often every variant is measured. Each round starts
	// with a different variant (round r with the r-th), so that none is
	// always first or last after another's deletions; the table gives
	// every round and the median of each figure. On a 2-core machine one
	// round's ratio moves by as much as the goal, so several rounds are
	// what a decision rests on.
	Rounds int
}

// BenchVariant is one column of the benchmark: what gives the pods net1.
type BenchVariant struct {
	Name       string // as printed
	Deployment string
	// NAD is the NetworkAttachmentDefinition the pods ask for as net1
	// (empty: eth0 only).
	NAD string
	// Peer: a peer's leak is its own behaviour, measured and reported in
	// the table; a leak of kube-ipam fails the run.
	Peer bool
}

// BenchVariants are the three variants, in the order they run.
var BenchVariants = []BenchVariant{
	{Name: "eth0 only", Deployment: "bench-eth0"},
	{Name: "kube-ipam", Deployment: "bench-kube-ipam", NAD: "db-net"},
	{Name: "whereabouts", Deployment: "bench-whereabouts", NAD: WhereaboutsNAD, Peer: true},
}

// BenchResult is one variant's figures.
type BenchResult struct {
	Variant string `json:"variant"`
	// Round is 1..Rounds; 0 in a median over rounds.
	Round int `json:"round,omitempty"`
	Pods  int `json:"pods"`
	// Ready: from the scale request to the moment the N-th pod was seen
	// Running and Ready.
	Ready time.Duration `json:"readyNs"`
	// ReadyP50 and ReadyP99 are per pod: from the pod's creation (seen by
	// a watch) to it being seen Ready.
	ReadyP50 time.Duration `json:"readyP50Ns"`
	ReadyP99 time.Duration `json:"readyP99Ns"`
	// Gone: from the scale-to-0 request until no pod is left; Free until,
	// in addition, no net1 address of the variant is held in its store.
	Gone time.Duration `json:"goneNs"`
	Free time.Duration `json:"freeNs"`
	// Leaked is the number of net1 addresses still held Settle after the
	// last pod was gone (Free is then zero), with a few of them.
	Leaked     int      `json:"leaked,omitempty"`
	LeakedSome []string `json:"leakedSome,omitempty"`
	// PerNode counts the pods of each node once all were Ready.
	PerNode map[string]int `json:"perNode"`
	// Held is the number of net1 addresses held once all were Ready (N
	// for the net1 variants).
	Held int `json:"held"`
	// CPUUp and CPUDown are the CPU time each component of the lab used
	// while the pods started (scale to N until all Ready) and while they
	// went (scale to 0 until all gone and free; with a leak, until Settle
	// gave up), over all N pods (see benchcpu.go).
	CPUUp   map[string]time.Duration `json:"cpuUpNs,omitempty"`
	CPUDown map[string]time.Duration `json:"cpuDownNs,omitempty"`
}

// benchMaxPods is the kubelet maxPods a lab needs for n bench pods spread
// evenly (maxSkew 1) over nodes, beside the installer DaemonSet's and the
// controller's pods.
func benchMaxPods(n, nodes int) int {
	return max(DefaultMaxPods, (n+nodes-1)/nodes+10)
}

// Bench runs the pod-start benchmark on a running lab in a NAD mode: it
// installs whereabouts (InstallWhereabouts), applies db-net, then measures
// every variant in turn. Its Deployments are deleted on return, whatever
// happened (so a reused lab is left as it was found, plus wb-net and
// whereabouts).
func (l *Lab) Bench(ctx context.Context, bo BenchOptions) (results []BenchResult, err error) {
	if !l.opts.NADs() {
		return nil, fmt.Errorf("the pod-start benchmark needs a lab in mode %q or %q (the networks are NADs pods ask for); this one is in mode %q",
			ModeNAD, ModeMultus, l.opts.Mode)
	}
	if bo.Pods < 1 {
		return nil, fmt.Errorf("%d pods: want at least 1", bo.Pods)
	}
	if bo.Deadline <= 0 {
		bo.Deadline = 10 * time.Minute
	}
	if bo.Settle <= 0 {
		bo.Settle = 2 * time.Minute
	}
	if bo.Rounds < 1 {
		bo.Rounds = 1
	}
	size, err := l.dbNetDynamicSize()
	if err != nil {
		return nil, err
	}
	if bo.Pods > size {
		return nil, fmt.Errorf("%d pods: db-net's dynamic range holds %d addresses (deploy/examples/%s)", bo.Pods, size, NADFile)
	}
	cs, err := l.client()
	if err != nil {
		return nil, err
	}
	if err := l.benchCapacity(ctx, cs, bo.Pods); err != nil {
		return nil, err
	}
	defer func() {
		// A fresh context: ctx may be what was cancelled.
		cctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if cerr := l.deleteBenchWorkloads(cctx, cs); cerr != nil {
			err = errors.Join(err, fmt.Errorf("removing the benchmark's Deployments: %w", cerr))
		}
	}()
	l.logf("pod-start benchmark: NetworkAttachmentDefinition db-net (kube-ipam) ...")
	nad, err := l.NADManifest()
	if err != nil {
		return nil, err
	}
	if _, err := l.kubectl(ctx, "apply", "-f", nad); err != nil {
		return nil, err
	}
	l.logf("pod-start benchmark: whereabouts %s (CRDs, RBAC, binary and kubeconfig on every node, NAD %s) ...", WhereaboutsVersion, WhereaboutsNAD)
	if err := l.InstallWhereabouts(ctx); err != nil {
		return nil, fmt.Errorf("installing whereabouts: %w", err)
	}
	held, closeHeld, err := l.benchHeld()
	if err != nil {
		return nil, err
	}
	defer closeHeld()
	// Nothing of an earlier run may be left: it would be counted.
	if err := l.deleteBenchWorkloads(ctx, cs); err != nil {
		return nil, err
	}
	var leaks []error
	for round := 1; round <= bo.Rounds; round++ {
		for i := range BenchVariants {
			v := BenchVariants[(i+round-1)%len(BenchVariants)]
			name := v.Name
			if bo.Rounds > 1 {
				name = fmt.Sprintf("%s (round %d of %d)", v.Name, round, bo.Rounds)
			}
			l.logf("pod-start benchmark: %s, %d pods ...", name, bo.Pods)
			r, err := l.benchVariant(ctx, cs, v, bo, held[v.Name])
			r.Round = round
			var leak *leakError
			switch {
			case errors.As(err, &leak):
				// Measured, but its store kept addresses: a finding for a
				// peer, a failure of the run for kube-ipam; the next
				// variants still run (no pod is left).
				l.logf("pod-start benchmark: %s: all %d Ready in %.1fs, all gone in %.1fs, but %v",
					name, r.Pods, r.Ready.Seconds(), r.Gone.Seconds(), err)
				if !v.Peer {
					leaks = append(leaks, fmt.Errorf("%s: %w", name, err))
				}
				results = append(results, r)
				continue
			case err != nil:
				return results, errors.Join(append(leaks, fmt.Errorf("%s: %w", name, err))...)
			}
			l.logf("pod-start benchmark: %s: all %d Ready in %.1fs (per pod p50 %.1fs, p99 %.1fs), all gone and free in %.1fs",
				name, r.Pods, r.Ready.Seconds(), r.ReadyP50.Seconds(), r.ReadyP99.Seconds(), r.Free.Seconds())
			results = append(results, r)
		}
	}
	return results, errors.Join(leaks...)
}

// leakError is a variant whose pods are all gone but whose store still
// holds some of their net1 addresses Settle later.
type leakError struct {
	held   int
	some   []string
	settle time.Duration
}

func (e *leakError) Error() string {
	return fmt.Sprintf("%d net1 addresses still held %s after the last pod was gone (leaked by failed DELs; e.g. %s)",
		e.held, e.settle, strings.Join(e.some, "; "))
}

// dbNetDynamicSize is the number of addresses in db-net's dynamic range
// (rangeStart to rangeEnd): kube-ipam cannot give more pods a net1.
func (l *Lab) dbNetDynamicSize() (int, error) {
	n, err := l.dbNetNetwork()
	if err != nil {
		return 0, err
	}
	total := 0
	for _, set := range n.RangeSets {
		for _, r := range set {
			s, e := r.Start.As4(), r.End.As4()
			a := int(s[0])<<24 | int(s[1])<<16 | int(s[2])<<8 | int(s[3])
			b := int(e[0])<<24 | int(e[1])<<16 | int(e[2])<<8 | int(e[3])
			total += b - a + 1
		}
	}
	return total, nil
}

// dbNetNetwork parses db-net's kube-ipam config as the plugin does, with
// the etcd client files as the host sees them (the node paths are in the
// nodes' mount namespaces).
func (l *Lab) dbNetNetwork() (*config.Network, error) {
	_, raw, err := l.NADConfig()
	if err != nil {
		return nil, err
	}
	var conf struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(raw, &conf); err != nil {
		return nil, err
	}
	for _, p := range conf.Plugins {
		ipam, _ := p["ipam"].(map[string]any)
		if ipam == nil || ipam["type"] != "kube-ipam" {
			continue
		}
		b, err := json.Marshal(map[string]any{"cniVersion": conf.CNIVersion, "name": conf.Name, "type": p["type"], "ipam": ipam})
		if err != nil {
			return nil, err
		}
		n, err := config.Parse(b)
		if err != nil {
			return nil, fmt.Errorf("db-net's kube-ipam config: %w", err)
		}
		n.Etcd.CertFile, n.Etcd.KeyFile, n.Etcd.CAFile = l.pki("etcd-client.crt"), l.pki("etcd-client.key"), l.pki("etcd-ca.crt")
		return n, nil
	}
	return nil, fmt.Errorf("%s: no kube-ipam plugin", NADFile)
}

// benchCapacity checks that the nodes take N more pods (a reused lab's
// kubelets may run with the default maxPods).
func (l *Lab) benchCapacity(ctx context.Context, cs kubernetes.Interface, n int) error {
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	used := map[string]int{}
	for _, p := range pods.Items {
		if p.Spec.NodeName != "" && p.Labels["app"] != benchApp {
			used[p.Spec.NodeName]++
		}
	}
	per := (n + len(nodes.Items) - 1) / max(1, len(nodes.Items))
	var short []string
	for _, node := range nodes.Items {
		allocatable := int(node.Status.Allocatable.Pods().Value())
		if free := allocatable - used[node.Name]; free < per {
			short = append(short, fmt.Sprintf("%s takes %d more pods (maxPods %d, %d running)", node.Name, free, allocatable, used[node.Name]))
		}
	}
	if len(short) > 0 {
		return fmt.Errorf("%d pods need %d per node: %s; take this lab down (make lab-down) and let the benchmark bring up its own, "+
			"or bring one up with `kube-ipam-lab up --keep --mode nad --max-pods %d`",
			n, per, strings.Join(short, "; "), benchMaxPods(n, len(nodes.Items)))
	}
	return nil
}

// heldFunc lists the net1 addresses the pods of a Deployment hold in the
// variant's store, one entry per address naming its holder.
type heldFunc func(ctx context.Context, deployment string) ([]string, error)

// heldSince counts what held lists beyond what it listed at the start of
// the round (base): a peer's addresses leaked in an earlier round stay in
// its store under the same Deployment's pod names, reported once, not
// counted again. It returns a few of the new ones for messages.
func heldSince(ctx context.Context, held heldFunc, deployment string, base map[string]bool) (int, []string, error) {
	all, err := held(ctx, deployment)
	if err != nil {
		return 0, nil, err
	}
	n, some := 0, []string(nil)
	for _, h := range all {
		if !base[h] {
			n++
			if len(some) < 5 {
				some = append(some, h)
			}
		}
	}
	return n, some, nil
}

var wbPoolGVR = schema.GroupVersionResource{Group: "whereabouts.cni.cncf.io", Version: "v1alpha1", Resource: "ippools"}

// benchHeld returns a heldFunc per variant: kube-ipam's through its store
// (internal/store's Snapshot of db-net's network, etcd or the Kubernetes
// API as the lab runs it), whereabouts' from its IPPool's allocations.
func (l *Lab) benchHeld() (map[string]heldFunc, func(), error) {
	n, err := l.dbNetNetwork()
	if err != nil {
		return nil, nil, err
	}
	op := stores.New(10 * time.Second)
	op.Kubeconfig = l.opts.Kubeconfig()
	cfg, err := clientcmd.BuildConfigFromFlags("", l.opts.Kubeconfig())
	if err != nil {
		return nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	var (
		mu      sync.Mutex
		backend store.Backend
	)
	kubeIPAM := func(ctx context.Context, deployment string) ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		if backend == nil {
			b, err := op.Open(ctx, n)
			if err != nil {
				return nil, err
			}
			backend = b
		}
		snap, err := backend.Snapshot(ctx)
		if err != nil {
			return nil, err
		}
		var held []string
		for _, r := range snap.Records {
			if r.Record.PodNamespace == BenchNamespace && strings.HasPrefix(r.Record.PodName, deployment+"-") {
				held = append(held, r.IP.String()+" "+r.Record.Owner())
			}
		}
		return held, nil
	}
	wb := func(ctx context.Context, deployment string) ([]string, error) {
		u, err := dyn.Resource(wbPoolGVR).Namespace(WhereaboutsNamespace).Get(ctx, whereaboutsPoolName(WhereaboutsRange), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, nil // no ADD has made the pool yet
		}
		if err != nil {
			return nil, err
		}
		allocs, _, err := unstructured.NestedMap(u.Object, "spec", "allocations")
		if err != nil {
			return nil, fmt.Errorf("IPPool %s: %w", u.GetName(), err)
		}
		keys := make([]string, 0, len(allocs))
		for k := range allocs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var held []string
		for _, k := range keys {
			m, _ := allocs[k].(map[string]any)
			ref, _ := m["podref"].(string)
			if strings.HasPrefix(ref, BenchNamespace+"/"+deployment+"-") {
				held = append(held, fmt.Sprintf("offset %s %s (container %v)", k, ref, m["id"]))
			}
		}
		return held, nil
	}
	none := func(context.Context, string) ([]string, error) { return nil, nil }
	return map[string]heldFunc{"eth0 only": none, "kube-ipam": kubeIPAM, "whereabouts": wb}, func() { _ = op.Close() }, nil
}

// benchDeployment is a variant's Deployment at replicas 0: busybox that
// exits on SIGTERM (so deletion waits for no grace period), spread evenly
// over the nodes, asking for the variant's NAD as net1. No service account
// token, no service links, the node's DNS: the variants differ in net1
// only, and the API server's work per pod stays small on 2 cores.
func benchDeployment(v BenchVariant) *appsv1.Deployment {
	labels := map[string]string{"app": benchApp, "bench": v.Deployment}
	ann := map[string]string{}
	if v.NAD != "" {
		ann["k8s.v1.cni.cncf.io/networks"] = v.NAD + "@net1"
	}
	zero, grace, no := int32(0), int64(5), false
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: v.Deployment, Namespace: BenchNamespace, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &zero,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"bench": v.Deployment}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: ann},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					AutomountServiceAccountToken:  &no,
					EnableServiceLinks:            &no,
					// The lab has no cluster DNS: ClusterFirst would cost a
					// MissingClusterDNS Event per pod.
					DNSPolicy: corev1.DNSDefault,
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"bench": v.Deployment}},
					}},
					Containers: []corev1.Container{{
						Name: "c", Image: BusyboxImage, ImagePullPolicy: corev1.PullIfNotPresent,
						Command: []string{"sh", "-c", "trap 'exit 0' TERM; sleep 86400 & wait"},
					}},
				},
			},
		},
	}
}

// benchVariant measures one variant: create at 0, scale to N, all Ready;
// scale to 0, all gone and free; delete.
func (l *Lab) benchVariant(ctx context.Context, cs kubernetes.Interface, v BenchVariant, bo BenchOptions, held heldFunc) (BenchResult, error) {
	r := BenchResult{Variant: v.Name, Pods: bo.Pods, PerNode: map[string]int{}}
	deps := cs.AppsV1().Deployments(BenchNamespace)
	if _, err := deps.Create(ctx, benchDeployment(v), metav1.CreateOptions{}); err != nil {
		return r, err
	}
	tctx, stopTracking := context.WithCancel(ctx)
	defer stopTracking()
	t := trackPods(tctx, cs, BenchNamespace, "bench="+v.Deployment)
	if err := t.waitSynced(ctx, time.Minute); err != nil {
		return r, err
	}
	scale := func(n int) error {
		patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, n)
		_, err := deps.Patch(ctx, v.Deployment, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		return err
	}

	// What the store held before: a peer's leaks of earlier rounds.
	before, err := held(ctx, v.Deployment)
	if err != nil {
		return r, err
	}
	base := map[string]bool{}
	for _, h := range before {
		base[h] = true
	}
	cpu0 := l.sampleCPU()
	t0 := time.Now()
	if err := scale(bo.Pods); err != nil {
		return r, err
	}
	var readyAt time.Time
	err = t.wait(ctx, bo.Deadline, func(s *trackState) bool {
		ready := s.readyLive()
		if len(ready) < bo.Pods {
			return false
		}
		for _, uid := range ready {
			readyAt = maxTime(readyAt, s.ready[uid])
		}
		return true
	})
	if err != nil {
		return r, fmt.Errorf("not all %d pods Running and Ready within %s: %s", bo.Pods, bo.Deadline, l.stuckPods(ctx, cs, v))
	}
	r.CPUUp = cpuDelta(cpu0, l.sampleCPU())
	r.Ready = readyAt.Sub(t0)
	var lat []time.Duration
	t.read(func(s *trackState) {
		for _, uid := range s.readyLive() {
			lat = append(lat, s.ready[uid].Sub(s.seen[uid]))
			r.PerNode[s.node[uid]]++
		}
	})
	r.ReadyP50, r.ReadyP99 = percentile(lat, 0.50), percentile(lat, 0.99)
	n, some, err := heldSince(ctx, held, v.Deployment, base)
	if err != nil {
		return r, err
	}
	r.Held = n
	if v.NAD != "" && n != bo.Pods {
		return r, fmt.Errorf("%d pods Ready but %d net1 addresses held in the store (e.g. %s)", bo.Pods, n, strings.Join(some, "; "))
	}

	cpu1 := l.sampleCPU()
	t1 := time.Now()
	if err := scale(0); err != nil {
		return r, err
	}
	var goneAt, freeAt time.Time
	var lastHeld []string
	lastCount := 0
	leaked := false
	err = t.waitPolling(ctx, bo.Deadline, 200*time.Millisecond, func(s *trackState) bool {
		if goneAt.IsZero() && len(s.live) == 0 {
			goneAt = s.lastGone
		}
		return false
	}, func() (bool, error) {
		if freeAt.IsZero() && !goneAt.IsZero() && time.Since(goneAt) > bo.Settle {
			leaked = true
			return true, nil
		}
		if freeAt.IsZero() {
			n, some, err := heldSince(ctx, held, v.Deployment, base)
			if err != nil {
				lastHeld = []string{err.Error()}
				return false, nil
			}
			lastCount, lastHeld = n, some
			if n == 0 {
				freeAt = time.Now()
			}
		}
		return !goneAt.IsZero() && !freeAt.IsZero(), nil
	})
	if err != nil {
		var stuck []string
		if goneAt.IsZero() {
			stuck = append(stuck, "pods left: "+l.stuckPods(ctx, cs, v))
		}
		if freeAt.IsZero() {
			stuck = append(stuck, fmt.Sprintf("%d net1 addresses still held (e.g. %s)", lastCount, strings.Join(lastHeld, "; ")))
		}
		return r, fmt.Errorf("not all pods gone and addresses free within %s after scaling to 0: %s", bo.Deadline, strings.Join(stuck, "; "))
	}
	r.CPUDown = cpuDelta(cpu1, l.sampleCPU())
	r.Gone = goneAt.Sub(t1)
	var leak error
	if leaked {
		r.Leaked, r.LeakedSome = lastCount, lastHeld
		leak = &leakError{held: lastCount, some: lastHeld, settle: bo.Settle}
	} else {
		r.Free = maxTime(goneAt, freeAt).Sub(t1)
	}
	stopTracking()
	fg := metav1.DeletePropagationForeground
	if err := deps.Delete(ctx, v.Deployment, metav1.DeleteOptions{PropagationPolicy: &fg}); err != nil && !apierrors.IsNotFound(err) {
		return r, errors.Join(leak, err)
	}
	return r, leak
}

// stuckPods says which pods of a variant are not Ready (or not gone), and
// why, grouped by reason, with the latest Warning events.
func (l *Lab) stuckPods(ctx context.Context, cs kubernetes.Interface, v BenchVariant) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pods, err := cs.CoreV1().Pods(BenchNamespace).List(ctx, metav1.ListOptions{LabelSelector: "bench=" + v.Deployment})
	if err != nil {
		return err.Error()
	}
	reasons := map[string][]string{}
	ready := 0
	for _, p := range pods.Items {
		if podReady(&p) {
			ready++
			continue
		}
		why := podState(p)
		if p.DeletionTimestamp != nil {
			why = "Terminating"
		}
		reasons[why] = append(reasons[why], p.Name+"@"+p.Spec.NodeName)
	}
	var parts []string
	for why, ps := range reasons {
		parts = append(parts, fmt.Sprintf("%d %s (e.g. %s)", len(ps), strings.TrimSpace(why), strings.Join(ps[:min(3, len(ps))], ", ")))
	}
	sort.Strings(parts)
	out := fmt.Sprintf("%d pods, %d Ready; %s", len(pods.Items), ready, strings.Join(parts, "; "))
	evs, err := cs.CoreV1().Events(BenchNamespace).List(ctx, metav1.ListOptions{FieldSelector: "type=Warning"})
	if err == nil && len(evs.Items) > 0 {
		items := evs.Items
		sort.Slice(items, func(i, j int) bool { return items[i].LastTimestamp.Before(&items[j].LastTimestamp) })
		var last []string
		for _, e := range items[max(0, len(items)-5):] {
			last = append(last, fmt.Sprintf("%s %s: %s", e.InvolvedObject.Name, e.Reason, strings.TrimSpace(e.Message)))
		}
		out += "; latest warnings: " + strings.Join(last, " | ")
	}
	return out
}

// deleteBenchWorkloads deletes the benchmark's Deployments (app=kilab-bench)
// and waits until their pods are gone, i.e. every CNI DEL has run.
func (l *Lab) deleteBenchWorkloads(ctx context.Context, cs kubernetes.Interface) error {
	sel := metav1.ListOptions{LabelSelector: "app=" + benchApp}
	if err := cs.AppsV1().Deployments(BenchNamespace).DeleteCollection(ctx, metav1.DeleteOptions{}, sel); err != nil {
		return err
	}
	if err := cs.AppsV1().ReplicaSets(BenchNamespace).DeleteCollection(ctx, metav1.DeleteOptions{}, sel); err != nil {
		return err
	}
	if err := cs.CoreV1().Pods(BenchNamespace).DeleteCollection(ctx, metav1.DeleteOptions{}, sel); err != nil {
		return err
	}
	return poll(ctx, 5*time.Minute, "the benchmark's pods deleted", func() (bool, string, error) {
		pods, err := cs.CoreV1().Pods(BenchNamespace).List(ctx, sel)
		if err != nil {
			return false, err.Error(), nil
		}
		return len(pods.Items) == 0, fmt.Sprintf("%d pods left", len(pods.Items)), nil
	})
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// percentile is the nearest-rank percentile of ds (0 for none).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// trackState is what a pod watch has seen, with this process's clock: when
// each pod was first seen, first seen Ready, which still exist.
type trackState struct {
	seen, ready map[types.UID]time.Time
	node        map[types.UID]string
	live        map[types.UID]bool
	lastGone    time.Time
	synced      bool
}

// readyLive lists the pods that exist and were seen Ready (and are not
// being deleted).
func (s *trackState) readyLive() []types.UID {
	var out []types.UID
	for uid, ok := range s.live {
		if _, r := s.ready[uid]; ok && r {
			out = append(out, uid)
		}
	}
	return out
}

// podTracker follows the pods of a label selector with a watch (re-listing
// when the watch ends), so that times are those of the events, not of a
// polling interval.
type podTracker struct {
	mu      sync.Mutex
	st      trackState
	changed chan struct{}
}

func trackPods(ctx context.Context, cs kubernetes.Interface, ns, selector string) *podTracker {
	t := &podTracker{changed: make(chan struct{}, 1), st: trackState{
		seen: map[types.UID]time.Time{}, ready: map[types.UID]time.Time{}, node: map[types.UID]string{}, live: map[types.UID]bool{}}}
	go t.run(ctx, cs, ns, selector)
	return t
}

func (t *podTracker) run(ctx context.Context, cs kubernetes.Interface, ns, selector string) {
	for ctx.Err() == nil {
		list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			select { // back off before listing again
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		now := time.Now()
		t.update(func(s *trackState) {
			present := map[types.UID]bool{}
			for i := range list.Items {
				present[list.Items[i].UID] = true
				s.observe(&list.Items[i], now)
			}
			for uid := range s.live {
				if !present[uid] {
					delete(s.live, uid)
					s.lastGone = now
				}
			}
			s.synced = true
		})
		w, err := cs.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: selector, ResourceVersion: list.ResourceVersion})
		if err != nil {
			continue
		}
		for ev := range w.ResultChan() {
			now := time.Now()
			p, ok := ev.Object.(*corev1.Pod)
			if ev.Type == watch.Error || !ok {
				break
			}
			t.update(func(s *trackState) {
				if ev.Type == watch.Deleted {
					if s.live[p.UID] {
						delete(s.live, p.UID)
						s.lastGone = now
					}
					return
				}
				s.observe(p, now)
			})
		}
		w.Stop()
	}
}

func (s *trackState) observe(p *corev1.Pod, now time.Time) {
	if _, ok := s.seen[p.UID]; !ok {
		s.seen[p.UID] = now
		s.live[p.UID] = true
	}
	if p.Spec.NodeName != "" {
		s.node[p.UID] = p.Spec.NodeName
	}
	if _, ok := s.ready[p.UID]; !ok && podReady(p) {
		s.ready[p.UID] = now
	}
}

func (t *podTracker) update(f func(*trackState)) {
	t.mu.Lock()
	f(&t.st)
	t.mu.Unlock()
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

func (t *podTracker) read(f func(*trackState)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f(&t.st)
}

// wait returns once cond holds, re-checking it on every change the watch
// brings, or fails after timeout.
func (t *podTracker) wait(ctx context.Context, timeout time.Duration, cond func(*trackState) bool) error {
	return t.waitPolling(ctx, timeout, 0, cond, nil)
}

// waitPolling is wait that also calls poll every interval (and on every
// change); it returns once cond or poll says done.
func (t *podTracker) waitPolling(ctx context.Context, timeout, interval time.Duration, cond func(*trackState) bool, poll func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var tick <-chan time.Time
	if interval > 0 {
		tk := time.NewTicker(interval)
		defer tk.Stop()
		tick = tk.C
	}
	for {
		t.mu.Lock()
		done := cond(&t.st)
		t.mu.Unlock()
		if done {
			return nil
		}
		if poll != nil {
			ok, err := poll()
			if err != nil || ok {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.changed:
		case <-tick:
		}
	}
}

func (t *podTracker) waitSynced(ctx context.Context, timeout time.Duration) error {
	if err := t.wait(ctx, timeout, func(s *trackState) bool { return s.synced }); err != nil {
		return fmt.Errorf("listing the benchmark's pods: %w", err)
	}
	return nil
}

// BenchTable writes the results (every round's), their medians over the
// rounds, the ratios of the medians (with kube-ipam's create→Ready ratio
// of each round, its spread) and the CPU per pod by component.
func BenchTable(w io.Writer, rs []BenchResult, header string) {
	fmt.Fprintln(w, header)
	sum, rounds := benchSummary(rs)
	benchRows(w, rs, rounds > 1)
	by := map[string]BenchResult{}
	for _, r := range sum {
		by[r.Variant] = r
	}
	of := ""
	if rounds > 1 {
		of = fmt.Sprintf(" (medians of %d rounds)", rounds)
		fmt.Fprintf(w, "median of %d rounds:\n", rounds)
		benchRows(w, sum, false)
	}
	ratio := func(a, b string) string {
		ra, oka := by[a]
		rb, okb := by[b]
		if !oka || !okb || rb.Ready == 0 {
			return fmt.Sprintf("%-26s n/a", a+" / "+b)
		}
		free := "n/a (a leak)"
		if ra.Free > 0 && rb.Free > 0 {
			free = fmt.Sprintf("%.2f×", ra.Free.Seconds()/rb.Free.Seconds())
		}
		return fmt.Sprintf("%-26s create→Ready %.2f×, delete→gone %.2f×, delete→free %s", a+" / "+b,
			ra.Ready.Seconds()/rb.Ready.Seconds(), ra.Gone.Seconds()/max(rb.Gone.Seconds(), 1e-9), free)
	}
	fmt.Fprintf(w, "ratios%s:\n", of)
	fmt.Fprintln(w, "  "+ratio("kube-ipam", "eth0 only"))
	fmt.Fprintln(w, "  "+ratio("whereabouts", "eth0 only"))
	fmt.Fprintln(w, "  "+ratio("whereabouts", "kube-ipam"))
	if rounds > 1 {
		for _, v := range []string{"kube-ipam", "whereabouts"} {
			if per := roundRatios(rs, v, "eth0 only"); len(per) > 0 {
				fmt.Fprintf(w, "  %-26s create→Ready by round: %s\n", v+" / eth0 only", strings.Join(per, ", "))
			}
		}
	}
	cpuTable(w, sum, of)
}

// benchRows writes one line per result.
func benchRows(w io.Writer, rs []BenchResult, withRound bool) {
	round := func(r BenchResult) string {
		if withRound {
			return fmt.Sprintf("%6d", r.Round)
		}
		return ""
	}
	if withRound {
		fmt.Fprintf(w, "%-12s %6s %5s %22s %12s %12s %18s %20s  %s\n", "variant", "round", "N", "create→all Ready (s)", "pod p50 (s)", "pod p99 (s)", "delete→gone (s)", "delete→all free (s)", "pods per node")
	} else {
		fmt.Fprintf(w, "%-12s %5s %22s %12s %12s %18s %20s  %s\n", "variant", "N", "create→all Ready (s)", "pod p50 (s)", "pod p99 (s)", "delete→gone (s)", "delete→all free (s)", "pods per node")
	}
	for _, r := range rs {
		var nodes []string
		for n, c := range r.PerNode {
			nodes = append(nodes, fmt.Sprintf("%s %d", n, c))
		}
		sort.Strings(nodes)
		free := fmt.Sprintf("%.1f", r.Free.Seconds())
		if r.Leaked > 0 {
			free = fmt.Sprintf("%d leaked", r.Leaked)
		}
		sep := ""
		if withRound {
			sep = " "
		}
		fmt.Fprintf(w, "%-12s %s%s%5d %22.1f %12.1f %12.1f %18.1f %20s  %s\n", r.Variant, round(r), sep, r.Pods, r.Ready.Seconds(),
			r.ReadyP50.Seconds(), r.ReadyP99.Seconds(), r.Gone.Seconds(), free, strings.Join(nodes, ", "))
	}
}

// roundRatios is variant a's create→Ready over b's in each round both
// were measured in.
func roundRatios(rs []BenchResult, a, b string) []string {
	ready := map[[2]any]time.Duration{}
	maxRound := 0
	for _, r := range rs {
		ready[[2]any{r.Variant, r.Round}] = r.Ready
		maxRound = max(maxRound, r.Round)
	}
	var out []string
	for round := 1; round <= maxRound; round++ {
		ra, rb := ready[[2]any{a, round}], ready[[2]any{b, round}]
		if ra > 0 && rb > 0 {
			out = append(out, fmt.Sprintf("%.2f×", ra.Seconds()/rb.Seconds()))
		}
	}
	return out
}

// benchSummary is one result per variant (in the order they first
// appear) with the median of each figure over its rounds, and the number
// of rounds. A leak in any round makes the median's Free zero and its
// Leaked the largest leak.
func benchSummary(rs []BenchResult) ([]BenchResult, int) {
	var order []string
	of := map[string][]BenchResult{}
	rounds := 0
	for _, r := range rs {
		if _, ok := of[r.Variant]; !ok {
			order = append(order, r.Variant)
		}
		of[r.Variant] = append(of[r.Variant], r)
		rounds = max(rounds, len(of[r.Variant]))
	}
	var sum []BenchResult
	for _, v := range order {
		group := of[v]
		if len(group) == 1 {
			sum = append(sum, group[0])
			continue
		}
		m := BenchResult{Variant: v, Pods: group[0].Pods, Held: group[0].Held}
		pick := func(f func(BenchResult) time.Duration) time.Duration {
			var ds []time.Duration
			for _, r := range group {
				ds = append(ds, f(r))
			}
			return median(ds)
		}
		m.Ready = pick(func(r BenchResult) time.Duration { return r.Ready })
		m.ReadyP50 = pick(func(r BenchResult) time.Duration { return r.ReadyP50 })
		m.ReadyP99 = pick(func(r BenchResult) time.Duration { return r.ReadyP99 })
		m.Gone = pick(func(r BenchResult) time.Duration { return r.Gone })
		for _, r := range group {
			m.Leaked = max(m.Leaked, r.Leaked)
		}
		if m.Leaked == 0 {
			m.Free = pick(func(r BenchResult) time.Duration { return r.Free })
		}
		m.CPUUp, m.CPUDown = map[string]time.Duration{}, map[string]time.Duration{}
		for _, c := range cpuComponents(group) {
			m.CPUUp[c] = pick(func(r BenchResult) time.Duration { return r.CPUUp[c] })
			m.CPUDown[c] = pick(func(r BenchResult) time.Duration { return r.CPUDown[c] })
		}
		sum = append(sum, m)
	}
	return sum, rounds
}

// cpuTable writes the CPU per pod of each component, for each variant's
// start (scale to N until all Ready) and stop (scale to 0 until all free).
func cpuTable(w io.Writer, rs []BenchResult, of string) {
	comps := cpuComponents(rs)
	if len(comps) == 0 {
		return
	}
	fmt.Fprintf(w, "CPU per pod (ms)%s, start = scale to N until all Ready, stop = scale to 0 until all gone and free:\n", of)
	fmt.Fprintf(w, "%-50s", "component")
	for _, r := range rs {
		fmt.Fprintf(w, " %24s", r.Variant+" start / stop")
	}
	fmt.Fprintln(w)
	for _, c := range comps {
		fmt.Fprintf(w, "%-50s", c)
		for _, r := range rs {
			per := func(d time.Duration) float64 { return float64(d.Milliseconds()) / float64(max(1, r.Pods)) }
			fmt.Fprintf(w, " %24s", fmt.Sprintf("%.1f / %.1f", per(r.CPUUp[c]), per(r.CPUDown[c])))
		}
		fmt.Fprintln(w)
	}
}

// benchHeader describes the run: where and when, with the machine's load.
func benchHeader(o Options, bo BenchOptions) string {
	host, _ := os.Hostname()
	return fmt.Sprintf("pod-start benchmark (kube-ipam-lab bench), %s, host %s, %d cores, load average %s\n"+
		"lab: %d nodes, mode %s, store %s; %d pods per variant, one Deployment scaled 0→%d→0, %d round(s); whereabouts %s (range %s)",
		time.Now().UTC().Format(time.RFC3339), host, runtime.NumCPU(), loadAvg(),
		o.Nodes, o.Mode, storeName(o), bo.Pods, bo.Pods, max(1, bo.Rounds), WhereaboutsVersion, WhereaboutsRange)
}

// loadAvg is the 1, 5 and 15 minute load average: the other work on the
// machine moves the figures.
func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

func storeName(o Options) string {
	if o.KubernetesStore() {
		return StoreKubernetes
	}
	return StoreEtcd
}

// WriteBenchResults writes the table (and the results as JSON beside it)
// into dir, returning the table's path.
func WriteBenchResults(dir string, rs []BenchResult, header string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	var b strings.Builder
	BenchTable(&b, rs, header)
	path := filepath.Join(dir, "pod-start-"+stamp+".txt")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return "", err
	}
	js, err := json.MarshalIndent(rs, "", "  ")
	if err != nil {
		return path, err
	}
	return path, os.WriteFile(filepath.Join(dir, "pod-start-"+stamp+".json"), js, 0o644)
}
