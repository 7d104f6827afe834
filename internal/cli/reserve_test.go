package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"kubeipam/internal/store"
)

func TestReserve(t *testing.T) {
	f := newFixture(t)
	f.seed()
	ctx := context.Background()
	ip := netip.MustParseAddr("10.188.0.99") // inside the dynamic range, never used

	out, errs, code := f.run("reserve", ip.String(), "--note", "router VIP")
	if code != 0 || !strings.Contains(out, "reserved 10.188.0.99 on network k8snet2") {
		t.Fatalf("reserve: code %d, out %q, err %q", code, out, errs)
	}
	st, err := f.store("k8snet2").State(ctx, ip)
	if err != nil || st.Record == nil {
		t.Fatalf("state after reserve: %+v %v", st, err)
	}
	r := st.Record
	if r.Kind != store.KindFixed || r.ContainerID != "reserved-0abc0063" || r.IfName != "reserved" || r.PodName != "" || r.Node != "kube-ipamctl" {
		t.Fatalf("record: %+v", r)
	}
	att, err := f.store("k8snet2").Attachment(ctx, r.ContainerID, "reserved")
	if err != nil || att == nil || len(att.IPs) != 1 || att.IPs[0] != ip.String() {
		t.Fatalf("attachment: %+v %v", att, err)
	}

	// list and who-has show it as reserved, with its note.
	out, _, code = f.run("who-has", ip.String(), "-o", "json")
	var as []Allocation
	if code != 0 || json.Unmarshal([]byte(out), &as) != nil || len(as) != 1 || as[0].Kind != KindReserved || as[0].Note != "router VIP" {
		t.Fatalf("who-has: code %d, %s", code, out)
	}
	out, _, _ = f.run("list", "--network", "k8snet2")
	if !strings.Contains(out, "10.188.0.99") || !strings.Contains(out, "reserved") || !strings.Contains(out, "(router VIP)") {
		t.Fatalf("list does not show the reservation:\n%s", out)
	}
	// check finds nothing wrong with a reservation.
	if out, _, code := f.run("check"); code != 0 {
		t.Fatalf("check after reserve: code %d\n%s", code, out)
	}

	// A plugin-style dynamic claim cannot take it.
	ok, err := f.store("k8snet2").Commit(ctx, &store.Claim{
		Attachment: store.Attachment{ContainerID: cid(9), IfName: "net1", PodNamespace: "default", PodName: "thief", Node: "worker-1", Created: now},
		Items: []store.ClaimItem{{Mode: store.ClaimFresh, Record: store.Record{Network: "k8snet2", IP: ip.String(), Kind: store.KindDynamic,
			IfName: "net1", ContainerID: cid(9), PodNamespace: "default", PodName: "thief", Node: "worker-1", Created: now}}},
	})
	if err != nil || ok {
		t.Fatalf("dynamic claim of a reserved address: ok=%v err=%v", ok, err)
	}

	// Reserving again, or reserving a held address, fails saying who holds it.
	if _, errs, code := f.run("reserve", ip.String()); code != 1 || !strings.Contains(errs, "already reserved") {
		t.Fatalf("second reserve: code %d, %q", code, errs)
	}
	if _, errs, code := f.run("reserve", "10.188.0.10"); code != 1 || !strings.Contains(errs, "pod default/web-1") {
		t.Fatalf("reserve of a held address: code %d, %q", code, errs)
	}
	// Network, broadcast and gateway addresses, and addresses outside every subnet, are refused.
	for _, bad := range []string{"10.188.0.0", "10.188.0.255", "10.188.0.1", "192.0.2.1"} {
		if _, errs, code := f.run("reserve", bad); code != 2 {
			t.Errorf("reserve %s: code %d, %q", bad, code, errs)
		}
	}
	// A previously used (tombstoned) address can be reserved: ClaimTomb.
	if out, errs, code := f.run("reserve", "10.188.0.13", "--network", "k8snet2"); code != 0 {
		t.Fatalf("reserve of a released address: code %d, %q %q", code, out, errs)
	}

	// release frees it without --force, note included.
	out, errs, code = f.run("release", ip.String())
	if code != 0 || !strings.Contains(out, "released reservation 10.188.0.99") {
		t.Fatalf("release: code %d, out %q, err %q", code, out, errs)
	}
	if st, _ := f.store("k8snet2").State(ctx, ip); st.Record != nil {
		t.Fatalf("still held after release: %+v", st.Record)
	}
	if resp, _ := f.cli.Get(ctx, prefix+"/v1/networks/k8snet2/note/0abc0063"); len(resp.Kvs) != 0 {
		t.Fatalf("note left behind")
	}
	// A pod-less record that is not a reservation still needs --force.
	f.commit(alloc{network: "k8snet2", cid: cid(8), ifname: "net1", node: "worker-1", kind: store.KindFixed, ips: []string{"10.188.0.210"}, created: now})
	if _, errs, code := f.run("release", "10.188.0.210"); code != 1 || !strings.Contains(errs, "names no pod") {
		t.Fatalf("release of a pod-less record: code %d, %q", code, errs)
	}
}

func TestGC(t *testing.T) {
	f := newFixture(t)
	f.seed()
	ctx := context.Background()
	// A pod force-deleted without a CNI DEL: its allocation leaked.
	f.commit(alloc{network: "k8snet2", ns: "default", pod: "gone-0", uid: "uid-gone-0", cid: cid(7), ifname: "net1", node: "worker-3",
		kind: store.KindDynamic, ips: []string{"10.188.0.20"}, created: now.Add(-time.Hour)})
	// And a reservation, which gc must never touch.
	if _, errs, code := f.run("reserve", "10.188.0.98"); code != 0 {
		t.Fatalf("reserve: %q", errs)
	}
	leaked := netip.MustParseAddr("10.188.0.20")
	live := netip.MustParseAddr("10.188.0.10")

	out, errs, code := f.run("gc", "--dry-run")
	if code != 0 {
		t.Fatalf("gc --dry-run: code %d, %q", code, errs)
	}
	golden(t, "gc-dry-run", out)
	if st, _ := f.store("k8snet2").State(ctx, leaked); st.Record == nil {
		t.Fatal("gc --dry-run freed the leaked allocation")
	}

	out, errs, code = f.run("gc", "-o", "json")
	var rep GCReport
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil {
		t.Fatalf("gc: code %d, %q\n%s", code, errs, out)
	}
	if len(rep.Released) != 1 || rep.Released[0].Pod != "gone-0" || rep.Released[0].IPs[0] != leaked.String() {
		t.Fatalf("gc released %+v", rep.Released)
	}
	st, _ := f.store("k8snet2").State(ctx, leaked)
	if st.Record != nil || st.Tomb == nil {
		t.Fatalf("leaked address after gc: %+v", st)
	}
	for _, a := range []string{"10.188.0.10", "10.188.0.201", "10.188.0.11", "10.188.0.98"} {
		if st, _ := f.store("k8snet2").State(ctx, netip.MustParseAddr(a)); st.Record == nil {
			t.Errorf("gc freed %s", a)
		}
	}
	_ = live
	// A second pass finds nothing.
	out, _, code = f.run("gc")
	if code != 0 || !strings.Contains(out, "No leaked allocations") {
		t.Fatalf("second gc: code %d\n%s", code, out)
	}
	// Without the API gc refuses to run.
	f.noAPI = true
	if _, errs, code := f.run("gc"); code != 3 || !strings.Contains(errs, "Kubernetes API not configured") {
		t.Fatalf("gc without API: code %d, %q", code, errs)
	}
}

func TestGCProgress(t *testing.T) {
	f := newFixture(t)
	f.seed()
	// 1000 more attachments of a live pod (k8snet2 then has 1003 attachments
	// and 1 sticky record): gc reports progress at 1000.
	for i := range 1000 {
		f.put("k8snet2", fmt.Sprintf("att/%s/net%d", cid(1), i+10),
			fmt.Sprintf(`{"containerID":%q,"ifname":"net%d","ips":[],"podNamespace":"default","podName":"web-1","podUID":"uid-web-1","created":"2026-01-01T00:00:00Z"}`, cid(1), i+10))
	}
	out, errs, code := f.run("gc", "--dry-run")
	if code != 0 || !strings.Contains(out, "No leaked allocations") {
		t.Fatalf("gc: code %d, %q\n%s", code, errs, out)
	}
	if !strings.Contains(errs, "gc: 1000/1004 allocations checked\n") {
		t.Fatalf("no progress on stderr: %q", errs)
	}
}

func TestGCSticky(t *testing.T) {
	f := newFixture(t)
	f.seed()
	ctx := context.Background()
	// StatefulSet db/cache is gone (not in the fake API), and so is its pod:
	// gc frees the attachment and the sticky record of ordinal 0.
	f.commit(alloc{network: "k8snet2", ns: "db", pod: "cache-0", uid: "uid-cache-0", cid: cid(6), ifname: "net1", node: "worker-2",
		kind: store.KindSticky, ips: []string{"10.188.0.30"}, created: now.Add(-time.Hour), sts: "cache", ordinal: 0})
	out, errs, code := f.run("gc", "--dry-run")
	if code != 0 || !strings.Contains(out, "db/cache-0") || !strings.Contains(out, "db/cache ordinal 0") || !strings.Contains(out, "2 leaked allocation(s) would be freed") {
		t.Fatalf("gc --dry-run: code %d, %q\n%s", code, errs, out)
	}
	// The seed's mysql-1 (ordinal 1 of replicas 2, pod alive) is kept.
	if strings.Contains(out, "mysql") {
		t.Fatalf("gc --dry-run lists a wanted ordinal:\n%s", out)
	}
	out, errs, code = f.run("gc", "-o", "json")
	var rep GCReport
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil {
		t.Fatalf("gc: code %d, %q\n%s", code, errs, out)
	}
	if len(rep.Released) != 2 || rep.Released[1].Kind != "sticky" || rep.Released[1].Ordinal == nil || *rep.Released[1].Ordinal != 0 || rep.Released[0].Ordinal != nil {
		t.Fatalf("gc released %s", out)
	}
	if st, _ := f.store("k8snet2").State(ctx, netip.MustParseAddr("10.188.0.30")); st.Record != nil {
		t.Fatalf("sticky address still held: %+v", st.Record)
	}
	if s, _ := f.store("k8snet2").Stickies(ctx); len(s) != 1 || s[0].StatefulSet != "mysql" {
		t.Fatalf("stickies after gc: %+v", s)
	}
}
