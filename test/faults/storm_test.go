package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubeipam/internal/testenv"
)

// The storm's shape. 400 pods, each ADD → DEL → ADD (a container restart),
// is 1,200 operations before retries.
const (
	stormDynamic   = 220 // plain pods, dynamic address
	stormFixed     = 80  // plain pods with kube-ipam.ip
	stormSets      = 10  // StatefulSets of stormReplicas pods; even ones with kube-ipam.ip-pool,
	stormReplicas  = 10  // odd ones sticky dynamic
	stormInFlight  = 24  // plugin processes at once (2 cores)
	stormNetwork   = "storm"
	stormTimeout   = 8 * time.Second
	pAfterCommit   = 0.15 // share of ADDs killed right after their claim committed
	pRandomKillAdd = 0.35 // share of ADDs killed at a random moment
	pRandomKillDel = 0.40 // share of DELs killed at a random moment
	pNewSandbox    = 0.5  // share of killed ADDs retried by a new sandbox (new container ID)
)

var (
	stormRangeStart = netip.MustParseAddr("10.188.0.10")
	stormRangeEnd   = netip.MustParseAddr("10.188.7.250")
)

// stormPod is one pod and what the test, playing its kubelet, knows of it.
type stormPod struct {
	name, uid string
	kind      string // dynamic, fixed, pool, sticky
	want      string // the address it must get ("" for dynamic; sticky: its first)
	sandboxes int
	cid       string   // the container holding its addresses ("" after DEL)
	ips       []string // what that container holds
}

func (p *stormPod) newCID() string {
	p.sandboxes++
	return fmt.Sprintf("%s-s%d", p.name, p.sandboxes)
}

func (p *stormPod) args(cid string) string {
	return fmt.Sprintf("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=%s;K8S_POD_UID=%s", p.name, cid, p.uid)
}

type storm struct {
	t    *testing.T
	p    *plugin
	cli  *clientv3.Client
	sem  chan struct{}
	bad  problems
	mu   sync.Mutex
	held map[string]string // address -> pod that holds it (per the results)
	// Running estimates of a call's duration, for the random kill moments.
	est  map[string]time.Duration
	lats map[string]latencies
	// What the kills hit.
	killedAdds, killedAfterCommit, killedRandomCommitted, killedDels int
	retries, lateDels                                                int
	ops                                                              int
}

// TestKillStorm: ≥ 1,000 concurrent ADDs and DELs of the real binary for
// the fixed, dynamic and StatefulSet pods of a real kube-apiserver, against
// a real etcd, with a quarter of the plugin processes SIGKILLed — at random
// moments and, through the plugin's test hook, right after their claim
// committed — and every killed operation retried once, as a runtime would
// (ADD with the same container ID, or by a new sandbox; DEL again).
//
// Throughout: every call not killed succeeds, every successful ADD is stored
// with the address its pod must get, no address is given to two pods, a
// claim whose process was killed after the commit is stored and its retry
// returns it (a new sandbox takes it over, and the earlier container's late
// DEL frees nothing), DEL leaves nothing. At the end: one attachment per pod,
// `kube-ipamctl check` clean; then every pod is deleted without a DEL and one
// GC pass leaves no allocation of any kind.
func TestKillStorm(t *testing.T) {
	bin := testenv.Binary(t, "kube-ipam")
	ctlBin := testenv.Binary(t, "kube-ipamctl")
	startUp := time.Now()
	k := testenv.StartKube(t, testenv.KubeOptions{ControllerManager: true})
	e := testenv.StartEtcd(t) // kube-ipam's own, as deployed
	dir := t.TempDir()
	logFile := filepath.Join(dir, "kube-ipam.log")
	conf := netConf(stormNetwork, map[string]any{
		"kubeConfig": k.Kubeconfig, "etcdConfig": map[string]any{"etcdURL": strings.Join(e.Endpoints, ",")},
		"subnet": "10.188.0.0/16", "rangeStart": stormRangeStart.String(), "rangeEnd": stormRangeEnd.String(),
		"gateway": "10.188.0.1", "releaseCooldown": "0s", "timeout": stormTimeout.String(),
		"logFile": logFile, "logLevel": "info", "nodeName": "node-1",
	})
	confFile := filepath.Join(dir, "10-storm.conf")
	if err := os.WriteFile(confFile, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("kube-ipam log (tail):\n%s", tail(string(b), 6000))
		}
	})

	pods := createStormPods(t, k)
	t.Logf("control plane, etcd and %d pods ready in %v", len(pods), time.Since(startUp).Round(100*time.Millisecond))

	s := &storm{t: t, p: newPlugin(t, bin, nil, conf), cli: e.Client(t), sem: make(chan struct{}, stormInFlight),
		held: map[string]string{}, est: map[string]time.Duration{"ADD": 100 * time.Millisecond, "DEL": 60 * time.Millisecond},
		lats: map[string]latencies{}}
	s.p.hold = newHoldDir(t)
	rand.Shuffle(len(pods), func(i, j int) { pods[i], pods[j] = pods[j], pods[i] })

	start := time.Now()
	var wg sync.WaitGroup
	for _, pod := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.add(pod)
			s.del(pod)
			s.add(pod)
		}()
	}
	wg.Wait()
	took := time.Since(start)
	procs, killed := s.p.procs.Load(), s.p.killed.Load()
	t.Logf("storm: %d operations (%d retries, %d late DELs of replaced sandboxes) in %v, %.0f processes/s; %d of %d plugin processes SIGKILLed (%.1f %%): %d ADDs (%d right after the commit, %d at random moments of which %d after the commit), %d DELs",
		s.ops, s.retries, s.lateDels, took.Round(100*time.Millisecond), float64(procs)/took.Seconds(), killed, procs, 100*float64(killed)/float64(procs),
		s.killedAdds, s.killedAfterCommit, s.killedAdds-s.killedAfterCommit, s.killedRandomCommitted, s.killedDels)
	for _, v := range []string{"ADD", "DEL"} {
		t.Logf("%s latency (calls not killed, %d in flight): %v", v, stormInFlight, s.lats[v])
	}
	if s.ops < 1000 {
		t.Errorf("only %d operations, want ≥ 1000", s.ops)
	}
	if float64(killed) < 0.2*float64(procs) {
		t.Errorf("only %d of %d plugin processes were killed (%.1f %%), want ≥ 20 %%", killed, procs, 100*float64(killed)/float64(procs))
	}

	// Every pod holds exactly what its last ADD returned; nothing else is held.
	v := readStore(t, s.cli, stormNetwork)
	perPod := map[string][]string{}
	for key, a := range v.atts {
		perPod[a.PodUID+"/"+a.IfName] = append(perPod[a.PodUID+"/"+a.IfName], key)
	}
	for _, pod := range pods {
		if pod.cid == "" {
			continue // its last ADD failed: reported already
		}
		if msg := v.stored(pod.cid, "net1", pod.ips); msg != "" {
			s.bad.add("a successful ADD is not stored (end of storm)", "pod %s: %s", pod.name, msg)
		}
		if keys := perPod[pod.uid+"/net1"]; len(keys) > 1 {
			s.bad.add("more than one attachment per (pod UID, interface)", "pod %s (%s): %v", pod.name, pod.uid, keys)
		}
	}
	if len(v.atts) != len(pods) || len(v.recs) != len(pods) {
		s.bad.add("allocations left beside the pods' own", "%d attachments and %d records for %d pods (records by kind %v)", len(v.atts), len(v.recs), len(pods), v.kinds())
	}
	s.bad.report(t)
	check(t, ctlBin, nil, confFile)

	// Every pod goes away without a DEL (a node lost with its pods), then
	// one GC pass.
	delStart := time.Now()
	deleteAllPods(t, k)
	t.Logf("every pod and StatefulSet deleted in %v", time.Since(delStart).Round(100*time.Millisecond))
	gcStart := time.Now()
	gcArgs := []string{"gc", "--config", confFile, "--timeout", "3m"}
	// One pod GET per allocation: at client-go's default 5 requests/s the
	// pass over 400 pods alone takes 80 s. Raised where kube-ipamctl can.
	if help, _ := ctl(t, ctlBin, nil, "gc", "--help"); strings.Contains(help, "--kube-api-qps") {
		gcArgs = append(gcArgs, "--kube-api-qps", "200", "--kube-api-burst", "400")
	}
	out, code := ctl(t, ctlBin, nil, gcArgs...)
	if code != 0 {
		t.Fatalf("kube-ipamctl gc exited %d:\n%s", code, tail(out, 4000))
	}
	v = readStore(t, s.cli, stormNetwork)
	if len(v.recs) != 0 || len(v.atts) != 0 || v.stickies != 0 {
		t.Errorf("after deleting every pod and one GC pass: %d records (by kind %v), %d attachments, %d sticky entries left, want none\n%s",
			len(v.recs), v.kinds(), len(v.atts), v.stickies, tail(out, 2000))
	} else {
		t.Logf("one GC pass (%v): 0 dynamic, 0 fixed, 0 sticky allocations left (%d released addresses remembered as tombstones)", time.Since(gcStart).Round(time.Millisecond), v.tombs)
	}
}

// exec runs one call within the in-flight bound.
func (s *storm) exec(c call) *result {
	s.sem <- struct{}{}
	defer func() { <-s.sem }()
	r := s.p.run(c)
	s.mu.Lock()
	s.ops++
	if r.ok() && c.kill == noKill {
		// Every call succeeds while etcd is healthy: a plain moving average
		// tracks how long one takes at this load.
		s.est[c.verb] = (7*s.est[c.verb] + r.dur()) / 8
		s.lats[c.verb] = append(s.lats[c.verb], r.dur())
	}
	s.mu.Unlock()
	return r
}

// plan picks how this call is killed, if at all. Random moments are
// uniform over the time a call currently takes (most of it is process
// start-up and the pod read), or over its last part (the claim or release
// and the result), so they fall before, during and after the commit.
func (s *storm) plan(verb string) (killMode, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	x := rand.Float64()
	est := float64(s.est[verb])
	d := time.Duration(est * rand.Float64())
	if rand.IntN(2) == 0 {
		d = time.Duration(est * (0.6 + 0.6*rand.Float64()))
	}
	switch {
	case verb == "ADD" && x < pAfterCommit:
		return killAfterCommit, 0
	case verb == "ADD" && x < pAfterCommit+pRandomKillAdd, verb == "DEL" && x < pRandomKillDel:
		return killAfterDelay, d
	}
	return noKill, 0
}

func (s *storm) add(pod *stormPod) {
	cid := pod.newCID()
	mode, delay := s.plan("ADD")
	r := s.exec(call{verb: "ADD", cid: cid, args: pod.args(cid), kill: mode, delay: delay})
	if mode == killAfterCommit && !r.held {
		s.bad.add("after-commit hook not honoured ("+holdEnv+")", "pod %s: %s, no hold file appeared", pod.name, r)
	}
	if r.killed {
		s.mu.Lock()
		s.killedAdds++
		if r.held {
			s.killedAfterCommit++
		}
		s.mu.Unlock()
		committed, err := attIPs(s.cli, stormNetwork, cid, "net1")
		if err != nil {
			s.t.Errorf("reading the store: %v", err)
			return
		}
		if r.held && committed == nil {
			s.bad.add("killed after the commit, but no claim stored", "pod %s container %s", pod.name, cid)
		}
		if !r.held && committed != nil {
			s.mu.Lock()
			s.killedRandomCommitted++
			s.mu.Unlock()
		}
		retryCID := cid
		if rand.Float64() < pNewSandbox {
			retryCID = pod.newCID()
		}
		r2 := s.exec(call{verb: "ADD", cid: retryCID, args: pod.args(retryCID)})
		s.mu.Lock()
		s.retries++
		s.mu.Unlock()
		if !r2.ok() {
			s.bad.add("retry of a killed ADD failed", "pod %s (%s): %s", pod.name, pod.kind, r2)
			return
		}
		if committed != nil && !sameSet(r2.ips, committed) {
			how := "the same container's retry (idempotent ADD)"
			if retryCID != cid {
				how = "a new sandbox of the same pod (takeover)"
			}
			s.bad.add("retry after a killed ADD got other addresses than the committed claim", "pod %s (%s): claim of %s held %v, %s got %v", pod.name, pod.kind, cid, committed, how, r2.ips)
		}
		if retryCID != cid {
			if left, err := attIPs(s.cli, stormNetwork, cid, "net1"); err != nil || left != nil {
				s.bad.add("new sandbox's ADD left the earlier container's attachment (no takeover)", "pod %s (%s): att/%s/net1 lists %v after %s got %v (%v)", pod.name, pod.kind, cid, left, retryCID, r2.ips, err)
			}
			// The runtime's late teardown of the failed sandbox.
			r3 := s.exec(call{verb: "DEL", cid: cid, args: pod.args(cid)})
			s.mu.Lock()
			s.lateDels++
			s.mu.Unlock()
			if !r3.ok() {
				s.bad.add("late DEL of a replaced sandbox failed", "pod %s: %s", pod.name, r3)
			}
			if msg, err := storedOne(s.cli, stormNetwork, retryCID, "net1", r2.ips); err != nil || msg != "" {
				s.bad.add("late DEL of the earlier container freed the new one's addresses", "pod %s (%s): DEL %s, then %s (%v)", pod.name, pod.kind, cid, msg, err)
			}
		}
		cid, r = retryCID, r2
	} else if !r.ok() {
		s.bad.add("ADD not killed failed", "pod %s (%s): %s", pod.name, pod.kind, r)
		return
	}
	s.verifyAdd(pod, cid, r.ips)
}

// verifyAdd: the address is the one the pod must get, no other pod holds
// it, and the store holds it for this container.
func (s *storm) verifyAdd(pod *stormPod, cid string, ips []string) {
	if len(ips) != 1 {
		s.bad.add("ADD returned other than one address", "pod %s: %v", pod.name, ips)
		return
	}
	ip := ips[0]
	switch pod.kind {
	case "dynamic":
		a, err := netip.ParseAddr(ip)
		if err != nil || a.Less(stormRangeStart) || stormRangeEnd.Less(a) {
			s.bad.add("dynamic address outside the range", "pod %s got %s", pod.name, ip)
		}
	case "sticky":
		if pod.want == "" {
			pod.want = ip
		}
		fallthrough
	default:
		if ip != pod.want {
			s.bad.add("pod did not get its fixed or sticky address", "pod %s (%s) got %s, want %s", pod.name, pod.kind, ip, pod.want)
		}
	}
	s.mu.Lock()
	if other, ok := s.held[ip]; ok && other != pod.name {
		s.bad.add("duplicate: one address given to two pods", "%s given to pod %s (container %s) while pod %s holds it", ip, pod.name, cid, other)
	}
	s.held[ip] = pod.name
	s.mu.Unlock()
	if msg, err := storedOne(s.cli, stormNetwork, cid, "net1", ips); err != nil || msg != "" {
		s.bad.add("a successful ADD is not stored", "pod %s: %s (%v)", pod.name, msg, err)
	}
	pod.cid, pod.ips = cid, ips
}

func (s *storm) del(pod *stormPod) {
	if pod.cid == "" {
		return
	}
	// From now on the addresses may be free at any moment.
	s.mu.Lock()
	for _, ip := range pod.ips {
		if s.held[ip] == pod.name {
			delete(s.held, ip)
		}
	}
	s.mu.Unlock()
	mode, delay := s.plan("DEL")
	c := call{verb: "DEL", cid: pod.cid, args: pod.args(pod.cid), kill: mode, delay: delay}
	r := s.exec(c)
	if r.killed {
		s.mu.Lock()
		s.killedDels++
		s.retries++
		s.mu.Unlock()
		c.kill = noKill
		r = s.exec(c)
	}
	if !r.ok() {
		s.bad.add("DEL failed", "pod %s: %s", pod.name, r)
		return
	}
	if left, err := attIPs(s.cli, stormNetwork, pod.cid, "net1"); err != nil || left != nil {
		s.bad.add("DEL left the attachment", "pod %s: att/%s/net1 lists %v (%v)", pod.name, pod.cid, left, err)
	}
	pod.cid, pod.ips = "", nil
}

// createStormPods creates the plain pods and the StatefulSets (whose pods
// the real StatefulSet controller creates; no scheduler: the plugin needs
// only the pod object) and returns them all.
func createStormPods(t *testing.T, k *testenv.Kube) []*stormPod {
	t.Helper()
	ctx := context.Background()
	var (
		mu   sync.Mutex
		pods []*stormPod
		wg   sync.WaitGroup
		errs = make(chan error, 1)
	)
	sem := make(chan struct{}, 16)
	for i := range stormDynamic + stormFixed {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			sp := &stormPod{name: fmt.Sprintf("dyn-%03d", i), kind: "dynamic"}
			var ann map[string]string
			if i >= stormDynamic {
				j := i - stormDynamic
				sp.name, sp.kind, sp.want = fmt.Sprintf("fix-%03d", j), "fixed", fmt.Sprintf("10.188.20.%d", 10+j)
				ann = map[string]string{"kube-ipam.ip": sp.want, "kube-ipam.netmask": "255.255.0.0"}
			}
			p, err := k.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: sp.name, Labels: map[string]string{"storm": "plain"}, Annotations: ann},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "c:v1"}}},
			}, metav1.CreateOptions{})
			if err != nil {
				select {
				case errs <- fmt.Errorf("creating pod %s: %w", sp.name, err):
				default:
				}
				return
			}
			sp.uid = string(p.UID)
			mu.Lock()
			pods = append(pods, sp)
			mu.Unlock()
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	pools := map[string][]string{}
	for i := range stormSets {
		name := fmt.Sprintf("db%d", i)
		var ann map[string]string
		if i%2 == 0 {
			var pool []string
			for o := range stormReplicas {
				pool = append(pool, fmt.Sprintf("10.188.30.%d", 10+i*stormReplicas+o))
			}
			pools[name] = pool
			ann = map[string]string{"kube-ipam.ip-pool": strings.Join(pool, ",")}
		}
		if _, err := k.Client.AppsV1().StatefulSets("default").Create(ctx, testenv.StatefulSet(name, stormReplicas, ann), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range stormSets {
		name := fmt.Sprintf("db%d", i)
		var l *corev1.PodList
		k.WaitFor(t, fmt.Sprintf("%d pods of StatefulSet %s", stormReplicas, name), 90*time.Second, func() (bool, error) {
			var err error
			l, err = k.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
			return err == nil && len(l.Items) == stormReplicas, err
		})
		for _, p := range l.Items {
			var o int
			if _, err := fmt.Sscanf(strings.TrimPrefix(p.Name, name+"-"), "%d", &o); err != nil {
				t.Fatalf("pod %s: %v", p.Name, err)
			}
			sp := &stormPod{name: p.Name, uid: string(p.UID), kind: "sticky"}
			if pool := pools[name]; pool != nil {
				sp.kind, sp.want = "pool", pool[o]
			}
			pods = append(pods, sp)
		}
	}
	return pods
}

// deleteAllPods deletes the StatefulSets (their pods go with them) and the
// plain pods, and waits until no pod is left.
func deleteAllPods(t *testing.T, k *testenv.Kube) {
	t.Helper()
	ctx := context.Background()
	bg, zero := metav1.DeletePropagationBackground, int64(0)
	if err := k.Client.AppsV1().StatefulSets("default").DeleteCollection(ctx, metav1.DeleteOptions{PropagationPolicy: &bg}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := k.Client.CoreV1().Pods("default").DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{LabelSelector: "storm=plain"}); err != nil {
		t.Fatal(err)
	}
	k.WaitFor(t, "every pod and StatefulSet gone", 120*time.Second, func() (bool, error) {
		pl, err := k.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		sl, err := k.Client.AppsV1().StatefulSets("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		return len(pl.Items) == 0 && len(sl.Items) == 0, fmt.Errorf("%d pods, %d StatefulSets left", len(pl.Items), len(sl.Items))
	})
}
