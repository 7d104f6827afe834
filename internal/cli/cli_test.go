package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"kubeipam/internal/allocator"
	"kubeipam/internal/config"
	"kubeipam/internal/pod"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden with the current output")

const prefix = "/kipam-test"

var now = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// A multus meta config: the master is not kube-ipam, k8snet2 is a single
// plugin delegate, k8snet3 a conflist delegate with a dual-stack network.
const confTmpl = `{
  "cniVersion": "0.3.1", "name": "multus-cni-network", "type": "multus-cni",
  "delegates": [
    {"cniVersion": "0.3.1", "name": "k8s-pod-network", "type": "flannel", "delegate": {"isDefaultGateway": true}},
    {"name": "k8snet2", "type": "macvlan", "master": "eth0",
     "ipam": {"type": "kube-ipam", "kubeConfig": "/nonexistent/kubeconfig",
              "etcdConfig": {"etcdURL": "%[1]s", "etcdPrefix": "%[2]s"},
              "subnet": "10.188.0.0/24", "rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.250", "gateway": "10.188.0.1",
              "fixedStart": "10.188.0.200", "fixedEnd": "10.188.0.250", "releaseCooldown": "30s"}},
    {"cniVersion": "1.0.0", "name": "k8snet3", "plugins": [
      {"type": "bridge", "bridge": "br3",
       "ipam": {"type": "kube-ipam", "kubeConfig": "/nonexistent/kubeconfig",
                "etcdConfig": {"etcdURL": "%[1]s", "etcdPrefix": "%[2]s"},
                "ranges": [[{"subnet": "10.189.0.0/28"}], [{"subnet": "fd00:189::/120"}]]}}]}
  ]
}`

// fakePods are the pods that exist in the (fake) Kubernetes API, by
// namespace/name.
type fakePods map[string]*pod.Info

type fixture struct {
	t     *testing.T
	etcd  *testenv.Etcd
	cli   *clientv3.Client
	conf  string
	pods  fakePods
	noAPI bool
	nets  map[string]*config.Network
	// backend, when set, is the store commit and release (so seed) write
	// to instead of etcd: the Kubernetes API store of kubestore_test.go.
	backend func(network string) store.Backend
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	e := testenv.StartEtcd(t)
	f := &fixture{t: t, etcd: e, cli: e.Client(t), pods: fakePods{}, nets: map[string]*config.Network{}}
	f.conf = filepath.Join(t.TempDir(), "00-multus.conf")
	if err := os.WriteFile(f.conf, fmt.Appendf(nil, confTmpl, e.ClientURL, prefix), 0o644); err != nil {
		t.Fatal(err)
	}
	nets, err := config.LoadNetworks(f.conf)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nets {
		f.nets[n.Name] = n
	}
	return f
}

func (f *fixture) run(args ...string) (string, string, int) {
	f.t.Helper()
	var out, errb bytes.Buffer
	app := &App{Out: &out, Err: &errb, Now: func() time.Time { return now },
		// The Kubernetes API of check, release and gc: the pods of f.pods.
		Kube: func(kc string, _ KubeOptions) (kubernetes.Interface, error) {
			if f.noAPI {
				return nil, fmt.Errorf("kubeconfig %s: no such file or directory", kc)
			}
			var objs []runtime.Object
			for _, p := range f.pods {
				objs = append(objs, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, UID: types.UID(p.UID)},
					Spec: corev1.PodSpec{NodeName: p.Node}})
			}
			// The StatefulSet of the seed's mysql-1 (sticky ordinal 1).
			replicas := int32(2)
			objs = append(objs, &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "db", Name: "mysql", UID: "uid-mysql"},
				Spec: appsv1.StatefulSetSpec{Replicas: &replicas}})
			return fake.NewClientset(objs...), nil
		}}
	code := app.Run(context.Background(), append([]string{"--config", f.conf}, args...))
	return out.String(), errb.String(), code
}

func (f *fixture) store(network string) *store.Store { return store.New(f.cli, prefix, network) }

// target is the store commit and release write to: f.backend's when set,
// else etcd's.
func (f *fixture) target(network string) store.Backend {
	if f.backend != nil {
		return f.backend(network)
	}
	return f.store(network)
}

// alloc commits one attachment through the store, as the plugin does.
type alloc struct {
	network, ns, pod, uid, cid, ifname, node, kind string
	ips                                            []string
	created                                        time.Time
	sts                                            string
	ordinal                                        int
}

func (f *fixture) commit(a alloc) {
	f.t.Helper()
	c := &store.Claim{Attachment: store.Attachment{ContainerID: a.cid, IfName: a.ifname, PodNamespace: a.ns, PodName: a.pod, PodUID: a.uid, Node: a.node, Created: a.created}}
	for _, ip := range a.ips {
		r := store.Record{Network: a.network, IP: ip, Kind: a.kind, IfName: a.ifname, ContainerID: a.cid,
			PodNamespace: a.ns, PodName: a.pod, PodUID: a.uid, Node: a.node, Created: a.created}
		if a.sts != "" {
			r.StatefulSet, r.StatefulSetUID, r.Ordinal = a.sts, "uid-"+a.sts, a.ordinal
		}
		c.Items = append(c.Items, store.ClaimItem{Record: r, Mode: store.ClaimFresh})
	}
	if a.kind == store.KindSticky {
		c.NewSticky = &store.Sticky{Namespace: a.ns, StatefulSet: a.sts, StatefulSetUID: "uid-" + a.sts, Ordinal: a.ordinal, IfName: a.ifname, IPs: a.ips, Created: a.created}
	}
	ok, err := f.target(a.network).Commit(context.Background(), c)
	if err != nil || !ok {
		f.t.Fatalf("commit %+v: ok=%v err=%v", a, ok, err)
	}
}

func (f *fixture) release(network, cid, ifname string, at time.Time) {
	f.t.Helper()
	if _, err := f.target(network).Release(context.Background(), cid, ifname, at, allocator.ReusePolicy(f.nets[network])); err != nil {
		f.t.Fatal(err)
	}
}

func cid(n int) string { return fmt.Sprintf("%02x", n) + strings.Repeat("c0ffee", 10) + "ab" }

// seed: a realistic store, every key written by store.Commit/Release.
func (f *fixture) seed() {
	f.commit(alloc{network: "k8snet2", ns: "default", pod: "web-1", uid: "uid-web-1", cid: cid(1), ifname: "net1", node: "worker-1",
		kind: store.KindDynamic, ips: []string{"10.188.0.10"}, created: now.Add(-5 * time.Minute)})
	f.commit(alloc{network: "k8snet2", ns: "db", pod: "mysql-0", uid: "uid-mysql-0", cid: cid(2), ifname: "net1", node: "worker-2",
		kind: store.KindFixed, ips: []string{"10.188.0.201"}, created: now.Add(-3 * time.Hour)})
	f.commit(alloc{network: "k8snet2", ns: "db", pod: "mysql-1", uid: "uid-mysql-1", cid: cid(3), ifname: "net1", node: "worker-2",
		kind: store.KindSticky, ips: []string{"10.188.0.11"}, created: now.Add(-50 * time.Hour), sts: "mysql", ordinal: 1})
	f.commit(alloc{network: "k8snet3", ns: "default", pod: "web-1", uid: "uid-web-1", cid: cid(1), ifname: "net2", node: "worker-1",
		kind: store.KindDynamic, ips: []string{"10.189.0.2", "fd00:189::2"}, created: now.Add(-5 * time.Minute)})
	// Released 10s ago (cooling) and 10m ago (reusable).
	f.commit(alloc{network: "k8snet2", ns: "default", pod: "old-0", uid: "uid-old-0", cid: cid(4), ifname: "net1", node: "worker-1",
		kind: store.KindDynamic, ips: []string{"10.188.0.12"}, created: now.Add(-time.Hour)})
	f.release("k8snet2", cid(4), "net1", now.Add(-10*time.Second))
	f.commit(alloc{network: "k8snet2", ns: "default", pod: "old-1", uid: "uid-old-1", cid: cid(5), ifname: "net1", node: "worker-2",
		kind: store.KindDynamic, ips: []string{"10.188.0.13"}, created: now.Add(-time.Hour)})
	f.release("k8snet2", cid(5), "net1", now.Add(-10*time.Minute))
	for _, p := range []*pod.Info{
		{Namespace: "default", Name: "web-1", UID: "uid-web-1", Node: "worker-1"},
		{Namespace: "db", Name: "mysql-0", UID: "uid-mysql-0", Node: "worker-2"},
		{Namespace: "db", Name: "mysql-1", UID: "uid-mysql-1", Node: "worker-2"},
	} {
		f.pods[p.Namespace+"/"+p.Name] = p
	}
}

func (f *fixture) put(network, rel, value string) {
	f.t.Helper()
	if _, err := f.cli.Put(context.Background(), prefix+"/v1/networks/"+network+"/"+rel, value); err != nil {
		f.t.Fatal(err)
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/cli/ -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from %s (run with -update to accept):\n--- got\n%s--- want\n%s", name, path, got, want)
	}
}

// goldenCommands are the read commands whose output on the seeded
// fixture is kept in golden files (testdata), on either store.
var goldenCommands = []struct {
	name string
	args []string
}{
	{"networks", []string{"networks"}},
	{"networks-json", []string{"networks", "-o", "json"}},
	{"list", []string{"list"}},
	{"list-json", []string{"list", "-o", "json"}},
	{"list-filtered", []string{"-n", "default", "list", "--node=worker-1", "--network", "k8snet2"}},
	{"who-has", []string{"who-has", "fd00:189::2"}},
	{"show", []string{"show", "web-1", "-n", "default"}},
	{"show-json", []string{"show", "db/mysql-1", "-o", "json"}},
	{"check-clean", []string{"check"}},
}

func TestGoldenOutputs(t *testing.T) {
	f := newFixture(t)
	f.seed()
	for _, c := range goldenCommands {
		t.Run(c.name, func(t *testing.T) {
			out, stderr, code := f.run(c.args...)
			if code != 0 {
				t.Fatalf("exit %d, stderr %s", code, stderr)
			}
			golden(t, c.name, out)
		})
	}
	// YAML is the JSON document re-encoded.
	out, _, code := f.run("networks", "-o", "yaml")
	if code != 0 || !strings.Contains(out, "name: k8snet2") || !strings.Contains(out, "cooling: 1") {
		t.Fatalf("yaml (exit %d):\n%s", code, out)
	}
}

func TestNetworksCounts(t *testing.T) {
	f := newFixture(t)
	f.seed()
	out, _, code := f.run("networks", "-o", "json")
	var rows []NetworkRow
	if err := json.Unmarshal([]byte(out), &rows); code != 0 || err != nil {
		t.Fatalf("exit %d, %v: %s", code, err, out)
	}
	// k8snet2: .10-.250 minus the fixed block .200-.250 = 190 addresses;
	// used .10 .11; cooling .12; fixed .201 is outside the pool.
	want := NetworkRow{Name: "k8snet2", Subnets: []string{"10.188.0.0/24"}, Pool: 190, Used: 2, Free: 187, Fixed: 1, Sticky: 1, Cooling: 1}
	if fmt.Sprint(rows[0]) != fmt.Sprint(want) {
		t.Errorf("k8snet2 = %+v, want %+v", rows[0], want)
	}
	// k8snet3: .2-.14 without gateway .1 = 13, plus fd00:189::2-::ff = 254.
	if rows[1].Pool != 13+254 || rows[1].Used != 2 {
		t.Errorf("k8snet3 = %+v", rows[1])
	}
}

func TestWhoHasFree(t *testing.T) {
	f := newFixture(t)
	f.seed()
	for ip, want := range map[string]string{
		"10.188.0.12": "k8snet2: released 10s ago, cooling down for 20s more",
		"10.188.0.13": "k8snet2: released 10m ago",
		"10.188.0.99": "k8snet2: never allocated",
		"192.0.2.1":   "outside every configured subnet",
	} {
		out, stderr, code := f.run("who-has", ip)
		if code != 1 || out != "" || !strings.Contains(stderr, ip+" is not allocated") || !strings.Contains(stderr, want) {
			t.Errorf("who-has %s: exit %d, stdout %q, stderr %q; want exit 1 and %q", ip, code, out, stderr, want)
		}
	}
	if _, stderr, code := f.run("who-has", "not-an-ip"); code != 2 || !strings.Contains(stderr, "not an IP address") {
		t.Errorf("bad IP: exit %d, %s", code, stderr)
	}
	if _, stderr, code := f.run("show", "nobody", "-n", "default"); code != 1 || !strings.Contains(stderr, "pod default/nobody holds no address") {
		t.Errorf("show nobody: exit %d, %s", code, stderr)
	}
}

// plant writes inconsistencies as raw keys (and one leaked pod through
// Commit: its record is well-formed, only the pod is gone).
func (f *fixture) plant() {
	// Stale attachment: cold's attachment lists .20, whose record names cnew.
	f.commit(alloc{network: "k8snet2", ns: "default", pod: "a", uid: "uid-a", cid: "cnew", ifname: "net1", node: "worker-1",
		kind: store.KindDynamic, ips: []string{"10.188.0.20"}, created: now.Add(-time.Minute)})
	f.pods["default/a"] = &pod.Info{Namespace: "default", Name: "a", UID: "uid-a"}
	f.put("k8snet2", "att/cold/net1", `{"containerID":"cold","ifname":"net1","ips":["10.188.0.20"],"created":"2026-01-02T02:00:00Z"}`)
	// Orphan: a record without attachment.
	f.put("k8snet2", "ip/4/0abc0015", `{"network":"k8snet2","ip":"10.188.0.21","kind":"dynamic","ifname":"net1","containerID":"corphan","podNamespace":"default","podName":"a","podUID":"uid-a","node":"worker-1","created":"2026-01-02T02:00:00Z"}`)
	// Out of range: a dynamic record (with its attachment) outside every subnet.
	f.put("k8snet2", "ip/4/c0a80909", `{"network":"k8snet2","ip":"192.168.9.9","kind":"dynamic","ifname":"net1","containerID":"cfar","podNamespace":"default","podName":"a","podUID":"uid-a","node":"worker-1","created":"2026-01-02T02:00:00Z"}`)
	f.put("k8snet2", "att/cfar/net1", `{"containerID":"cfar","ifname":"net1","ips":["192.168.9.9"],"podNamespace":"default","podName":"a","created":"2026-01-02T02:00:00Z"}`)
	// Leaked: the pod is gone from the API.
	f.commit(alloc{network: "k8snet2", ns: "default", pod: "gone", uid: "uid-gone", cid: "cgone", ifname: "net1", node: "worker-2",
		kind: store.KindDynamic, ips: []string{"10.188.0.22"}, created: now.Add(-time.Hour)})
	// Corrupt: an unparsable value and an unparsable key.
	f.put("k8snet2", "ip/4/0abc0017", `{not json`)
	f.put("k8snet2", "ip/4/zz", `{}`)
	// Duplicate: .20 again under an upper-case spelling of its key.
	f.put("k8snet2", "ip/4/0ABC0014", `{"network":"k8snet2","ip":"10.188.0.20","kind":"dynamic","ifname":"net1","containerID":"cdup","created":"2026-01-02T02:00:00Z"}`)
}

func TestCheckFindsPlantedProblems(t *testing.T) {
	f := newFixture(t)
	f.seed()
	f.plant()
	out, stderr, code := f.run("check")
	if code != 1 || !strings.Contains(stderr, "check found 7 inconsistencies") {
		t.Fatalf("check: exit %d, stderr %q\n%s", code, stderr, out)
	}
	golden(t, "check-planted", out)

	out, _, code = f.run("check", "-o", "json")
	var rep CheckReport
	if err := json.Unmarshal([]byte(out), &rep); code != 1 || err != nil {
		t.Fatalf("check -o json: exit %d, %v\n%s", code, err, out)
	}
	golden(t, "check-planted-json", out)
	found := map[string]string{}
	for _, p := range rep.Problems {
		found[p.Kind+" "+p.IP+" "+p.Key] = p.Detail
	}
	base := prefix + "/v1/networks/k8snet2/"
	for _, want := range []string{
		ProblemStale + " 10.188.0.20 " + base + "att/cold/net1",
		ProblemOrphan + " 10.188.0.21 " + base + "ip/4/0abc0015",
		ProblemOutOfRange + " 192.168.9.9 " + base + "ip/4/c0a80909",
		ProblemLeaked + " 10.188.0.22 " + base + "ip/4/0abc0016",
		ProblemCorrupt + " 10.188.0.23 " + base + "ip/4/0abc0017",
		ProblemCorrupt + "  " + base + "ip/4/zz",
		ProblemDuplicate + " 10.188.0.20 " + base + "ip/4/0ABC0014",
	} {
		if _, ok := found[want]; !ok {
			t.Errorf("check did not report %q; got %v", want, found)
		}
	}
	if len(rep.Problems) != 7 {
		t.Errorf("%d problems, want 7: %v", len(rep.Problems), found)
	}

	// Without a usable API the leaked check is skipped with a note; the
	// other problems are still found.
	f.noAPI = true
	out, _, code = f.run("check")
	if code != 1 || strings.Contains(out, "\n"+ProblemLeaked+" ") || !strings.Contains(out, "Note: network k8snet2: leaked allocations not checked: Kubernetes API not configured") {
		t.Errorf("check without API: exit %d\n%s", code, out)
	}
}

func TestCheckRecreatedPodIsLeaked(t *testing.T) {
	f := newFixture(t)
	f.seed()
	f.pods["default/web-1"] = &pod.Info{Namespace: "default", Name: "web-1", UID: "uid-web-1-new"}
	out, _, code := f.run("check")
	if code != 1 || strings.Count(out, "was re-created with UID uid-web-1-new") != 3 {
		t.Errorf("exit %d\n%s", code, out)
	}
}

func TestRelease(t *testing.T) {
	f := newFixture(t)
	f.seed()
	f.plant()
	ctx := context.Background()

	// The owner pod exists: refused, nothing changes.
	out, stderr, code := f.run("release", "10.189.0.2")
	if code != 1 || !strings.Contains(stderr, "pod default/web-1 still exists") {
		t.Fatalf("release of a live pod's address: exit %d, %q %q", code, out, stderr)
	}
	// The API cannot be checked: refused too.
	f.noAPI = true
	if _, stderr, code := f.run("release", "10.188.0.22"); code != 1 || !strings.Contains(stderr, "cannot check whether pod default/gone still exists") {
		t.Fatalf("release without API: exit %d, %q", code, stderr)
	}
	// --force overrides; the whole dual-stack attachment is freed.
	out, stderr, code = f.run("release", "10.189.0.2", "--force")
	if code != 0 || !strings.Contains(out, "released 10.189.0.2 on network k8snet3") || !strings.Contains(out, "also freed fd00:189::2") {
		t.Fatalf("forced release: exit %d, %q %q", code, out, stderr)
	}
	for _, ip := range []string{"10.189.0.2", "fd00:189::2"} {
		st, err := f.store("k8snet3").State(ctx, netip.MustParseAddr(ip))
		if err != nil || st.Record != nil || st.Tomb == nil || st.Tomb.Log == "" {
			t.Errorf("%s after release: %+v %+v %v", ip, st.Record, st.Tomb, err)
		}
	}
	if att, err := f.store("k8snet3").Attachment(ctx, cid(1), "net2"); err != nil || att != nil {
		t.Errorf("attachment left behind: %+v %v", att, err)
	}
	if _, stderr, code := f.run("who-has", "10.189.0.2"); code != 1 || !strings.Contains(stderr, "released 0s ago, cooling down for 30s more") {
		t.Errorf("who-has after release: exit %d, %q", code, stderr)
	}
	f.noAPI = false

	// The owner pod is gone: released without --force.
	if out, stderr, code := f.run("release", "10.188.0.22"); code != 0 || !strings.Contains(out, "released 10.188.0.22 on network k8snet2, held by pod default/gone") {
		t.Fatalf("release of a leaked address: exit %d, %q %q", code, out, stderr)
	}
	// An orphan record (no attachment) is released through a stand-in attachment.
	if out, stderr, code := f.run("release", "10.188.0.21", "--network", "k8snet2", "--force"); code != 0 || !strings.Contains(out, "the record had no attachment") {
		t.Fatalf("release of an orphan: exit %d, %q %q", code, out, stderr)
	}
	// A record its own attachment no longer lists is freed with that attachment.
	f.commit(alloc{network: "k8snet2", ns: "default", pod: "gone", uid: "uid-gone", cid: "cx", ifname: "net1", node: "worker-2",
		kind: store.KindDynamic, ips: []string{"10.188.0.30"}, created: now.Add(-time.Hour)})
	f.put("k8snet2", "att/cx/net1", `{"containerID":"cx","ifname":"net1","ips":[],"created":"2026-01-02T02:00:00Z"}`)
	if out, stderr, code := f.run("release", "10.188.0.30"); code != 0 || !strings.Contains(out, "released 10.188.0.30") {
		t.Fatalf("release of an address its attachment forgot: exit %d, %q %q", code, out, stderr)
	}
	if att, err := f.store("k8snet2").Attachment(ctx, "cx", "net1"); err != nil || att != nil {
		t.Errorf("attachment left behind: %+v %v", att, err)
	}
	// Nothing left to release; unknown network.
	if _, stderr, code := f.run("release", "10.188.0.22"); code != 1 || !strings.Contains(stderr, "nothing to release") {
		t.Errorf("second release: exit %d, %q", code, stderr)
	}
	if _, stderr, code := f.run("release", "10.188.0.10", "--network", "nope"); code != 2 || !strings.Contains(stderr, `no network "nope"`) {
		t.Errorf("unknown network: exit %d, %q", code, stderr)
	}
	out, _, _ = f.run("check")
	for _, ip := range []string{"10.188.0.21 ", "10.188.0.22 "} {
		if strings.Contains(out, ip) {
			t.Errorf("check still reports %s after release:\n%s", ip, out)
		}
	}
}

func TestHelpAndUsage(t *testing.T) {
	var out, errb bytes.Buffer
	app := &App{Out: &out, Err: &errb}
	for _, c := range app.newRoot().Commands() {
		out.Reset()
		if code := app.Run(context.Background(), []string{c.Name(), "--help"}); code != 0 || !strings.Contains(out.String(), "Examples:\n  kube-ipamctl "+c.Name()) {
			t.Errorf("%s --help: exit %d\n%s", c.Name(), code, out.String())
		}
	}
	out.Reset()
	if code := app.Run(context.Background(), []string{"--help"}); code != 0 || !strings.Contains(out.String(), "who-has") {
		t.Errorf("--help: exit %d\n%s", code, out.String())
	}
	if code := app.Run(context.Background(), []string{"frobnicate"}); code != 2 {
		t.Errorf("unknown command: exit %d", code)
	}
	if code := app.Run(context.Background(), []string{"list", "-o", "xml", "--config", "/nonexistent"}); code != 2 {
		t.Errorf("bad -o: exit %d, %s", code, errb.String())
	}
	if code := app.Run(context.Background(), []string{"who-has"}); code != 2 {
		t.Errorf("missing argument: exit %d", code)
	}
}

// The etcd TLS settings of the config reach the client: a mutual-TLS etcd
// is read with the files named in ipam.etcdConfig.
func TestTLSConfig(t *testing.T) {
	e := testenv.StartEtcdTLS(t)
	conf := filepath.Join(t.TempDir(), "net.conf")
	body := fmt.Sprintf(`{"cniVersion": "0.3.1", "name": "tlsnet", "type": "macvlan",
	  "ipam": {"type": "kube-ipam", "subnet": "10.7.0.0/29",
	           "etcdConfig": {"etcdURL": %q, "etcdCertFile": %q, "etcdKeyFile": %q, "etcdTrustedCAFileFile": %q}}}`,
		e.ClientURL, e.CertFile, e.KeyFile, e.CAFile)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	app := &App{Out: &out, Err: &errb, Now: func() time.Time { return now }}
	code := app.Run(context.Background(), []string{"--network", "tlsnet", "list", "--config", conf, "--kubeconfig", "/nonexistent"})
	if code != 0 || out.String() != "IP   NETWORK   KIND   POD   CONTAINER   IFNAME   NODE   AGE\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	out.Reset()
	if code := app.Run(context.Background(), []string{"networks", "--config", conf, "-ojson"}); code != 0 || !strings.Contains(out.String(), `"pool": 5`) {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
}

// An unreachable etcd is reported in seconds with its reason, not after
// --timeout: the test's own 20 s deadline catches a regression.
func TestEtcdUnreachable(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "net.conf")
	body := `{"cniVersion": "0.3.1", "name": "down", "type": "macvlan",
	  "ipam": {"type": "kube-ipam", "subnet": "10.7.0.0/29", "etcdConfig": {"etcdURL": "http://127.0.0.1:1"}}}`
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	app := &App{Out: &out, Err: &errb, Now: func() time.Time { return now }}
	code := app.Run(ctx, []string{"networks", "--config", conf, "--timeout", "60s"})
	if ctx.Err() != nil {
		t.Fatalf("kube-ipamctl waited for its --timeout on an unreachable etcd (stderr %q)", errb.String())
	}
	if code != 3 || !strings.Contains(errb.String(), "unreachable") || !strings.Contains(errb.String(), "127.0.0.1:1") {
		t.Fatalf("exit %d, stderr %q; want 3 and the unreachable endpoint", code, errb.String())
	}
}
