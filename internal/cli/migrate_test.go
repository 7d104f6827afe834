package cli

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kubeipam/internal/allocator"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

// destConf writes the fixture's networks again, on another etcd prefix: a
// second store on the same etcd, as migrate's destination.
func (f *fixture) destConf(prefix string) string {
	f.t.Helper()
	p := filepath.Join(f.t.TempDir(), "dest.conf")
	if err := os.WriteFile(p, fmt.Appendf(nil, confTmpl, f.etcd.ClientURL, prefix), 0o644); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// holders is a snapshot's held addresses and their holders, its sticky
// records, tombstones and notes, as comparable text.
func holders(t *testing.T, b store.Backend) (held map[netip.Addr]string, sticky, tombs int, notes map[netip.Addr]string) {
	t.Helper()
	s, err := b.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	held = map[netip.Addr]string{}
	for _, e := range s.Records {
		held[e.IP] = e.Record.ContainerID + "/" + e.Record.IfName + "/" + e.Record.Kind + "/" + e.Record.PodUID
	}
	for a := range s.Tombs {
		if s.Record(a) == nil {
			tombs++
		}
	}
	return held, len(s.Stickies), tombs, s.Notes
}

func TestMigrate(t *testing.T) {
	f := newFixture(t)
	f.seed()
	if out, errOut, code := f.run("reserve", "10.188.0.240", "--network", "k8snet2", "--note", "router"); code != 0 {
		t.Fatalf("reserve: %d %s %s", code, out, errOut)
	}
	dest := f.destConf("/kipam-dest")
	dst := func(n string) store.Backend { return store.New(f.cli, "/kipam-dest", n) }

	// A dry run counts and writes nothing.
	out, errOut, code := f.run("migrate", "--to", dest, "--dry-run")
	if code != 0 || !strings.Contains(out, "dry run: nothing was written") {
		t.Fatalf("dry run: code %d\n%s%s", code, out, errOut)
	}
	if held, _, _, _ := holders(t, dst("k8snet2")); len(held) != 0 {
		t.Fatalf("dry run wrote %v", held)
	}

	out, errOut, code = f.run("migrate", "--to", dest)
	if code != 0 {
		t.Fatalf("migrate: code %d\n%s%s", code, out, errOut)
	}
	t.Logf("migrate:\n%s", out)
	for _, n := range []string{"k8snet2", "k8snet3"} {
		h1, s1, t1, n1 := holders(t, f.store(n))
		h2, s2, t2, n2 := holders(t, dst(n))
		if fmt.Sprint(h1) != fmt.Sprint(h2) || s1 != s2 || t1 != t2 || fmt.Sprint(n1) != fmt.Sprint(n2) {
			t.Errorf("network %s: source holds %v, %d sticky, %d tombstones, notes %v; destination %v, %d, %d, %v", n, h1, s1, t1, n1, h2, s2, t2, n2)
		}
		if len(h1) == 0 {
			t.Errorf("network %s: the seed holds nothing: the test proves nothing", n)
		}
	}
	// The copy keeps its guarantees: a cooling address stays cooling, the
	// copied pod's DEL frees its address in the destination.
	st, err := dst("k8snet2").State(context.Background(), netip.MustParseAddr("10.188.0.12"))
	if err != nil || st.Tomb == nil || st.Tomb.Log == "" {
		t.Errorf("released 10.188.0.12 has no reusable tombstone in the destination: %+v %v", st, err)
	}
	if freed, err := dst("k8snet2").Release(context.Background(), cid(1), "net1", now, allocator.ReusePolicy(f.nets["k8snet2"])); err != nil || len(freed) != 1 {
		t.Errorf("DEL of web-1 in the destination freed %v, %v", freed, err)
	}

	// Again: everything is there already (web-1's k8snet2 address was
	// just released there: copied again, as a DEL on the old store would
	// not have happened yet).
	out, _, code = f.run("migrate", "--to", dest, "-o", "json")
	if code != 0 || !strings.Contains(out, `"present": 2`) {
		t.Errorf("second migrate: code %d\n%s", code, out)
	}

	// An address held by another holder in the destination is a conflict,
	// named, and not copied.
	if freed, err := dst("k8snet2").Release(context.Background(), cid(2), "net1", now, allocator.ReusePolicy(f.nets["k8snet2"])); err != nil || len(freed) != 1 {
		t.Fatalf("release in destination: %v %v", freed, err)
	}
	ok, err := dst("k8snet2").Commit(context.Background(), &store.Claim{
		Attachment: store.Attachment{ContainerID: "intruder", IfName: "net1", PodNamespace: "x", PodName: "intruder"},
		Items: []store.ClaimItem{{Record: store.Record{IP: "10.188.0.201", Kind: store.KindFixed, ContainerID: "intruder", IfName: "net1", PodNamespace: "x", PodName: "intruder"},
			Mode: store.ClaimTomb, State: mustState(t, dst("k8snet2"), "10.188.0.201")}}})
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	out, _, code = f.run("migrate", "--to", dest)
	if code != 1 || !strings.Contains(out, "conflict: network k8snet2: 10.188.0.201 is held by pod x/intruder") {
		t.Errorf("conflict: code %d\n%s", code, out)
	}

	// The destination must differ from the source.
	if _, errOut, code := f.run("migrate", "--to", f.conf); code != 2 || !strings.Contains(errOut, "the destination is the source") {
		t.Errorf("migrate onto itself: code %d %s", code, errOut)
	}
}

func mustState(t *testing.T, b store.Backend, ip string) store.IPState {
	t.Helper()
	st, err := b.State(context.Background(), netip.MustParseAddr(ip))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Two etcd clusters with the same prefix are two stores: migrate copies
// from one to the other (it refuses only a destination that is its
// source).
func TestMigrateBetweenEtcds(t *testing.T) {
	f := newFixture(t)
	f.seed()
	other := testenv.StartEtcd(t)
	dest := filepath.Join(t.TempDir(), "other.conf")
	if err := os.WriteFile(dest, fmt.Appendf(nil, confTmpl, other.ClientURL, prefix), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := f.run("migrate", "--to", dest)
	if code != 0 {
		t.Fatalf("migrate to another etcd, same prefix: exit %d\n%s%s", code, out, errOut)
	}
	for _, n := range []string{"k8snet2", "k8snet3"} {
		h1, s1, t1, _ := holders(t, f.store(n))
		h2, s2, t2, _ := holders(t, store.New(other.Client(t), prefix, n))
		if fmt.Sprint(h1) != fmt.Sprint(h2) || s1 != s2 || t1 != t2 {
			t.Errorf("network %s: source holds %v, %d sticky, %d tombstones; destination %v, %d, %d", n, h1, s1, t1, h2, s2, t2)
		}
	}
}
