// Package tier runs the kube-tier binary as container runtimes (and meta
// plugins) do: a separate process, through libcni, as the last plugin of a
// conflist after the real macvlan plugin and an IPAM (host-local, or the
// real kube-ipam on a real etcd), with pods as network namespaces the test
// creates. It proves the policy with real traffic, the pod decision with a
// real kube-apiserver, and the CNI verbs' contract (ADD, CHECK, DEL).
//
// Layout: the plugins run in the test's (root) namespace, as on a node, so
// kube-ipam reaches etcd on 127.0.0.1. The macvlan parent is one end of a
// veth pair the test creates (the other end in an "underlay" namespace,
// which gives it carrier); pods on it talk to each other in bridge mode.
package tier

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubeipam/internal/testenv"
	"kubeipam/internal/tier"
)

// env is one "node": a macvlan parent, the plugin directories and the
// runtime's libcni cache.
type env struct {
	t        *testing.T
	binDir   string // kube-tier (and kube-ipam)
	plugins  string // the reference plugins
	cacheDir string
	parent   string
	rec      *recorder
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testenv.RequireRoot(t)
	e := &env{t: t, binDir: t.TempDir(), plugins: testenv.CNIPluginDir(t), cacheDir: t.TempDir(), parent: testenv.UniqueName("ktp")}
	for _, b := range []string{"kube-tier", "kube-ipam"} {
		if err := os.Symlink(testenv.Binary(t, b), filepath.Join(e.binDir, b)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.VethPair(t, nil, e.parent, testenv.NewNS(t), testenv.UniqueName("ktu"))
	e.rec = &recorder{DefaultExec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}}, calls: map[string]call{}}
	return e
}

// recorder runs plugins as libcni does and keeps each plugin's last stdin
// and stdout per verb, to compare what kube-tier was given and printed.
type recorder struct {
	*invoke.DefaultExec
	mu    sync.Mutex
	calls map[string]call // "macvlan ADD" -> call
}

type call struct{ stdin, stdout []byte }

func (r *recorder) ExecPlugin(ctx context.Context, path string, stdin []byte, environ []string) ([]byte, error) {
	out, err := r.DefaultExec.ExecPlugin(ctx, path, stdin, environ)
	verb := ""
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "CNI_COMMAND="); ok {
			verb = v
		}
	}
	r.mu.Lock()
	r.calls[filepath.Base(path)+" "+verb] = call{stdin, out}
	r.mu.Unlock()
	return out, err
}

func (r *recorder) last(plugin, verb string) call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[plugin+" "+verb]
}

func (e *env) cni() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{e.binDir, e.plugins}, e.cacheDir, e.rec)
}

// conflist is [macvlan on the env's parent with ipam, kube-tier] (no
// kube-tier when tierConf is nil).
func (e *env) conflist(name string, ipam, tierConf map[string]any) *libcni.NetworkConfigList {
	e.t.Helper()
	plugins := []any{map[string]any{"type": "macvlan", "master": e.parent, "mode": "bridge", "ipam": ipam}}
	if tierConf != nil {
		tierConf["type"] = "kube-tier"
		tierConf["logFile"] = filepath.Join(e.cacheDir, "kube-tier.log")
		tierConf["logLevel"] = "debug"
		plugins = append(plugins, tierConf)
	}
	b, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": name, "plugins": plugins})
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}

func (e *env) hostLocal(first, last string) map[string]any {
	return map[string]any{"type": "host-local", "subnet": "10.188.0.0/24", "rangeStart": first, "rangeEnd": last,
		"dataDir": e.t.TempDir()}
}

// pod is a network namespace attached to a conflist.
type pod struct {
	name    string
	netns   ns.NetNS
	list    *libcni.NetworkConfigList
	rt      *libcni.RuntimeConf
	deleted bool
}

// add creates a pod namespace and runs ADD for pod namespace/name; DEL is
// registered before ADD so that whatever ADD leaves is torn down.
func (e *env) add(list *libcni.NetworkConfigList, namespace, name string) (*pod, types.Result, error) {
	e.t.Helper()
	return e.addIn(testenv.NewNS(e.t), list, namespace, name)
}

func (e *env) addIn(n ns.NetNS, list *libcni.NetworkConfigList, namespace, name string) (*pod, types.Result, error) {
	e.t.Helper()
	p := &pod{name: namespace + "/" + name, netns: n, list: list, rt: &libcni.RuntimeConf{
		ContainerID: testenv.UniqueName("cid-"), NetNS: n.Path(), IfName: "net1",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", namespace}, {"K8S_POD_NAME", name}},
	}}
	e.t.Cleanup(func() {
		if !p.deleted {
			_ = e.del(p)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := e.cni().AddNetworkList(ctx, list, p.rt)
	return p, res, err
}

func (e *env) mustAdd(list *libcni.NetworkConfigList, namespace, name string) (*pod, types.Result) {
	e.t.Helper()
	p, res, err := e.add(list, namespace, name)
	if err != nil {
		e.t.Fatalf("ADD %s: %v\n%s", p.name, err, e.log())
	}
	return p, res
}

func (e *env) del(p *pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := e.cni().DelNetworkList(ctx, p.list, p.rt)
	if err == nil {
		p.deleted = true
	}
	return err
}

func (e *env) check(p *pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return e.cni().CheckNetworkList(ctx, p.list, p.rt)
}

func (e *env) log() string {
	b, _ := os.ReadFile(filepath.Join(e.cacheDir, "kube-tier.log"))
	return "kube-tier log:\n" + string(b)
}

func (p *pod) protected(t *testing.T) bool {
	t.Helper()
	ok, err := tier.TableInstalled(p.netns.Path(), tier.ChainedTableName("net1"))
	if err != nil {
		t.Fatalf("listing the tables of %s: %v", p.name, err)
	}
	return ok
}

func (p *pod) ip(t *testing.T) string {
	t.Helper()
	as := testenv.IPv4Addrs(t, p.netns, "net1")
	if len(as) != 1 {
		t.Fatalf("%s: net1 addresses %v", p.name, as)
	}
	ip, _, _ := strings.Cut(as[0], "/")
	return ip
}

func (p *pod) listen(t *testing.T, addr string) { testenv.ListenTCP(t, p.netns, addr) }

func (p *pod) dial(addr string) error { return testenv.DialTCP(p.netns, addr) }

// dialEventually allows for the first use of a macvlan neighbour.
func (p *pod) dialEventually(addr string) error {
	var err error
	for range 3 {
		if err = p.dial(addr); err == nil {
			return nil
		}
	}
	return err
}

func (p *pod) ping(ip string) error { return testenv.Ping(p.netns, ip, time.Second) }

func cniCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

func jsonEqual(t *testing.T, what string, got, want []byte) {
	t.Helper()
	var g, w any
	if err := errors.Join(json.Unmarshal(got, &g), json.Unmarshal(want, &w)); err != nil {
		t.Fatalf("%s: %v\n%s\n%s", what, err, got, want)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s:\n%s\nwant\n%s", what, got, want)
	}
}

// sameResult compares two results as CNI types (libcni re-encodes a
// plugin's result before passing it on as prevResult: an empty "dns": {}
// disappears).
func sameResult(t *testing.T, what string, got, want []byte) {
	t.Helper()
	g, err1 := current.NewResult(got)
	w, err2 := current.NewResult(want)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatalf("%s: %v\n%s\n%s", what, err, got, want)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s:\n%s\nwant\n%s", what, got, want)
	}
}

// dbRule is the guide's database rule: the web range may reach 3306 and
// ping; the namespace selects the database pods.
func dbRule(extra map[string]any) map[string]any {
	r := map[string]any{"namespaces": []string{"db"}, "from": []string{"10.188.0.10-10.188.0.200"},
		"ports": []any{map[string]any{"protocol": "tcp", "port": 3306}}, "icmp": true}
	for k, v := range extra {
		r[k] = v
	}
	return r
}

// TestChainedPolicy runs [macvlan + host-local, kube-tier] for a database
// pod (protected) and a web pod (not), and an outsider on the same segment
// outside the allowed range, and proves the policy with traffic and the
// verbs' contract.
func TestChainedPolicy(t *testing.T) {
	if _, err := exec.LookPath("ping"); err != nil {
		testenv.Missing(t, "ping not installed (apt-get install iputils-ping)")
	}
	e := newEnv(t)
	dbNet := e.conflist("db-net", e.hostLocal("10.188.0.10", "10.188.0.200"),
		map[string]any{"ingress": []any{dbRule(nil)}})
	outside := e.conflist("outside", e.hostLocal("10.188.0.230", "10.188.0.240"), nil)

	db, res := e.mustAdd(dbNet, "db", "database-1-0")
	// ADD returned: the table is already there.
	if !db.protected(t) {
		t.Fatalf("no table inet kube-tier-net1 in the database pod after ADD\n%s", e.log())
	}
	// prevResult passed through unchanged: kube-tier was given macvlan's
	// result and printed exactly it, and it describes the real interface.
	mv, kt := e.rec.last("macvlan", "ADD"), e.rec.last("kube-tier", "ADD")
	var given struct {
		PrevResult json.RawMessage `json:"prevResult"`
	}
	if err := json.Unmarshal(kt.stdin, &given); err != nil {
		t.Fatal(err)
	}
	jsonEqual(t, "kube-tier's result vs the prevResult it was given", kt.stdout, given.PrevResult)
	sameResult(t, "kube-tier's result vs macvlan's", kt.stdout, mv.stdout)
	r, err := current.NewResultFromResult(res)
	if err != nil || len(r.IPs) != 1 || r.IPs[0].Address.IP.String() != db.ip(t) {
		t.Fatalf("final result %+v (%v) does not describe net1 (%s)", res, err, db.ip(t))
	}
	if out, err := exec.Command("ip", "netns", "exec", filepath.Base(db.netns.Path()), "nft", "list", "ruleset").CombinedOutput(); err == nil {
		t.Logf("the database pod's ruleset:\n%s", out)
	}

	web, _ := e.mustAdd(dbNet, "web", "web-0")
	if web.protected(t) {
		t.Fatal("the web pod, which no rule selects, got a table")
	}
	out, _ := e.mustAdd(outside, "default", "outsider")
	dbIP, webIP := db.ip(t), web.ip(t)
	db.listen(t, dbIP+":3306")
	db.listen(t, dbIP+":3307")
	web.listen(t, webIP+":3307")

	// Allowed: the web range to 3306, and ping.
	if err := web.dialEventually(dbIP + ":3306"); err != nil {
		t.Fatalf("web -> db:3306 (allowed): %v", err)
	}
	if err := web.ping(dbIP); err != nil {
		t.Fatalf("web ping db (allowed): %v", err)
	}
	// Controls: the outsider reaches the unprotected web pod.
	if err := out.dialEventually(webIP + ":3307"); err != nil {
		t.Fatalf("control: outsider -> web:3307: %v", err)
	}
	// Dropped: another port from the allowed range; anything from outside it.
	if err := web.dial(dbIP + ":3307"); err == nil {
		t.Error("web reached db:3307, which the rule does not list")
	}
	if err := out.dial(dbIP + ":3306"); err == nil {
		t.Error("the outsider (not in from) reached db:3306")
	}
	if err := out.ping(dbIP); err == nil {
		t.Error("the outsider pinged the database")
	}

	// CHECK passes with the table; without it (deleted by hand), it fails
	// with 121 and the port it guarded opens.
	if err := e.check(db); err != nil {
		t.Fatalf("CHECK: %v\n%s", err, e.log())
	}
	if err := e.check(web); err != nil {
		t.Fatalf("CHECK of the unprotected pod: %v", err)
	}
	if b, err := exec.Command("ip", "netns", "exec", filepath.Base(db.netns.Path()), "nft", "delete", "table", "inet", "kube-tier-net1").CombinedOutput(); err != nil {
		t.Fatalf("nft delete table: %v %s", err, b)
	}
	if err := e.check(db); cniCode(err) != tier.CodePolicy {
		t.Fatalf("CHECK without the table: %v (code %d), want code %d", err, cniCode(err), tier.CodePolicy)
	}
	if err := web.dial(dbIP + ":3307"); err != nil {
		t.Errorf("control: without the table db:3307 is still refused: %v", err)
	}

	// DEL removes the table (re-created here as ADD made it) with the
	// interface; a second DEL succeeds.
	rules, err := tier.Rules("net1", mustRules(t, dbRule(nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := tier.ApplyTable(db.netns.Path(), tier.ChainedTableName("net1"), rules); err != nil {
		t.Fatal(err)
	}
	if err := e.del(db); err != nil {
		t.Fatalf("DEL: %v\n%s", err, e.log())
	}
	if db.protected(t) {
		t.Error("table left after DEL")
	}
	if err := e.del(db); err != nil {
		t.Errorf("second DEL: %v", err)
	}

	// DEL after the namespace is gone succeeds, twice.
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	gone := false
	t.Cleanup(func() {
		if !gone {
			_ = n.Close()
			_ = testutils.UnmountNS(n)
		}
	})
	g, _, err := e.addIn(n, dbNet, "db", "database-2-0")
	if err != nil {
		t.Fatalf("ADD database-2-0: %v", err)
	}
	if !g.protected(t) {
		t.Fatal("database-2-0 has no table")
	}
	if err := errors.Join(n.Close(), testutils.UnmountNS(n)); err != nil {
		t.Fatal(err)
	}
	gone = true
	if _, err := os.Stat(n.Path()); !os.IsNotExist(err) {
		t.Fatalf("namespace %s still there: %v", n.Path(), err)
	}
	if err := e.del(g); err != nil {
		t.Fatalf("DEL after the namespace is gone: %v", err)
	}
	if err := e.del(g); err != nil {
		t.Fatalf("second DEL after the namespace is gone: %v", err)
	}
}

func mustRules(t *testing.T, rules ...map[string]any) []tier.Rule {
	t.Helper()
	b, _ := json.Marshal(rules)
	var out []tier.Rule
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	for i := range out {
		if err := out[i].Validate("rule"); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestChainedPodSelector decides with a real kube-apiserver: a podSelector
// protects the pod whose labels match, not its neighbour; a pod of another
// namespace needs no read; a missing pod is 120, an unreachable API 11;
// DEL never reads the pod (it succeeds with the API server gone).
func TestChainedPodSelector(t *testing.T) {
	e := newEnv(t)
	k := testenv.StartKube(t, testenv.KubeOptions{})
	ctx := context.Background()
	if _, err := k.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "db"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for name, lbl := range map[string]string{"database-1-0": "db", "batch-0": "batch"} {
		if _, err := k.Client.CoreV1().Pods("db").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"tier": lbl}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "img:v1"}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	list := e.conflist("db-net", e.hostLocal("10.188.0.10", "10.188.0.200"),
		map[string]any{"kubeconfig": k.Kubeconfig, "ingress": []any{dbRule(map[string]any{"podSelector": "tier=db"})}})

	db, _ := e.mustAdd(list, "db", "database-1-0")
	if !db.protected(t) {
		t.Fatalf("tier=db pod not protected\n%s", e.log())
	}
	batch, _ := e.mustAdd(list, "db", "batch-0")
	if batch.protected(t) {
		t.Fatal("tier=batch pod protected")
	}
	// Not in the API at all, but in a namespace no rule names: no read.
	web, _ := e.mustAdd(list, "web", "web-0")
	if web.protected(t) {
		t.Fatal("web pod protected")
	}
	for _, p := range []*pod{db, batch, web} {
		if err := e.check(p); err != nil {
			t.Fatalf("CHECK %s: %v", p.name, err)
		}
	}
	if _, _, err := e.add(list, "db", "ghost-0"); cniCode(err) != tier.CodePodLookup {
		t.Fatalf("ADD of a pod the API does not know: %v (code %d), want %d", err, cniCode(err), tier.CodePodLookup)
	}

	k.StopAPIServer(t)
	if _, _, err := e.add(list, "db", "database-2-0"); cniCode(err) != types.ErrTryAgainLater {
		t.Fatalf("ADD with the API server gone: %v (code %d), want 11", err, cniCode(err))
	}
	if err := e.del(db); err != nil {
		t.Fatalf("DEL with the API server gone: %v", err)
	}
	if db.protected(t) {
		t.Error("table left after DEL")
	}
}

// TestChainedAfterKubeIPAM: the guide's chain, [macvlan + kube-ipam (real
// etcd), kube-tier]: kube-ipam's address reaches the runtime through
// kube-tier, every plugin's CHECK passes, DEL frees the address and
// removes the table.
func TestChainedAfterKubeIPAM(t *testing.T) {
	e := newEnv(t)
	etcd := testenv.StartEtcd(t)
	ipam := map[string]any{"type": "kube-ipam", "etcdConfig": map[string]any{"etcdURL": strings.Join(etcd.Endpoints, ",")},
		"subnet": "10.188.0.0/16", "rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.200", "gateway": "10.188.0.1",
		"podLookup": false, "logFile": filepath.Join(t.TempDir(), "kube-ipam.log")}
	list := e.conflist("k8snet2", ipam, map[string]any{"ingress": []any{dbRule(nil)}})
	db, res := e.mustAdd(list, "db", "database-1-0")
	if !db.protected(t) {
		t.Fatalf("no table\n%s", e.log())
	}
	r, err := current.NewResultFromResult(res)
	if err != nil || len(r.IPs) != 1 || r.IPs[0].Address.IP.String() != db.ip(t) {
		t.Fatalf("result %+v (%v) is not net1's address %s", res, err, db.ip(t))
	}
	sameResult(t, "kube-tier's result vs macvlan's", e.rec.last("kube-tier", "ADD").stdout, e.rec.last("macvlan", "ADD").stdout)
	if err := e.check(db); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	cli := etcd.Client(t)
	count := func() int64 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, "/kube-ipam/v1/networks/k8snet2/att/"+db.rt.ContainerID+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}
	if count() == 0 {
		t.Fatal("kube-ipam holds nothing for the pod")
	}
	if err := e.del(db); err != nil {
		t.Fatal(err)
	}
	if db.protected(t) || count() != 0 {
		t.Errorf("after DEL: table %v, kube-ipam attachments %d", db.protected(t), count())
	}
}

// TestBinary runs the binary directly: its version answer, and CNI error
// objects (never a panic) for what skel and kube-tier refuse.
func TestBinary(t *testing.T) {
	bin := testenv.Binary(t, "kube-tier")
	run := func(verb, stdin string, env ...string) ([]byte, error) {
		cmd := exec.Command(bin)
		cmd.Env = append([]string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=c1", "CNI_NETNS=" + filepath.Join(t.TempDir(), "gone"),
			"CNI_IFNAME=net1", "CNI_PATH=/nonexistent"}, env...)
		cmd.Stdin = strings.NewReader(stdin)
		return cmd.Output()
	}
	out, err := run("VERSION", `{"cniVersion":"1.1.0"}`)
	if err != nil {
		t.Fatal(err)
	}
	info, err := (&version.PluginDecoder{}).Decode(out)
	if err != nil || strings.Join(info.SupportedVersions(), ",") != "0.3.0,0.3.1,0.4.0,1.0.0,1.1.0" {
		t.Fatalf("VERSION: %s (%v)", out, err)
	}
	ok := `{"cniVersion":"1.0.0","name":"db-net","type":"kube-tier","ingress":[{"namespaces":["db"]}]}`
	for _, c := range []struct {
		name, verb, stdin string
		code              uint
	}{
		{"not JSON", "ADD", `{"cniVersion":`, types.ErrDecodingFailure},
		{"0.2.0 has no prevResult", "ADD", strings.Replace(ok, "1.0.0", "0.2.0", 1), types.ErrIncompatibleCNIVersion},
		{"standalone", "ADD", ok, types.ErrInvalidNetworkConfig},
		{"attach", "ADD", strings.Replace(ok, `"ingress"`, `"attach":{"namespaces":["db"]},"ingress"`, 1), types.ErrUnsupportedField},
	} {
		out, err := run(c.verb, c.stdin)
		var e types.Error
		if err == nil || json.Unmarshal(out, &e) != nil || e.Code != c.code || e.Msg == "" {
			t.Errorf("%s: %v, stdout %s; want a CNI error with code %d", c.name, err, out, c.code)
		}
	}
	for _, verb := range []string{"DEL", "STATUS", "GC"} {
		conf := strings.Replace(ok, "1.0.0", "1.1.0", 1)
		if out, err := run(verb, conf); err != nil {
			t.Errorf("%s: %v %s", verb, err, out)
		}
	}
}
