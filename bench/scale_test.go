package bench

// BenchmarkControlScale is issue 14's "scale of the control side": a
// simulated cluster on a real kube-apiserver (testenv.StartKube) with
// scaleNodes fake Ready nodes and scalePods pods bound to them
// (spec.nodeName; no kubelet runs), each with an allocation committed
// through the store's own write API (store.Backend.Commit, as the plugin's
// ADD does), and the real kube-ipam-controller binary running against it.
// It measures:
//
//   - start: process start to the end of the first pass (the informer's
//     LIST of every pod, then one pass);
//   - steady state: the controller's CPU (user+sys from /proc/<pid>/stat)
//     over scaleSteadyPasses resync passes, its RSS (VmRSS, VmHWM), and the
//     pass durations (its log, and the pass histogram of its /metrics);
//   - reclaim: scaleDeadNodes Node objects deleted and their pods
//     force-deleted, as the pod GC of kube-controller-manager deletes the
//     pods of a node that is gone (it does so after a 40 s quarantine,
//     left out here); the time from the first deletion to the last of
//     their allocations freed in the store (a store watch), with
//     --grace scaleGrace and --resync scaleResync.
//
// It fails when an allocation that is not on a dead node is freed at any
// time (the store watch sees every release), when the dead nodes'
// allocations are not all freed within scaleDeadline, or when the store
// does not hold exactly the survivors afterwards. It runs once per
// benchmark run (b.N == 1) per store: etcd (the API server's own, under
// kube-ipam's prefix) and the Kubernetes API store. Nothing is asserted on
// time.

import (
	"bufio"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"kubeipam/internal/config"
	"kubeipam/internal/ipam"
	"kubeipam/internal/store"
	"kubeipam/internal/stores"
	"kubeipam/internal/testenv"
)

// scalePods is issue 14's 20,000; KUBE_IPAM_SCALE_PODS changes it for a
// quicker look (it must be a multiple of scaleNodes).
var scalePods = envInt("KUBE_IPAM_SCALE_PODS", 20000)

const (
	scaleNodes        = 200
	scaleNamespaces   = 20
	scaleDeadNodes    = 10 // node-000 .. node-009: scalePods/scaleNodes pods each
	scaleGrace        = 10 * time.Second
	scaleResync       = 10 * time.Second
	scaleSteadyPasses = 6
	scaleWorkers      = 32              // concurrent creates while seeding and deleting
	scaleDeadline     = 5 * time.Minute // a reclaim taking longer is a failure
	scaleNetwork      = "scale"
	scaleFirstIP      = "10.60.0.10"
)

// scaleStores are the stores the scenario runs on, in order: etcd, and
// with KUBE_IPAM_SCALE_STORES=etcd,kubernetes the Kubernetes API store too
// (not by default: see bench/README.md).
var scaleStores = strings.Split(cmp.Or(os.Getenv("KUBE_IPAM_SCALE_STORES"), config.StoreEtcd), ",")

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

var scaleScenarios = map[string]*scenario[scaleResults]{}

func init() {
	for _, s := range scaleStores {
		scaleScenarios[s] = &scenario[scaleResults]{}
	}
}

type scaleResults struct {
	store      string
	seed       time.Duration // creating the pods and their allocations
	startPass  time.Duration // controller start -> end of its first pass
	firstPass  time.Duration // that pass's own duration
	startRSSKB int64         // VmRSS after the first pass

	// Steady state: scaleSteadyPasses passes, nothing to free.
	steadyWall   time.Duration
	steadyCPU    time.Duration
	steadyPasses []time.Duration // the window's passes, from the log
	histMean     time.Duration   // kube_ipam_reconcile_duration_seconds sum/count
	histCount    int
	steadyRSSKB  int64
	steadyHWMKB  int64

	// Reclaim of the dead nodes' allocations.
	dead          int           // allocations on the dead nodes
	deleteSpan    time.Duration // first node deletion -> last pod deleted
	reclaim       time.Duration // first node deletion -> last allocation freed
	afterDelete   time.Duration // last pod deleted -> last allocation freed
	firstFreed    time.Duration // first node deletion -> first allocation freed
	reclaimPasses int           // passes that released something
	maxRelPass    time.Duration // the longest of them
	passesDuring  int           // every pass between the deletion and the last free
	maxPassDuring time.Duration
	reclaimCPU    time.Duration // controller CPU from the deletion to the last free
	endHWMKB      int64
}

func BenchmarkControlScale(b *testing.B) {
	for _, st := range scaleStores {
		b.Run("store="+st, func(b *testing.B) {
			r := scaleScenarios[st].result(b, func(b *testing.B) *scaleResults { return runScale(b, st) }, printScale)
			b.ReportMetric(r.steadyCPU.Seconds()/r.steadyWall.Minutes(), "cpu-s/min")
			b.ReportMetric(float64(r.steadyHWMKB)/1024, "max-rss-MB")
			b.ReportMetric(median(r.steadyPasses).Seconds(), "pass-p50-s")
			b.ReportMetric(r.reclaim.Seconds(), "reclaim-s")
			b.ReportMetric(0, "ns/op") // the scenario's time is not per op
		})
	}
}

func printScale(r *scaleResults) {
	t := &table{nameW: 72, widths: []int{10}}
	t.text("\nkube-ipam-controller at scale, %s store: %d nodes, %d pods with allocations (%d namespaces), real kube-apiserver, %d CPUs",
		r.store, scaleNodes, scalePods, scaleNamespaces, runtime.NumCPU())
	t.row("metric", "value")
	sec := func(d time.Duration) string { return num(d.Seconds(), 2) }
	mb := func(kb int64) string { return num(float64(kb)/1024, 1) }
	t.row("seeding: pods and allocations created, s", sec(r.seed))
	t.row("controller start -> end of first pass, s", sec(r.startPass))
	t.row("  first pass, s", sec(r.firstPass))
	t.row("  VmRSS after it, MB", mb(r.startRSSKB))
	t.row(fmt.Sprintf("steady state: CPU user+sys, s per minute (%d passes, --resync %v)", len(r.steadyPasses), scaleResync),
		num(r.steadyCPU.Seconds()/r.steadyWall.Minutes(), 2))
	t.row("  CPU per pass (window CPU / passes), s", num(r.steadyCPU.Seconds()/float64(len(r.steadyPasses)), 2))
	t.row("  pass duration p50, s", sec(median(r.steadyPasses)))
	t.row("  pass duration max, s", sec(slices.Max(r.steadyPasses)))
	t.row(fmt.Sprintf("  pass duration mean of /metrics histogram (%d passes), s", r.histCount), sec(r.histMean))
	t.row("  VmRSS, MB", mb(r.steadyRSSKB))
	t.row("  VmHWM (peak RSS since start), MB", mb(r.steadyHWMKB))
	t.row(fmt.Sprintf("reclaim of %d dead nodes' %d allocations: deletion -> last freed, s", scaleDeadNodes, r.dead), sec(r.reclaim))
	t.row("  deletion -> first freed, s", sec(r.firstFreed))
	t.row(fmt.Sprintf("  deleting the %d nodes and %d pods took, s", scaleDeadNodes, r.dead), sec(r.deleteSpan))
	t.row("  last pod deleted -> last freed, s", sec(r.afterDelete))
	t.row(fmt.Sprintf("  passes meanwhile: %d; the longest, s", r.passesDuring), sec(r.maxPassDuring))
	t.row(fmt.Sprintf("  passes that released: %d; the longest, s", r.reclaimPasses), sec(r.maxRelPass))
	t.row("  controller CPU meanwhile, s", sec(r.reclaimCPU))
	t.row("VmHWM at the end, MB", mb(r.endHWMKB))
	t.text("--grace %v --resync %v (bench settings; defaults 5m and 1m): a leak is freed on the first pass at least --grace after",
		scaleGrace, scaleResync)
	t.text("the pass that first saw it, so the reclaim includes the grace and up to one resync. No other allocation was freed.")
	fmt.Print(t.String())
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// scalePod is one simulated pod and its allocation.
type scalePod struct {
	ns, name, node string
	uid            string
	cid            string
}

type scaleEnv struct {
	b     *testing.B
	ctx   context.Context
	kube  *testenv.Kube
	cs    kubernetes.Interface // unthrottled, for seeding
	be    store.Backend
	conf  string
	pods  []scalePod
	watch *freeWatch
}

func runScale(b *testing.B, storeKind string) *scaleResults {
	ctrlBin := testenv.Binary(b, "kube-ipam-controller")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := &scaleEnv{b: b, ctx: ctx, kube: testenv.StartKube(b, testenv.KubeOptions{})}
	rc := rest.CopyConfig(e.kube.Config)
	rc.QPS, rc.Burst = 5000, 5000 // the test client's 200/s would make seeding take minutes
	var err error
	if e.cs, err = kubernetes.NewForConfig(rc); err != nil {
		b.Fatal(err)
	}
	ipamConf := fmt.Sprintf(`"etcdConfig": {"etcdURL": %q}`, e.kube.Etcd.ClientURL)
	if storeKind == config.StoreKubernetes {
		e.kube.InstallCRDs(b, "internal/store/kubestore/crds/ipallocations.yaml", "internal/store/kubestore/crds/ipstickies.yaml")
		ipamConf = `"store": "kubernetes"`
	}
	e.conf = filepath.Join(b.TempDir(), "10-kube-ipam.conf")
	body := fmt.Sprintf(`{"cniVersion": "0.3.1", "name": %q, "type": "macvlan", "master": "eth0",
	  "ipam": {"type": "kube-ipam", "kubeConfig": %q, %s,
	           "subnet": "10.60.0.0/16", "rangeStart": %q, "rangeEnd": "10.60.255.200"}}`,
		scaleNetwork, e.kube.Kubeconfig, ipamConf, scaleFirstIP)
	if err := os.WriteFile(e.conf, []byte(body), 0o644); err != nil {
		b.Fatal(err)
	}
	nets, err := config.LoadNetworks(e.conf)
	if err != nil {
		b.Fatal(err)
	}
	opener := stores.New(10 * time.Second)
	defer opener.Close()
	if e.be, err = opener.Open(ctx, nets[0]); err != nil {
		b.Fatal(err)
	}
	res := &scaleResults{store: storeKind}

	// Every release is seen from before the controller starts. A canary
	// allocation without a pod (never a GC candidate) shows the watch is
	// live; the watch starts from the revision it reads first, so a canary
	// committed before that is not seen and another one is committed.
	e.watch = startFreeWatch(ctx, e.be)
	var canaries []string
	var lastCanary time.Time
	e.waitFor("the store watch to see a canary", time.Minute, func() bool {
		if e.watch.canarySeen() {
			return true
		}
		if time.Since(lastCanary) > time.Second {
			cid := fmt.Sprintf("canary-%d", len(canaries))
			e.commit(scalePod{cid: cid, node: nodeName(0)}, ipam.Advance(netip.MustParseAddr(scaleFirstIP), uint64(scalePods+len(canaries))).String())
			canaries, lastCanary = append(canaries, cid), time.Now()
		}
		return false
	})

	t0 := time.Now()
	e.seed()
	res.seed = time.Since(t0)
	e.expectAttachments(scalePods+len(canaries), nil)

	c := startScaleController(b, ctrlBin, e.conf, e.kube.Kubeconfig)
	e.waitFor("the controller's first pass", 2*time.Minute, func() bool { return len(c.passes()) >= 1 })
	first := c.passes()[0]
	res.startPass, res.firstPass, res.startRSSKB = first.at.Sub(c.started), first.duration, c.mem("VmRSS")
	if first.alive != scalePods || first.candidates != 0 {
		b.Fatalf("first pass: %d alive, %d candidates; want %d and 0", first.alive, first.candidates, scalePods)
	}

	// Steady state: from the end of a pass to the end of the
	// scaleSteadyPasses-th next one.
	n0 := len(c.passes())
	e.waitFor("a pass to end", time.Minute, func() bool { return len(c.passes()) > n0 })
	n1, cpu0, w0 := len(c.passes()), c.cpu(), time.Now()
	e.waitFor("the steady-state passes", time.Duration(scaleSteadyPasses+2)*scaleResync+time.Minute,
		func() bool { return len(c.passes()) >= n1+scaleSteadyPasses })
	cpu1, w1 := c.cpu(), time.Now()
	res.steadyCPU, res.steadyWall = cpu1-cpu0, w1.Sub(w0)
	for _, p := range c.passes()[n1 : n1+scaleSteadyPasses] {
		res.steadyPasses = append(res.steadyPasses, p.duration)
		if p.alive != scalePods || p.candidates != 0 {
			b.Fatalf("steady pass: %d alive, %d candidates; want %d and 0", p.alive, p.candidates, scalePods)
		}
	}
	sum := scrapeMetric(c.metrics, `kube_ipam_reconcile_duration_seconds_sum{network="`+scaleNetwork+`"}`)
	cnt := scrapeMetric(c.metrics, `kube_ipam_reconcile_duration_seconds_count{network="`+scaleNetwork+`"}`)
	if cnt <= 0 {
		b.Fatalf("no pass in the controller's metrics (count %v)", cnt)
	}
	res.histMean, res.histCount = time.Duration(sum/cnt*float64(time.Second)), int(cnt)
	res.steadyRSSKB, res.steadyHWMKB = c.mem("VmRSS"), c.mem("VmHWM")
	if n := e.watch.freedCount(); n != 0 {
		b.Fatalf("%d allocations freed before any pod was deleted", n)
	}

	// Reclaim: the dead nodes and their pods go away.
	dead := map[string]bool{}
	var survivors []string
	var doomed []scalePod
	for _, p := range e.pods {
		if nodeIndex(p.node) < scaleDeadNodes {
			dead[p.cid] = true
			doomed = append(doomed, p)
		} else {
			survivors = append(survivors, p.cid)
		}
	}
	survivors = append(survivors, canaries...)
	res.dead = len(doomed)
	e.watch.expect(dead)
	passesBefore := len(c.passes())
	cpuBefore := c.cpu()
	t0 = time.Now()
	e.deleteDeadNodes(doomed)
	res.deleteSpan = time.Since(t0)
	e.waitFor("the reclaim of the dead nodes' allocations", scaleDeadline, func() bool {
		if wrong := e.watch.wrong(); len(wrong) > 0 {
			b.Fatalf("freed allocations of live pods: %v", wrong[:min(len(wrong), 5)])
		}
		return e.watch.freedCount() == len(doomed)
	})
	res.reclaimCPU = c.cpu() - cpuBefore
	firstFree, lastFree := e.watch.span()
	res.reclaim, res.firstFreed = lastFree.Sub(t0), firstFree.Sub(t0)
	res.afterDelete = lastFree.Sub(t0.Add(res.deleteSpan))
	// Two more passes must free nothing else.
	nDone := len(c.passes())
	e.waitFor("two passes after the reclaim", 3*scaleResync+time.Minute, func() bool { return len(c.passes()) >= nDone+2 })
	if wrong := e.watch.wrong(); len(wrong) > 0 {
		b.Fatalf("freed allocations of live pods: %v", wrong[:min(len(wrong), 5)])
	}
	if n := e.watch.freedCount(); n != len(doomed) {
		b.Fatalf("%d allocations freed, want %d", n, len(doomed))
	}
	e.expectAttachments(len(survivors), survivors)
	for _, p := range c.passes()[passesBefore:] {
		if p.at.After(lastFree.Add(time.Second)) {
			break
		}
		res.passesDuring++
		res.maxPassDuring = max(res.maxPassDuring, p.duration)
		if p.released > 0 {
			res.reclaimPasses++
			res.maxRelPass = max(res.maxRelPass, p.duration)
		}
	}
	res.endHWMKB = c.mem("VmHWM")
	c.stop()
	return res
}

func nodeName(i int) string { return fmt.Sprintf("node-%03d", i) }

func nodeIndex(name string) int {
	i, err := strconv.Atoi(strings.TrimPrefix(name, "node-"))
	if err != nil {
		return -1
	}
	return i
}

// seed creates the namespaces, the nodes, and scalePods pods spread over
// them, each with an allocation of its own address.
func (e *scaleEnv) seed() {
	for i := range scaleNamespaces {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("scale-%02d", i)}}
		if _, err := e.cs.CoreV1().Namespaces().Create(e.ctx, ns, metav1.CreateOptions{}); err != nil {
			e.b.Fatal(err)
		}
	}
	e.parallel(scaleNodes, func(i int) error { return e.addNode(nodeName(i)) })
	e.pods = make([]scalePod, scalePods)
	first := netip.MustParseAddr(scaleFirstIP)
	e.parallel(scalePods, func(i int) error {
		p := scalePod{ns: fmt.Sprintf("scale-%02d", i%scaleNamespaces), name: fmt.Sprintf("app-%05d", i), node: nodeName(i % scaleNodes)}
		created, err := e.cs.CoreV1().Pods(p.ns).Create(e.ctx, scalePodObject(p), metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("creating pod %s/%s: %w", p.ns, p.name, err)
		}
		p.uid = string(created.UID)
		sum := sha256.Sum256([]byte(p.uid))
		p.cid = hex.EncodeToString(sum[:]) // a runtime's 64-hex sandbox ID
		e.pods[i] = p
		return e.commitErr(p, ipam.Advance(first, uint64(i)).String())
	})
}

// scalePodObject is a pod as a Deployment makes it, bound to its node.
func scalePodObject(p scalePod) *corev1.Pod {
	app := "app-" + p.name[len(p.name)-2:]
	ctrl := true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: p.ns,
			Labels:      map[string]string{"app": app, "pod-template-hash": "5d8f7c9b6d", "tier": "web"},
			Annotations: map[string]string{"k8s.v1.cni.cncf.io/networks": "k8snet2"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: app + "-5d8f7c9b6d",
				UID: "0b4e2b1c-6a27-4f3e-9a61-3c1f7d9e2a10", Controller: &ctrl, BlockOwnerDeletion: &ctrl}}},
		Spec: corev1.PodSpec{NodeName: p.node, Containers: []corev1.Container{{
			Name: "app", Image: "registry.example.com/team/" + app + ":1.4.2",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			Env:   []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "DB_ADDR", Value: "10.188.0.218:5432"}},
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}},
		}}},
	}
}

// addNode registers a fake Ready node (testenv.Kube.AddNode does the
// same, but fails the test from its caller's goroutine).
func (e *scaleEnv) addNode(name string) error {
	nodes := e.cs.CoreV1().Nodes()
	n, err := nodes.Create(e.ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name,
		Labels: map[string]string{corev1.LabelHostname: name, corev1.LabelOSStable: "linux"}}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating node %s: %w", name, err)
	}
	res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("16Gi"), corev1.ResourcePods: resource.MustParse("110")}
	now := metav1.Now()
	n.Status.Capacity, n.Status.Allocatable = res, res
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
		Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}}
	if _, err = nodes.UpdateStatus(e.ctx, n, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("updating status of node %s: %w", name, err)
	}
	return nil
}

func (e *scaleEnv) commit(p scalePod, ip string) string {
	if err := e.commitErr(p, ip); err != nil {
		e.b.Fatal(err)
	}
	return p.cid
}

// commitErr commits p's allocation of ip as the plugin's ADD does.
func (e *scaleEnv) commitErr(p scalePod, ip string) error {
	now := time.Now()
	att := store.Attachment{ContainerID: p.cid, IfName: "net1", IPs: []string{ip}, PodNamespace: p.ns, PodName: p.name,
		PodUID: p.uid, Node: p.node, Created: now}
	rec := store.Record{Network: scaleNetwork, IP: ip, Kind: store.KindDynamic, IfName: "net1", ContainerID: p.cid,
		PodNamespace: p.ns, PodName: p.name, PodUID: p.uid, Node: p.node, Created: now}
	ok, err := e.be.Commit(e.ctx, &store.Claim{Attachment: att, Items: []store.ClaimItem{{Record: rec, Mode: store.ClaimFresh}}})
	if err != nil {
		return fmt.Errorf("committing %s for %s: %w", ip, p.cid, err)
	}
	if !ok {
		return fmt.Errorf("claim of %s for %s lost", ip, p.cid)
	}
	return nil
}

// deleteDeadNodes deletes the dead nodes' Node objects, then their pods
// with grace 0, as kube-controller-manager's pod GC does for the pods of a
// node that no longer exists (no CNI DEL runs).
func (e *scaleEnv) deleteDeadNodes(pods []scalePod) {
	e.parallel(scaleDeadNodes, func(i int) error { return e.cs.CoreV1().Nodes().Delete(e.ctx, nodeName(i), metav1.DeleteOptions{}) })
	zero := int64(0)
	e.parallel(len(pods), func(i int) error {
		uid := types.UID(pods[i].uid)
		return e.cs.CoreV1().Pods(pods[i].ns).Delete(e.ctx, pods[i].name,
			metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid}})
	})
}

// parallel runs fn(0..n-1) on scaleWorkers goroutines and fails the
// benchmark with the first error.
func (e *scaleEnv) parallel(n int, fn func(i int) error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	next := make(chan int)
	for range min(scaleWorkers, n) {
		wg.Go(func() {
			for i := range next {
				if err := fn(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if len(errs) > 0 {
		e.b.Fatalf("%d of %d failed; the first: %v", len(errs), n, errs[0])
	}
}

// expectAttachments checks that the store holds n attachments, and when
// cids is given, exactly those.
func (e *scaleEnv) expectAttachments(n int, cids []string) {
	atts, err := e.be.Attachments(e.ctx)
	if err != nil {
		e.b.Fatal(err)
	}
	if len(atts) != n {
		e.b.Fatalf("%d attachments in the store, want %d", len(atts), n)
	}
	if cids == nil {
		return
	}
	want := map[string]bool{}
	for _, c := range cids {
		want[c] = true
	}
	for _, a := range atts {
		if !want[a.ContainerID] {
			e.b.Fatalf("attachment of %s (pod %s/%s) in the store, not expected", store.ShortID(a.ContainerID), a.PodNamespace, a.PodName)
		}
	}
}

func (e *scaleEnv) waitFor(desc string, timeout time.Duration, cond func() bool) {
	e.kube.WaitFor(e.b, desc, timeout, func() (bool, error) { return cond(), nil })
}

// freeWatch records, through the store's watch, every allocation record
// created and deleted.
type freeWatch struct {
	mu        sync.Mutex
	canary    bool            // a canary's record was seen created
	expected  map[string]bool // container IDs whose release is expected
	freed     map[string]time.Time
	unwanted  []string
	first     time.Time
	last      time.Time
	freedSeen int
}

func startFreeWatch(ctx context.Context, be store.Backend) *freeWatch {
	w := &freeWatch{freed: map[string]time.Time{}}
	go be.Watch(ctx, func(ev store.RecordEvent) {
		now := time.Now()
		w.mu.Lock()
		defer w.mu.Unlock()
		switch ev.Type {
		case store.EventCreated:
			if strings.HasPrefix(ev.Record.ContainerID, "canary-") {
				w.canary = true
			}
		case store.EventDeleted:
			cid := ev.Record.ContainerID
			if !w.expected[cid] {
				w.unwanted = append(w.unwanted, fmt.Sprintf("%s (pod %s/%s on %s)", ev.Record.IP, ev.Record.PodNamespace, ev.Record.PodName, ev.Record.Node))
				return
			}
			if _, dup := w.freed[cid]; dup {
				return
			}
			w.freed[cid] = now
			if w.first.IsZero() {
				w.first = now
			}
			w.last = now
		}
	})
	return w
}

func (w *freeWatch) canarySeen() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.canary
}

// expect sets the allocations whose release is expected from now on.
func (w *freeWatch) expect(cids map[string]bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.expected = cids
}

func (w *freeWatch) freedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.freed) + len(w.unwanted)
}

func (w *freeWatch) wrong() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.unwanted)
}

func (w *freeWatch) span() (first, last time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.first, w.last
}

// scaleController is one kube-ipam-controller process.
type scaleController struct {
	b       testing.TB
	pid     int
	log     string
	metrics string
	started time.Time
	stop    func()
}

func startScaleController(b testing.TB, bin, conf, kubeconfig string) *scaleController {
	c := &scaleController{b: b, log: filepath.Join(b.TempDir(), "controller.log"), metrics: freeAddr(b)}
	f, err := os.Create(c.log)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", conf, "--kubeconfig", kubeconfig,
		"--grace", scaleGrace.String(), "--resync", scaleResync.String(), "--metrics-addr", c.metrics)
	cmd.Stdout, cmd.Stderr = f, f
	c.started = time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	c.pid = cmd.Process.Pid
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); f.Close(); close(done) }()
	var once sync.Once
	c.stop = func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		})
	}
	b.Cleanup(func() {
		c.stop()
		if b.Failed() {
			out, _ := os.ReadFile(c.log)
			b.Logf("controller log:\n%s", out[max(0, len(out)-6000):])
		}
	})
	return c
}

// scalePass is one `msg=pass` line of the controller's log.
type scalePass struct {
	at                                time.Time
	alive, candidates, released, atts int
	duration                          time.Duration
}

// passes reads the controller's log: every pass of the network so far.
func (c *scaleController) passes() []scalePass {
	f, err := os.Open(c.log)
	if err != nil {
		c.b.Fatal(err)
	}
	defer f.Close()
	var out []scalePass
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, " msg=pass ") || !strings.Contains(line, " network="+scaleNetwork+" ") {
			continue
		}
		kv := map[string]string{}
		for _, f := range strings.Fields(line) {
			if k, v, ok := strings.Cut(f, "="); ok {
				kv[k] = v
			}
		}
		var p scalePass
		var errs []error
		atoi := func(k string) int {
			n, err := strconv.Atoi(kv[k])
			errs = append(errs, err)
			return n
		}
		p.at, err = time.Parse(time.RFC3339Nano, kv["time"])
		errs = append(errs, err)
		p.alive, p.candidates, p.released, p.atts = atoi("alive"), atoi("candidates"), atoi("released"), atoi("attachments")
		p.duration, err = time.ParseDuration(kv["duration"])
		errs = append(errs, err)
		if err := errors.Join(errs...); err != nil {
			c.b.Fatalf("controller log line %q: %v", line, err)
		}
		out = append(out, p)
	}
	return out
}

// cpu is the process's user+system CPU time so far.
func (c *scaleController) cpu() time.Duration {
	d, err := procCPU(c.pid)
	if err != nil {
		c.b.Fatal(err)
	}
	return d
}

// mem is a /proc/<pid>/status field in kB (VmRSS, VmHWM).
func (c *scaleController) mem(field string) int64 {
	kb, err := procStatusKB(c.pid, field)
	if err != nil {
		c.b.Fatal(err)
	}
	return kb
}
