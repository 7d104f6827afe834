// Package controller tests kube-ipam-controller against a real control plane
// (kube-apiserver, controller-manager, scheduler; fake nodes), a real etcd
// and the real plugin binary: the test plays the kubelet, running the plugin
// for scheduled pods, and "crashes" nodes by force-deleting pods without a
// CNI DEL.
package controller

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

type cluster struct {
	t       *testing.T
	kube    *testenv.Kube
	etcd    *testenv.Etcd
	bin     string
	ctlBin  string
	conf    []byte
	confF   string
	log     string
	st      *store.Store
	network string
}

func newCluster(t *testing.T, nodes ...string) *cluster {
	t.Helper()
	bin := testenv.Binary(t, "kube-ipam")
	ctl := testenv.Binary(t, "kube-ipam-controller")
	k := testenv.StartKube(t, testenv.KubeOptions{ControllerManager: true, Scheduler: true})
	for _, n := range nodes {
		k.AddNode(t, n)
	}
	c := &cluster{t: t, kube: k, etcd: testenv.StartEtcd(t), bin: bin, ctlBin: ctl, log: filepath.Join(t.TempDir(), "kube-ipam.log")}
	ipam := map[string]any{
		"type": "kube-ipam", "kubeConfig": k.Kubeconfig,
		"etcdConfig": map[string]any{"etcdURL": strings.Join(c.etcd.Endpoints, ",")},
		"subnet":     "10.188.0.0/16", "rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.200",
		"gateway": "10.188.0.1", "logFile": c.log, "logLevel": "debug", "timeout": "10s",
		"releaseCooldown": "1h",
	}
	c.conf, _ = json.Marshal(map[string]any{"cniVersion": "0.3.1", "name": "k8snet2", "type": "macvlan", "master": "eth0", "ipam": ipam})
	c.confF = filepath.Join(t.TempDir(), "10-kube-ipam.conf")
	must(t, os.WriteFile(c.confF, c.conf, 0o644))
	nets, err := config.LoadNetworks(c.confF)
	must(t, err)
	c.network = nets[0].Name
	c.st = store.New(c.etcd.Client(t), nets[0].Etcd.Prefix, nets[0].Name)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(c.log)
			t.Logf("kube-ipam log (tail):\n%s", tail(b, 3000))
		}
	})
	return c
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// controller is one running kube-ipam-controller process.
type controller struct {
	cmd     *exec.Cmd
	log     string
	metrics string
	done    chan struct{}
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	return l.Addr().String()
}

// startController runs the real binary with a short grace and resync.
func (c *cluster) startController(extra ...string) *controller {
	c.t.Helper()
	ctl := &controller{log: filepath.Join(c.t.TempDir(), "controller.log"), metrics: freePort(c.t), done: make(chan struct{})}
	args := append([]string{"--config", c.confF, "--kubeconfig", c.kube.Kubeconfig, "--resync", "500ms", "--grace", "2s",
		"--metrics-addr", ctl.metrics, "--leader-elect=false"}, extra...)
	f, err := os.Create(ctl.log)
	must(c.t, err)
	ctl.cmd = exec.Command(c.ctlBin, args...)
	ctl.cmd.Stdout, ctl.cmd.Stderr = f, f
	must(c.t, ctl.cmd.Start())
	go func() { _ = ctl.cmd.Wait(); f.Close(); close(ctl.done) }()
	c.t.Cleanup(func() {
		ctl.stop()
		if c.t.Failed() {
			b, _ := os.ReadFile(ctl.log)
			c.t.Logf("controller log %s (tail):\n%s", ctl.log, tail(b, 6000))
		}
	})
	c.kube.WaitFor(c.t, "controller metrics endpoint", 30*time.Second, func() (bool, error) {
		select {
		case <-ctl.done:
			b, _ := os.ReadFile(ctl.log)
			c.t.Fatalf("controller exited:\n%s", b)
		default:
		}
		_, err := ctl.scrape()
		return err == nil, err
	})
	return ctl
}

func (ctl *controller) stop() {
	select {
	case <-ctl.done:
		return
	default:
	}
	_ = ctl.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-ctl.done:
	case <-time.After(10 * time.Second):
		_ = ctl.cmd.Process.Kill()
		<-ctl.done
	}
}

func (ctl *controller) logText() string {
	b, _ := os.ReadFile(ctl.log)
	return string(b)
}

// waitLog waits for the controller's log to contain want. The controller
// logs a release after the store write, so a test that has just seen the
// address freed may be ahead of the line.
func (ctl *controller) waitLog(t *testing.T, k *testenv.Kube, desc, want string, timeout time.Duration) {
	t.Helper()
	k.WaitFor(t, desc, timeout, func() (bool, error) { return strings.Contains(ctl.logText(), want), nil })
}

// scrape returns the metrics as "name{labels}" -> value.
func (ctl *controller) scrape() (map[string]float64, error) {
	resp, err := http.Get("http://" + ctl.metrics + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

var containerSeq atomic.Int64

// add runs the plugin's ADD for a pod, as the runtime would.
func (c *cluster) cni(verb string, p *corev1.Pod, cid string) string {
	c.t.Helper()
	cmd := exec.Command(c.bin)
	cmd.Env = []string{
		"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + cid, "CNI_NETNS=/var/run/netns/" + cid, "CNI_NETNS_OVERRIDE=1",
		"CNI_IFNAME=net1", "CNI_PATH=/opt/cni/bin", "KUBE_IPAM_NODE_NAME=" + p.Spec.NodeName,
		fmt.Sprintf("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=%s;K8S_POD_UID=%s", p.Namespace, p.Name, cid, p.UID),
	}
	cmd.Stdin = bytes.NewReader(c.conf)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		c.t.Fatalf("%s %s/%s: %v: %s %s", verb, p.Namespace, p.Name, err, out.String(), stderr.String())
	}
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	_ = json.Unmarshal(out.Bytes(), &r)
	if len(r.IPs) == 0 {
		return ""
	}
	return strings.Split(r.IPs[0].Address, "/")[0]
}

func (c *cluster) add(p *corev1.Pod) (ip, cid string) {
	c.t.Helper()
	cid = fmt.Sprintf("%s-%d", strings.ReplaceAll(p.Name, ".", "-"), containerSeq.Add(1))
	ip = c.cni("ADD", p, cid)
	if ip == "" {
		c.t.Fatalf("ADD for %s gave no address", p.Name)
	}
	return ip, cid
}

func (c *cluster) pod(name, node string) *corev1.Pod {
	c.t.Helper()
	p, err := c.kube.Client.CoreV1().Pods("default").Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "plain"}},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "c:v1"}}},
	}, metav1.CreateOptions{})
	must(c.t, err)
	return p
}

// forceDelete removes a pod at once (grace 0): what an operator does for
// the pods of a crashed node. No CNI DEL runs.
func (c *cluster) forceDelete(p *corev1.Pod) {
	c.t.Helper()
	zero := int64(0)
	err := c.kube.Client.CoreV1().Pods("default").Delete(context.Background(), p.Name,
		metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &p.UID}})
	must(c.t, err)
}

func (c *cluster) createSTS(name string, replicas int32) *appsv1.StatefulSet {
	c.t.Helper()
	s, err := c.kube.Client.AppsV1().StatefulSets("default").Create(context.Background(), testenv.StatefulSet(name, replicas, nil), metav1.CreateOptions{})
	must(c.t, err)
	return s
}

// holder is the container holding ip ("" when free).
func (c *cluster) holder(ip string) string {
	c.t.Helper()
	st, err := c.st.State(context.Background(), netip.MustParseAddr(ip))
	must(c.t, err)
	if st.Record == nil {
		return ""
	}
	return st.Record.ContainerID
}

// reusable: free, with a release-log entry (dynamic reuse after the cooldown).
func (c *cluster) reusable(ip string) bool {
	c.t.Helper()
	st, err := c.st.State(context.Background(), netip.MustParseAddr(ip))
	must(c.t, err)
	return st.Record == nil && st.Tomb != nil && st.Tomb.Log != ""
}

func (c *cluster) stickies() map[string]bool {
	c.t.Helper()
	l, err := c.st.Stickies(context.Background())
	must(c.t, err)
	out := map[string]bool{}
	for _, e := range l {
		out[fmt.Sprintf("%s/%s/%d", e.StatefulSet, e.StatefulSetUID, e.Ordinal)] = true
	}
	return out
}

func (c *cluster) waitFreed(desc string, timeout time.Duration, ips ...string) {
	c.t.Helper()
	c.kube.WaitFor(c.t, desc, timeout, func() (bool, error) {
		for _, ip := range ips {
			if !c.reusable(ip) {
				return false, fmt.Errorf("%s still held by %q", ip, c.holder(ip))
			}
		}
		return true, nil
	})
}

// TestNodeCrash: the pods of a crashed node are force-deleted without CNI
// DEL. Their dynamic addresses are reclaimed within about one grace period;
// the sticky address of a StatefulSet pod is kept while the StatefulSet
// exists, and the re-created pod (a takeover) keeps it. Metrics match.
func TestNodeCrash(t *testing.T) {
	c := newCluster(t, "node-1", "node-2")
	ctl := c.startController()

	var plain []*corev1.Pod
	ips := map[string]string{}
	for i := range 3 {
		p := c.pod(fmt.Sprintf("web-%d", i), "node-1")
		plain = append(plain, p)
		ips[p.Name], _ = c.add(p)
	}
	keep := c.pod("survivor", "node-2")
	keepIP, keepCID := c.add(keep)

	sts := c.createSTS("db", 2)
	dbPods := c.kube.Scheduled(c.t, "app=db", 2)
	dbIP, dbCID := map[string]string{}, map[string]string{}
	for i := range dbPods {
		dbIP[dbPods[i].Name], dbCID[dbPods[i].Name] = c.add(&dbPods[i])
	}

	// Crash: force-delete the plain pods and db-0 with no DEL.
	crashed := time.Now()
	for _, p := range plain {
		c.forceDelete(p)
	}
	c.forceDelete(&dbPods[0])
	c.waitFreed("dynamic addresses of crashed pods reclaimed", 30*time.Second, ips["web-0"], ips["web-1"], ips["web-2"])
	if d := time.Since(crashed); d < 2*time.Second {
		t.Fatalf("reclaimed after %v: before the 2s grace period", d)
	} else {
		t.Logf("reclaimed %v after the crash (grace 2s, resync 500ms)", d)
	}
	if h := c.holder(keepIP); h != keepCID {
		t.Fatalf("live pod's address %s now held by %q", keepIP, h)
	}
	// db-0 was re-created by the StatefulSet controller (new UID); its old
	// allocation is kept while the StatefulSet exists.
	time.Sleep(3 * time.Second)
	if h := c.holder(dbIP["db-0"]); h != dbCID["db-0"] {
		t.Fatalf("sticky address of db-0 freed while its StatefulSet exists (holder %q)", h)
	}
	// The new db-0 takes the address over; it is not freed afterwards.
	newDB0 := c.kube.Scheduled(c.t, "app=db", 2, dbPods[0].UID)[0]
	ip, cid := c.add(&newDB0)
	if ip != dbIP["db-0"] {
		t.Fatalf("re-created db-0 got %s, want its sticky %s", ip, dbIP["db-0"])
	}
	time.Sleep(3500 * time.Millisecond)
	if h := c.holder(ip); h != cid {
		t.Fatalf("taken-over address %s freed or lost (holder %q)", ip, h)
	}
	if h := c.holder(dbIP["db-1"]); h != dbCID["db-1"] {
		t.Fatalf("db-1's address changed holder: %q", h)
	}
	if s := c.stickies(); len(s) != 2 || !s[fmt.Sprintf("db/%s/0", sts.UID)] {
		t.Fatalf("sticky entries: %v", s)
	}
	old, _ := c.st.Attachment(context.Background(), dbCID["db-0"], "net1")
	if old != nil {
		t.Fatalf("stale attachment of the old db-0 container was not cleaned up")
	}

	// Metrics: 7 ADDs created 6 records (the new db-0 took its address over),
	// 3 records were released by GC.
	want := map[string]float64{
		`kube_ipam_allocations_total{network="k8snet2"}`:  6,
		`kube_ipam_releases_total{network="k8snet2"}`:     3,
		`kube_ipam_gc_reclaimed_total{network="k8snet2"}`: 3,
		// web-0..2, and the old db-0 attachment once taken over (it then holds nothing).
		`kube_ipam_gc_candidates_total{network="k8snet2"}`:        4,
		`kube_ipam_used{network="k8snet2"}`:                       3,
		`kube_ipam_sticky{network="k8snet2"}`:                     2,
		`kube_ipam_pool_size{network="k8snet2"}`:                  191,
		`kube_ipam_add_duration_seconds_count{network="k8snet2"}`: 7,
		`kube_ipam_claim_conflicts_total{network="k8snet2"}`:      0,
	}
	c.kube.WaitFor(t, "metrics", 10*time.Second, func() (bool, error) {
		m, err := ctl.scrape()
		for k, v := range want {
			if m[k] != v {
				return false, fmt.Errorf("%s = %v, want %v", k, m[k], v)
			}
		}
		return err == nil, err
	})
}

// TestStatefulSetLifecycle: scale-down then scale-up before the grace gives
// the ordinal its address back; after the grace the ordinal's address and
// sticky entry are released; a pod name reused by a new StatefulSet UID frees
// the old StatefulSet's allocation and keeps the new one; deleting the
// StatefulSet frees all its addresses after the grace.
func TestStatefulSetLifecycle(t *testing.T) {
	c := newCluster(t, "node-1")
	c.startController("--grace", "4s")
	ctx := context.Background()

	c.createSTS("db", 3)
	pods := c.kube.Scheduled(c.t, "app=db", 3)
	ip, cid := map[string]string{}, map[string]string{}
	for i := range pods {
		ip[pods[i].Name], cid[pods[i].Name] = c.add(&pods[i])
	}

	// Scale 3 -> 2 -> 3 quickly (DEL runs normally): db-2 regains its address.
	c.kube.ScaleStatefulSet(c.t, "db", 2)
	c.kube.FinishTermination(c.t, pods[2])
	c.cni("DEL", &pods[2], cid["db-2"])
	c.kube.ScaleStatefulSet(c.t, "db", 3)
	db2 := c.kube.Scheduled(c.t, "app=db", 3, pods[2].UID)[2]
	if got, _ := c.add(&db2); got != ip["db-2"] {
		t.Fatalf("db-2 scaled up before the grace got %s, want %s", got, ip["db-2"])
	}
	pods[2] = db2

	// Scale 3 -> 1 and wait past the grace: db-1 (DEL ran) and db-2 (no DEL:
	// its node crashed) lose their addresses and sticky entries.
	c.kube.ScaleStatefulSet(c.t, "db", 1)
	c.kube.FinishTermination(c.t, pods[1])
	c.cni("DEL", &pods[1], cid["db-1"])
	c.kube.FinishTermination(c.t, pods[2])
	c.waitFreed("scaled-down ordinals released", 30*time.Second, ip["db-1"], ip["db-2"])
	c.kube.WaitFor(t, "sticky entries of ordinals 1 and 2 gone", 10*time.Second, func() (bool, error) {
		s := c.stickies()
		return len(s) == 1, fmt.Errorf("%v", s)
	})
	if h := c.holder(ip["db-0"]); h != cid["db-0"] {
		t.Fatalf("db-0 lost its address (holder %q)", h)
	}

	// Delete the StatefulSet (db-0's node crashed: no DEL) and re-create it
	// at once under the same name: db-0 is a new pod of a new StatefulSet UID.
	bg := metav1.DeletePropagationBackground
	must(t, c.kube.Client.AppsV1().StatefulSets("default").Delete(ctx, "db", metav1.DeleteOptions{PropagationPolicy: &bg}))
	c.kube.FinishTermination(c.t, pods[0])
	sts2 := c.createSTS("db", 1)
	newDB0 := c.kube.Scheduled(c.t, "app=db", 1, pods[0].UID)[0]
	newIP, newCID := c.add(&newDB0)
	if newIP == ip["db-0"] {
		t.Fatalf("new StatefulSet's db-0 inherited the old StatefulSet's address %s", newIP)
	}
	c.waitFreed("old StatefulSet's db-0 released", 30*time.Second, ip["db-0"])
	time.Sleep(1 * time.Second)
	if h := c.holder(newIP); h != newCID {
		t.Fatalf("new StatefulSet's db-0 lost %s (holder %q)", newIP, h)
	}
	if s := c.stickies(); len(s) != 1 || !s[fmt.Sprintf("db/%s/0", sts2.UID)] {
		t.Fatalf("sticky entries: %v", s)
	}

	// Delete it for good: everything freed after the grace.
	must(t, c.kube.Client.AppsV1().StatefulSets("default").Delete(ctx, "db", metav1.DeleteOptions{PropagationPolicy: &bg}))
	c.kube.FinishTermination(c.t, newDB0)
	c.waitFreed("deleted StatefulSet's addresses released", 30*time.Second, newIP)
	if s := c.stickies(); len(s) != 0 {
		t.Fatalf("sticky entries left: %v", s)
	}
}

// TestLeaderElection: two replicas share a Lease; only the holder
// reconciles. When it stops, the other takes over and reclaims.
func TestLeaderElection(t *testing.T) {
	c := newCluster(t, "node-1")
	ctx := context.Background()
	lease := []string{"--leader-elect=true", "--leader-elect-namespace", "default", "--leader-elect-name", "kic"}
	a := c.startController(append(lease, "--leader-elect-identity", "a")...)
	holder := func() string {
		l, err := c.kube.Client.CoordinationV1().Leases("default").Get(ctx, "kic", metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	c.kube.WaitFor(t, "a holds the lease", 30*time.Second, func() (bool, error) { return holder() == "a", nil })
	b := c.startController(append(lease, "--leader-elect-identity", "b")...)

	p := c.pod("web", "node-1")
	ip1, _ := c.add(p)
	c.forceDelete(p)
	c.waitFreed("leader reclaims", 30*time.Second, ip1)
	a.waitLog(t, c.kube, "leader a logs the release", "released leaked allocation", 10*time.Second)
	if strings.Contains(b.logText(), "became leader") || strings.Contains(b.logText(), "released") {
		t.Fatalf("follower b reconciled:\n%s", b.logText())
	}
	if holder() != "a" {
		t.Fatalf("lease holder %q", holder())
	}

	// a stops (releasing the lease): b takes over and reclaims.
	a.stop()
	c.kube.WaitFor(t, "b holds the lease", 40*time.Second, func() (bool, error) { return holder() == "b", nil })
	p2 := c.pod("web2", "node-1")
	ip2, _ := c.add(p2)
	c.forceDelete(p2)
	c.waitFreed("new leader reclaims", 30*time.Second, ip2)
	b.waitLog(t, c.kube, "new leader b logs the release", "released leaked allocation", 10*time.Second)
}

// TestPassFailureMetrics: the leader exports kube_ipam_leader 1 and a
// follower 0; with the store killed, passes fail and
// kube_ipam_reconcile_failures_total counts them while the successful-pass
// count stands still; with the store back, passes succeed again.
func TestPassFailureMetrics(t *testing.T) {
	c := newCluster(t, "node-1")
	lease := []string{"--leader-elect=true", "--leader-elect-namespace", "default", "--leader-elect-name", "kic"}
	a := c.startController(append(lease, "--leader-elect-identity", "a")...)
	metric := func(ctl *controller, series string) float64 {
		m, err := ctl.scrape()
		must(t, err)
		return m[series]
	}
	failures := `kube_ipam_reconcile_failures_total{network="` + c.network + `"}`
	passes := `kube_ipam_reconcile_duration_seconds_count{network="` + c.network + `"}`
	c.kube.WaitFor(t, "a leads and passes succeed", 30*time.Second, func() (bool, error) {
		return metric(a, "kube_ipam_leader") == 1 && metric(a, passes) > 0, nil
	})
	b := c.startController(append(lease, "--leader-elect-identity", "b")...)
	if v := metric(b, "kube_ipam_leader"); v != 0 {
		t.Fatalf("follower b exports kube_ipam_leader %v", v)
	}
	if v := metric(a, failures); v != 0 {
		t.Fatalf("%s = %v with etcd up", failures, v)
	}

	c.etcd.Stop(t)
	ok := metric(a, passes)
	c.kube.WaitFor(t, "a failed pass counted", 60*time.Second, func() (bool, error) { return metric(a, failures) >= 1, nil })
	if v := metric(a, passes); v > ok+1 {
		// One pass may have been under way when etcd died.
		t.Fatalf("successful passes went from %v to %v with etcd down", ok, v)
	}
	if v := metric(b, failures); v != 0 {
		t.Fatalf("follower b counts %v failed passes", v)
	}

	c.etcd.Restart(t)
	failed := metric(a, passes)
	c.kube.WaitFor(t, "passes succeed again", 60*time.Second, func() (bool, error) { return metric(a, passes) > failed, nil })
	if v := metric(a, "kube_ipam_leader"); v != 1 {
		t.Fatalf("kube_ipam_leader %v after the outage", v)
	}
}
