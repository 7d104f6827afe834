package upstream

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"kubeipam/internal/testenv"
)

// The known upstream defect (multus v4.2.4, thin and thick alike): when
// "clusterNetwork" is the PATH of a .conflist file, multus loads it with
// LoadDelegateNetConfFromConfList, which keeps the full plugin configs for
// ADD (CNINetworkConfigList) but sets the delegate's Bytes — what its
// scratch cache keeps and what DEL replays — to the conflist re-marshalled
// through the CNI library's types.PluginConf: only cniVersion, name, type,
// capabilities, ipam.type and dns survive. On DEL the cluster network's
// plugins get {"type":"bridge","ipam":{"type":"host-local"}}: host-local
// has no range (and no dataDir) and fails, bridge returns that error
// (the bridge plugin of containernetworking-plugins 1.1.1 removes eth0 all
// the same), and the pod's eth0 address stays leased for ever: the
// runtime's retries re-read the same file the same way. The
// thick plugin's daemon generates exactly such a config: its
// "clusterNetwork" is the path of the node's first CNI config, which is a
// .conflist on most clusters (flannel's 10-flannel.conflist).
//
// A NAD's spec.config, and a network found by name in confDir, keep their
// bytes as written, so secondary networks are not affected — as long as
// their conflist has a "cniVersion" (else see
// TestUpstreamDefectNADWithoutCNIVersionLeaksOnDEL). So the workaround is
// not to give the cluster network's conflist by path:
//   - "delegates": [<the conflist itself>] with "kubeconfig" and no
//     "clusterNetwork" (what upstream's thin_entrypoint generates with
//     --multus-conf-file=auto), or
//   - "clusterNetwork": "<the conflist's network name>" with "confDir"
//     the directory holding it (e.g. cbr0 in /etc/cni/net.d), or
//   - "clusterNetwork": "<NAD name>", a NAD in multusNamespace (kube-system)
//     whose spec.config is the conflist, or
//   - a single-plugin .conf file path (TestKubeIPAMUnderMultus).
//
// For the thick plugin, whose daemon writes the path into the config it
// generates, "clusterNetwork" (and "confDir") in daemon-config.json
// override it on every request (the daemon copies its own keys over the
// CNI config); this is read from the v4.2.4 source, not run here.
//
// The NAD db-net is unaffected either way: kube-ipam's addresses are freed
// in the cases below, the cluster network's defect included.

// TestClusterNetworkConflistWorkarounds: the cluster network is a conflist
// embedded in "delegates", or named through confDir or through a NAD in
// kube-system; DEL frees both host-local's eth0 lease and kube-ipam's net1
// address.
func TestClusterNetworkConflistWorkarounds(t *testing.T) {
	e := newEnv(t)
	e.createNAD("db", "db-net", e.dbNetConfig())
	for i, c := range []struct{ name, how, status string }{
		{"cbr0", "delegates", "cbr0"}, {"cbr0", "confDir", "cbr0"}, {"cbr0-nad", "NAD", "kube-system/cbr0-nad"},
	} {
		t.Run(c.how, func(t *testing.T) {
			// The parent's temp dir: mustAdd's cleanup DEL runs when the
			// parent ends, and host-local would re-create a subtest's
			// (already removed) data dir then, leaking it.
			dataDir := e.t.TempDir()
			list := e.clusterConflist(c.name, dataDir)
			conf := e.multusConf(c.name)
			switch c.how {
			case "delegates":
				var m map[string]any
				_ = json.Unmarshal(conf, &m)
				delete(m, "clusterNetwork")
				m["delegates"] = []any{list}
				conf = mustJSON(m)
			case "confDir":
				e.writeConf("10-"+c.name+".conflist", list)
			case "NAD":
				e.createNAD("kube-system", c.name, string(mustJSON(list)))
			}
			p := e.newPod("db", fmt.Sprintf("database-1-%d", i), "database-1", `[{"name":"db-net","ips":["10.188.0.219/16"]}]`)
			e.mustAdd(p, conf)
			if st := e.networkStatus(p); len(st) != 2 || st[0].Name != c.status || !st[0].Default || st[1].Name != "db/db-net" {
				t.Fatalf("network-status: %s", mustJSON(st))
			}
			eth0 := testenv.IPv4Addrs(t, p.netns, "eth0")
			if l := leases(t, dataDir); len(eth0) != 1 || len(l) != 1 || !strings.HasPrefix(eth0[0], l[0]+"/") {
				t.Fatalf("eth0 has %v, host-local leases %v", eth0, l)
			}
			if r := e.holder("10.188.0.219"); r == nil || r.ContainerID != p.cid {
				t.Fatalf("10.188.0.219 held by %+v, want %s", r, p.cid)
			}
			if err := e.del(p); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if l := leases(t, dataDir); len(l) != 0 {
				t.Fatalf("host-local still leases %v after DEL", l)
			}
			if r := e.holder("10.188.0.219"); r != nil {
				t.Fatalf("10.188.0.219 still held after DEL: %+v", r)
			}
		})
	}
}

// TestUpstreamDefectConflistPathLeaksOnDEL pins the defect itself (see the
// comment above): with "clusterNetwork" the path of a .conflist, ADD works
// and DEL fails in host-local, leaving eth0's address leased. It is
// deterministic (config handling, no timing). When an upstream release
// fixes it, this test fails: update hack/multus.sh, the test and
// docs/upstream-multus.md together.
func TestUpstreamDefectConflistPathLeaksOnDEL(t *testing.T) {
	e := newEnv(t)
	e.createNAD("db", "db-net", e.dbNetConfig())
	dataDir := t.TempDir()
	path := e.writeConf("10-cbr0.conflist", e.clusterConflist("cbr0", dataDir))
	p := e.newPod("db", "database-1-0", "database-1", `[{"name":"db-net","ips":["10.188.0.219/16"]}]`)
	e.mustAdd(p, e.multusConf(path))
	eth0 := testenv.IPv4Addrs(t, p.netns, "eth0")
	leased := leases(t, dataDir)
	if len(eth0) != 1 || len(leased) != 1 || !strings.HasPrefix(eth0[0], leased[0]+"/") {
		t.Fatalf("ADD: eth0 has %v, host-local leases %v", eth0, leased)
	}
	err := e.del(p)
	t.Logf("DEL with clusterNetwork %s: %v", path, err)
	if err == nil {
		t.Fatalf("DEL succeeded: upstream multus %s no longer drops the conflist's plugin keys on DEL; "+
			"update this test and docs/upstream-multus.md", MultusVersion)
	}
	if !strings.Contains(err.Error(), `plugin type="bridge" failed (delete): no IP ranges specified`) {
		t.Fatalf("DEL failed otherwise than by the defect (host-local given no range): %v", err)
	}
	if l := leases(t, dataDir); !slices.Equal(l, leased) {
		t.Fatalf("host-local leases %v after the failed DEL, want the leaked %v", l, leased)
	}
	// bridge removed eth0 all the same: the address is gone from the pod
	// but leased for ever, so each such pod costs the node one address of
	// its pod range until host-local's range is exhausted.
	if have := links(t, p); len(have) != 0 {
		t.Fatalf("links left in the pod after the failed DEL: %v", have)
	}
	// The runtime retries DEL: multus has removed its scratch cache, reads
	// the same file the same way, and fails the same.
	if err := e.del(p); err == nil || !strings.Contains(err.Error(), "no IP ranges specified") {
		t.Fatalf("second DEL: %v, want the same failure", err)
	}
	// The secondary network, a NAD, was deleted properly all the same.
	if r := e.holder("10.188.0.219"); r != nil {
		t.Fatalf("10.188.0.219 still held after DEL: %+v", r)
	}
}

// TestUpstreamDefectNADWithoutCNIVersionLeaksOnDEL pins the same defect
// reached another way, this time on kube-ipam's network: a NAD whose
// conflist has no "cniVersion". ADD runs it as spec 0.1.0 and works; on DEL,
// multus gives the conflist its own cniVersion by re-marshalling it through
// types.NetConfList (multus.go, CmdDel: "set CNIVersion in delegate CNI
// config if there is no CNIVersion"), which drops every plugin key:
// macvlan's ipam is {"type":"kube-ipam"}, kube-ipam refuses it (code 7,
// no etcdConfig), macvlan returns that, and the pod's fixed address stays
// allocated until kube-ipam-controller's GC or kube-ipamctl release frees
// it. Hence: always write "cniVersion" in a NAD's config. (kube-tier
// refuses a 0.1.0 config outright, so it is left out here: ADD fails with
// it, and the rollback leaks the same way.)
func TestUpstreamDefectNADWithoutCNIVersionLeaksOnDEL(t *testing.T) {
	e := newEnv(t)
	list := e.dbNet(false)
	delete(list, "cniVersion")
	e.createNAD("db", "db-net", string(mustJSON(list)))
	p := e.newPod("db", "database-1-0", "database-1", `[{"name":"db-net","ips":["10.188.0.219/16"]}]`)
	e.mustAdd(p, e.multusConf(e.clusterConf("cbr0", t.TempDir())))
	if have := testenv.IPv4Addrs(t, p.netns, "net1"); !slices.Equal(have, []string{"10.188.0.219/16"}) {
		t.Fatalf("net1 has %v, want 10.188.0.219/16", have)
	}
	err := e.del(p)
	t.Logf("DEL with a NAD conflist without cniVersion: %v", err)
	if err == nil {
		t.Fatalf("DEL succeeded: upstream multus %s no longer drops a versionless NAD conflist's plugin keys on DEL; "+
			"update this test and docs/upstream-multus.md", MultusVersion)
	}
	if !strings.Contains(err.Error(), `plugin type="macvlan" failed (delete): ipam.etcdConfig is required`) {
		t.Fatalf("DEL failed otherwise than by the defect (kube-ipam given no etcdConfig): %v", err)
	}
	if r := e.holder("10.188.0.219"); r == nil || r.ContainerID != p.cid {
		t.Fatalf("10.188.0.219 is held by %+v after the failed DEL, want the leaked allocation of %s", r, p.cid)
	}
}
