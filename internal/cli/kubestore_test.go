package cli

// kube-ipamctl on networks whose allocations live in the Kubernetes API
// store (ipam.store "kubernetes") of a real kube-apiserver, and migrate
// between that store and etcd, both ways. The pods and StatefulSets the
// GC rules look up are the fixture's fake clientset, as in cli_test.go;
// the allocations are IPAllocation and IPSticky objects of the real API.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"kubeipam/internal/allocator"
	"kubeipam/internal/kubeapi"
	"kubeipam/internal/store"
	"kubeipam/internal/store/kubestore"
	"kubeipam/internal/store/kubestore/kubestoretest"
	"kubeipam/internal/testenv"
)

// kubeStore is a kube-apiserver with the CRDs, and the fixture's networks
// (confTmpl) in its Kubernetes API store.
type kubeStore struct {
	kube *testenv.Kube
	api  *kubeapi.Client
	conf string
}

func startKubeStore(t *testing.T) *kubeStore {
	t.Helper()
	k, api := kubestoretest.Start(t, "kube-ipamctl-test")
	const etcdConfig = `"etcdConfig": {"etcdURL": "%[1]s", "etcdPrefix": "%[2]s"},`
	body := strings.ReplaceAll(confTmpl, etcdConfig, `"store": "kubernetes",`)
	body = strings.ReplaceAll(body, `"/nonexistent/kubeconfig"`, strconv.Quote(k.Kubeconfig))
	if strings.Count(body, `"store": "kubernetes"`) != 2 || strings.Count(body, k.Kubeconfig) != 2 {
		t.Fatalf("confTmpl changed: cannot move its networks to the Kubernetes API store:\n%s", body)
	}
	ks := &kubeStore{kube: k, api: api, conf: filepath.Join(t.TempDir(), "00-multus-kubernetes.conf")}
	if err := os.WriteFile(ks.conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return ks
}

func (k *kubeStore) store(network string) *kubestore.Store { return kubestore.New(k.api, network, "") }

// on returns f with its config and its writes (commit, release, seed) in
// the Kubernetes API store. The fake API's pods are f's.
func (k *kubeStore) on(f *fixture) *fixture {
	g := *f
	g.conf = k.conf
	g.backend = func(n string) store.Backend { return k.store(n) }
	return &g
}

// sameAsGolden compares out with a golden file of the etcd tests (never
// rewritten from here).
func sameAsGolden(t *testing.T, name, out string) {
	t.Helper()
	want, err := os.ReadFile(filepath.Join("testdata", name+".golden"))
	if err != nil {
		t.Fatal(err)
	}
	if out != string(want) {
		t.Errorf("on the Kubernetes API store, %s differs from etcd's testdata/%s.golden:\n--- got\n%s--- want\n%s", name, name, out, want)
	}
}

// The read commands print exactly what they print for the same
// allocations in etcd: the golden files of TestGoldenOutputs.
func TestKubeStoreGoldenOutputs(t *testing.T) {
	f := startKubeStore(t).on(newFixture(t))
	f.seed()
	for _, c := range goldenCommands {
		t.Run(c.name, func(t *testing.T) {
			out, stderr, code := f.run(c.args...)
			if code != 0 {
				t.Fatalf("exit %d, stderr %s", code, stderr)
			}
			sameAsGolden(t, c.name, out)
		})
	}
	for ip, want := range map[string]string{
		"10.188.0.12": "k8snet2: released 10s ago, cooling down for 20s more",
		"10.188.0.13": "k8snet2: released 10m ago",
		"10.188.0.99": "k8snet2: never allocated",
	} {
		out, stderr, code := f.run("who-has", ip)
		if code != 1 || out != "" || !strings.Contains(stderr, want) {
			t.Errorf("who-has %s: exit %d, stdout %q, stderr %q; want exit 1 and %q", ip, code, out, stderr, want)
		}
	}
}

// snapshots reads both networks' snapshots from f's store.
func snapshots(t *testing.T, f *fixture) map[string]*store.Snapshot {
	t.Helper()
	out := map[string]*store.Snapshot{}
	for _, n := range []string{"k8snet2", "k8snet3"} {
		s, err := f.target(n).Snapshot(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		out[n] = s
	}
	return out
}

// reserve, release, gc (dry run and real), check and the StatefulSet rule
// on the Kubernetes API store.
func TestKubeStoreCommands(t *testing.T) {
	f := startKubeStore(t).on(newFixture(t))
	f.seed()
	ctx := context.Background()
	expect := func(args []string, wantCode int, wantOut ...string) string {
		t.Helper()
		out, stderr, code := f.run(args...)
		for _, w := range wantOut {
			if !strings.Contains(out+stderr, w) {
				t.Errorf("kube-ipamctl %s: output lacks %q:\n%s%s", strings.Join(args, " "), w, out, stderr)
			}
		}
		if code != wantCode {
			t.Fatalf("kube-ipamctl %s: exit %d, want %d:\n%s%s", strings.Join(args, " "), code, wantCode, out, stderr)
		}
		return out
	}

	// reserve with a note: listed, shown by who-has, kept on the object.
	expect([]string{"reserve", "10.188.0.99", "--note", "router VIP"}, 0, "reserved 10.188.0.99 on network k8snet2")
	out := expect([]string{"list", "--network", "k8snet2"}, 0)
	if !hasRow(out, "10.188.0.99", "k8snet2", KindReserved, "(router", "VIP)", "reserved-0ab", ReservedIfName, ReservedNode, "0s") {
		t.Errorf("list lacks the reservation:\n%s", out)
	}
	out = expect([]string{"who-has", "10.188.0.99", "-o", "json"}, 0)
	var as []Allocation
	if err := json.Unmarshal([]byte(out), &as); err != nil || len(as) != 1 || as[0].Note != "router VIP" || as[0].Kind != KindReserved {
		t.Errorf("who-has -o json: %v\n%s", err, out)
	}
	if n := snapshots(t, f)["k8snet2"].Notes; n[netip.MustParseAddr("10.188.0.99")] != "router VIP" {
		t.Errorf("the IPAllocation's note: %v", n)
	}
	expect([]string{"networks"}, 0)
	out = expect([]string{"networks", "-o", "json"}, 0)
	if !strings.Contains(out, `"used": 3`) || !strings.Contains(out, `"fixed": 2`) || !strings.Contains(out, `"free": 186`) {
		t.Errorf("networks with the reservation:\n%s", out)
	}
	expect([]string{"reserve", "10.188.0.99"}, 1, "10.188.0.99 is already reserved on network k8snet2")
	expect([]string{"reserve", "10.188.0.10"}, 1, "10.188.0.10 is already allocated on network k8snet2 to pod default/web-1")
	expect([]string{"release", "10.188.0.99"}, 0, "released reservation 10.188.0.99 on network k8snet2")
	if n := snapshots(t, f)["k8snet2"].Notes; len(n) != 0 {
		t.Errorf("notes after the release: %v", n)
	}
	expect([]string{"who-has", "10.188.0.99"}, 1, "k8snet2: fixed address released 0s ago")

	// A live pod's address: refused.
	expect([]string{"release", "10.188.0.10"}, 1, "pod default/web-1 still exists")

	// web-1 and mysql-1 are deleted; StatefulSet mysql still wants
	// ordinal 1.
	delete(f.pods, "default/web-1")
	delete(f.pods, "db/mysql-1")
	before := snapshots(t, f)
	out = expect([]string{"gc", "--dry-run"}, 0, "Dry run: 2 leaked allocation(s) would be freed; nothing was changed.",
		"Kept 1 allocation(s) of deleted pods whose StatefulSet still wants the ordinal")
	for _, row := range [][]string{{"k8snet2", "attachment", "default/web-1", "01c0ffeec0ff", "net1", "worker-1", "10.188.0.10", "would", "free"},
		{"k8snet3", "attachment", "default/web-1", "01c0ffeec0ff", "net2", "worker-1", "10.189.0.2,fd00:189::2", "would", "free"}} {
		if !hasRow(out, row...) {
			t.Errorf("gc --dry-run lacks %q:\n%s", row, out)
		}
	}
	if after := snapshots(t, f); !reflect.DeepEqual(before, after) {
		t.Errorf("gc --dry-run changed the store:\nbefore %+v\nafter  %+v", before, after)
	}
	out = expect([]string{"check"}, 1, "check found 3 inconsistencies", "Kept on purpose (not problems, nothing to do):")
	for _, row := range [][]string{{ProblemLeaked, "k8snet2", "10.188.0.10", "ipallocations/0abc000a.k8snet2"},
		{ProblemLeaked, "k8snet3", "10.189.0.2", "ipallocations/0abd0002.k8snet3"},
		{ProblemLeaked, "k8snet3", "fd00:189::2", "ipallocations/fd000189000000000000000000000002.k8snet3"},
		{KeptStatefulSetOrdinal, "k8snet2", "10.188.0.11", "ipallocations/0abc000b.k8snet2"}} {
		if !hasRow(out, row...) {
			t.Errorf("check lacks %q:\n%s", row, out)
		}
	}
	expect([]string{"release", "10.188.0.11"}, 1, "still wants ordinal 1")
	expect([]string{"gc"}, 0, "Freed 2 of 2 leaked allocation(s).")
	for _, c := range []struct{ network, ip string }{{"k8snet2", "10.188.0.10"}, {"k8snet3", "10.189.0.2"}, {"k8snet3", "fd00:189::2"}} {
		st, err := f.target(c.network).State(ctx, netip.MustParseAddr(c.ip))
		if err != nil || st.Record != nil || st.Tomb == nil || st.Tomb.Log == "" || !st.Tomb.Released.Equal(now) {
			t.Errorf("%s after gc: %+v %+v %v; want a release-log tombstone at %v", c.ip, st.Record, st.Tomb, err, now)
		}
	}
	out = expect([]string{"check"}, 0, "No inconsistencies in 2 network(s), 2 allocation(s).")
	if !hasRow(out, KeptStatefulSetOrdinal, "k8snet2", "10.188.0.11") {
		t.Errorf("check after gc:\n%s", out)
	}
	expect([]string{"who-has", "10.188.0.10"}, 1, "k8snet2: released 0s ago, cooling down for 30s more")

	// A gone pod's address is released without --force.
	f.commit(alloc{network: "k8snet2", ns: "default", pod: "gone", uid: "uid-gone", cid: "cgone", ifname: "net1", node: "worker-2",
		kind: store.KindDynamic, ips: []string{"10.188.0.22"}, created: now.Add(-time.Hour)})
	expect([]string{"release", "10.188.0.22"}, 0, "released 10.188.0.22 on network k8snet2, held by pod default/gone")
	expect([]string{"check"}, 0, "No inconsistencies in 2 network(s), 2 allocation(s).")
}

// canonical is a snapshot as comparable text, without what only says
// where or at which version a store keeps an entry (versions, keys,
// release-log keys).
type canonical struct {
	Records, Attachments, Stickies, Released []string
	Tombs, Notes                             map[string]string
	Problems                                 []store.Problem
}

func canon(t *testing.T, s *store.Snapshot) canonical {
	t.Helper()
	js := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	c := canonical{Tombs: map[string]string{}, Notes: map[string]string{}, Problems: s.Problems}
	for _, e := range s.Records {
		r := *e.Record
		r.Created = r.Created.UTC()
		c.Records = append(c.Records, e.IP.String()+" "+js(r))
	}
	for _, a := range s.Attachments {
		if a.Partial {
			t.Errorf("partial attachment %+v", a)
		}
		x := *a
		x.Created, x.Rev, x.Key = x.Created.UTC(), "", ""
		c.Attachments = append(c.Attachments, js(x))
	}
	for _, e := range s.Stickies {
		x := e.Sticky
		x.Created = x.Created.UTC()
		c.Stickies = append(c.Stickies, js(x))
	}
	for _, r := range s.Released {
		c.Released = append(c.Released, fmt.Sprintf("%s set %d at %s", r.IP, r.Set, r.At.UTC().Format(time.RFC3339Nano)))
	}
	for a, tb := range s.Tombs {
		c.Tombs[a.String()] = fmt.Sprintf("%s released %s in the release log: %v", tb.Kind, tb.Released.UTC().Format(time.RFC3339Nano), tb.Log != "")
	}
	for a, n := range s.Notes {
		c.Notes[a.String()] = n
	}
	slices.Sort(c.Attachments)
	slices.Sort(c.Stickies)
	return c
}

// sameState fails unless two stores hold the same state for every network.
func sameState(t *testing.T, what string, a, b map[string]*store.Snapshot) {
	t.Helper()
	for n := range a {
		ca, cb := canon(t, a[n]), canon(t, b[n])
		if len(ca.Records) == 0 {
			t.Errorf("%s: network %s holds nothing: the comparison proves nothing", what, n)
		}
		if !reflect.DeepEqual(ca, cb) {
			ja, _ := json.MarshalIndent(ca, "", "  ")
			jb, _ := json.MarshalIndent(cb, "", "  ")
			t.Errorf("%s: network %s differs:\n--- source\n%s\n--- destination\n%s", what, n, ja, jb)
		}
	}
}

// kubeWatch follows every IPAllocation and IPSticky event of an API
// server from now on.
type kubeWatch struct {
	mu     sync.Mutex
	events []string // "TYPE resource name"
}

func watchKube(t *testing.T, api *kubeapi.Client) *kubeWatch {
	t.Helper()
	w := &kubeWatch{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, res := range []string{"ipallocations", "ipstickies"} {
		p := "/apis/" + kubestore.Group + "/" + kubestore.Version + "/" + res
		resp, err := api.Do(ctx, kubeapi.Request{Method: "GET", Path: p})
		if err != nil || resp.Code != 200 {
			t.Fatalf("list %s: %v %v", res, err, resp)
		}
		var list struct {
			Metadata struct {
				ResourceVersion string `json:"resourceVersion"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(resp.Body, &list); err != nil {
			t.Fatal(err)
		}
		stream, err := api.Watch(ctx, kubeapi.Request{Path: p, Query: map[string][]string{"watch": {"true"}, "resourceVersion": {list.Metadata.ResourceVersion}}})
		if err != nil {
			t.Fatalf("watch %s: %v", res, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer stream.Body.Close()
			dec := json.NewDecoder(stream.Body)
			for {
				var ev struct {
					Type   string `json:"type"`
					Object struct {
						Metadata struct {
							Name string `json:"name"`
						} `json:"metadata"`
					} `json:"object"`
				}
				if dec.Decode(&ev) != nil {
					return
				}
				w.mu.Lock()
				w.events = append(w.events, ev.Type+" "+res+" "+ev.Object.Metadata.Name)
				w.mu.Unlock()
			}
		}()
	}
	return w
}

// until returns the events seen before the watch saw n events of objects
// whose names end in suffix (those excluded). Events of one resource come
// in the order of their writes, so once the watch of each resource has
// seen an object written after some writes, it has seen those writes.
func (w *kubeWatch) until(t *testing.T, k *testenv.Kube, suffix string, n int) []string {
	t.Helper()
	var out []string
	k.WaitFor(t, fmt.Sprintf("the watch to see %d objects *%s", n, suffix), time.Minute, func() (bool, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		out = out[:0]
		seen := 0
		for _, e := range w.events {
			if strings.HasSuffix(e, suffix) {
				seen++
				continue
			}
			out = append(out, e)
		}
		return seen == n, nil
	})
	return out
}

// migrateReport runs migrate -o json and decodes its report.
func migrateReport(t *testing.T, f *fixture, args ...string) (MigrateReport, int, string) {
	t.Helper()
	out, stderr, code := f.run(append([]string{"migrate", "-o", "json"}, args...)...)
	var rep MigrateReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("migrate %v -o json: exit %d, %v\n%s%s", args, code, err, out, stderr)
	}
	return rep, code, stderr
}

// counts is a report's counts per network, without From and To.
func counts(rep MigrateReport) map[string]string {
	out := map[string]string{}
	for _, n := range rep.Networks {
		out[n.Network] = fmt.Sprintf("attachments %d addresses %d present %d stickies %d tombstones %d conflicts %q",
			n.Attachments, n.Addresses, n.Present, n.Stickies, n.Tombstones, n.Conflicts)
	}
	return out
}

// migrate etcd → Kubernetes API store → etcd: every held address with its
// attachment (pod, container, interface, node, cluster, note), every
// sticky record and every tombstone (release time, release log) arrives
// identical; the source is never written and the destination only gains
// objects; a second run finds everything present; an ADD on the
// destination never gets a migrated address; a conflicting holder is
// named and left alone.
func TestMigrateKubeStore(t *testing.T) {
	ef := newFixture(t)
	ks := startKubeStore(t)
	kf := ks.on(ef)
	ctx := context.Background()

	// The source: the seed (dynamic, fixed, sticky, dual-stack, cooling
	// and reusable tombstones), a reservation with a note, a released
	// reservation (a fixed tombstone in the pool, outside the release
	// log), a released StatefulSet ordinal (its sticky record and an
	// address reserved for it), and another cluster's attachment.
	ef.seed()
	for _, args := range [][]string{{"reserve", "10.188.0.240", "--note", "router"}, {"reserve", "10.188.0.99"}, {"release", "10.188.0.99"}} {
		if out, stderr, code := ef.run(args...); code != 0 {
			t.Fatalf("%v: exit %d %s%s", args, code, out, stderr)
		}
	}
	ef.commit(alloc{network: "k8snet2", ns: "db", pod: "mysql-2", uid: "uid-mysql-2", cid: cid(6), ifname: "net1", node: "worker-3",
		kind: store.KindSticky, ips: []string{"10.188.0.14"}, created: now.Add(-2 * time.Hour), sts: "mysql", ordinal: 2})
	ef.release("k8snet2", cid(6), "net1", now.Add(-time.Minute))
	theirs := store.Record{Network: "k8snet3", IP: "10.189.0.9", Kind: store.KindDynamic, IfName: "net2", ContainerID: cid(7),
		PodNamespace: "default", PodName: "theirs", PodUID: "uid-theirs", Node: "b-worker", Cluster: "b", Created: now.Add(-time.Minute),
		AddMillis: 42, LostRaces: 1}
	if ok, err := ef.store("k8snet3").Commit(ctx, &store.Claim{Attachment: store.Attachment{ContainerID: cid(7), IfName: "net2",
		PodNamespace: "default", PodName: "theirs", PodUID: "uid-theirs", Node: "b-worker", Cluster: "b", Created: now.Add(-time.Minute)},
		Items: []store.ClaimItem{{Record: theirs, Mode: store.ClaimFresh}}}); !ok || err != nil {
		t.Fatal(ok, err)
	}
	source := snapshots(t, ef)
	if s := source["k8snet2"]; len(s.Stickies) != 2 || s.Notes[netip.MustParseAddr("10.188.0.240")] != "router" || len(s.Tombs) != 4 || len(s.Released) != 2 {
		t.Fatalf("the source lacks what the test copies: %d sticky records, notes %v, %d tombstones, %d in the release log",
			len(s.Stickies), s.Notes, len(s.Tombs), len(s.Released))
	}
	etcdRev := func() int64 {
		t.Helper()
		r, err := ef.cli.Get(ctx, "/none")
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	rev := etcdRev()

	// A dry run counts and writes nothing.
	dry, code, stderr := migrateReport(t, ef, "--to", ks.conf, "--dry-run")
	if code != 0 || !dry.DryRun {
		t.Fatalf("dry run: exit %d %s", code, stderr)
	}
	for n, s := range snapshots(t, kf) {
		if len(s.Records)+len(s.Tombs)+len(s.Stickies)+len(s.Problems) != 0 {
			t.Fatalf("the dry run wrote to network %s: %+v", n, s)
		}
	}

	// etcd → Kubernetes API store. Every event of the destination during
	// the copy is a creation; a sentinel written after it shows that the
	// watch has seen them all.
	w := watchKube(t, ks.api)
	rep, code, stderr := migrateReport(t, ef, "--to", ks.conf)
	if code != 0 {
		t.Fatalf("migrate: exit %d %s", code, stderr)
	}
	want := map[string]string{
		"k8snet2": `attachments 4 addresses 4 present 0 stickies 2 tombstones 4 conflicts []`,
		"k8snet3": `attachments 2 addresses 3 present 0 stickies 0 tombstones 0 conflicts []`,
	}
	if got := counts(rep); !reflect.DeepEqual(got, want) {
		t.Errorf("migrate copied %v, want %v", got, want)
	}
	if got := counts(dry); !reflect.DeepEqual(got, want) {
		t.Errorf("the dry run counted %v, want what migrate copied, %v", got, want)
	}
	if rep.Networks[0].From != ef.store("k8snet2").Describe() || rep.Networks[0].To != ks.store("k8snet2").Describe() {
		t.Errorf("from %q to %q", rep.Networks[0].From, rep.Networks[0].To)
	}
	sentinel := kubestore.New(ks.api, "sentinel", "")
	if ok, err := sentinel.ImportSticky(ctx, store.Sticky{Namespace: "x", StatefulSet: "x", StatefulSetUID: "x", IfName: "x", Created: now}); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if ok, err := sentinel.ImportTombstone(ctx, netip.MustParseAddr("192.0.2.1"), store.Tombstone{Released: now, Kind: store.KindFixed}, 0); !ok || err != nil {
		t.Fatal(ok, err)
	}
	evs := w.until(t, ks.kube, ".sentinel", 2)
	for _, e := range evs {
		if !strings.HasPrefix(e, "ADDED ") {
			t.Errorf("the destination saw %q during migrate: it must only gain objects", e)
		}
	}
	if len(evs) != 7+4+2 {
		t.Errorf("the destination saw %d events, want 13 creations (7 held addresses, 4 tombstones, 2 sticky records):\n%s", len(evs), strings.Join(evs, "\n"))
	}
	// The source is unchanged, to the version: nothing was written to its etcd.
	if after := snapshots(t, ef); !reflect.DeepEqual(source, after) {
		t.Errorf("migrate changed its source")
	}
	if r := etcdRev(); r != rev {
		t.Errorf("the source etcd's revision moved from %d to %d during migrate", rev, r)
	}
	kubeState := snapshots(t, kf)
	sameState(t, "etcd → kubernetes", source, kubeState)
	// kube-ipamctl reads the copy as the original.
	for _, args := range [][]string{{"list", "-o", "json"}, {"networks"}, {"who-has", "10.188.0.240", "-o", "json"}, {"who-has", "10.188.0.14"}, {"who-has", "10.188.0.99"}} {
		o1, e1, c1 := ef.run(args...)
		o2, e2, c2 := kf.run(args...)
		if o1 != o2 || e1 != e2 || c1 != c2 {
			t.Errorf("%v: etcd and the copy differ:\n--- etcd (exit %d)\n%s%s--- kubernetes (exit %d)\n%s%s", args, c1, o1, e1, c2, o2, e2)
		}
	}

	// After the switch the new config is the default one: migrating it
	// onto itself is refused (docs/stores.md, step 4).
	if _, stderr, code := kf.run("migrate", "--to", ks.conf); code != 2 || !strings.Contains(stderr, "the destination is the source") {
		t.Errorf("migrate of the new config onto itself: exit %d %s", code, stderr)
	}

	// Again: everything is present, nothing is written.
	again, code, stderr := migrateReport(t, ef, "--to", ks.conf)
	want = map[string]string{
		"k8snet2": `attachments 0 addresses 0 present 4 stickies 0 tombstones 0 conflicts []`,
		"k8snet3": `attachments 0 addresses 0 present 3 stickies 0 tombstones 0 conflicts []`,
	}
	if got := counts(again); code != 0 || !reflect.DeepEqual(got, want) {
		t.Errorf("second migrate: exit %d %s, %v, want %v", code, stderr, got, want)
	}
	if s := snapshots(t, kf); !reflect.DeepEqual(s, kubeState) {
		t.Errorf("the second migrate changed the destination")
	}

	// Kubernetes API store → etcd (another prefix): the round trip ends
	// where it began. The Kubernetes API store is only read, etcd only
	// gains keys.
	back := ef.destConf("/kipam-back")
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := ef.cli.Watch(wctx, "/kipam-back/", clientv3.WithPrefix(), clientv3.WithRev(etcdRev()+1))
	rep, code, stderr = migrateReport(t, kf, "--to", back)
	want = map[string]string{
		"k8snet2": `attachments 4 addresses 4 present 0 stickies 2 tombstones 4 conflicts []`,
		"k8snet3": `attachments 2 addresses 3 present 0 stickies 0 tombstones 0 conflicts []`,
	}
	if got := counts(rep); code != 0 || !reflect.DeepEqual(got, want) {
		t.Errorf("migrate back: exit %d %s, %v, want %v", code, stderr, got, want)
	}
	if _, err := ef.cli.Put(ctx, "/kipam-back/sentinel", ""); err != nil {
		t.Fatal(err)
	}
	var writes []string
	for done := false; !done; {
		resp := <-wch
		if err := resp.Err(); err != nil {
			t.Fatal(err)
		}
		for _, ev := range resp.Events {
			if string(ev.Kv.Key) == "/kipam-back/sentinel" {
				done = true
				break
			}
			writes = append(writes, string(ev.Kv.Key))
			if !ev.IsCreate() {
				t.Errorf("migrate into etcd: %s %s is not the creation of a key", ev.Type, ev.Kv.Key)
			}
		}
	}
	if len(writes) == 0 {
		t.Error("the watch saw no write of migrate")
	}
	if s := snapshots(t, kf); !reflect.DeepEqual(s, kubeState) {
		t.Errorf("migrate changed its source, the Kubernetes API store")
	}
	backState := map[string]*store.Snapshot{}
	for _, n := range []string{"k8snet2", "k8snet3"} {
		s, err := store.New(ef.cli, "/kipam-back", n).Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		backState[n] = s
	}
	sameState(t, "kubernetes → etcd", kubeState, backState)
	sameState(t, "etcd → kubernetes → etcd", source, backState)

	// An ADD on the destination never gets a migrated address: k8snet3's
	// IPv4 range (13 addresses) runs out after the 11 it does not hold;
	// a fixed request for a held address is refused naming its holder;
	// the released StatefulSet ordinal gets its address back.
	a3 := allocator.New(kf.nets["k8snet3"], ks.store("k8snet3"))
	a3.Now = func() time.Time { return now }
	held := map[netip.Addr]bool{}
	for _, s := range source {
		for _, e := range s.Records {
			held[e.IP] = true
		}
		for ip := range s.Tombs {
			held[ip] = true
		}
	}
	got := 0
	for i := 0; ; i++ {
		as, err := a3.Allocate(ctx, allocator.Request{ContainerID: fmt.Sprintf("new-%d", i), IfName: "net2", PodNamespace: "default",
			PodName: fmt.Sprintf("new-%d", i), PodUID: fmt.Sprintf("uid-new-%d", i), Node: "worker-9"})
		if err != nil {
			var ex *allocator.ExhaustedError
			if !errors.As(err, &ex) {
				t.Fatalf("ADD %d: %v", i, err)
			}
			break
		}
		for _, x := range as {
			if held[x.IP] {
				t.Errorf("ADD %d on the destination got %s, which the source holds", i, x.IP)
			}
		}
		got++
	}
	if got != 11 {
		t.Errorf("%d ADDs on k8snet3 before it ran out, want 11 (13 addresses, 2 held)", got)
	}
	a2 := allocator.New(kf.nets["k8snet2"], ks.store("k8snet2"))
	a2.Now = func() time.Time { return now }
	for ip, holder := range map[string]string{"10.188.0.201": "pod db/mysql-0", "10.188.0.240": "no pod (container reserved-0ab"} {
		_, err := a2.Allocate(ctx, allocator.Request{ContainerID: "intruder-" + ip, IfName: "net1", PodNamespace: "x", PodName: "intruder",
			PodUID: "uid-intruder", Fixed: []netip.Addr{netip.MustParseAddr(ip)}})
		var ce *allocator.ConflictError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), holder) {
			t.Errorf("a fixed ADD of %s on the destination: %v, want a conflict naming %s", ip, err, holder)
		}
	}
	as, err := a2.Allocate(ctx, allocator.Request{ContainerID: "c-dyn", IfName: "net1", PodNamespace: "x", PodName: "dyn", PodUID: "uid-dyn"})
	if err != nil || len(as) != 1 || held[as[0].IP] {
		t.Errorf("a dynamic ADD on the destination: %v %v", as, err)
	}
	as, err = a2.Allocate(ctx, allocator.Request{ContainerID: "c-mysql-2", IfName: "net1", PodNamespace: "db", PodName: "mysql-2", PodUID: "uid-mysql-2b",
		StatefulSet: "mysql", StatefulSetUID: "uid-mysql", Ordinal: 2, Sticky: true})
	if err != nil || len(as) != 1 || as[0].IP.String() != "10.188.0.14" {
		t.Errorf("the re-created StatefulSet ordinal 2 on the destination got %v %v, want its remembered 10.188.0.14", as, err)
	}

	// The switch (docs/stores.md): an ADD on the old store after the
	// first copy is copied by the next run; a DEL there leaves the copy
	// held in the new store (GC frees it once the pod is gone).
	ef.commit(alloc{network: "k8snet2", ns: "default", pod: "late", uid: "uid-late", cid: cid(8), ifname: "net1", node: "worker-1",
		kind: store.KindDynamic, ips: []string{"10.188.0.50"}, created: now})
	ef.release("k8snet2", cid(2), "net1", now)
	rep, code, stderr = migrateReport(t, ef, "--to", ks.conf)
	if got := counts(rep)["k8snet2"]; code != 0 || got != `attachments 1 addresses 1 present 3 stickies 0 tombstones 0 conflicts []` {
		t.Errorf("migrate after the switch: exit %d %s: %s", code, stderr, got)
	}
	for ip, want := range map[string]string{"10.188.0.50": cid(8), "10.188.0.201": cid(2)} {
		st, err := ks.store("k8snet2").State(ctx, netip.MustParseAddr(ip))
		if err != nil || st.Record == nil || st.Record.ContainerID != want {
			t.Errorf("%s in the destination after the switch: %+v %v, want held by %s", ip, st.Record, err, store.ShortID(want))
		}
	}

	// An address another holder has in the destination is a conflict:
	// named, not copied, exit 1; the holder keeps it.
	ef.commit(alloc{network: "k8snet3", ns: "default", pod: "web-2", uid: "uid-web-2", cid: cid(9), ifname: "net2", node: "worker-1",
		kind: store.KindDynamic, ips: []string{"10.189.0.3"}, created: now})
	st, err := ks.store("k8snet3").State(ctx, netip.MustParseAddr("10.189.0.3"))
	if err != nil || st.Record == nil || !strings.HasPrefix(st.Record.ContainerID, "new-") {
		t.Fatalf("10.189.0.3 in the destination: %+v %v, want one of the ADDs above", st.Record, err)
	}
	destHolder := st.Record.Owner()
	out, _, code := ef.run("migrate", "--to", ks.conf)
	if code != 1 || !strings.Contains(out, "conflict: network k8snet3: 10.189.0.3 is held by "+destHolder+" here and by pod default/web-2") {
		t.Errorf("conflict: exit %d\n%s", code, out)
	}
	if st, err := ks.store("k8snet3").State(ctx, netip.MustParseAddr("10.189.0.3")); err != nil || st.Record == nil || st.Record.Owner() != destHolder {
		t.Errorf("the destination's holder lost 10.189.0.3: %+v %v", st.Record, err)
	}
}

// migrate while ADDs run on the destination (what the migration steps of
// docs/stores.md avoid: they copy before any node uses the new store):
// whichever comes first keeps an address. An address migrate copied is
// never given to an ADD, an ADD's address is never taken by migrate, and
// a source address an ADD got first is named as a conflict (exit 1). The
// first ADD, made before migrate starts, takes the lowest addresses: those
// web-1 holds in the source.
func TestMigrateWithADDsOnTheDestination(t *testing.T) {
	ef := newFixture(t)
	ks := startKubeStore(t)
	ef.seed()
	source := snapshots(t, ef)["k8snet3"]
	ctx := context.Background()

	a := allocator.New(ef.nets["k8snet3"], ks.store("k8snet3"))
	a.Now = func() time.Time { return now }
	type added struct {
		cid string
		ips []netip.Addr
	}
	var adds []added
	done, first := make(chan error, 1), make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			cid := fmt.Sprintf("new-%d", i)
			as, err := a.Allocate(ctx, allocator.Request{ContainerID: cid, IfName: "net2", PodNamespace: "default",
				PodName: cid, PodUID: "uid-" + cid, Node: "worker-9"})
			var ex *allocator.ExhaustedError
			if errors.As(err, &ex) {
				done <- nil
				return
			}
			if err != nil {
				done <- fmt.Errorf("ADD %d: %w", i, err)
				return
			}
			ad := added{cid: cid}
			for _, x := range as {
				ad.ips = append(ad.ips, x.IP)
			}
			adds = append(adds, ad)
			if i == 0 {
				close(first)
			}
		}
	}()
	select {
	case <-first:
	case err := <-done:
		t.Fatalf("the ADDs stopped before the first: %v", err)
	}
	out, stderr, code := ef.run("migrate", "--to", ks.conf)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("migrate (exit %d) during %d ADDs:\n%s%s", code, len(adds), out, stderr)

	dest, err := ks.store("k8snet3").Snapshot(ctx)
	if err != nil || len(dest.Problems) != 0 {
		t.Fatalf("destination: %v %+v", err, dest.Problems)
	}
	conflicts := 0
	for _, e := range source.Records {
		d := dest.Record(e.IP)
		switch {
		case d == nil:
			t.Errorf("%s, held in the source, is free in the destination", e.IP)
		case d.Record.ContainerID == e.Record.ContainerID:
		case strings.Contains(out, fmt.Sprintf("conflict: network k8snet3: %s is held by pod default/%s", e.IP, d.Record.PodName)):
			conflicts++
		default:
			t.Errorf("%s is held by %s in the destination and by %s in the source, and migrate did not say so", e.IP, d.Record.Owner(), e.Record.Owner())
		}
	}
	for _, ad := range adds {
		for _, ip := range ad.ips {
			if d := dest.Record(ip); d == nil || d.Record.ContainerID != ad.cid {
				t.Errorf("%s, given to ADD %s, is held by %+v in the destination", ip, ad.cid, d)
			}
		}
	}
	if code != 1 || conflicts != 2 || !slices.Equal(adds[0].ips, []netip.Addr{netip.MustParseAddr("10.189.0.2"), netip.MustParseAddr("fd00:189::2")}) {
		t.Errorf("migrate exited %d with %d conflict(s) (the first ADD got %v); want 2, web-1's addresses", code, conflicts, adds[0].ips)
	}
	if len(adds) != 13 {
		t.Errorf("%d ADDs before k8snet3's 13 IPv4 addresses ran out, want 13: the first took web-1's", len(adds))
	}
}
