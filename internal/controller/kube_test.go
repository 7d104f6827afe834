package controller

// The lookups against a real kube-apiserver (internal/testenv): bulk
// confirmation by one LIST, the client-go rate limiter refusing a lookup,
// and a pass stopped before its releases. Requests are counted by wrapping
// the real client's transport.

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

// requests counts the API requests of a client by "VERB path-kind".
type requests struct {
	mu sync.Mutex
	n  map[string]int
}

func (q *requests) count(k string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n[k]
}

func (q *requests) reset() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.n = map[string]int{}
}

type countingTransport struct {
	q    *requests
	next http.RoundTripper
}

func (c countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	kind := "other"
	switch p := req.URL.Path; {
	case strings.HasSuffix(p, "/pods"):
		kind = "list pods"
	case strings.Contains(p, "/pods/"):
		kind = "get pod"
	case strings.Contains(p, "/statefulsets/"):
		kind = "get statefulset"
	}
	c.q.mu.Lock()
	c.q.n[kind]++
	c.q.mu.Unlock()
	return c.next.RoundTrip(req)
}

type kubeEnv struct {
	t    *testing.T
	kube *testenv.Kube
	net  *Network
	now  time.Time
	reqs *requests
}

func newKubeEnv(t *testing.T) *kubeEnv {
	t.Helper()
	k := testenv.StartKube(t, testenv.KubeOptions{})
	e := testenv.StartEtcd(t)
	cfg, err := config.Parse([]byte(`{"cniVersion":"1.0.0","name":"n1","type":"macvlan","ipam":{"type":"kube-ipam",
		"etcdConfig":{"etcdURL":"` + e.Endpoints[0] + `"},"subnet":"10.9.0.0/24","rangeStart":"10.9.0.10","rangeEnd":"10.9.0.250"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return &kubeEnv{t: t, kube: k, net: NewNetwork(cfg, store.New(e.Client(t), cfg.Etcd.Prefix, cfg.Name)), now: time.Unix(1_800_000_000, 0), reqs: &requests{n: map[string]int{}}}
}

// client is a clientset of the test's API server with the given rate
// limit, its requests counted.
func (v *kubeEnv) client(qps float32, burst int) kubernetes.Interface {
	v.t.Helper()
	rc := rest.CopyConfig(v.kube.Config)
	rc.QPS, rc.Burst = qps, burst
	rc.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return countingTransport{v.reqs, rt} }
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		v.t.Fatal(err)
	}
	return c
}

func (v *kubeEnv) reconciler(kube kubernetes.Interface) *Reconciler {
	return NewReconciler([]*Network{v.net}, kube, nil, nil, Options{Grace: time.Minute, Now: func() time.Time { return v.now }})
}

// pods creates n pods name-0..n-1 in ns and returns them.
func (v *kubeEnv) pods(ns, name string, n int) []*corev1.Pod {
	v.t.Helper()
	ctx := context.Background()
	if _, err := v.kube.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !strings.Contains(err.Error(), "already exists") {
		v.t.Fatal(err)
	}
	var out []*corev1.Pod
	for i := range n {
		p, err := v.kube.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", name, i)},
			Spec:       corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c", Image: "c:v1"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			v.t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func (v *kubeEnv) deletePod(p *corev1.Pod) {
	v.t.Helper()
	zero := int64(0)
	if err := v.kube.Client.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		v.t.Fatal(err)
	}
}

var nextIP = netip.MustParseAddr("10.9.0.10")

// claim commits an allocation for p (the plugin's ADD) and returns its address.
func (v *kubeEnv) claim(p *corev1.Pod) netip.Addr {
	v.t.Helper()
	ip := nextIP
	nextIP = nextIP.Next()
	cid := "c-" + p.Namespace + "-" + p.Name + "-" + string(p.UID)[:8]
	rec := store.Record{Network: "n1", IP: ip.String(), Kind: store.KindDynamic, IfName: "net1", ContainerID: cid,
		PodNamespace: p.Namespace, PodName: p.Name, PodUID: string(p.UID), Created: v.now}
	ok, err := v.net.Store.Commit(context.Background(), &store.Claim{
		Attachment: store.Attachment{ContainerID: cid, IfName: "net1", PodNamespace: p.Namespace, PodName: p.Name, PodUID: string(p.UID), Created: v.now},
		Items:      []store.ClaimItem{{Record: rec, Mode: store.ClaimFresh}}})
	if !ok || err != nil {
		v.t.Fatalf("claim for %s/%s: %v %v", p.Namespace, p.Name, ok, err)
	}
	return ip
}

func (v *kubeEnv) held(ip netip.Addr) bool {
	v.t.Helper()
	st, err := v.net.Store.State(context.Background(), ip)
	if err != nil {
		v.t.Fatal(err)
	}
	return st.Record != nil
}

// Many owners the informer does not vouch for are confirmed by one LIST
// (not a GET each): the deleted and the re-created ones are freed, the
// live ones kept. A few are confirmed by GETs.
func TestBulkConfirmation(t *testing.T) {
	v := newKubeEnv(t)
	ctx := context.Background()
	pods := append(v.pods("a", "web", 20), v.pods("b", "web", 10)...)
	ips := make([]netip.Addr, len(pods))
	for i, p := range pods {
		ips[i] = v.claim(p)
	}
	// 15 pods deleted; a/web-0 re-created under its name (another UID).
	for _, p := range pods[:15] {
		v.deletePod(p)
	}
	recreated := v.pods("a", "web", 1)[0]
	kube := v.client(1000, 1000)
	rs, err := v.reconciler(kube).RunOnce(ctx, OnceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r := rs[0].Result; r.Candidates != 15 || r.Released != 15 || r.Alive != 15 || r.Skipped != 0 {
		t.Fatalf("pass: %+v", r)
	}
	if l, g := v.reqs.count("list pods"), v.reqs.count("get pod"); l != 1 || g != 0 {
		t.Fatalf("%d pod LISTs and %d pod GETs, want one LIST", l, g)
	}
	for i, ip := range ips {
		if want := i >= 15; v.held(ip) != want {
			t.Errorf("%s of %s/%s: held %v, want %v", ip, pods[i].Namespace, pods[i].Name, v.held(ip), want)
		}
	}
	if !strings.Contains(rs[0].Leaked[0].Reason, "was re-created with UID "+string(recreated.UID)) {
		t.Errorf("a/web-0: %q", rs[0].Leaked[0].Reason)
	}

	// Three more deleted: 15 owners to confirm, still one LIST.
	for _, p := range pods[15:18] {
		v.deletePod(p)
	}
	v.reqs.reset()
	rs, err = v.reconciler(kube).RunOnce(ctx, OnceOptions{})
	if err != nil || rs[0].Released != 3 || rs[0].Alive != 12 {
		t.Fatalf("pass: %+v %v", rs[0].Result, err)
	}
	if l, g := v.reqs.count("list pods"), v.reqs.count("get pod"); l != 1 || g != 0 {
		t.Fatalf("%d pod LISTs and %d pod GETs for 15 owners, want one LIST", l, g)
	}
	// Up to MaxGets owners are confirmed by a GET each.
	r := v.reconciler(kube)
	r.Opts.MaxGets = 20
	v.reqs.reset()
	if rs, err = r.RunOnce(ctx, OnceOptions{DryRun: true}); err != nil || rs[0].Alive != 12 {
		t.Fatalf("pass: %+v %v", rs[0].Result, err)
	}
	if l, g := v.reqs.count("list pods"), v.reqs.count("get pod"); l != 0 || g != 12 {
		t.Fatalf("%d pod LISTs and %d pod GETs, want 12 GETs", l, g)
	}
}

// The failure: client-go's rate limiter refuses a request that
// would wait past the context's deadline. The owners it could not read are
// skipped, with the limiter's reason, and kept; the pass says so.
func TestRateLimitedLookupIsSkipped(t *testing.T) {
	v := newKubeEnv(t)
	pods := v.pods("ns", "p", 3)
	var ips []netip.Addr
	for _, p := range pods {
		ips = append(ips, v.claim(p))
		v.deletePod(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// One request's worth of tokens, then one every 1000 s.
	rs, err := v.reconciler(v.client(0.001, 1)).RunOnce(ctx, OnceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := rs[0]
	if r.Released != 1 || r.Skipped != 2 || len(r.Undecided) != 2 || len(r.Leaked) != 1 {
		t.Fatalf("pass: %+v, undecided %+v", r.Result, r.Undecided)
	}
	for _, c := range r.Undecided {
		if !strings.Contains(c.Skipped, "would exceed context deadline") || c.Verdict != VerdictUndecided {
			t.Errorf("undecided %s: %q", c.Pod, c.Skipped)
		}
	}
	if s := r.SkipSummary(); len(s) != 1 || !strings.HasPrefix(s[0], "2 × ") {
		t.Errorf("skip summary %q", s)
	}
	held := 0
	for _, ip := range ips {
		if v.held(ip) {
			held++
		}
	}
	if held != 2 {
		t.Fatalf("%d of 3 addresses held after the pass, want the 2 skipped", held)
	}
}

// A pass whose context ends before its releases: the candidates are
// skipped as not attempted, nothing is freed, and the pass reports an
// error (it did not finish).
func TestPassStoppedBeforeReleases(t *testing.T) {
	v := newKubeEnv(t)
	pods := v.pods("ns", "p", 2)
	var ips []netip.Addr
	for _, p := range pods {
		ips = append(ips, v.claim(p))
		v.deletePod(p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := v.reconciler(v.client(100, 100))
	r.beforeRelease = func(*store.Attachment) { cancel() }
	rs, err := r.RunOnce(ctx, OnceOptions{})
	if err == nil || !strings.Contains(err.Error(), "network n1: context canceled") {
		t.Fatalf("err %v", err)
	}
	if res := rs[0]; res.Candidates != 2 || res.Released != 0 || res.Skipped != 2 || res.Leaked[0].Skipped != "not attempted: network n1: context canceled" {
		t.Fatalf("pass: %+v %+v", res.Result, res.Leaked)
	}
	for _, ip := range ips {
		if !v.held(ip) {
			t.Errorf("%s freed by a cancelled pass", ip)
		}
	}
}

// A leak's grace clock survives a pass that cannot decide it: the release
// comes on the first pass that confirms it again, --grace after it was
// first seen; the undecided pass itself frees nothing.
func TestUndecidedKeepsGraceClock(t *testing.T) {
	v := newKubeEnv(t)
	p := v.pods("ns", "p", 1)[0]
	ip := v.claim(p)
	v.deletePod(p)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	good := v.client(100, 100)
	// A client whose one token is spent: every request would wait 1000 s.
	starved := v.client(0.001, 1)
	if _, err := starved.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	r := v.reconciler(good)
	pass := func(want func(Result) bool) {
		t.Helper()
		res, err := r.Pass(ctx, v.net)
		if err != nil || !want(res) {
			t.Fatalf("pass at +%v: %+v %v", v.now.Sub(time.Unix(1_800_000_000, 0)), res, err)
		}
	}
	pass(func(res Result) bool { return res.Candidates == 1 && res.KeptGrace == 1 })
	v.now = v.now.Add(time.Minute)
	r.Kube = starved
	pass(func(res Result) bool { return res.Skipped == 1 && res.Candidates == 0 && res.Released == 0 })
	if !v.held(ip) {
		t.Fatal("freed on an undecided pass")
	}
	r.Kube = good
	pass(func(res Result) bool { return res.Released == 1 })
	if v.held(ip) {
		t.Fatal("not freed once confirmed again after the grace")
	}
}

// The informer only vouches for pods that exist with the allocation's UID:
// a stale cache showing an older pod of the same name (another UID) is
// confirmed by a fresh read, which shows the allocation's pod alive.
func TestStaleInformerIsNotTrusted(t *testing.T) {
	v := newKubeEnv(t)
	p := v.pods("ns", "p", 1)[0]
	ip := v.claim(p)
	stale := p.DeepCopy()
	stale.UID = "an-older-pod"
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	if err := indexer.Add(stale); err != nil {
		t.Fatal(err)
	}
	r := NewReconciler([]*Network{v.net}, v.client(100, 100), corelisters.NewPodLister(indexer), nil, Options{Now: func() time.Time { return v.now }})
	rs, err := r.RunOnce(context.Background(), OnceOptions{})
	if err != nil || rs[0].Alive != 1 || rs[0].Candidates != 0 || !v.held(ip) {
		t.Fatalf("pass %+v, err %v, held %v", rs[0].Result, err, v.held(ip))
	}
	if g := v.reqs.count("get pod"); g != 1 {
		t.Fatalf("%d pod GETs, want the one that confirms", g)
	}
}
