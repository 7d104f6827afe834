package meta

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kubeipam/internal/meta"
	"kubeipam/internal/tier"
)

// TestSeedScenario replays the seed's sections 4 and 5 with the seed's
// config: web reaches database-2's fixed 10.188.0.219 over net1,
// database-2 reaches database-1's 10.188.0.218, and database-2, deleted and
// re-created on another node, keeps 10.188.0.219 and is reachable again.
func TestSeedScenario(t *testing.T) {
	c := newCluster(t, 3, nil)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	db1 := c.mustPod(n1, "default", "database-1-0", "10.188.0.218")
	db2 := c.mustPod(n2, "default", "database-2-0", "10.188.0.219")
	web := c.mustPod(n3, "default", "web-5fd8684df7-8c7zb", "")

	for _, p := range []*pod{db1, db2, web} {
		if as, err := p.addrs("eth0"); err != nil || len(as) != 1 || !strings.HasPrefix(as[0], "10.244.") {
			t.Fatalf("%s eth0: %v %v", p.name, as, err)
		}
	}
	if ip := db2.net1IP(t); ip != "10.188.0.219" {
		t.Fatalf("database-2 net1 is %s", ip)
	}
	if as, _ := db2.addrs("net1"); as[0] != "10.188.0.219/16" {
		t.Errorf("database-2 net1 %v, want /16 from the seed's subnet", as)
	}
	webIP := web.net1IP(t)
	if !inRange(webIP, 10, 200) {
		t.Errorf("web got %s, outside rangeStart-rangeEnd", webIP)
	}
	// §4.2 and §4.3.
	if err := web.pingEventually("10.188.0.219"); err != nil {
		t.Fatal(err)
	}
	if err := db2.pingEventually("10.188.0.218"); err != nil {
		t.Fatal(err)
	}
	// §5: delete database-2 and re-create it on another node.
	if err := c.del(db2); err != nil {
		t.Fatalf("DEL database-2: %v", err)
	}
	if h := c.holder("10.188.0.219"); h != "" {
		t.Fatalf("10.188.0.219 still held by %s after DEL", h)
	}
	if _, err := os.Stat(meta.CachePath(n2.cniDir, db2.cid)); !os.IsNotExist(err) {
		t.Errorf("scratch cache left after DEL: %v", err)
	}
	db2b := c.mustPod(n3, "default", "database-2-0", "10.188.0.219")
	if ip := db2b.net1IP(t); ip != "10.188.0.219" {
		t.Fatalf("re-created database-2 has %s", ip)
	}
	if h := c.holder("10.188.0.219"); h != db2b.cid {
		t.Fatalf("10.188.0.219 held by %q, want the new container %s", h, db2b.cid)
	}
	if err := web.pingEventually("10.188.0.219"); err != nil {
		t.Fatal(err)
	}
	if err := db1.pingEventually("10.188.0.219"); err != nil {
		t.Fatal(err)
	}
	// The runtime's DEL is idempotent.
	if err := c.del(db2); err == nil {
		db2.deleted = false
		if err := c.del(db2); err != nil {
			t.Fatalf("repeated DEL: %v", err)
		}
	}
}

// inRange reports whether ip is 10.188.0.lo-10.188.0.hi.
func inRange(ip string, lo, hi byte) bool {
	a, err := netip.ParseAddr(ip)
	b := a.As4()
	return err == nil && a.Is4() && b[0] == 10 && b[1] == 188 && b[2] == 0 && b[3] >= lo && b[3] <= hi
}

// tierPolicy makes the database network a protected tier: only pods in the
// db, web and batch namespaces get net1; database pods accept on net1 TCP
// 3306 and ping from the web range and from the database block, and
// nothing else.
func tierPolicy(conf map[string]any) {
	d := conf["delegates"].([]any)[1].(map[string]any)
	d["kubeMultus"] = map[string]any{
		"attach": map[string]any{"namespaces": []string{"db", "web", "batch"}},
		"ingress": []any{
			map[string]any{"namespaces": []string{"db"}, "from": []string{"10.188.0.10-10.188.0.200"},
				"ports": []any{map[string]any{"protocol": "tcp", "port": 3306}}, "icmp": true},
			map[string]any{"namespaces": []string{"db"}, "from": []string{"10.188.0.216/29"},
				"ports": []any{map[string]any{"protocol": "tcp", "port": 3306}}, "icmp": true},
		},
	}
}

// TestTierPolicy proves selection and the ingress policy with traffic.
func TestTierPolicy(t *testing.T) {
	c := newCluster(t, 3, tierPolicy)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	db1 := c.mustPod(n1, "db", "database-1-0", "10.188.0.218")
	db2 := c.mustPod(n2, "db", "database-2-0", "10.188.0.219")
	web := c.mustPod(n3, "web", "web-0", "")
	batch := c.mustPod(n3, "batch", "batch-0", "10.188.0.230") // on net1, not in the web range
	other := c.mustPod(n1, "default", "other-0", "")

	// Selection: a pod outside it has eth0 only, and nothing on net1 in etcd.
	if _, err := other.addrs("net1"); err == nil {
		t.Fatal("a pod outside the selection got net1")
	}
	if as, err := other.addrs("eth0"); err != nil || len(as) != 1 {
		t.Fatalf("other eth0: %v %v", as, err)
	}
	if n := c.attachments(other.cid); n != 0 {
		t.Fatalf("kube-ipam holds %d attachments for the unselected pod", n)
	}

	if out, err := exec.Command("ip", "netns", "exec", filepath.Base(db2.netns.Path()), "nft", "list", "ruleset").CombinedOutput(); err == nil {
		t.Logf("database-2's ruleset:\n%s", out)
	}
	db2.listen(t, "10.188.0.219:3306")
	db2.listen(t, "10.188.0.219:8080")
	web.listen(t, web.net1IP(t)+":8080")

	// Allowed: web -> database port and ping; database peer -> database.
	if err := web.pingEventually("10.188.0.219"); err != nil {
		t.Fatalf("web ping db: %v", err)
	}
	if err := web.dial("10.188.0.219:3306"); err != nil {
		t.Fatalf("web -> db:3306: %v", err)
	}
	if err := db1.pingEventually("10.188.0.219"); err != nil {
		t.Fatalf("db peer ping: %v", err)
	}
	if err := db1.dial("10.188.0.219:3306"); err != nil {
		t.Fatalf("db peer -> db:3306: %v", err)
	}
	// Refused: an unlisted port from the web tier; anything from batch.
	if err := web.dial("10.188.0.219:8080"); err == nil {
		t.Error("web reached db:8080, which the policy does not list")
	}
	if err := batch.dial("10.188.0.219:3306"); err == nil {
		t.Error("batch (not web, not db) reached db:3306")
	}
	if err := batch.ping("10.188.0.219"); err == nil {
		t.Error("batch pinged the database")
	}
	// Controls: batch's net1 works (web is unprotected), and a database pod
	// can open connections out; the replies come back as established.
	if err := batch.pingEventually(web.net1IP(t)); err != nil {
		t.Fatalf("control: batch cannot reach web at all: %v", err)
	}
	if err := db2.dial(web.net1IP(t) + ":8080"); err != nil {
		t.Fatalf("db -> web (replies are established traffic): %v", err)
	}
	// eth0 is not filtered.
	if ok, err := tier.Installed(db2.netns.Path(), "eth0"); ok || err != nil {
		t.Errorf("eth0 has a policy table: %v %v", ok, err)
	}

	// DEL removes the policy with the interface.
	if ok, err := tier.Installed(db2.netns.Path(), "net1"); !ok || err != nil {
		t.Fatalf("db2 policy table missing: %v", err)
	}
	if err := c.del(db2); err != nil {
		t.Fatal(err)
	}
	if ok, _ := tier.Installed(db2.netns.Path(), "net1"); ok {
		t.Error("policy table left after DEL")
	}
	if _, err := db2.addrs("net1"); err == nil {
		t.Error("net1 left after DEL")
	}
	// Without its scratch cache, DEL still frees database-1's address and
	// removes its policy (fallback to the configured delegates).
	if err := os.Remove(meta.CachePath(n1.cniDir, db1.cid)); err != nil {
		t.Fatal(err)
	}
	if err := c.del(db1); err != nil {
		t.Fatal(err)
	}
	if ok, _ := tier.Installed(db1.netns.Path(), "net1"); ok {
		t.Error("policy table left after a DEL without cache")
	}
	if c.attachments(db1.cid) != 0 {
		t.Error("address kept after a DEL without cache")
	}
}

// TestLostCacheDelFreesIP: multus deletes nothing when its cache is gone;
// kube-multus falls back to the configured delegates, so kube-ipam frees
// the address.
func TestLostCacheDelFreesIP(t *testing.T) {
	c := newCluster(t, 1, nil)
	nd := c.nodes[0]
	for _, how := range []string{"lost", "corrupt"} {
		p := c.mustPod(nd, "default", "web-"+how, "")
		if c.attachments(p.cid) != 1 {
			t.Fatalf("%s: no kube-ipam attachment after ADD", how)
		}
		cache := meta.CachePath(nd.cniDir, p.cid)
		if how == "lost" {
			if err := os.Remove(cache); err != nil {
				t.Fatal(err)
			}
		} else if err := os.WriteFile(cache, []byte(`[{"Name":"k8sn`), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := c.del(p); err != nil {
			t.Fatalf("%s: DEL: %v", how, err)
		}
		if n := c.attachments(p.cid); n != 0 {
			t.Fatalf("%s cache: kube-ipam still holds the pod's address after DEL", how)
		}
		if _, err := os.Stat(cache); !os.IsNotExist(err) {
			t.Errorf("%s: cache file left: %v", how, err)
		}
	}
}

// TestFailingSecondDelegateRollsBack: the secondary network (a conflist
// macvlan + kube-ipam + a tuning step that fails) fails after kube-ipam
// allocated: eth0 is removed again and the address freed.
func TestFailingSecondDelegateRollsBack(t *testing.T) {
	c := newCluster(t, 1, func(conf map[string]any) {
		ds := conf["delegates"].([]any)
		mv := ds[1].(map[string]any)
		name := mv["name"]
		delete(mv, "name")
		ds[1] = map[string]any{"cniVersion": "0.4.0", "name": name, "plugins": []any{mv,
			map[string]any{"type": "tuning", "sysctl": map[string]any{"net.ipv4.conf.net1.no_such_sysctl": "1"}}}}
	})
	nd := c.nodes[0]
	p, err := c.newPod(nd, "default", "web-0", "")
	if err == nil {
		t.Fatal("ADD succeeded despite the failing tuning step")
	}
	t.Logf("ADD error (code %d): %v", cniCode(err), err)
	if !strings.Contains(err.Error(), "k8snet2") {
		t.Errorf("error does not name the network: %v", err)
	}
	for _, dev := range []string{"eth0", "net1"} {
		if _, err := p.addrs(dev); err == nil {
			t.Errorf("%s left in the pod after a failed ADD", dev)
		}
	}
	if n := c.attachments(p.cid); n != 0 {
		t.Errorf("kube-ipam still holds an address after rollback")
	}
	if leases, _ := filepath.Glob(filepath.Join(nd.cniDir, "host-local", "*", "10.*")); len(leases) != 0 {
		t.Errorf("host-local leases left: %v", leases)
	}
	// The runtime's DEL after a failed ADD succeeds.
	if err := c.del(p); err != nil {
		t.Fatalf("DEL after failed ADD: %v", err)
	}
}

// TestEtcdDownIsTryAgain: kube-ipam's code 11 (etcd unreachable) reaches
// the runtime as 11, not multus's flattened 999, and eth0 is rolled back.
func TestEtcdDownIsTryAgain(t *testing.T) {
	// kube-ipam gives up on an unreachable etcd after its 5s dial timeout,
	// on ADD and on the rollback's DEL, however long ipam.timeout is. With
	// 60s (newPod's own deadline) a missing dial bound fails the test by
	// that deadline instead of returning code 11.
	c := newCluster(t, 1, func(conf map[string]any) {
		conf["delegates"].([]any)[1].(map[string]any)["ipam"].(map[string]any)["timeout"] = "60s"
	})
	nd := c.nodes[0]
	c.etcd.Stop(t)
	p, err := c.newPod(nd, "default", "web-0", "")
	if cniCode(err) != 11 || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("want code 11 (unreachable), got %d: %v", cniCode(err), err)
	}
	if _, err := p.addrs("eth0"); err == nil {
		t.Error("eth0 left after a failed ADD")
	}
	// net1 may survive the rollback: Debian's macvlan leaves its link when
	// its IPAM ADD fails, and its DEL gives up when the IPAM DEL fails (etcd
	// is still down). kube-multus kept the scratch cache, so the runtime's
	// DEL, once etcd is back, finishes the job.
	if _, err := os.Stat(meta.CachePath(nd.cniDir, p.cid)); err != nil {
		t.Fatalf("scratch cache gone after a failed ADD: %v", err)
	}
	c.etcd.Restart(t)
	if err := c.del(p); err != nil {
		t.Fatalf("DEL after etcd came back: %v", err)
	}
	if _, err := p.addrs("net1"); err == nil {
		t.Error("net1 left after the runtime's DEL")
	}
	// And the pod can be created now.
	q := c.mustPod(nd, "default", "web-1", "")
	if ip := q.net1IP(t); !inRange(ip, 10, 200) {
		t.Errorf("net1 %s", ip)
	}
}

// TestDuplicateAddKeepsLiveInterfaces: a second ADD for an attached
// container fails without touching its interfaces (multus's rollback
// would delete the live eth0).
func TestDuplicateAddKeepsLiveInterfaces(t *testing.T) {
	c := newCluster(t, 1, nil)
	nd := c.nodes[0]
	p := c.mustPod(nd, "default", "web-0", "")
	ip := p.net1IP(t)
	cli := c.cni()
	_, err := cli.AddNetwork(t.Context(), c.netconf(nd.conf), p.rt())
	if cniCode(err) != meta.CodeIfaceExists {
		t.Fatalf("duplicate ADD: %v", err)
	}
	if got := p.net1IP(t); got != ip {
		t.Fatalf("net1 changed from %s to %s", ip, got)
	}
	if as, err := p.addrs("eth0"); err != nil || len(as) != 1 {
		t.Fatalf("eth0 damaged: %v %v", as, err)
	}
	if c.attachments(p.cid) != 1 {
		t.Fatal("kube-ipam lost the attachment")
	}
	var entries []meta.CacheEntry
	raw, _ := os.ReadFile(meta.CachePath(nd.cniDir, p.cid))
	if json.Unmarshal(raw, &entries) != nil || len(entries) != 2 {
		t.Fatalf("scratch cache damaged: %s", raw)
	}
}

// TestSeedScenarioAPI replays sections 3.2 and 4-5 of the seed with a real
// kube-apiserver: the database pods carry the seed's annotations
// (kube-ipam.ip, kube-ipam.netmask, kube-ipam.gateway), which kube-ipam
// reads through its kubeConfig; no IP= in CNI_ARGS, no dropArgs.
func TestSeedScenarioAPI(t *testing.T) {
	c := newClusterAPI(t, 3, nil)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	ann := func(ip string) map[string]string {
		return map[string]string{"kube-ipam.ip": ip, "kube-ipam.netmask": "255.255.0.0", "kube-ipam.gateway": "10.188.0.1"}
	}
	c.apiPod("default", "database-1-0", map[string]string{"app": "database-1"}, ann("10.188.0.218"))
	c.apiPod("default", "database-2-0", map[string]string{"app": "database-2"}, ann("10.188.0.219"))
	db1 := c.mustPod(n1, "default", "database-1-0", "")
	db2 := c.mustPod(n2, "default", "database-2-0", "")
	web := c.mustPod(n3, "default", "web-5fd8684df7-8c7zb", "")
	if as, _ := db2.addrs("net1"); len(as) != 1 || as[0] != "10.188.0.219/16" {
		t.Fatalf("database-2 net1 %v", as)
	}
	if ip := db1.net1IP(t); ip != "10.188.0.218" {
		t.Fatalf("database-1 net1 %s", ip)
	}
	if err := web.pingEventually("10.188.0.219"); err != nil {
		t.Fatal(err)
	}
	if err := db2.pingEventually("10.188.0.218"); err != nil {
		t.Fatal(err)
	}
	// kubectl delete pod database-2-0: the StatefulSet re-creates it (new
	// UID), here on another node.
	if err := c.del(db2); err != nil {
		t.Fatal(err)
	}
	c.deleteAPIPod("default", "database-2-0")
	c.apiPod("default", "database-2-0", map[string]string{"app": "database-2"}, ann("10.188.0.219"))
	db2b := c.mustPod(n1, "default", "database-2-0", "")
	if ip := db2b.net1IP(t); ip != "10.188.0.219" {
		t.Fatalf("re-created database-2 has %s", ip)
	}
	if err := web.pingEventually("10.188.0.219"); err != nil {
		t.Fatal(err)
	}
	if err := db1.pingEventually("10.188.0.219"); err != nil {
		t.Fatal(err)
	}
}

// TestPodSelector: the database network attaches only to pods whose labels
// match, read once from the API server; when the API is unreachable, ADD
// fails with 11 and attaches nothing.
func TestPodSelector(t *testing.T) {
	c := newClusterAPI(t, 2, func(conf map[string]any) {
		conf["delegates"].([]any)[1].(map[string]any)["kubeMultus"] = map[string]any{
			"attach": map[string]any{"podSelector": "tier in (web,db)"}}
	})
	n1, n2 := c.nodes[0], c.nodes[1]
	c.apiPod("shop", "db-0", map[string]string{"tier": "db"}, nil)
	c.apiPod("shop", "web-0", map[string]string{"tier": "web"}, nil)
	c.apiPod("shop", "batch-0", map[string]string{"tier": "batch"}, nil)
	db := c.mustPod(n1, "shop", "db-0", "")
	web := c.mustPod(n2, "shop", "web-0", "")
	batch := c.mustPod(n2, "shop", "batch-0", "")
	if _, err := batch.addrs("net1"); err == nil {
		t.Fatal("a pod outside the selector got net1")
	}
	if n := c.attachments(batch.cid); n != 0 {
		t.Fatal("kube-ipam allocated for an unselected pod")
	}
	if err := web.pingEventually(db.net1IP(t)); err != nil {
		t.Fatal(err)
	}

	// The same node, but kube-multus's kubeconfig points at a closed port.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := filepath.Join(t.TempDir(), "kubeconfig")
	kc := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://%s\", insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n", l.Addr())
	_ = l.Close()
	if err := os.WriteFile(dead, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	var conf map[string]any
	_ = json.Unmarshal(n1.conf, &conf)
	conf["kubeconfig"] = dead
	down := *n1
	down.conf, _ = json.Marshal(conf)
	p, err := c.newPod(&down, "shop", "db-0", "")
	if cniCode(err) != 11 {
		t.Fatalf("API unreachable: want code 11, got %d: %v", cniCode(err), err)
	}
	if _, err := p.addrs("eth0"); err == nil {
		t.Error("eth0 attached although the selection could not be decided")
	}
	if n := c.attachments(p.cid); n != 0 {
		t.Error("kube-ipam allocated although the selection could not be decided")
	}
}
