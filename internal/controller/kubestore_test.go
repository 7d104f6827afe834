package controller

// The controller on a network whose allocations live in the Kubernetes API
// store (ipam.store "kubernetes"), opened through stores.Opener as Run
// opens it: GC, the StatefulSet and cluster-identity rules, the pool
// gauges of a pass and the Watch-based counters, all against a real
// kube-apiserver (whose own etcd keeps the IPAllocations).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	dto "github.com/prometheus/client_model/go"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/store/kubestore"
	"kubeipam/internal/store/kubestore/kubestoretest"
	"kubeipam/internal/stores"
	"kubeipam/internal/testenv"
)

// newKubeStoreEnv is newKubeEnv with network n1 in the Kubernetes API
// store of the test's API server (CRDs installed), written with cluster
// identity cluster. It also returns the config file.
func newKubeStoreEnv(t *testing.T, cluster string) (*kubeEnv, string) {
	t.Helper()
	k, _ := kubestoretest.Start(t, "controller-test")
	path := filepath.Join(t.TempDir(), "10-n1.conf")
	body := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"n1","type":"macvlan","ipam":{"type":"kube-ipam","store":"kubernetes",
		"kubeConfig":%q,"cluster":%q,"subnet":"10.9.0.0/24","rangeStart":"10.9.0.10","rangeEnd":"10.9.0.250","releaseCooldown":"30s"}}`,
		k.Kubeconfig, cluster)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgs, err := config.LoadNetworks(path)
	if err != nil {
		t.Fatal(err)
	}
	opener := stores.New(5 * time.Second)
	t.Cleanup(func() { opener.Close() })
	b, err := opener.Open(t.Context(), cfgs[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.(*kubestore.Store); !ok {
		t.Fatalf("stores.Opener opened %T (%s) for ipam.store kubernetes", b, b.Describe())
	}
	return &kubeEnv{t: t, kube: k, net: NewNetwork(cfgs[0], b), now: time.Unix(1_800_000_000, 0), reqs: &requests{n: map[string]int{}}}, path
}

// claimAs commits an allocation for pod ns/name (UID uid) of cluster
// cluster, as the plugin's ADD on that cluster would; with sts set it is
// a StatefulSet ordinal's sticky address with its sticky record.
func (v *kubeEnv) claimAs(ns, name, uid, cluster, sts, stsUID string, ordinal int) netip.Addr {
	v.t.Helper()
	ip := nextIP
	nextIP = nextIP.Next()
	cid := "c-" + ns + "-" + name + "-" + uid
	rec := store.Record{Network: "n1", IP: ip.String(), Kind: store.KindDynamic, IfName: "net1", ContainerID: cid,
		PodNamespace: ns, PodName: name, PodUID: uid, Node: "node-1", Cluster: cluster, Created: v.now}
	c := &store.Claim{Attachment: store.Attachment{ContainerID: cid, IfName: "net1", PodNamespace: ns, PodName: name, PodUID: uid,
		Node: "node-1", Cluster: cluster, Created: v.now}}
	if sts != "" {
		rec.Kind, rec.StatefulSet, rec.StatefulSetUID, rec.Ordinal = store.KindSticky, sts, stsUID, ordinal
		c.NewSticky = &store.Sticky{Namespace: ns, StatefulSet: sts, StatefulSetUID: stsUID, Ordinal: ordinal, IfName: "net1",
			IPs: []string{ip.String()}, Cluster: cluster, Created: v.now}
	}
	c.Items = []store.ClaimItem{{Record: rec, Mode: store.ClaimFresh}}
	if ok, err := v.net.Store.Commit(context.Background(), c); !ok || err != nil {
		v.t.Fatalf("claim for %s/%s: %v %v", ns, name, ok, err)
	}
	return ip
}

func (v *kubeEnv) statefulSet(ns, name string, replicas int32) *appsv1.StatefulSet {
	v.t.Helper()
	s, err := v.kube.Client.AppsV1().StatefulSets(ns).Create(context.Background(), testenv.StatefulSet(name, replicas, nil), metav1.CreateOptions{})
	if err != nil {
		v.t.Fatal(err)
	}
	return s
}

// stickies returns the network's sticky records as "namespace/sts/ordinal".
func (v *kubeEnv) stickies() map[string]bool {
	v.t.Helper()
	s, err := v.net.Store.Snapshot(context.Background())
	if err != nil {
		v.t.Fatal(err)
	}
	out := map[string]bool{}
	for _, e := range s.Stickies {
		out[fmt.Sprintf("%s/%s/%d", e.Namespace, e.StatefulSet, e.Ordinal)] = true
	}
	return out
}

// gauge reads one of m's series for network n1 (counter, gauge or the
// sample count of a histogram).
func gauge(t *testing.T, m *Metrics, name string) float64 {
	t.Helper()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			if !hasLabel(s, "network", "n1") {
				continue
			}
			switch {
			case s.Gauge != nil:
				return s.Gauge.GetValue()
			case s.Counter != nil:
				return s.Counter.GetValue()
			case s.Histogram != nil:
				return float64(s.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, k, val string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == val {
			return true
		}
	}
	return false
}

// GC on the Kubernetes API store: a deleted pod's allocation (and one
// re-created under its name with another UID, and one written without a
// cluster identity) is freed once seen leaked a grace apart; a live pod's
// is kept; a StatefulSet's deleted pods keep their addresses and sticky
// records while it still wants their ordinals, and lose them once it is
// deleted; another cluster's records are never touched. The pool gauges
// of each pass are the store's.
func TestGCOnKubeStore(t *testing.T) {
	v, _ := newKubeStoreEnv(t, "a")
	ctx := context.Background()
	m := NewMetrics()
	r := NewReconciler([]*Network{v.net}, v.client(100, 100), nil, m, Options{Grace: grace, Now: func() time.Time { return v.now }})

	live := v.pods("ns", "live", 1)[0]
	liveIP := v.claimAs("ns", live.Name, string(live.UID), "a", "", "", 0)
	gone := v.pods("ns", "gone", 1)[0]
	goneIP := v.claimAs("ns", gone.Name, string(gone.UID), "a", "", "", 0)
	v.deletePod(gone)
	re := v.pods("ns", "re", 1)[0]
	reIP := v.claimAs("ns", re.Name, string(re.UID), "a", "", "", 0)
	v.deletePod(re)
	v.pods("ns", "re", 1) // re-created: another UID
	unnamed := v.pods("ns", "unnamed", 1)[0]
	unnamedIP := v.claimAs("ns", unnamed.Name, string(unnamed.UID), "", "", "", 0)
	v.deletePod(unnamed)

	// StatefulSet db (2 replicas) wants ordinals 0 and 1; its pods were
	// deleted without a CNI DEL. StatefulSet old is gone, and so is its pod.
	db := v.statefulSet("ns", "db", 2)
	var dbIPs []netip.Addr
	for i := range 2 {
		p := v.pods("ns", fmt.Sprintf("db-%d", i), 1)[0]
		dbIPs = append(dbIPs, v.claimAs("ns", p.Name, string(p.UID), "a", "db", string(db.UID), i))
		v.deletePod(p)
	}
	old := v.statefulSet("ns", "old", 1)
	oldPod := v.pods("ns", "old-0", 1)[0]
	oldIP := v.claimAs("ns", oldPod.Name, string(oldPod.UID), "a", "old", string(old.UID), 0)
	v.deletePod(oldPod)
	if err := v.kube.Client.AppsV1().StatefulSets("ns").Delete(ctx, "old", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Cluster b's pod and StatefulSet exist only in cluster b's API.
	theirIP := v.claimAs("ns", "theirs-0", "u-theirs", "b", "theirs", "u-theirs-sts", 0)

	pass := func() Result {
		t.Helper()
		res, err := r.Pass(ctx, v.net)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	held := func(want map[netip.Addr]bool) {
		t.Helper()
		for ip, w := range want {
			if got := v.held(ip); got != w {
				t.Errorf("%s held %v, want %v", ip, got, w)
			}
		}
	}
	all := map[netip.Addr]bool{liveIP: true, goneIP: true, reIP: true, unnamedIP: true, dbIPs[0]: true, dbIPs[1]: true, oldIP: true, theirIP: true}

	// Leaked: gone, re, unnamed and old-0's attachments, and old's sticky
	// record. Kept: db-0 and db-1 (wanted). Alive: live, and db's two
	// sticky records. Foreign (not counted): theirs.
	res := pass()
	if res.Attachments != 8 || res.StickyRecords != 4 || res.Alive != 3 || res.Candidates != 5 || res.KeptGrace != 5 ||
		res.KeptStatefulSet != 2 || res.Released != 0 || res.Skipped != 0 {
		t.Fatalf("first pass: %+v", res)
	}
	// The pool gauges are the store's: .10-.250, 8 held, 4 sticky
	// records, nothing released yet.
	for name, want := range map[string]float64{"kube_ipam_pool_size": 241, "kube_ipam_used": 8, "kube_ipam_fixed": 0,
		"kube_ipam_sticky": 4, "kube_ipam_cooling": 0, "kube_ipam_gc_candidates": 5, "kube_ipam_gc_candidates_total": 5} {
		if got := gauge(t, m, name); got != want {
			t.Errorf("after the first pass %s = %v, want %v", name, got, want)
		}
	}
	v.now = v.now.Add(grace - time.Second)
	if res := pass(); res.Released != 0 || res.KeptGrace != 5 {
		t.Fatalf("released before the grace: %+v", res)
	}
	held(all)

	// FreedIPs counts old-0's address twice: its attachment's release
	// keeps it for the ordinal, the sticky record's puts it in the log.
	v.now = v.now.Add(time.Second)
	res = pass()
	if res.Released != 4 || res.Stickies != 1 || res.FreedIPs != 5 || res.KeptStatefulSet != 2 || res.KeptChanged != 0 {
		t.Fatalf("after the grace: %+v", res)
	}
	for _, ip := range []netip.Addr{goneIP, reIP, unnamedIP, oldIP} {
		all[ip] = false
	}
	held(all)
	if s := v.stickies(); len(s) != 3 || !s["ns/db/0"] || !s["ns/db/1"] || !s["ns/theirs/0"] {
		t.Fatalf("sticky records after GC: %v, want db's two and cluster b's", s)
	}
	// Freed dynamic addresses, and the sticky address of a forgotten
	// ordinal, go to the release log: reusable after the cooldown.
	for _, ip := range []netip.Addr{goneIP, reIP, unnamedIP, oldIP} {
		st, err := v.net.Store.State(ctx, ip)
		if err != nil || st.Record != nil || st.Tomb == nil || st.Tomb.Log == "" || !st.Tomb.Released.Equal(v.now) {
			t.Errorf("%s after GC: %+v %v, want a release-log tombstone at %v", ip, st.Tomb, err, v.now)
		}
	}
	pass() // the gauges of the state GC left
	for name, want := range map[string]float64{"kube_ipam_used": 4, "kube_ipam_sticky": 3, "kube_ipam_cooling": 4,
		"kube_ipam_gc_reclaimed_total": 5, "kube_ipam_gc_candidates": 0} {
		if got := gauge(t, m, name); got != want {
			t.Errorf("after GC %s = %v, want %v", name, got, want)
		}
	}

	// StatefulSet db deleted: its ordinals are no longer wanted.
	if err := v.kube.Client.AppsV1().StatefulSets("ns").Delete(ctx, "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if res := pass(); res.Candidates != 4 || res.KeptGrace != 4 || res.Released != 0 {
		t.Fatalf("after the StatefulSet's deletion: %+v", res)
	}
	v.now = v.now.Add(grace)
	if res := pass(); res.Released != 2 || res.Stickies != 2 {
		t.Fatalf("a grace after the StatefulSet's deletion: %+v", res)
	}
	all[dbIPs[0]], all[dbIPs[1]] = false, false
	held(all)
	if s := v.stickies(); len(s) != 1 || !s["ns/theirs/0"] {
		t.Fatalf("sticky records: %v, want cluster b's only", s)
	}
	// Cluster b's record was never even looked up.
	if res := pass(); res.Attachments != 2 || res.Alive != 1 || res.Candidates != 0 {
		t.Fatalf("last pass: %+v", res)
	}
}

// The Watch-based counters on the Kubernetes API store: a new claim is an
// allocation (with its lost races and ADD duration), a takeover a new ADD
// (no allocation), a rewrite by the same holder nothing, a release a
// release.
func TestMetricsWatchOnKubeStore(t *testing.T) {
	v, _ := newKubeStoreEnv(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	m := NewMetrics()
	done := make(chan struct{})
	go func() { defer close(done); m.Watch(ctx, v.net) }()
	t.Cleanup(func() { cancel(); <-done })
	until := func(what string, cond func() bool) {
		t.Helper()
		v.kube.WaitFor(t, what, 30*time.Second, func() (bool, error) { return cond(), nil })
	}
	commit := func(cid, ip string, mode int, lost int, addMillis int64) {
		t.Helper()
		a := netip.MustParseAddr(ip)
		st, err := v.net.Store.State(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		rec := store.Record{Network: "n1", IP: ip, Kind: store.KindDynamic, IfName: "net1", ContainerID: cid,
			PodNamespace: "ns", PodName: "p-" + cid, PodUID: "u-" + cid, Created: v.now, LostRaces: lost, AddMillis: addMillis}
		ok, err := v.net.Store.Commit(ctx, &store.Claim{
			Attachment: store.Attachment{ContainerID: cid, IfName: "net1", PodNamespace: "ns", PodName: "p-" + cid, PodUID: "u-" + cid, Created: v.now},
			Items:      []store.ClaimItem{{Record: rec, Mode: mode, State: st}}})
		if !ok || err != nil {
			t.Fatalf("claim %s %s: %v %v", cid, ip, ok, err)
		}
	}

	// The watch lists before it follows: a claim made before that LIST
	// is not an event. Probe until one is seen (each probe is a new
	// address, so each is a creation once the watch follows).
	probe := netip.MustParseAddr("10.9.0.200")
	for i := 0; gauge(t, m, "kube_ipam_allocations_total") == 0; i++ {
		if i == 50 {
			t.Fatal("the watch saw none of 50 claims")
		}
		commit(fmt.Sprintf("probe-%d", i), probe.String(), store.ClaimFresh, 0, 0)
		probe = probe.Next()
		deadline := time.Now().Add(time.Second)
		for gauge(t, m, "kube_ipam_allocations_total") == 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	base := map[string]float64{}
	for _, n := range []string{"kube_ipam_allocations_total", "kube_ipam_releases_total", "kube_ipam_claim_conflicts_total", "kube_ipam_add_duration_seconds"} {
		base[n] = gauge(t, m, n)
	}
	delta := func(n string) float64 { return gauge(t, m, n) - base[n] }

	commit("c1", "10.9.0.10", store.ClaimFresh, 3, 250)
	until("the allocation, its 3 lost races and its ADD duration", func() bool {
		return delta("kube_ipam_allocations_total") == 1 && delta("kube_ipam_claim_conflicts_total") == 3 && delta("kube_ipam_add_duration_seconds") == 1
	})
	// A takeover by another container: an ADD (2 more lost races), not
	// a new allocation.
	commit("c2", "10.9.0.10", store.ClaimTakeover, 2, 100)
	until("the takeover's lost races and ADD duration", func() bool {
		return delta("kube_ipam_claim_conflicts_total") == 5 && delta("kube_ipam_add_duration_seconds") == 2
	})
	if d := delta("kube_ipam_allocations_total"); d != 1 {
		t.Errorf("a takeover counted as %v allocation(s)", d-1)
	}
	if _, err := v.net.Store.Release(ctx, "c2", "net1", v.now, v.net.Policy); err != nil {
		t.Fatal(err)
	}
	until("the release", func() bool { return delta("kube_ipam_releases_total") == 1 })
	commit("c3", "10.9.0.11", store.ClaimFresh, 0, 0)
	until("the second allocation", func() bool { return delta("kube_ipam_allocations_total") == 2 })
	if d := delta("kube_ipam_claim_conflicts_total"); d != 5 {
		t.Errorf("claim conflicts +%v, want +5", d)
	}
}

// logSink keeps a controller's log records for the test to read.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines = append(s.lines, string(p))
	return len(p), nil
}

// attr returns the value of key in the first line containing msg.
func (s *logSink) attr(msg, key string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.lines {
		if !strings.Contains(l, msg) {
			continue
		}
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, key+"="); ok {
				return v
			}
		}
	}
	return ""
}

// scrape reads one series of network n1 from a /metrics page.
func scrape(url, name string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+`{network="n1"} `); ok {
			return strconv.ParseFloat(rest, 64)
		}
	}
	return 0, errors.Join(sc.Err(), fmt.Errorf("no series %s", name))
}

// The whole controller (Run: config file, stores.Opener, informer loop,
// metrics server) on a Kubernetes API store network: a deleted pod's
// allocation is freed no sooner than --grace after the deletion, a live
// pod's stays, and /metrics shows the store's pool and the watch's
// counters.
func TestRunOnKubeStore(t *testing.T) {
	v, path := newKubeStoreEnv(t, "")
	const runGrace = time.Second
	liveIP := v.claim(v.pods("ns", "live", 1)[0])
	gone := v.pods("ns", "gone", 1)[0]
	goneIP := v.claim(gone)

	sink := &logSink{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{ConfigFile: path, Kubeconfig: v.kube.Kubeconfig, Resync: 200 * time.Millisecond, Grace: runGrace,
			MetricsAddr: "127.0.0.1:0", Log: slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	until := func(what string, cond func() (bool, error)) {
		t.Helper()
		v.kube.WaitFor(t, what, time.Minute, cond)
	}
	var url string
	until("the metrics server", func() (bool, error) {
		if a := sink.attr("serving metrics", "addr"); a != "" {
			url = "http://" + a + "/metrics"
		}
		return url != "", nil
	})
	metric := func(name string, want float64) func() (bool, error) {
		return func() (bool, error) {
			got, err := scrape(url, name)
			return err == nil && got == want, nil
		}
	}
	until("a pass's pool gauges (241 addresses, 2 used)", func() (bool, error) {
		a, _ := scrape(url, "kube_ipam_pool_size")
		u, _ := scrape(url, "kube_ipam_used")
		return a == 241 && u == 2, nil
	})
	// The watch lists before it follows: once a claim is counted, it
	// follows (see TestMetricsWatchOnKubeStore). Each probe is a live
	// pod's.
	held := 2
	for i := 0; ; i++ {
		if i == 50 {
			t.Fatal("the watch saw none of 50 claims")
		}
		v.claim(v.pods("ns", fmt.Sprintf("probe%d", i), 1)[0])
		held++
		ok := false
		deadline := time.Now().Add(time.Second)
		for !ok && time.Now().Before(deadline) {
			ok, _ = metric("kube_ipam_allocations_total", 1)()
			time.Sleep(20 * time.Millisecond)
		}
		if ok {
			break
		}
	}

	deleted := time.Now()
	v.deletePod(gone)
	until("GC to free "+goneIP.String(), func() (bool, error) { return !v.held(goneIP), nil })
	if took := time.Since(deleted); took < runGrace {
		t.Fatalf("freed %v after its pod's deletion, before the grace of %v", took, runGrace)
	}
	if !v.held(liveIP) {
		t.Fatal("a live pod's allocation was freed")
	}
	until("the release in the watch's counter and the reclaimed counter", func() (bool, error) {
		a, _ := metric("kube_ipam_releases_total", 1)()
		b, _ := metric("kube_ipam_gc_reclaimed_total", 1)()
		return a && b, nil
	})
	until("the used gauge after GC", metric("kube_ipam_used", float64(held-1)))
	if s := sink.attr("released leaked allocation", "ips"); !strings.Contains(s, goneIP.String()) {
		t.Errorf("log of the release: ips=%q", s)
	}
}
