// Package storetest is one behavioural suite that every store.Backend must
// pass, so that the allocator, the plugin and GC behave the same whichever
// store holds a network's state.
//
// A backend's test calls Run with a function that opens an empty backend for
// the network it is given:
//
//	func TestBackendSuite(t *testing.T) {
//		cli := testenv.StartEtcd(t).Client(t)
//		storetest.Run(t, func(t *testing.T, n *config.Network) store.Backend {
//			return store.New(cli, "/storetest", n.Name)
//		})
//	}
//
// Every case runs as a subtest with a network of its own: a unique name
// ("st-<case>-<random hex>", lower-case letters, digits and '-', at most 40
// characters) and its own ranges, so cases sharing one real backend do not
// see each other's state. open is called once per case, from the case's
// goroutine; it may register cleanups with t.Cleanup. The network's config
// names the etcd store (ipam.store is not set); a backend that is not etcd
// ignores that.
//
// The cases drive the backend through allocator.New(n, backend) (as the
// plugin does, one allocator per call, time driven through Allocator.Now)
// and through the Backend methods directly (as GC and kube-ipamctl do).
// They never sleep. A case about an optional interface (store.Importer) is
// skipped for a backend that does not implement it.
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"kubeipam/internal/allocator"
	"kubeipam/internal/config"
	"kubeipam/internal/store"
)

// Run runs the suite against the backends open returns.
func Run(t *testing.T, open func(t *testing.T, n *config.Network) store.Backend) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := network(t, c.name, c.ipam)
			e := &env{t: t, n: n, b: open(t, n), clock: t0, policy: allocator.ReusePolicy(n)}
			e.ctx, e.cancel = context.WithTimeout(context.Background(), 2*time.Minute)
			defer e.cancel()
			c.run(e)
		})
	}
}

// t0 is the suite's clock at the start of every case.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// network parses a network config with the case's ipam keys.
func network(t *testing.T, name, ipam string) *config.Network {
	t.Helper()
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		t.Fatal(err)
	}
	full := "st-" + name + "-" + hex.EncodeToString(suffix)
	n, err := config.Parse([]byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"ipam":{"type":"kube-ipam",
		"etcdConfig":{"etcdURL":"http://127.0.0.1:2379"},"nodeName":"node-a",%s}}`, full, ipam)))
	if err != nil {
		t.Fatalf("network config of case %s: %v", name, err)
	}
	return n
}

type env struct {
	t      *testing.T
	n      *config.Network
	b      store.Backend
	ctx    context.Context
	cancel context.CancelFunc
	clock  time.Time
	policy store.ReusePolicy
}

func (e *env) now() time.Time { return e.clock }

// allocator returns a fresh allocator (the plugin makes one per call) on
// the suite's clock.
func (e *env) allocator() *allocator.Allocator {
	a := allocator.New(e.n, e.b)
	a.Now = e.now
	a.Started = e.clock
	return a
}

// req is an ADD of container cid on net1 for a pod of its own.
func req(cid string) allocator.Request {
	return allocator.Request{ContainerID: cid, IfName: "net1", PodNamespace: "ns", PodName: "p-" + cid, PodUID: "u-" + cid, Node: "node-a"}
}

// add allocates and fails the test on error.
func (e *env) add(r allocator.Request) []allocator.Allocated {
	e.t.Helper()
	out, err := e.allocator().Allocate(e.ctx, r)
	if err != nil {
		e.t.Fatalf("ADD %s: %v", r.ContainerID, err)
	}
	return out
}

// add1 allocates one address and returns it.
func (e *env) add1(r allocator.Request) netip.Addr {
	e.t.Helper()
	out := e.add(r)
	if len(out) != 1 {
		e.t.Fatalf("ADD %s got %v, want one address", r.ContainerID, out)
	}
	return out[0].IP
}

// del releases (cid, net1) at the suite's clock.
func (e *env) del(cid string) []netip.Addr {
	e.t.Helper()
	freed, err := e.b.Release(e.ctx, cid, "net1", e.clock, e.policy)
	if err != nil {
		e.t.Fatalf("DEL %s: %v", cid, err)
	}
	return freed
}

func (e *env) state(a netip.Addr) store.IPState {
	e.t.Helper()
	st, err := e.b.State(e.ctx, a)
	if err != nil {
		e.t.Fatalf("State(%s): %v", a, err)
	}
	return st
}

func (e *env) attachment(cid string) *store.Attachment {
	e.t.Helper()
	att, err := e.b.Attachment(e.ctx, cid, "net1")
	if err != nil {
		e.t.Fatalf("Attachment(%s): %v", cid, err)
	}
	return att
}

func (e *env) snapshot() *store.Snapshot {
	e.t.Helper()
	s, err := e.b.Snapshot(e.ctx)
	if err != nil {
		e.t.Fatalf("Snapshot: %v", err)
	}
	if len(s.Problems) > 0 {
		e.t.Fatalf("Snapshot problems: %+v", s.Problems)
	}
	return s
}

// holder checks that a's record names container cid.
func (e *env) holder(a netip.Addr, cid string) {
	e.t.Helper()
	st := e.state(a)
	if st.Record == nil || st.Record.ContainerID != cid {
		e.t.Fatalf("%s is held by %+v, want container %s", a, st.Record, cid)
	}
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func addrs(as []allocator.Allocated) []netip.Addr {
	var out []netip.Addr
	for _, a := range as {
		out = append(out, a.IP)
	}
	return out
}

type suiteCase struct {
	name string
	ipam string // keys of the network's ipam section
	run  func(e *env)
}

var cases = []suiteCase{
	{"distinct", `"subnet":"10.1.0.0/22"`, distinct},
	{"repeated-add", `"ranges":[[{"subnet":"10.2.0.0/24"}],[{"subnet":"fd00:2::/120"}]]`, repeatedAdd},
	{"fixed-conflict", `"subnet":"10.3.0.0/24","fixedStart":"10.3.0.200","fixedEnd":"10.3.0.250"`, fixedConflict},
	{"takeover", `"ranges":[[{"subnet":"10.4.0.0/24"}],[{"subnet":"fd00:4::/120"}]],"fixedStart":"10.4.0.200","fixedEnd":"10.4.0.250"`, takeover},
	{"late-release", `"subnet":"10.5.0.0/24"`, lateRelease},
	{"cooldown", `"subnet":"10.6.0.0/24","rangeStart":"10.6.0.10","rangeEnd":"10.6.0.12","releaseCooldown":"30s"`, cooldown},
	{"reuse-order", `"subnet":"10.7.0.0/24","rangeStart":"10.7.0.10","rangeEnd":"10.7.0.13","releaseCooldown":"10s"`, reuseOrder},
	{"sticky", `"subnet":"10.8.0.0/24","rangeStart":"10.8.0.10","rangeEnd":"10.8.0.12"`, sticky},
	{"exhausted", `"subnet":"10.9.0.0/24","rangeStart":"10.9.0.10","rangeEnd":"10.9.0.11"`, exhausted},
	{"release-attachment", `"subnet":"10.10.0.0/24"`, releaseAttachment},
	{"snapshot-stats", `"subnet":"10.11.0.0/24","rangeStart":"10.11.0.10","rangeEnd":"10.11.0.29","fixedStart":"10.11.0.20","fixedEnd":"10.11.0.29","releaseCooldown":"30s"`, snapshotStats},
	{"notes", `"subnet":"10.12.0.0/24"`, notes},
	{"cluster", `"ranges":[[{"subnet":"10.13.0.0/24"}],[{"subnet":"fd00:13::/120"}]],"cluster":"east-1"`, cluster},
	{"commit-guards", `"subnet":"10.14.0.0/24"`, commitGuards},
	{"release-idempotent", `"subnet":"10.15.0.0/24"`, releaseIdempotent},
	{"import", `"subnet":"10.16.0.0/24","rangeStart":"10.16.0.10","rangeEnd":"10.16.0.12","releaseCooldown":"30s"`, importState},
}

// distinct: 500 ADDs, 50 at a time, get 500 distinct addresses; each DEL
// then frees exactly its own address, and nothing is left but tombstones.
func distinct(e *env) {
	const total, parallel = 500, 50
	got := make([]netip.Addr, total)
	run := func(f func(i int) error) {
		var wg sync.WaitGroup
		sem := make(chan struct{}, parallel)
		errs := make(chan error, total)
		for i := range total {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				if err := f(i); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			e.t.Error(err)
		}
		if e.t.Failed() {
			e.t.FailNow()
		}
	}
	run(func(i int) error {
		cid := fmt.Sprintf("c%03d", i)
		out, err := e.allocator().Allocate(e.ctx, req(cid))
		if err != nil {
			return fmt.Errorf("ADD %s: %w", cid, err)
		}
		if len(out) != 1 || out[0].Kind != store.KindDynamic || !e.n.RangeSets[0][0].Subnet.Contains(out[0].IP) {
			return fmt.Errorf("ADD %s got %+v", cid, out)
		}
		got[i] = out[0].IP
		return nil
	})
	owner := map[netip.Addr]int{}
	for i, a := range got {
		if j, dup := owner[a]; dup {
			e.t.Fatalf("%s given to c%03d and c%03d", a, j, i)
		}
		owner[a] = i
	}
	run(func(i int) error {
		cid := fmt.Sprintf("c%03d", i)
		freed, err := e.b.Release(e.ctx, cid, "net1", e.clock, e.policy)
		if err != nil {
			return fmt.Errorf("DEL %s: %w", cid, err)
		}
		if !slices.Equal(freed, []netip.Addr{got[i]}) {
			return fmt.Errorf("DEL %s freed %v, want [%s]", cid, freed, got[i])
		}
		return nil
	})
	s := e.snapshot()
	if len(s.Records) != 0 || len(s.Attachments) != 0 || len(s.Tombs) != total || len(s.Released) != total {
		e.t.Fatalf("after every DEL: %d records, %d attachments, %d tombstones, %d release-log entries; want 0, 0, %d, %d",
			len(s.Records), len(s.Attachments), len(s.Tombs), len(s.Released), total, total)
	}
}

// repeatedAdd: an ADD repeated for the same (container, interface) returns
// what the first one got, in range-set order, and writes nothing.
func repeatedAdd(e *env) {
	r := req("c1")
	first := e.add(r)
	if len(first) != 2 || !first[0].IP.Is4() || !first[1].IP.Is6() || first[0].Set != 0 || first[1].Set != 1 {
		e.t.Fatalf("dual-stack ADD got %+v", first)
	}
	for range 2 {
		a := e.allocator()
		again, err := a.Allocate(e.ctx, r)
		if err != nil || !slices.Equal(again, first) {
			e.t.Fatalf("repeated ADD got %+v (%v), want %+v", again, err, first)
		}
		if a.Committed || a.Retired != 0 {
			e.t.Fatalf("repeated ADD: Committed %v, Retired %d; want nothing written", a.Committed, a.Retired)
		}
	}
	if s := e.snapshot(); len(s.Records) != 2 || len(s.Attachments) != 1 {
		e.t.Fatalf("%d records and %d attachments, want 2 and 1", len(s.Records), len(s.Attachments))
	}
}

// fixedConflict: a fixed address held by another pod is refused with an
// error naming the holder, claims nothing, and is given once it is freed.
func fixedConflict(e *env) {
	x := ip("10.3.0.210")
	a := req("holder-container-1")
	a.Fixed = []netip.Addr{x}
	if out := e.add(a); len(out) != 1 || out[0].IP != x || out[0].Kind != store.KindFixed {
		e.t.Fatalf("fixed ADD got %+v", out)
	}
	b := req("c-other")
	b.Fixed = []netip.Addr{x}
	_, err := e.allocator().Allocate(e.ctx, b)
	var ce *allocator.ConflictError
	if !errors.As(err, &ce) || ce.IP != x || !strings.Contains(ce.Holder, "pod ns/p-holder-container-1") ||
		!strings.Contains(ce.Holder, "container holder-conta,") {
		e.t.Fatalf("second pod asking for %s: %v; want a ConflictError naming pod ns/p-holder-container-1 and its container", x, err)
	}
	if att := e.attachment("c-other"); att != nil {
		e.t.Fatalf("refused ADD left attachment %+v", att)
	}
	e.holder(x, "holder-container-1")
	e.del("holder-container-1")
	if out := e.add(b); len(out) != 1 || out[0].IP != x {
		e.t.Fatalf("fixed ADD after the holder's DEL got %+v", out)
	}
}

// takeover: the pod's next sandbox (same pod UID, new container) keeps its
// dynamic address and moves its fixed address over in one claim; the old
// attachment and its pod index entry are gone. A later sandbox asking for
// another fixed address frees the old one.
func takeover(e *env) {
	x, y := ip("10.4.0.210"), ip("10.4.0.211")
	r1 := req("c1")
	r1.PodUID, r1.Fixed = "pod-u", []netip.Addr{x}
	out1 := e.add(r1)
	if len(out1) != 2 || out1[0].IP != x || out1[0].Kind != store.KindFixed || out1[1].Kind != store.KindDynamic {
		e.t.Fatalf("first sandbox got %+v", out1)
	}
	d := out1[1].IP
	r2 := r1
	r2.ContainerID = "c2"
	a := e.allocator()
	out2, err := a.Allocate(e.ctx, r2)
	if err != nil || !slices.Equal(addrs(out2), []netip.Addr{x, d}) {
		e.t.Fatalf("next sandbox got %+v (%v), want [%s %s]", out2, err, x, d)
	}
	if !a.Committed || a.Retired != 1 {
		e.t.Fatalf("takeover: Committed %v, Retired %d; want true, 1", a.Committed, a.Retired)
	}
	e.holder(x, "c2")
	e.holder(d, "c2")
	if att := e.attachment("c1"); att != nil {
		e.t.Fatalf("old attachment left: %+v", att)
	}
	if cids, err := e.b.PodAttachments(e.ctx, "pod-u", "net1"); err != nil || !slices.Equal(cids, []string{"c2"}) {
		e.t.Fatalf("PodAttachments = %v (%v), want [c2]", cids, err)
	}
	r3 := r1
	r3.ContainerID, r3.Fixed = "c3", []netip.Addr{y}
	if out3 := e.add(r3); !slices.Equal(addrs(out3), []netip.Addr{y, d}) {
		e.t.Fatalf("sandbox asking for another fixed address got %+v, want [%s %s]", out3, y, d)
	}
	if st := e.state(x); st.Record != nil {
		e.t.Fatalf("old fixed address still held by %+v", st.Record)
	}
	e.holder(d, "c3")
}

// lateRelease: the DEL of a pod's old container, arriving after its new
// sandbox took the address over, frees nothing: after a takeover by the
// same pod UID (which retires the old attachment) and after a pod
// re-created under its name with a new UID took its fixed address over.
func lateRelease(e *env) {
	r1 := req("old")
	r1.PodUID = "pod-u"
	a := e.add1(r1)
	r2 := r1
	r2.ContainerID = "new"
	if b := e.add1(r2); b != a {
		e.t.Fatalf("next sandbox got %s, want %s", b, a)
	}
	if freed := e.del("old"); len(freed) != 0 {
		e.t.Fatalf("late DEL of the old container freed %v", freed)
	}
	e.holder(a, "new")
	if att := e.attachment("new"); att == nil || !slices.Equal(att.IPs, []string{a.String()}) {
		e.t.Fatalf("new attachment %+v", att)
	}
	if freed := e.del("new"); !slices.Equal(freed, []netip.Addr{a}) {
		e.t.Fatalf("DEL of the new container freed %v, want [%s]", freed, a)
	}

	x := ip("10.5.0.100")
	r1 = req("web-old")
	r1.PodName, r1.PodUID, r1.Fixed = "web", "uid-1", []netip.Addr{x}
	e.add1(r1)
	r2 = r1
	r2.ContainerID, r2.PodUID = "web-new", "uid-2"
	if got := e.add1(r2); got != x {
		e.t.Fatalf("re-created pod got %s, want its fixed address %s", got, x)
	}
	// Whether the old pod's attachment is still listed (etcd: yes, naming
	// an address it no longer holds) is the backend's business; its DEL
	// must not free the address.
	if freed := e.del("web-old"); len(freed) != 0 {
		e.t.Fatalf("late DEL of the old pod freed %v", freed)
	}
	e.holder(x, "web-new")
}

// cooldown: a released dynamic address is not given again before
// releaseCooldown has passed (CoolingError says when it will be), and is
// given once it has.
func cooldown(e *env) {
	for i := range 3 {
		e.add1(req(fmt.Sprintf("c%d", i)))
	}
	x := ip("10.6.0.11")
	if freed := e.del("c1"); !slices.Equal(freed, []netip.Addr{x}) {
		e.t.Fatalf("DEL freed %v, want [%s]", freed, x)
	}
	ready := t0.Add(30 * time.Second)
	for _, at := range []time.Time{t0, ready.Add(-time.Nanosecond)} {
		e.clock = at
		_, err := e.allocator().Allocate(e.ctx, req("next"))
		var ce *allocator.CoolingError
		if !errors.As(err, &ce) || !ce.Ready.Equal(ready) || ce.Set != 0 || ce.Network != e.n.Name {
			e.t.Fatalf("ADD at %v: %v; want a CoolingError ready at %v", at, err, ready)
		}
	}
	e.clock = ready
	if got := e.add1(req("next")); got != x {
		e.t.Fatalf("ADD after the cooldown got %s, want %s", got, x)
	}
}

// reuseOrder: never-used addresses come first, then released ones, least
// recently released first; then the pool is exhausted.
func reuseOrder(e *env) {
	a, b := e.add1(req("a")), e.add1(req("b"))
	if a != ip("10.7.0.10") || b != ip("10.7.0.11") {
		e.t.Fatalf("first ADDs got %s %s, want the lowest addresses", a, b)
	}
	e.del("b")
	e.clock = t0.Add(time.Second)
	e.del("a")
	e.clock = t0.Add(time.Hour)
	for i, want := range []string{"10.7.0.12", "10.7.0.13", "10.7.0.11", "10.7.0.10"} {
		if got := e.add1(req(fmt.Sprintf("n%d", i))); got != ip(want) {
			e.t.Fatalf("ADD %d got %s, want %s", i, got, want)
		}
	}
	_, err := e.allocator().Allocate(e.ctx, req("last"))
	var ex *allocator.ExhaustedError
	if !errors.As(err, &ex) {
		e.t.Fatalf("ADD on a full pool: %v, want an ExhaustedError", err)
	}
}

// sticky: a StatefulSet ordinal gets its address back across pod deletion
// and re-creation; meanwhile nobody else gets it; ReleaseSticky is refused
// while the ordinal holds it and frees it (to the release log) once not.
func sticky(e *env) {
	pod := func(cid, uid string) allocator.Request {
		r := req(cid)
		r.PodName, r.PodUID = "db-0", uid
		r.StatefulSet, r.StatefulSetUID, r.Ordinal, r.Sticky = "db", "sts-u", 0, true
		return r
	}
	out := e.add(pod("db0-a", "pod-1"))
	if len(out) != 1 || out[0].Kind != store.KindSticky {
		e.t.Fatalf("StatefulSet ADD got %+v", out)
	}
	s := out[0].IP
	st, err := e.b.Sticky(e.ctx, "ns", "sts-u", 0, "net1")
	if err != nil || st == nil || !slices.Equal(st.IPs, []string{s.String()}) || st.StatefulSet != "db" {
		e.t.Fatalf("sticky record %+v (%v)", st, err)
	}
	e.del("db0-a")
	if tomb := e.state(s).Tomb; tomb == nil || tomb.Log != "" {
		e.t.Fatalf("sticky address after DEL: tombstone %+v, want one outside the release log", tomb)
	}
	// The other addresses go to other pods; then the pool is exhausted
	// rather than the remembered address given away.
	e.clock = t0.Add(time.Hour)
	for i := range 2 {
		if got := e.add1(req(fmt.Sprintf("other%d", i))); got == s {
			e.t.Fatalf("another pod got the sticky address %s", s)
		}
	}
	var ex *allocator.ExhaustedError
	if _, err := e.allocator().Allocate(e.ctx, req("other2")); !errors.As(err, &ex) {
		e.t.Fatalf("ADD with only the sticky address left: %v, want an ExhaustedError", err)
	}
	if got := e.add(pod("db0-b", "pod-2")); len(got) != 1 || got[0].IP != s || got[0].Kind != store.KindSticky {
		e.t.Fatalf("re-created pod got %+v, want %s back", got, s)
	}
	snap := e.snapshot()
	if len(snap.Stickies) != 1 {
		e.t.Fatalf("stickies %+v", snap.Stickies)
	}
	entry := snap.Stickies[0]
	if freed, ok, err := e.b.ReleaseSticky(e.ctx, entry, e.clock, e.policy); ok || err != nil || len(freed) != 0 {
		e.t.Fatalf("ReleaseSticky while the ordinal holds it: %v %v %v; want refused", freed, ok, err)
	}
	e.del("db0-b")
	freed, ok, err := e.b.ReleaseSticky(e.ctx, entry, e.clock, e.policy)
	if !ok || err != nil || !slices.Equal(freed, []netip.Addr{s}) {
		e.t.Fatalf("ReleaseSticky = %v %v %v, want [%s]", freed, ok, err, s)
	}
	if st, err := e.b.Sticky(e.ctx, "ns", "sts-u", 0, "net1"); st != nil || err != nil {
		e.t.Fatalf("sticky record after ReleaseSticky: %+v (%v)", st, err)
	}
	if tomb := e.state(s).Tomb; tomb == nil || tomb.Log == "" {
		e.t.Fatalf("address after ReleaseSticky: tombstone %+v, want it in the release log", tomb)
	}
	if _, ok, _ := e.b.ReleaseSticky(e.ctx, entry, e.clock, e.policy); ok {
		e.t.Fatal("ReleaseSticky of an entry already released succeeded")
	}
}

// exhausted: with every address held, ADD fails with an ExhaustedError
// naming the network and range set, and claims nothing.
func exhausted(e *env) {
	e.add1(req("a"))
	e.add1(req("b"))
	_, err := e.allocator().Allocate(e.ctx, req("c"))
	var ex *allocator.ExhaustedError
	if !errors.As(err, &ex) || ex.Network != e.n.Name || ex.Set != 0 || ex.Ranges != "10.9.0.10-10.9.0.11" {
		e.t.Fatalf("ADD on a full pool: %v, want an ExhaustedError for set 0 (10.9.0.10-10.9.0.11)", err)
	}
	if att := e.attachment("c"); att != nil {
		e.t.Fatalf("failed ADD left attachment %+v", att)
	}
}

// releaseAttachment: GC's release of an attachment as read is refused when
// the attachment changed since (released and added again, or taken over),
// and frees it when it did not.
func releaseAttachment(e *env) {
	e.add1(req("c1"))
	stale := e.attachment("c1")
	e.del("c1")
	b := e.add1(req("c1"))
	if freed, ok, err := e.b.ReleaseAttachment(e.ctx, stale, e.clock, e.policy); ok || err != nil || len(freed) != 0 {
		e.t.Fatalf("ReleaseAttachment of a re-created attachment: %v %v %v; want refused", freed, ok, err)
	}
	e.holder(b, "c1")
	cur := e.attachment("c1")
	if freed, ok, err := e.b.ReleaseAttachment(e.ctx, cur, e.clock, e.policy); !ok || err != nil || !slices.Equal(freed, []netip.Addr{b}) {
		e.t.Fatalf("ReleaseAttachment = %v %v %v, want [%s]", freed, ok, err, b)
	}
	if att := e.attachment("c1"); att != nil {
		e.t.Fatalf("attachment left: %+v", att)
	}

	r := req("old")
	r.PodUID = "pod-u"
	d := e.add1(r)
	stale = e.attachment("old")
	r.ContainerID = "new"
	e.add1(r)
	if freed, ok, err := e.b.ReleaseAttachment(e.ctx, stale, e.clock, e.policy); ok || err != nil || len(freed) != 0 {
		e.t.Fatalf("ReleaseAttachment of a taken-over attachment: %v %v %v; want refused", freed, ok, err)
	}
	e.holder(d, "new")
}

// snapshotStats: Snapshot shows records (in address order, with versions),
// attachments, sticky records, tombstones and the release log; Stats counts
// used, fixed, sticky, cooling and blocked addresses of the pool.
func snapshotStats(e *env) {
	a := e.add1(req("a"))
	b := e.add1(req("b"))
	f := req("f")
	f.Fixed = []netip.Addr{ip("10.11.0.25")}
	e.add1(f)
	s := req("s")
	s.PodName, s.StatefulSet, s.StatefulSetUID, s.Sticky = "db-0", "db", "sts-u", true
	sa := e.add1(s)
	if a != ip("10.11.0.10") || b != ip("10.11.0.11") || sa != ip("10.11.0.12") {
		e.t.Fatalf("got %s %s %s, want the lowest dynamic addresses", a, b, sa)
	}
	e.del("s")
	e.del("b")
	snap := e.snapshot()
	var recs []string
	for _, r := range snap.Records {
		if r.Version == "" || r.Record.IP != r.IP.String() {
			e.t.Fatalf("record entry %+v", r)
		}
		recs = append(recs, r.IP.String()+"="+r.Record.ContainerID)
	}
	if want := []string{"10.11.0.10=a", "10.11.0.25=f"}; !slices.Equal(recs, want) {
		e.t.Fatalf("records %v, want %v", recs, want)
	}
	var atts []string
	for _, att := range snap.Attachments {
		if att.Rev == "" {
			e.t.Fatalf("attachment without a version: %+v", att)
		}
		atts = append(atts, att.ContainerID+"="+strings.Join(att.IPs, ","))
	}
	slices.Sort(atts)
	if want := []string{"a=10.11.0.10", "f=10.11.0.25"}; !slices.Equal(atts, want) {
		e.t.Fatalf("attachments %v, want %v", atts, want)
	}
	if len(snap.Stickies) != 1 || !slices.Equal(snap.Stickies[0].IPs, []string{sa.String()}) || snap.Stickies[0].Rev == "" {
		e.t.Fatalf("stickies %+v", snap.Stickies)
	}
	if len(snap.Tombs) != 2 || snap.Tombs[b] == nil || snap.Tombs[b].Log == "" || snap.Tombs[sa] == nil || snap.Tombs[sa].Log != "" {
		e.t.Fatalf("tombstones %+v: want %s in the release log and %s outside it", snap.Tombs, b, sa)
	}
	if len(snap.Released) != 1 || snap.Released[0].IP != b || snap.Released[0].Key != snap.Tombs[b].Log || !snap.Released[0].At.Equal(e.clock) {
		e.t.Fatalf("release log %+v", snap.Released)
	}
	st := snap.Stats(e.n, e.clock)
	got := fmt.Sprintf("pool %d used %d fixed %d sticky %d cooling %d blocked %d free %d", st.PoolInt64(), st.Used, st.Fixed, st.Sticky, st.Cooling, st.Blocked, st.Free())
	if want := "pool 10 used 1 fixed 1 sticky 1 cooling 1 blocked 1 free 7"; got != want {
		e.t.Fatalf("Stats: %s, want %s", got, want)
	}
	st = snap.Stats(e.n, e.clock.Add(30*time.Second))
	if st.Cooling != 0 || st.Free() != 8 {
		e.t.Fatalf("Stats after the cooldown: cooling %d free %d, want 0 and 8", st.Cooling, st.Free())
	}
	// A fixed address outside the dynamic ranges leaves no trace.
	e.del("f")
	if st := e.state(ip("10.11.0.25")); st.Record != nil || st.Tomb != nil {
		e.t.Fatalf("released fixed address: %+v", st)
	}
}

// notes: a reservation's note (kube-ipamctl reserve: an attachment with no
// pod) is kept with the claim and goes with its release.
func notes(e *env) {
	x := ip("10.12.0.40")
	st := e.state(x)
	rec := store.Record{Network: e.n.Name, IP: x.String(), Kind: store.KindFixed, IfName: "reserved", ContainerID: "resv-1", Node: "none", Created: e.clock}
	c := &store.Claim{
		Attachment: store.Attachment{ContainerID: "resv-1", IfName: "reserved", IPs: []string{x.String()}, Node: "none", Created: e.clock},
		Items:      []store.ClaimItem{{Record: rec, Mode: store.ClaimTomb, State: st}},
		Note:       "kept for the db migration",
	}
	if ok, err := e.b.Commit(e.ctx, c); !ok || err != nil {
		e.t.Fatalf("reservation Commit = %v, %v", ok, err)
	}
	if n, err := e.b.Note(e.ctx, x); n != c.Note || err != nil {
		e.t.Fatalf("Note = %q (%v), want %q", n, err, c.Note)
	}
	if n, err := e.b.Note(e.ctx, x.Next()); n != "" || err != nil {
		e.t.Fatalf("Note of an address without one = %q (%v)", n, err)
	}
	if snap := e.snapshot(); len(snap.Notes) != 1 || snap.Notes[x] != c.Note {
		e.t.Fatalf("Snapshot notes %v", snap.Notes)
	}
	freed, err := e.b.Release(e.ctx, "resv-1", "reserved", e.clock, e.policy)
	if err != nil || !slices.Equal(freed, []netip.Addr{x}) {
		e.t.Fatalf("release of the reservation freed %v (%v)", freed, err)
	}
	if n, err := e.b.Note(e.ctx, x); n != "" || err != nil {
		e.t.Fatalf("Note after the release = %q (%v)", n, err)
	}
	if snap := e.snapshot(); len(snap.Notes) != 0 {
		e.t.Fatalf("Snapshot notes after the release %v", snap.Notes)
	}
}

// cluster: the network's cluster identity is written into every record,
// attachment and sticky record, with the network's name.
func cluster(e *env) {
	e.add(req("plain"))
	s := req("s")
	s.StatefulSet, s.StatefulSetUID, s.Sticky = "db", "sts-u", true
	e.add(s)
	snap := e.snapshot()
	if len(snap.Records) != 4 || len(snap.Attachments) != 2 || len(snap.Stickies) != 1 {
		e.t.Fatalf("%d records, %d attachments, %d stickies; want 4, 2, 1", len(snap.Records), len(snap.Attachments), len(snap.Stickies))
	}
	for _, r := range snap.Records {
		if r.Record.Cluster != "east-1" || r.Record.Network != e.n.Name || r.Record.Node != "node-a" {
			e.t.Errorf("record %+v: want cluster east-1, network %s, node node-a", r.Record, e.n.Name)
		}
	}
	for _, a := range snap.Attachments {
		if a.Cluster != "east-1" {
			e.t.Errorf("attachment %+v: want cluster east-1", a)
		}
	}
	if snap.Stickies[0].Cluster != "east-1" {
		e.t.Errorf("sticky %+v: want cluster east-1", snap.Stickies[0])
	}
}

// commitGuards: Commit's preconditions, directly: an existing attachment,
// a claimed or tombstoned address claimed as fresh, a stale tombstone or
// record version, an existing sticky record each make the whole claim fail
// and write nothing; retiring a stale attachment never frees what changed; a claim from the current tombstone consumes it and its
// release-log entry; cursors are kept.
func commitGuards(e *env) {
	item := func(cid, a string, mode int, st store.IPState) store.ClaimItem {
		return store.ClaimItem{Record: store.Record{Network: e.n.Name, IP: a, Kind: store.KindDynamic, IfName: "net1", ContainerID: cid}, Mode: mode, State: st}
	}
	claim := func(cid string, items ...store.ClaimItem) *store.Claim {
		return &store.Claim{Attachment: store.Attachment{ContainerID: cid, IfName: "net1"}, Items: items}
	}
	commit := func(c *store.Claim, want bool, what string) {
		e.t.Helper()
		if ok, err := e.b.Commit(e.ctx, c); ok != want || err != nil {
			e.t.Fatalf("%s: Commit = %v, %v; want %v", what, ok, err, want)
		}
	}
	x, y, z := "10.14.0.10", "10.14.0.11", "10.14.0.12"
	c := claim("c1", item("c1", x, store.ClaimFresh, store.IPState{}))
	c.Cursors = map[int]netip.Addr{0: ip(x)}
	commit(c, true, "fresh claim")
	if cur, err := e.b.Cursor(e.ctx, 0); cur != ip(x) || err != nil {
		e.t.Fatalf("Cursor = %v (%v), want %s", cur, err, x)
	}
	commit(claim("c2", item("c2", x, store.ClaimFresh, store.IPState{})), false, "fresh claim of a claimed address")
	commit(claim("c1", item("c1", y, store.ClaimFresh, store.IPState{})), false, "second claim of an attachment")
	// The whole claim fails when its last item does: nothing of it is written.
	commit(claim("c3", item("c3", y, store.ClaimFresh, store.IPState{}), item("c3", x, store.ClaimFresh, store.IPState{})), false, "claim with one address taken")
	if st := e.state(ip(y)); st.Record != nil || e.attachment("c3") != nil {
		e.t.Fatalf("a failed claim left %+v / %+v", st.Record, e.attachment("c3"))
	}
	// Takeover from a stale record version loses.
	st1 := e.state(ip(x))
	commit(claim("c4", item("c4", x, store.ClaimTakeover, st1)), true, "takeover")
	commit(claim("c5", item("c5", x, store.ClaimTakeover, st1)), false, "takeover from a stale version")
	e.holder(ip(x), "c4")
	// Tombstones: a fresh claim of a tombstoned address fails, a claim from
	// a stale (or no) tombstone version fails, the current one wins.
	e.del("c4")
	tomb := e.state(ip(x))
	if tomb.Tomb == nil || tomb.Tomb.Log == "" {
		e.t.Fatalf("released address %+v", tomb)
	}
	commit(claim("c6", item("c6", x, store.ClaimFresh, store.IPState{})), false, "fresh claim of a tombstoned address")
	commit(claim("c6", item("c6", x, store.ClaimTomb, store.IPState{})), false, "claim from no tombstone")
	commit(claim("c6", item("c6", x, store.ClaimTomb, tomb)), true, "claim from the tombstone")
	if refs, err := e.b.OldestReleased(e.ctx, 0, 10); len(refs) != 0 || err != nil {
		e.t.Fatalf("release log after the claim: %v (%v)", refs, err)
	}
	if st := e.state(ip(x)); st.Tomb != nil || st.Record == nil || st.Record.ContainerID != "c6" {
		e.t.Fatalf("after the claim from the tombstone: %+v", st)
	}
	e.del("c6")
	commit(claim("c7", item("c7", x, store.ClaimTomb, tomb)), false, "claim from a consumed tombstone")
	// Sticky records are created only where none is.
	sc := claim("c8", item("c8", z, store.ClaimFresh, store.IPState{}))
	sc.NewSticky = &store.Sticky{Namespace: "ns", StatefulSet: "db", StatefulSetUID: "sts-u", Ordinal: 1, IfName: "net1", IPs: []string{z}}
	commit(sc, true, "claim with a new sticky record")
	sc2 := claim("c9", item("c9", y, store.ClaimFresh, store.IPState{}))
	sc2.NewSticky = sc.NewSticky
	commit(sc2, false, "claim creating an existing sticky record")
	if st := e.state(ip(y)); st.Record != nil {
		e.t.Fatalf("a failed sticky claim left %+v", st.Record)
	}
	// A claim retiring an attachment as read earlier never frees an
	// address that changed since (here released by the old container's
	// DEL and claimed by another container). The etcd store fails the
	// whole claim; a backend may instead commit it and skip the changed
	// address: either way the new holder keeps it, and the claim is
	// all or nothing.
	w := ip("10.14.0.20")
	pc := claim("p1", item("p1", w.String(), store.ClaimFresh, store.IPState{}))
	pc.Attachment.PodUID = "pod-u"
	commit(pc, true, "pod claim")
	old := e.attachment("p1")
	states, err := e.b.AddressStates(e.ctx, old)
	if err != nil || states[w].Record == nil {
		e.t.Fatalf("AddressStates = %+v (%v)", states, err)
	}
	e.del("p1")
	commit(claim("q", item("q", w.String(), store.ClaimTomb, e.state(w))), true, "claim of the released address")
	rc := claim("p2", item("p2", y, store.ClaimFresh, store.IPState{}))
	rc.Attachment.PodUID = "pod-u"
	rc.Retire, rc.Now, rc.Policy = []store.Retired{{Attachment: old, States: states}}, e.clock, e.policy
	ok, err := e.b.Commit(e.ctx, rc)
	if err != nil {
		e.t.Fatalf("claim retiring a stale attachment: %v", err)
	}
	e.holder(w, "q")
	if st := e.state(w); st.Tomb != nil {
		e.t.Fatalf("the new holder's address got a tombstone: %+v", st.Tomb)
	}
	if st, att := e.state(ip(y)), e.attachment("p2"); ok != (st.Record != nil) || ok != (att != nil) {
		e.t.Fatalf("claim retiring a stale attachment: ok=%v but record %+v, attachment %+v", ok, st.Record, att)
	}
}

// releaseIdempotent: DEL of what is not held (never was, or already
// released) frees nothing and is not an error.
func releaseIdempotent(e *env) {
	if freed := e.del("never"); len(freed) != 0 {
		e.t.Fatalf("DEL of nothing freed %v", freed)
	}
	a := e.add1(req("c1"))
	if freed := e.del("c1"); !slices.Equal(freed, []netip.Addr{a}) {
		e.t.Fatalf("DEL freed %v, want [%s]", freed, a)
	}
	if freed := e.del("c1"); len(freed) != 0 {
		e.t.Fatalf("second DEL freed %v", freed)
	}
	if st := e.state(a); st.Record != nil || st.Tomb == nil {
		e.t.Fatalf("address after two DELs: %+v", st)
	}
}

// importState (backends that are a store.Importer: kube-ipamctl migrate):
// imported tombstones and sticky records only create, keep their cooldown
// and their holder's claim on the address.
func importState(e *env) {
	imp, ok := e.b.(store.Importer)
	if !ok {
		e.t.Skip("the backend is not a store.Importer")
	}
	cooling, blocked := ip("10.16.0.10"), ip("10.16.0.11")
	if ok, err := imp.ImportTombstone(e.ctx, cooling, store.Tombstone{Released: e.clock, Kind: store.KindDynamic, Log: "elsewhere"}, 0); !ok || err != nil {
		e.t.Fatalf("ImportTombstone = %v, %v", ok, err)
	}
	if ok, err := imp.ImportTombstone(e.ctx, cooling, store.Tombstone{Released: e.clock, Kind: store.KindDynamic}, 0); ok || err != nil {
		e.t.Fatalf("second ImportTombstone = %v, %v; want refused", ok, err)
	}
	if ok, err := imp.ImportTombstone(e.ctx, blocked, store.Tombstone{Released: e.clock, Kind: store.KindSticky}, 0); !ok || err != nil {
		e.t.Fatalf("ImportTombstone of a sticky address = %v, %v", ok, err)
	}
	st := store.Sticky{Namespace: "ns", StatefulSet: "db", StatefulSetUID: "sts-u", Ordinal: 0, IfName: "net1", IPs: []string{blocked.String()}, Created: e.clock}
	if ok, err := imp.ImportSticky(e.ctx, st); !ok || err != nil {
		e.t.Fatalf("ImportSticky = %v, %v", ok, err)
	}
	if ok, err := imp.ImportSticky(e.ctx, st); ok || err != nil {
		e.t.Fatalf("second ImportSticky = %v, %v; want refused", ok, err)
	}
	refs, err := e.b.OldestReleased(e.ctx, 0, 10)
	if err != nil || len(refs) != 1 || refs[0].IP != cooling || !refs[0].At.Equal(e.clock) {
		e.t.Fatalf("release log %+v (%v), want %s released at %v", refs, err, cooling, e.clock)
	}
	if tomb := e.state(cooling).Tomb; tomb == nil || tomb.Log != refs[0].Key {
		e.t.Fatalf("imported tombstone %+v, want it to name this store's log entry %s", tomb, refs[0].Key)
	}
	// The never-used address goes first; then the imported one is cooling.
	if got := e.add1(req("a")); got != ip("10.16.0.12") {
		e.t.Fatalf("ADD got %s, want the never-used 10.16.0.12", got)
	}
	var ce *allocator.CoolingError
	if _, err := e.allocator().Allocate(e.ctx, req("b")); !errors.As(err, &ce) || !ce.Ready.Equal(e.clock.Add(30*time.Second)) {
		e.t.Fatalf("ADD with the imported address cooling: %v", err)
	}
	r := req("db0")
	r.PodName, r.StatefulSet, r.StatefulSetUID, r.Sticky = "db-0", "db", "sts-u", true
	if got := e.add(r); len(got) != 1 || got[0].IP != blocked || got[0].Kind != store.KindSticky {
		e.t.Fatalf("the StatefulSet ordinal got %+v, want its imported address %s", got, blocked)
	}
	e.clock = e.clock.Add(30 * time.Second)
	if got := e.add1(req("b")); got != cooling {
		e.t.Fatalf("ADD after the cooldown got %s, want %s", got, cooling)
	}
}
