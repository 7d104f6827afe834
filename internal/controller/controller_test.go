package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

const grace = time.Minute

type env struct {
	t    *testing.T
	net  *Network
	kube *fake.Clientset
	r    *Reconciler
	now  time.Time
}

func newEnv(t *testing.T, objs ...runtime.Object) *env {
	t.Helper()
	e := testenv.StartEtcd(t)
	cfg, err := config.Parse([]byte(`{"cniVersion":"1.0.0","name":"n1","type":"macvlan","ipam":{"type":"kube-ipam",
		"etcdConfig":{"etcdURL":"` + e.Endpoints[0] + `"},"subnet":"10.9.0.0/24","rangeStart":"10.9.0.10","rangeEnd":"10.9.0.100"}}`))
	if err != nil {
		t.Fatal(err)
	}
	v := &env{t: t, net: NewNetwork(cfg, store.New(e.Client(t), cfg.Etcd.Prefix, cfg.Name)), kube: fake.NewClientset(objs...), now: time.Unix(1_800_000_000, 0)}
	v.r = NewReconciler([]*Network{v.net}, v.kube, nil, NewMetrics(), Options{Grace: grace, Now: func() time.Time { return v.now }})
	return v
}

// claim commits a fresh (or takeover) record for a pod.
func (v *env) claim(cid, ip, ns, name, uid string, takeover bool) {
	v.t.Helper()
	rec := store.Record{Network: "n1", IP: ip, Kind: store.KindDynamic, IfName: "net1", ContainerID: cid,
		PodNamespace: ns, PodName: name, PodUID: uid, Created: v.now}
	it := store.ClaimItem{Record: rec, Mode: store.ClaimFresh}
	if takeover {
		st, err := v.net.Store.State(context.Background(), netip.MustParseAddr(ip))
		if err != nil {
			v.t.Fatal(err)
		}
		it.Mode, it.State = store.ClaimTakeover, st
	}
	ok, err := v.net.Store.Commit(context.Background(), &store.Claim{
		Attachment: store.Attachment{ContainerID: cid, IfName: "net1", PodNamespace: ns, PodName: name, PodUID: uid, Created: v.now},
		Items:      []store.ClaimItem{it}})
	if !ok || err != nil {
		v.t.Fatalf("claim %s %s: %v %v", cid, ip, ok, err)
	}
}

func (v *env) addPod(p *corev1.Pod) {
	v.t.Helper()
	if _, err := v.kube.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		v.t.Fatal(err)
	}
}

func (v *env) holder(ip string) string {
	v.t.Helper()
	st, err := v.net.Store.State(context.Background(), netip.MustParseAddr(ip))
	if err != nil {
		v.t.Fatal(err)
	}
	if st.Record == nil {
		return ""
	}
	return st.Record.ContainerID
}

func (v *env) pass() Result {
	v.t.Helper()
	res, err := v.r.Pass(context.Background(), v.net)
	if err != nil {
		v.t.Fatal(err)
	}
	return res
}

// failPodGets makes every GET of a pod in namespace ns an API error.
func (v *env) failPodGets(ns string) {
	v.kube.PrependReactor("get", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetNamespace() == ns {
			return true, nil, errors.New("apiserver unavailable")
		}
		return false, nil, nil
	})
}

func pod(ns, name, uid string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)}, Spec: corev1.PodSpec{NodeName: "node-1"}}
}

// TestGraceAndOwnerChecks: only a confirmed-gone owner seen on two passes a
// grace apart is freed; a live pod, a record without pod name and an API
// error keep the allocation.
func TestGraceAndOwnerChecks(t *testing.T) {
	v := newEnv(t, pod("ns", "alive", "u-alive"), pod("ns", "reused", "u-new"))
	v.claim("c-alive", "10.9.0.10", "ns", "alive", "u-alive", false)
	v.claim("c-gone", "10.9.0.11", "ns", "gone", "u-gone", false)
	v.claim("c-reused", "10.9.0.12", "ns", "reused", "u-old", false)
	v.claim("c-noname", "10.9.0.13", "", "", "", false)
	v.claim("c-err", "10.9.0.14", "err", "p", "u-err", false)
	v.failPodGets("err")
	if res := v.pass(); res.Candidates != 2 || res.Released != 0 {
		t.Fatalf("first pass: %+v", res)
	}
	v.now = v.now.Add(grace - time.Second)
	if res := v.pass(); res.Released != 0 {
		t.Fatalf("released before the grace: %+v", res)
	}
	v.now = v.now.Add(time.Second)
	if res := v.pass(); res.Released != 2 || res.FreedIPs != 2 {
		t.Fatalf("after the grace: %+v", res)
	}
	for ip, want := range map[string]string{"10.9.0.10": "c-alive", "10.9.0.11": "", "10.9.0.12": "", "10.9.0.13": "c-noname", "10.9.0.14": "c-err"} {
		if got := v.holder(ip); got != want {
			t.Errorf("%s held by %q, want %q", ip, got, want)
		}
	}
}

// TestRaceWithAddInFlight: a takeover or re-ADD between observation and
// release is never freed.
func TestRaceWithAddInFlight(t *testing.T) {
	v := newEnv(t)
	ctx := context.Background()
	// (1) Takeover between two passes: the record's revision changed, so the
	// leaked-since clock restarts and the new holder is kept.
	v.claim("c1", "10.9.0.10", "ns", "sts-0", "u1", false)
	v.pass()
	v.now = v.now.Add(grace)
	v.addPod(pod("ns", "sts-0", "u2")) // the re-created pod
	v.claim("c2", "10.9.0.10", "ns", "sts-0", "u2", true)
	v.pass()
	if h := v.holder("10.9.0.10"); h != "c2" {
		t.Fatalf("taken-over address holder %q", h)
	}

	// (2) Takeover inside the pass, after the decision: the release
	// transaction re-reads the record and leaves it to its new holder.
	v.claim("c3", "10.9.0.20", "ns", "p", "u3", false)
	v.pass()
	v.now = v.now.Add(grace)
	v.r.beforeRelease = func(att *store.Attachment) {
		if att.ContainerID == "c3" {
			v.addPod(pod("ns", "p", "u4"))
			v.claim("c4", "10.9.0.20", "ns", "p", "u4", true)
		}
	}
	v.pass()
	v.r.beforeRelease = nil
	if h := v.holder("10.9.0.20"); h != "c4" {
		t.Fatalf("address taken over during the pass: holder %q", h)
	}

	// (3) The runtime retries: DEL then ADD with the same container ID
	// during the pass. The attachment's revision guard fails the release.
	v.claim("c5", "10.9.0.30", "ns", "q", "u5", false)
	v.pass()
	v.now = v.now.Add(grace)
	v.r.beforeRelease = func(att *store.Attachment) {
		if att.ContainerID == "c5" {
			if _, err := v.net.Store.Release(ctx, "c5", "net1", v.now, v.net.Policy); err != nil {
				t.Fatal(err)
			}
			v.claim("c5", "10.9.0.31", "ns", "q", "u5", false)
		}
	}
	res := v.pass()
	v.r.beforeRelease = nil
	if h := v.holder("10.9.0.31"); h != "c5" || res.Released != 0 {
		t.Fatalf("re-ADDed address freed (holder %q), pass %+v", h, res)
	}
	// The new holders of (1) and (2) are live pods: kept for good.
	v.now = v.now.Add(grace)
	v.pass()
	if a, b := v.holder("10.9.0.10"), v.holder("10.9.0.20"); a != "c2" || b != "c4" {
		t.Fatalf("live takeover holders lost their addresses: %q %q", a, b)
	}
}

// TestTerminatingOnNotReady: kept by default; released with the option once
// the pod has been Terminating on a NotReady node long enough.
func TestTerminatingOnNotReady(t *testing.T) {
	p := pod("ns", "stuck", "u1")
	del := metav1.NewTime(time.Unix(1_800_000_000, 0))
	p.DeletionTimestamp = &del
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionUnknown}}}}
	v := newEnv(t, p, node)
	v.claim("c1", "10.9.0.10", "ns", "stuck", "u1", false)
	for range 3 {
		v.pass()
		v.now = v.now.Add(grace)
	}
	if h := v.holder("10.9.0.10"); h != "c1" {
		t.Fatalf("freed by default (holder %q)", h)
	}
	v.r.Opts.ReleaseTerminatingOnNotReady = 2 * time.Minute
	v.pass()
	v.now = v.now.Add(grace)
	v.pass()
	if h := v.holder("10.9.0.10"); h != "" {
		t.Fatalf("not freed with the option (holder %q)", h)
	}
}

// TestStickyOfDeletedStatefulSet: the sticky record of a deleted StatefulSet
// is not released while the ordinal's pod still holds the address; once the
// pod is gone, the address and the sticky record are released together and
// the address goes to the release log (reusable after the cooldown).
func TestStickyOfDeletedStatefulSet(t *testing.T) {
	v := newEnv(t, pod("ns", "db-0", "u-pod"))
	ctx := context.Background()
	rec := store.Record{Network: "n1", IP: "10.9.0.10", Kind: store.KindSticky, IfName: "net1", ContainerID: "c1",
		PodNamespace: "ns", PodName: "db-0", PodUID: "u-pod", StatefulSet: "db", StatefulSetUID: "u-sts", Ordinal: 0}
	ok, err := v.net.Store.Commit(ctx, &store.Claim{
		Attachment: store.Attachment{ContainerID: "c1", IfName: "net1", PodNamespace: "ns", PodName: "db-0", PodUID: "u-pod"},
		Items:      []store.ClaimItem{{Record: rec, Mode: store.ClaimFresh}},
		NewSticky:  &store.Sticky{Namespace: "ns", StatefulSet: "db", StatefulSetUID: "u-sts", Ordinal: 0, IfName: "net1", IPs: []string{"10.9.0.10"}},
	})
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
	// The StatefulSet is gone (not in the fake API), the pod is not (orphaned).
	for range 3 {
		v.pass()
		v.now = v.now.Add(grace)
	}
	if s, _ := v.net.Store.(*store.Store).Stickies(ctx); len(s) != 1 || v.holder("10.9.0.10") != "c1" {
		t.Fatalf("released while the pod holds it: stickies %v holder %q", s, v.holder("10.9.0.10"))
	}
	if err := v.kube.CoreV1().Pods("ns").Delete(ctx, "db-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	v.pass()
	v.now = v.now.Add(grace)
	res := v.pass()
	if res.Released != 1 || res.Stickies != 1 {
		t.Fatalf("pass %+v", res)
	}
	st, err := v.net.Store.State(ctx, netip.MustParseAddr("10.9.0.10"))
	if err != nil || st.Record != nil || st.Tomb == nil || st.Tomb.Log == "" {
		t.Fatalf("address not reusable: %+v %v", st, err)
	}
	if s, _ := v.net.Store.(*store.Store).Stickies(ctx); len(s) != 0 {
		t.Fatalf("sticky left: %v", s)
	}
}

// TestRunOnce: the one-shot pass (kube-ipamctl gc) applies the same owner
// checks as Pass but releases on first sight; a dry run releases nothing;
// neither touches the seen-since clock of Pass.
func TestRunOnce(t *testing.T) {
	replicas := int32(1)
	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "db", UID: "u-sts"}, Spec: appsv1.StatefulSetSpec{Replicas: &replicas}}
	v := newEnv(t, pod("ns", "alive", "u-alive"), sts)
	ctx := context.Background()
	v.claim("c-alive", "10.9.0.10", "ns", "alive", "u-alive", false)
	v.claim("c-gone", "10.9.0.11", "ns", "gone", "u-gone", false)
	v.claim("c-noname", "10.9.0.13", "", "", "", false)
	v.claim("c-err", "10.9.0.14", "err", "p", "u-err", false)
	v.failPodGets("err")
	// Sticky ordinals 0 (wanted: replicas 1) and 1 (scaled down), pods gone.
	for i, ip := range []string{"10.9.0.20", "10.9.0.21"} {
		cid, name := fmt.Sprintf("c-db-%d", i), fmt.Sprintf("db-%d", i)
		rec := store.Record{Network: "n1", IP: ip, Kind: store.KindSticky, IfName: "net1", ContainerID: cid,
			PodNamespace: "ns", PodName: name, PodUID: "u-" + name, StatefulSet: "db", StatefulSetUID: "u-sts", Ordinal: i}
		ok, err := v.net.Store.Commit(ctx, &store.Claim{
			Attachment: store.Attachment{ContainerID: cid, IfName: "net1", PodNamespace: "ns", PodName: name, PodUID: "u-" + name},
			Items:      []store.ClaimItem{{Record: rec, Mode: store.ClaimFresh}},
			NewSticky:  &store.Sticky{Namespace: "ns", StatefulSet: "db", StatefulSetUID: "u-sts", Ordinal: i, IfName: "net1", IPs: []string{ip}},
		})
		if !ok || err != nil {
			t.Fatal(ok, err)
		}
	}
	type seen struct {
		kind, owner string
		released    bool
	}
	summary := func(rs []OnceResult) []seen {
		var out []seen
		for _, r := range rs {
			for _, c := range r.Leaked {
				owner := c.Pod
				if c.Kind == KindSticky {
					owner = fmt.Sprintf("%s/%d", c.StatefulSet, c.Ordinal)
				}
				out = append(out, seen{c.Kind, owner, c.Released})
			}
		}
		return out
	}
	var progress []int
	o := OnceOptions{DryRun: true, Progress: func(network string, done, total int) {
		if network != "n1" || total != 8 {
			t.Errorf("progress %s %d/%d", network, done, total)
		}
		progress = append(progress, done)
	}}
	rs, err := v.r.RunOnce(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	want := []seen{{KindAttachment, "db-1", false}, {KindAttachment, "gone", false}, {KindSticky, "db/1", false}}
	if got := summary(rs); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("dry run: %v, want %v", got, want)
	}
	if len(progress) != 8 || progress[7] != 8 || rs[0].Checked != 8 || rs[0].Candidates != 3 || rs[0].Released != 0 {
		t.Fatalf("dry run: progress %v, result %+v", progress, rs[0].Result)
	}
	for _, ip := range []string{"10.9.0.11", "10.9.0.21"} {
		if v.holder(ip) == "" {
			t.Fatalf("dry run freed %s", ip)
		}
	}

	o.DryRun, o.Progress = false, nil
	rs, err = v.r.RunOnce(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	want = []seen{{KindAttachment, "db-1", true}, {KindAttachment, "gone", true}, {KindSticky, "db/1", true}}
	if got := summary(rs); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("run: %v, want %v", got, want)
	}
	if r := rs[0].Result; r.Released != 2 || r.Stickies != 1 {
		t.Fatalf("run: %+v", r)
	}
	if f := rs[0].Leaked[1].Freed; len(f) != 1 || f[0].String() != "10.9.0.11" {
		t.Fatalf("freed %v", f)
	}
	for ip, want := range map[string]string{"10.9.0.10": "c-alive", "10.9.0.11": "", "10.9.0.13": "c-noname", "10.9.0.14": "c-err", "10.9.0.20": "c-db-0", "10.9.0.21": ""} {
		if got := v.holder(ip); got != want {
			t.Errorf("%s held by %q, want %q", ip, got, want)
		}
	}
	if len(v.r.seen) != 0 {
		t.Fatalf("RunOnce touched the grace clock: %v", v.r.seen)
	}

	// A candidate that changes between the decision and the release is
	// left alone and reported so.
	v.claim("c5", "10.9.0.30", "ns", "q", "u5", false)
	v.r.beforeRelease = func(att *store.Attachment) {
		if _, err := v.net.Store.Release(ctx, "c5", "net1", v.now, v.net.Policy); err != nil {
			t.Fatal(err)
		}
		v.claim("c5", "10.9.0.31", "ns", "q", "u5", false)
	}
	rs, err = v.r.RunOnce(ctx, o)
	v.r.beforeRelease = nil
	if err != nil {
		t.Fatal(err)
	}
	if got := summary(rs); fmt.Sprint(got) != fmt.Sprint([]seen{{KindAttachment, "q", false}}) || v.holder("10.9.0.31") != "c5" {
		t.Fatalf("changed meanwhile: %v, holder %q", got, v.holder("10.9.0.31"))
	}

	// A cancelled context stops the run with an error naming the network.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := v.r.RunOnce(cctx, o); err == nil || !strings.Contains(err.Error(), "network n1") {
		t.Fatalf("cancelled: %v", err)
	}
}
