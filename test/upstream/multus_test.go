package upstream

import (
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"

	"kubeipam/internal/testenv"
	"kubeipam/internal/tier"
)

// TestKubeIPAMUnderMultus: upstream multus thin in Kubernetes mode, its
// cluster network a single-plugin config file (bridge + host-local), and
// NAD db/db-net (macvlan + kube-ipam, then kube-tier) asked for by the
// pods' k8s.v1.cni.cncf.io/networks annotation:
//   - the JSON form with "ips" gets exactly that address from kube-ipam on
//     net1 (multus passes it as runtimeConfig.ips, which the NAD's
//     "capabilities": {"ips": true} lets through, and as CNI_ARGS IP=);
//   - multus's network-status names db/db-net with kube-ipam's address;
//   - a second pod asking for the same address fails with kube-ipam's
//     conflict error, passed through by multus, and its DEL leaves the
//     first pod's address alone;
//   - the text form db-net@net1 gets a dynamic address;
//   - kube-tier protects the database pods' net1 (selected by labels read
//     through its kubeconfig) and not the web pod's;
//   - DEL frees the kube-ipam address and host-local's lease of eth0.
func TestKubeIPAMUnderMultus(t *testing.T) {
	e := newEnv(t)
	leasesDir := t.TempDir()
	conf := e.multusConf(e.clusterConf("cbr0", leasesDir))
	e.createNAD("db", "db-net", e.dbNetConfig())

	db1 := e.newPod("db", "database-1-0", "database-1", `[{"name":"db-net","ips":["10.188.0.219/16"]}]`)
	e.mustAdd(db1, conf)
	if have := testenv.IPv4Addrs(t, db1.netns, "net1"); !slices.Equal(have, []string{"10.188.0.219/16"}) {
		t.Fatalf("net1 of %s has %v, want the requested 10.188.0.219/16", db1.name, have)
	}
	eth0 := testenv.IPv4Addrs(t, db1.netns, "eth0")
	if len(eth0) != 1 || !strings.HasPrefix(eth0[0], "10.244.60.") {
		t.Fatalf("eth0 of %s has %v, want one host-local address of 10.244.60.0/24", db1.name, eth0)
	}
	r := e.holder("10.188.0.219")
	if r == nil || r.ContainerID != db1.cid || r.IfName != "net1" || r.PodNamespace != "db" || r.PodName != db1.name || r.PodUID != db1.uid {
		t.Fatalf("kube-ipam's record of 10.188.0.219: %+v, want container %s net1 of pod db/%s (UID %s)", r, db1.cid, db1.name, db1.uid)
	}

	// network-status: the cluster network (default, eth0) and db/db-net.
	st := e.networkStatus(db1)
	var dbSt *nadv1.NetworkStatus
	for i := range st {
		if st[i].Name == "db/db-net" {
			dbSt = &st[i]
		}
	}
	if len(st) != 2 || st[0].Name != "cbr0" || !st[0].Default || st[0].Interface != "eth0" ||
		dbSt == nil || dbSt.Interface != "net1" || !slices.Equal(dbSt.IPs, []string{"10.188.0.219"}) || dbSt.Default {
		t.Fatalf("network-status of %s: %s, want cbr0 (eth0, default) then db/db-net on net1 with 10.188.0.219", db1.name, mustJSON(st))
	}

	// Real traffic on the database segment: the peer reaches the address
	// (ping from 10.188.0.0/16 is what kube-tier's rule allows).
	if err := e.ping("10.188.0.219"); err != nil {
		t.Fatal(err)
	}
	if e.tier {
		if ok, err := tier.TableInstalled(db1.netns.Path(), tier.ChainedTableName("net1")); err != nil || !ok {
			t.Fatalf("kube-tier's table %s in %s: installed=%v %v", tier.ChainedTableName("net1"), db1.name, ok, err)
		}
	} else {
		t.Log("no kube-tier in this module: its part is skipped")
	}

	// A second pod asking for the address the first holds.
	db2 := e.newPod("db", "database-2-0", "database-2", `[{"name":"db-net","ips":["10.188.0.219/16"]}]`)
	err := e.add(db2, conf)
	var ce *types.Error
	if err == nil {
		t.Fatalf("second pod asking for 10.188.0.219 was attached")
	}
	wantMsg := "IP 10.188.0.219 is already allocated to pod db/" + db1.name
	if !asCNIError(err, &ce) || !strings.Contains(ce.Msg, wantMsg) || !strings.Contains(ce.Msg, `error adding container to network "`+dbNetwork+`"`) {
		t.Fatalf("second pod's ADD: %v, want multus's error for network %s carrying kube-ipam's %q", err, dbNetwork, wantMsg)
	}
	t.Logf("second pod's ADD, as multus returns it: code %d: %s", ce.Code, ce.Msg)
	// multus rolled back the attachments this ADD made (its eth0), and the
	// runtime's DEL after the failed ADD leaves the holder's address alone.
	if have := links(t, db2); len(have) != 0 {
		t.Fatalf("links left in %s after its failed ADD: %v", db2.name, have)
	}
	if err := e.del(db2); err != nil {
		t.Fatalf("DEL after the failed ADD: %v", err)
	}
	if r := e.holder("10.188.0.219"); r == nil || r.ContainerID != db1.cid {
		t.Fatalf("after the second pod's DEL, 10.188.0.219 is held by %+v, want still %s", r, db1.cid)
	}

	// The text form, from a web pod that kube-tier does not protect.
	web := e.newPod("db", "web-0", "web", "db-net@net1")
	e.mustAdd(web, conf)
	have := testenv.IPv4Addrs(t, web.netns, "net1")
	if len(have) != 1 {
		t.Fatalf("net1 of web-0 has %v", have)
	}
	webIP := netip.MustParsePrefix(have[0]).Addr()
	if webIP.Less(netip.MustParseAddr("10.188.0.10")) || netip.MustParseAddr("10.188.0.200").Less(webIP) {
		t.Fatalf("web-0 got %s, outside the dynamic range 10.188.0.10-10.188.0.200", webIP)
	}
	if r := e.holder(webIP.String()); r == nil || r.ContainerID != web.cid || r.Kind != "dynamic" {
		t.Fatalf("kube-ipam's record of %s: %+v, want a dynamic address of %s", webIP, r, web.cid)
	}
	if st := e.networkStatus(web); len(st) != 2 || st[1].Name != "db/db-net" || !slices.Equal(st[1].IPs, []string{webIP.String()}) {
		t.Fatalf("network-status of web-0: %s", mustJSON(st))
	}
	if err := e.ping(webIP.String()); err != nil {
		t.Fatal(err)
	}
	if e.tier {
		if ok, err := tier.TableInstalled(web.netns.Path(), tier.ChainedTableName("net1")); err != nil || ok {
			t.Fatalf("kube-tier's table in web-0 (app=web, not selected): installed=%v %v", ok, err)
		}
	}

	// DEL frees everything the first pod held.
	if err := e.del(db1); err != nil {
		t.Fatalf("DEL of %s: %v", db1.name, err)
	}
	if r := e.holder("10.188.0.219"); r != nil {
		t.Fatalf("10.188.0.219 still held after DEL: %+v", r)
	}
	for _, a := range e.snapshot().Attachments {
		if a.ContainerID == db1.cid {
			t.Fatalf("attachment of %s left after DEL: %+v", db1.cid, a)
		}
	}
	if have := links(t, db1); len(have) != 0 {
		t.Fatalf("links left in %s after DEL: %v", db1.name, have)
	}
	eth0IP := netip.MustParsePrefix(eth0[0]).Addr().String()
	if slices.Contains(leases(t, leasesDir), eth0IP) {
		t.Fatalf("host-local still leases %s (eth0 of %s) after DEL: %v", eth0IP, db1.name, leases(t, leasesDir))
	}

	// Freed for real: the second database pod, re-created, gets it now.
	e.deletePod(db2)
	db2 = e.newPod("db", "database-2-0", "database-2", `[{"name":"db-net","ips":["10.188.0.219/16"]}]`)
	e.mustAdd(db2, conf)
	if have := testenv.IPv4Addrs(t, db2.netns, "net1"); !slices.Equal(have, []string{"10.188.0.219/16"}) {
		t.Fatalf("net1 of the re-created %s has %v, want 10.188.0.219/16", db2.name, have)
	}
	for _, p := range []*pod{db2, web} {
		if err := e.del(p); err != nil {
			t.Fatalf("DEL of %s: %v", p.name, err)
		}
	}
	if snap := e.snapshot(); len(snap.Records) != 0 || len(snap.Attachments) != 0 {
		t.Fatalf("kube-ipam still holds %d addresses, %d attachments after every DEL", len(snap.Records), len(snap.Attachments))
	}
	if l := leases(t, leasesDir); len(l) != 0 {
		t.Fatalf("host-local still leases %v after every DEL", l)
	}
	if b, _ := filepath.Glob(filepath.Join(e.cniDir, "cid*")); len(b) != 0 {
		t.Fatalf("multus scratch caches left after every DEL: %v", b)
	}
}

// asCNIError reports whether err is a CNI error (libcni returns the
// plugin's error as *types.Error) and sets *ce.
func asCNIError(err error, ce **types.Error) bool {
	return errors.As(err, ce)
}
