package bench

// BenchmarkGCReclaim times the reclaim of 1 000 leaked allocations against
// a real etcd and a real kube-apiserver, by the real binaries:
//
//   - one `kube-ipamctl gc` pass (pods created, their allocations committed
//     as the plugin's ADD does, then the pods deleted without a CNI DEL);
//   - kube-ipam-controller (--grace 2s, --resync 1s): 1 000 more pods are
//     deleted while it runs; the time from the last deletion until every
//     one of their allocations is free;
//   - kube-ipam-controller started after 1 000 more were deleted: the time
//     from its start until all are free, and the one pass that frees them.
//
// 500 live pods with allocations are there throughout and must keep them.
// Like BenchmarkAdd the scenario runs once per benchmark run (b.N == 1);
// larger b.N reuse its result.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubeipam/internal/config"
	"kubeipam/internal/ipam"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

const (
	gcLeaks     = 1000
	gcLive      = 500
	gcWorkers   = 16 // concurrent API and etcd writes while planting
	ctlGrace    = 2 * time.Second
	ctlResync   = time.Second
	reclaimWait = 5 * time.Minute // a reclaim taking longer is a failure
)

type gcResults struct {
	gcPass time.Duration // one kube-ipamctl gc pass
	gcOut  string        // its last line
	// The controller running while the pods are deleted.
	ctlAfterLast  time.Duration // last deletion -> all free
	ctlAfterFirst time.Duration // first deletion -> all free
	deleteSpan    time.Duration // how long deleting the pods took
	ctlPasses     int           // passes that released something
	ctlMaxPass    time.Duration // the longest of them
	// The controller started with the leaks already there.
	ctlStartToFree time.Duration // process start -> all free
	ctlOnePass     time.Duration // the one pass that released them all
}

var gcScenario scenario[gcResults]

func BenchmarkGCReclaim(b *testing.B) {
	r := gcScenario.result(b, runGCScenario, printGCTable)
	b.ReportMetric(r.gcPass.Seconds(), "gc-pass-s")
	b.ReportMetric(r.ctlAfterLast.Seconds(), "controller-s")
	b.ReportMetric(0, "ns/op") // the scenario's time is not per op
}

func printGCTable(r *gcResults) {
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nkube-ipam GC of %d leaked allocations (%d live pods kept), real etcd and kube-apiserver, %d CPUs\n", gcLeaks, gcLive, runtime.NumCPU())
	fmt.Fprintf(&sb, "%-68s %9s\n", "metric", "seconds")
	row := func(name string, d time.Duration) { fmt.Fprintf(&sb, "%-68s %9.2f\n", name, d.Seconds()) }
	row("kube-ipamctl gc: one pass, process start to exit", r.gcPass)
	row("controller, pods deleted while it runs: last deletion -> all free", r.ctlAfterLast)
	row("  first deletion -> all free", r.ctlAfterFirst)
	row(fmt.Sprintf("  longest of the %d passes that released", r.ctlPasses), r.ctlMaxPass)
	row("controller started after the crash: start -> all free", r.ctlStartToFree)
	row(fmt.Sprintf("  the one pass that released all %d", gcLeaks), r.ctlOnePass)
	fmt.Fprintf(&sb, "gc said: %s\n", r.gcOut)
	fmt.Fprintf(&sb, "The controller runs with --grace %v --resync %v (a leak is freed once seen on two passes --grace apart);\n", ctlGrace, ctlResync)
	fmt.Fprintf(&sb, "deleting the %d pods took %.1f s. Default --kube-api-qps and --workers everywhere.\n", gcLeaks, r.deleteSpan.Seconds())
	fmt.Print(sb.String())
}

type gcBench struct {
	b    testing.TB
	kube *testenv.Kube
	etcd *clientv3.Client
	st   *store.Store
	conf string
	next int // next address offset
}

func runGCScenario(b *testing.B) *gcResults {
	ctl := testenv.Binary(b, "kube-ipamctl")
	ctrl := testenv.Binary(b, "kube-ipam-controller")
	kube := testenv.StartKube(b, testenv.KubeOptions{})
	e := testenv.StartEtcd(b)
	g := &gcBench{b: b, kube: kube, etcd: e.Client(b), conf: filepath.Join(b.TempDir(), "10-kube-ipam.conf")}
	body := fmt.Sprintf(`{"cniVersion": "0.3.1", "name": "gcbench", "type": "macvlan", "master": "eth0",
	  "ipam": {"type": "kube-ipam", "kubeConfig": %q, "etcdConfig": {"etcdURL": %q},
	           "subnet": "10.40.0.0/16", "rangeStart": "10.40.0.10", "rangeEnd": "10.40.255.200"}}`, kube.Kubeconfig, e.ClientURL)
	if err := os.WriteFile(g.conf, []byte(body), 0o644); err != nil {
		b.Fatal(err)
	}
	nets, err := config.LoadNetworks(g.conf)
	if err != nil {
		b.Fatal(err)
	}
	g.st = store.New(g.etcd, nets[0].Etcd.Prefix, nets[0].Name)
	res := &gcResults{}

	g.plant("live", gcLive)
	leaked := g.plant("gone", gcLeaks)
	g.deletePods(leaked)
	g.expectAttachments(gcLive + gcLeaks)

	// One kube-ipamctl gc pass.
	start := time.Now()
	cmd := exec.Command(ctl, "gc", "--config", g.conf)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	res.gcPass = time.Since(start)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	res.gcOut = lines[len(lines)-1]
	if err != nil || res.gcOut != fmt.Sprintf("Freed %d of %d leaked allocation(s).", gcLeaks, gcLeaks) {
		b.Fatalf("kube-ipamctl gc: %v\n%s\n%s", err, res.gcOut, errb.String())
	}
	g.expectAttachments(gcLive)

	// The controller, running while 1 000 more pods are deleted.
	leaked = g.plant("crash", gcLeaks)
	c := g.startController(ctrl)
	// Its first pass has seen every pod alive (it starts after its informer synced).
	g.waitFor("the controller's first pass", time.Minute, func() bool {
		return scrapeMetric(c.metrics, `kube_ipam_reconcile_duration_seconds_count{network="gcbench"}`) >= 1
	})
	t0 := time.Now()
	g.deletePods(leaked)
	last := time.Now()
	res.deleteSpan = last.Sub(t0)
	g.waitFor("the controller's reclaim", reclaimWait, func() bool { return g.attachments() == gcLive })
	res.ctlAfterLast = time.Since(last)
	res.ctlAfterFirst = time.Since(t0)
	c.stop()
	res.ctlPasses, res.ctlMaxPass, _ = c.releasingPasses()
	g.expectAttachments(gcLive)

	// The controller started after 1 000 pods were deleted (a node crashed
	// while it was down): its first pass sees them all, the first pass
	// --grace later releases them all.
	leaked = g.plant("down", gcLeaks)
	g.deletePods(leaked)
	c = g.startController(ctrl)
	g.waitFor("the restarted controller's reclaim", reclaimWait, func() bool { return g.attachments() == gcLive })
	res.ctlStartToFree = time.Since(c.started)
	c.stop()
	passes, _, one := c.releasingPasses()
	if passes != 1 || one.released != gcLeaks {
		b.Fatalf("%d passes released the %d leaks found at start (the first %d), want one", passes, gcLeaks, one.released)
	}
	res.ctlOnePass = one.duration
	g.expectAttachments(gcLive)
	return res
}

// plant creates n pods named prefix-i and commits an allocation for each,
// as the plugin's ADD does.
func (g *gcBench) plant(prefix string, n int) []*corev1.Pod {
	ctx := context.Background()
	pods := make([]*corev1.Pod, n)
	first := g.next
	g.next += n
	g.parallel(n, func(i int) error {
		p, err := g.kube.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%04d", prefix, i)},
			Spec:       corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%20), Containers: []corev1.Container{{Name: "c", Image: "c:v1"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		pods[i] = p
		ip := ipam.Advance(netip.MustParseAddr("10.40.0.10"), uint64(first+i)).String()
		cid := fmt.Sprintf("%s%04d%s", prefix, i, strings.ReplaceAll(string(p.UID), "-", ""))
		att := store.Attachment{ContainerID: cid, IfName: "net1", IPs: []string{ip}, PodNamespace: "default", PodName: p.Name,
			PodUID: string(p.UID), Node: p.Spec.NodeName, Created: time.Now()}
		rec := store.Record{Network: "gcbench", IP: ip, Kind: store.KindDynamic, IfName: "net1", ContainerID: cid,
			PodNamespace: "default", PodName: p.Name, PodUID: string(p.UID), Node: p.Spec.NodeName, Created: att.Created}
		ok, err := g.st.Commit(ctx, &store.Claim{Attachment: att, Items: []store.ClaimItem{{Record: rec, Mode: store.ClaimFresh}}})
		if !ok && err == nil {
			err = fmt.Errorf("claim of %s lost", ip)
		}
		return err
	})
	return pods
}

// deletePods deletes the pods at once (grace 0), as after a node crash: no
// CNI DEL runs.
func (g *gcBench) deletePods(pods []*corev1.Pod) {
	zero := int64(0)
	g.parallel(len(pods), func(i int) error {
		return g.kube.Client.CoreV1().Pods("default").Delete(context.Background(), pods[i].Name,
			metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pods[i].UID}})
	})
}

func (g *gcBench) parallel(n int, fn func(i int) error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	next := make(chan int)
	for range gcWorkers {
		wg.Go(func() {
			for i := range next {
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
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
	if first != nil {
		g.b.Fatal(first)
	}
}

func (g *gcBench) attachments() int {
	atts, err := g.st.Attachments(context.Background())
	if err != nil {
		g.b.Fatal(err)
	}
	return len(atts)
}

func (g *gcBench) expectAttachments(n int) {
	if got := g.attachments(); got != n {
		g.b.Fatalf("%d attachments in etcd, want %d", got, n)
	}
}

func (g *gcBench) waitFor(desc string, timeout time.Duration, cond func() bool) {
	g.kube.WaitFor(g.b, desc, timeout, func() (bool, error) { return cond(), nil })
}

// runningController is one kube-ipam-controller process.
type runningController struct {
	b       testing.TB
	log     string
	metrics string
	started time.Time
	stop    func()
}

func (g *gcBench) startController(bin string) *runningController {
	c := &runningController{b: g.b, log: filepath.Join(g.b.TempDir(), "controller.log"), metrics: freeAddr(g.b)}
	f, err := os.Create(c.log)
	if err != nil {
		g.b.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", g.conf, "--kubeconfig", g.kube.Kubeconfig, "--leader-elect=false",
		"--grace", ctlGrace.String(), "--resync", ctlResync.String(), "--metrics-addr", c.metrics)
	cmd.Stdout, cmd.Stderr = f, f
	c.started = time.Now()
	if err := cmd.Start(); err != nil {
		g.b.Fatal(err)
	}
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
	g.b.Cleanup(func() {
		c.stop()
		if g.b.Failed() {
			out, _ := os.ReadFile(c.log)
			g.b.Logf("controller log:\n%s", out[max(0, len(out)-6000):])
		}
	})
	return c
}

type passLine struct {
	released int
	duration time.Duration
}

// releasingPasses reads the controller's log: how many passes released
// something, the longest of them, and the first.
func (c *runningController) releasingPasses() (n int, longest time.Duration, first passLine) {
	re := regexp.MustCompile(`msg=pass .* released=(\d+) .*duration=(\S+)`)
	b, err := os.ReadFile(c.log)
	if err != nil {
		c.b.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil || m[1] == "0" {
			continue
		}
		var p passLine
		p.released, _ = strconv.Atoi(m[1])
		p.duration, _ = time.ParseDuration(m[2])
		if n == 0 {
			first = p
		}
		n++
		longest = max(longest, p.duration)
	}
	return n, longest, first
}

func freeAddr(b testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// scrapeMetric returns one sample of the controller's /metrics (-1 when it
// cannot be read).
func scrapeMetric(addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				return f
			}
		}
	}
	return -1
}
