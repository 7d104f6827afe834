package allocator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/store/memstore"
)

// Table tests of the allocation strategy over the in-memory store: no etcd,
// time driven through Allocator.Now, races and lost answers made with
// memstore's hooks. (fault_test.go has the same outcomes under real etcd
// faults.)

var st0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

type stratEnv struct {
	t     *testing.T
	n     *config.Network
	mem   *memstore.Store
	b     store.Backend // mem, or a wrapper of it
	clock time.Time
	ctx   context.Context
}

func stratNet(t *testing.T, ipam string) *config.Network {
	t.Helper()
	n, err := config.Parse([]byte(`{"cniVersion":"1.0.0","name":"strat","ipam":{"type":"kube-ipam",
		"etcdConfig":{"etcdURL":"http://127.0.0.1:2379"},"nodeName":"node-a",` + ipam + `}}`))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newStratEnv(t *testing.T, ipam string) *stratEnv {
	n := stratNet(t, ipam)
	mem := memstore.New(n.Name)
	return &stratEnv{t: t, n: n, mem: mem, b: mem, clock: st0, ctx: context.Background()}
}

func (e *stratEnv) alloc() *Allocator {
	a := New(e.n, e.b)
	a.Now = func() time.Time { return e.clock }
	a.Started = e.clock
	return a
}

func sreq(cid string) Request {
	return Request{ContainerID: cid, IfName: "net1", PodNamespace: "ns", PodName: "p-" + cid, PodUID: "u-" + cid, Node: "node-a"}
}

func (e *stratEnv) add(r Request) []Allocated {
	e.t.Helper()
	out, err := e.alloc().Allocate(e.ctx, r)
	if err != nil {
		e.t.Fatalf("ADD %s: %v", r.ContainerID, err)
	}
	return out
}

func (e *stratEnv) add1(r Request) netip.Addr {
	e.t.Helper()
	out := e.add(r)
	if len(out) != 1 {
		e.t.Fatalf("ADD %s got %+v, want one address", r.ContainerID, out)
	}
	return out[0].IP
}

func (e *stratEnv) addErr(r Request) error {
	e.t.Helper()
	out, err := e.alloc().Allocate(e.ctx, r)
	if err == nil {
		e.t.Fatalf("ADD %s got %+v, want an error", r.ContainerID, out)
	}
	return err
}

func (e *stratEnv) del(cid string) []netip.Addr {
	e.t.Helper()
	freed, err := e.b.Release(e.ctx, cid, "net1", e.clock, ReusePolicy(e.n))
	if err != nil {
		e.t.Fatal(err)
	}
	return freed
}

func (e *stratEnv) state(a netip.Addr) store.IPState {
	e.t.Helper()
	st, err := e.b.State(e.ctx, a)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

func (e *stratEnv) cursor() netip.Addr {
	e.t.Helper()
	c, err := e.b.Cursor(e.ctx, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// setCursor writes a cursor hint the way a claim does (an empty claim of
// its own attachment).
func (e *stratEnv) setCursor(a netip.Addr) {
	e.t.Helper()
	c := &store.Claim{Attachment: store.Attachment{ContainerID: "cursor-" + a.String(), IfName: "x"}, Cursors: map[int]netip.Addr{0: a}}
	if ok, err := e.b.Commit(e.ctx, c); !ok || err != nil {
		e.t.Fatalf("setting the cursor: %v %v", ok, err)
	}
}

// fill claims n addresses upwards from a, one claim each, without touching
// the cursor (another writer's state).
func (e *stratEnv) fill(a netip.Addr, n int) {
	e.t.Helper()
	for range n {
		cid := "fill-" + a.String()
		c := &store.Claim{
			Attachment: store.Attachment{ContainerID: cid, IfName: "net1"},
			Items:      []store.ClaimItem{{Record: store.Record{IP: a.String(), Kind: store.KindDynamic, ContainerID: cid, IfName: "net1"}, Mode: store.ClaimFresh}},
		}
		if ok, err := e.b.Commit(e.ctx, c); !ok || err != nil {
			e.t.Fatalf("filling %s: %v %v", a, ok, err)
		}
		a = a.Next()
	}
}

func aip(s string) netip.Addr { return netip.MustParseAddr(s) }

func wantAddrs(t *testing.T, what string, got []netip.Addr, want ...string) {
	t.Helper()
	var g []string
	for _, a := range got {
		g = append(g, a.String())
	}
	if !slices.Equal(g, want) {
		t.Fatalf("%s: %v, want %v", what, g, want)
	}
}

// usedSpy records the Used reads (the windows) of the allocator.
type usedSpy struct {
	store.Backend
	mu    sync.Mutex
	reads [][2]netip.Addr
}

func (s *usedSpy) Used(ctx context.Context, from, to netip.Addr, limit int) ([]netip.Addr, bool, error) {
	s.mu.Lock()
	s.reads = append(s.reads, [2]netip.Addr{from, to})
	s.mu.Unlock()
	if limit != window || ipam4Span(from, to) > span {
		return nil, false, fmt.Errorf("window [%s, %s] limit %d: wider than %d addresses or not %d keys", from, to, limit, span, window)
	}
	return s.Backend.Used(ctx, from, to, limit)
}

func (s *usedSpy) take() [][2]netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.reads
	s.reads = nil
	return r
}

// ipam4Span counts the IPv4 addresses of [from, to].
func ipam4Span(from, to netip.Addr) int {
	f, t := from.As4(), to.As4()
	u := func(b [4]byte) int { return int(b[0])<<24 | int(b[1])<<16 | int(b[2])<<8 | int(b[3]) }
	return u(t) - u(f) + 1
}

type stratCase struct {
	name string
	ipam string
	run  func(e *stratEnv)
}

var stratCases = []stratCase{
	// Uncontended, ADDs get the lowest free addresses in order, never-used
	// ones before released ones, and the cursor follows the last one given.
	{"lowest free first, cursor follows", `"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.20"`, func(e *stratEnv) {
		for i, want := range []string{"10.1.0.10", "10.1.0.11", "10.1.0.12"} {
			if got := e.add1(sreq(fmt.Sprint("c", i))); got != aip(want) {
				e.t.Fatalf("ADD %d got %s, want %s", i, got, want)
			}
			if c := e.cursor(); c != aip(want) {
				e.t.Fatalf("cursor %s after giving %s", c, want)
			}
		}
		e.del("c0")
		e.clock = e.clock.Add(time.Hour) // cooled: still, never-used first
		if got := e.add1(sreq("c3")); got != aip("10.1.0.13") {
			e.t.Fatalf("ADD after a release got %s, want the never-used 10.1.0.13", got)
		}
	}},
	// The cursor is a hint: fresh addresses above it go first; when none is
	// left above it, the sweep from the range's start finds the ones below,
	// and the cursor moves there. A hint below the range or of the other
	// family is ignored.
	{"cursor hint", `"subnet":"10.2.0.0/24","rangeStart":"10.2.0.10","rangeEnd":"10.2.0.20"`, func(e *stratEnv) {
		e.setCursor(aip("10.2.0.17"))
		var got []netip.Addr
		for i := range 4 {
			got = append(got, e.add1(sreq(fmt.Sprint("c", i))))
		}
		wantAddrs(e.t, "ADDs from a cursor at .17", got, "10.2.0.17", "10.2.0.18", "10.2.0.19", "10.2.0.20")
		if got := e.add1(sreq("c4")); got != aip("10.2.0.10") || e.cursor() != aip("10.2.0.10") {
			e.t.Fatalf("ADD with nothing above the cursor got %s (cursor %s), want 10.2.0.10", got, e.cursor())
		}
		e.setCursor(aip("10.2.0.3"))
		if got := e.add1(sreq("c5")); got != aip("10.2.0.11") {
			e.t.Fatalf("ADD with a cursor below the range got %s, want 10.2.0.11", got)
		}
		e.setCursor(aip("fd00::1"))
		if got := e.add1(sreq("c6")); got != aip("10.2.0.12") {
			e.t.Fatalf("ADD with an IPv6 cursor got %s, want 10.2.0.12", got)
		}
	}},
	// Full windows: the scan reads bounded windows of `window` keys, steps
	// past full ones, and stores the cursor so that the next ADD starts
	// where the free addresses are; past freshWindows full windows it
	// tries the release log, then sweeps the whole range.
	{"windows over full ranges", `"subnet":"10.3.0.0/20"`, func(e *stratEnv) {
		spy := &usedSpy{Backend: e.mem}
		e.b = spy
		first := aip("10.3.0.2") // .1 is the gateway
		e.fill(first, 1500)
		want := first
		for range 1500 {
			want = want.Next()
		}
		if got := e.add1(sreq("a")); got != want {
			e.t.Fatalf("ADD over 1500 used got %s, want %s", got, want)
		}
		if reads := spy.take(); len(reads) != (1500+window)/window || reads[0][0] != first {
			e.t.Fatalf("windows read %v, want %d from %s", reads, (1500+window)/window, first)
		}
		if c := e.cursor(); c != want {
			e.t.Fatalf("cursor %s, want %s", c, want)
		}
		if got := e.add1(sreq("b")); got != want.Next() {
			e.t.Fatalf("next ADD got %s, want %s", got, want.Next())
		}
		if reads := spy.take(); len(reads) != 1 || reads[0][0] != want {
			e.t.Fatalf("next ADD read windows %v, want one from the cursor %s", reads, want)
		}

		// A stale cursor below more than freshWindows full windows: the
		// scan gives up, the (empty) release log is tried, then the sweep
		// from the start finds the free address.
		e.fill(want.Next().Next(), 2500)
		e.setCursor(first)
		for range 2502 {
			want = want.Next()
		}
		if got := e.add1(sreq("c")); got != want || e.cursor() != want {
			e.t.Fatalf("ADD over 4002 used got %s (cursor %s), want %s", got, e.cursor(), want)
		}
		if reads := spy.take(); len(reads) <= freshWindows || reads[freshWindows][0] != first {
			e.t.Fatalf("windows %v: want %d from the cursor, then a sweep from %s", reads, freshWindows, first)
		}
	}},
	// Once the never-used addresses are gone, released ones are reused,
	// least recently released first, each only after its cooldown; the
	// claim consumes the tombstone and its release-log entry.
	{"release log after the fresh range", `"subnet":"10.4.0.0/24","rangeStart":"10.4.0.10","rangeEnd":"10.4.0.13","releaseCooldown":"30s"`, func(e *stratEnv) {
		for i := range 4 {
			e.add1(sreq(fmt.Sprint("c", i)))
		}
		e.del("c2")
		e.clock = e.clock.Add(time.Second)
		e.del("c0")
		e.clock = st0.Add(time.Hour)
		got := []netip.Addr{e.add1(sreq("n0")), e.add1(sreq("n1"))}
		wantAddrs(e.t, "ADDs from the release log", got, "10.4.0.12", "10.4.0.10")
		for _, a := range got {
			if st := e.state(a); st.Tomb != nil {
				e.t.Fatalf("%s reused with its tombstone left: %+v", a, st.Tomb)
			}
		}
		if refs, _ := e.b.OldestReleased(e.ctx, 0, 10); len(refs) != 0 {
			e.t.Fatalf("release log after reuse: %+v", refs)
		}
		var ex *ExhaustedError
		if err := e.addErr(sreq("n2")); !errors.As(err, &ex) {
			e.t.Fatalf("ADD on a full pool: %v, want an ExhaustedError", err)
		}
	}},
	// Cooldown: while every free address is cooling, ADD (and STATUS) fail
	// with a CoolingError that says when the oldest one is ready.
	{"cooldown and CoolingError", `"subnet":"10.5.0.0/24","rangeStart":"10.5.0.10","rangeEnd":"10.5.0.11","releaseCooldown":"30s"`, func(e *stratEnv) {
		e.add1(sreq("a"))
		e.add1(sreq("b"))
		e.del("b")
		e.clock = st0.Add(5 * time.Second)
		e.del("a")
		cooling := func(at, ready time.Time) {
			e.t.Helper()
			e.clock = at
			var ce *CoolingError
			if err := e.addErr(sreq("x")); !errors.As(err, &ce) || !ce.Ready.Equal(ready) || ce.Network != "strat" || ce.Set != 0 {
				e.t.Fatalf("ADD at %v: %v; want a CoolingError ready at %v", at, err, ready)
			}
			if err := e.alloc().CanAllocate(e.ctx); !errors.As(err, &ce) {
				e.t.Fatalf("CanAllocate at %v: %v, want a CoolingError", at, err)
			}
			if !strings.Contains(ce.Error(), ready.Format(time.RFC3339)) {
				e.t.Fatalf("message %q does not say %v", ce.Error(), ready)
			}
		}
		cooling(st0.Add(10*time.Second), st0.Add(30*time.Second))
		e.clock = st0.Add(30 * time.Second)
		if got := e.add1(sreq("c")); got != aip("10.5.0.11") {
			e.t.Fatalf("ADD at the end of the first cooldown got %s", got)
		}
		cooling(st0.Add(30*time.Second), st0.Add(35*time.Second))
		e.clock = st0.Add(35 * time.Second)
		if got := e.add1(sreq("d")); got != aip("10.5.0.10") {
			e.t.Fatalf("ADD at the end of the second cooldown got %s", got)
		}
	}},
	// Exhaustion: ExhaustedError names the network, the set and every range
	// of it; released fixed or sticky addresses inside the pool (never
	// reused dynamically) make it exhausted, not cooling.
	{"ExhaustedError", `"ranges":[[{"subnet":"10.6.0.0/24","rangeStart":"10.6.0.10","rangeEnd":"10.6.0.10"},{"subnet":"10.6.1.0/24","rangeStart":"10.6.1.10","rangeEnd":"10.6.1.10"}]]`, func(e *stratEnv) {
		s := sreq("s")
		s.StatefulSet, s.StatefulSetUID, s.Sticky = "db", "sts-u", true
		if got := e.add1(s); got != aip("10.6.0.10") {
			e.t.Fatalf("first ADD got %s", got)
		}
		if got := e.add1(sreq("b")); got != aip("10.6.1.10") {
			e.t.Fatalf("second ADD got %s, want the second range's address", got)
		}
		e.del("s")
		e.clock = st0.Add(time.Hour)
		var ex *ExhaustedError
		err := e.addErr(sreq("c"))
		if !errors.As(err, &ex) || ex.Network != "strat" || ex.Set != 0 || ex.Ranges != "10.6.0.10-10.6.0.10, 10.6.1.10-10.6.1.10" {
			e.t.Fatalf("ADD with a blocked sticky address left: %v, want an ExhaustedError naming both ranges", err)
		}
		if err := e.alloc().CanAllocate(e.ctx); !errors.As(err, &ex) {
			e.t.Fatalf("CanAllocate: %v, want an ExhaustedError", err)
		}
	}},
	// The fixed block is never given dynamically; fixed addresses come from
	// it and leave the dynamic cursor alone.
	{"fixed block excluded from dynamic picks", `"subnet":"10.7.0.0/24","rangeStart":"10.7.0.10","rangeEnd":"10.7.0.19","fixedStart":"10.7.0.10","fixedEnd":"10.7.0.14"`, func(e *stratEnv) {
		var got []netip.Addr
		for i := range 5 {
			got = append(got, e.add1(sreq(fmt.Sprint("c", i))))
		}
		wantAddrs(e.t, "dynamic ADDs", got, "10.7.0.15", "10.7.0.16", "10.7.0.17", "10.7.0.18", "10.7.0.19")
		var ex *ExhaustedError
		if err := e.addErr(sreq("c5")); !errors.As(err, &ex) {
			e.t.Fatalf("ADD with only the fixed block left: %v, want an ExhaustedError", err)
		}
		f := sreq("f")
		f.Fixed = []netip.Addr{aip("10.7.0.12")}
		if out := e.add(f); len(out) != 1 || out[0].IP != aip("10.7.0.12") || out[0].Kind != store.KindFixed {
			e.t.Fatalf("fixed ADD got %+v", out)
		}
		if c := e.cursor(); c != aip("10.7.0.19") {
			e.t.Fatalf("cursor %s after a fixed ADD, want 10.7.0.19", c)
		}
		// Released, a fixed address outside the dynamic ranges leaves no trace.
		e.del("f")
		if st := e.state(aip("10.7.0.12")); st.Record != nil || st.Tomb != nil {
			e.t.Fatalf("released fixed address: %+v", st)
		}
	}},
	// Results are in range-set order whatever is fixed: one address per set.
	{"one address per range set, in set order", `"ranges":[[{"subnet":"10.8.0.0/24"}],[{"subnet":"fd00:8::/120"}]]`, func(e *stratEnv) {
		r := sreq("c")
		r.Fixed = []netip.Addr{aip("fd00:8::50")}
		out := e.add(r)
		if len(out) != 2 || out[0].Set != 0 || out[0].IP != aip("10.8.0.2") || out[0].Kind != store.KindDynamic ||
			out[1].Set != 1 || out[1].IP != aip("fd00:8::50") || out[1].Kind != store.KindFixed {
			e.t.Fatalf("ADD got %+v, want [10.8.0.2 dynamic, fd00:8::50 fixed]", out)
		}
	}},
	// A StatefulSet ordinal's dynamic addresses (one per set) are
	// remembered on its first ADD and given back to its later pods; a
	// fixed address wins over stickiness, and nothing is remembered then.
	{"sticky remembered and given back", `"ranges":[[{"subnet":"10.9.0.0/24"}],[{"subnet":"fd00:9::/120"}]]`, func(e *stratEnv) {
		pod := func(cid, uid string) Request {
			r := sreq(cid)
			r.PodName, r.PodUID = "db-1", uid
			r.StatefulSet, r.StatefulSetUID, r.Ordinal, r.Sticky = "db", "sts-u", 1, true
			return r
		}
		first := e.add(pod("a", "u1"))
		if len(first) != 2 || first[0].Kind != store.KindSticky || first[1].Kind != store.KindSticky {
			e.t.Fatalf("first ADD of the ordinal got %+v", first)
		}
		st, err := e.b.Sticky(e.ctx, "ns", "sts-u", 1, "net1")
		if err != nil || st == nil || !slices.Equal(st.IPs, []string{first[0].IP.String(), first[1].IP.String()}) {
			e.t.Fatalf("sticky record %+v (%v)", st, err)
		}
		e.del("a")
		for i := range 3 {
			e.add(sreq(fmt.Sprint("other", i)))
		}
		a := e.alloc()
		again, err := a.Allocate(e.ctx, pod("b", "u2"))
		if err != nil || !slices.Equal(again, first) || !a.Committed {
			e.t.Fatalf("re-created pod got %+v (%v), want %+v", again, err, first)
		}
		// The same pod's next sandbox takes its sticky addresses over.
		a = e.alloc()
		if again, err := a.Allocate(e.ctx, pod("b2", "u2")); err != nil || !slices.Equal(again, first) || a.Retired != 1 {
			e.t.Fatalf("next sandbox got %+v (%v), Retired %d; want %+v, 1", again, err, a.Retired, first)
		}
		if snap, _ := e.b.Snapshot(e.ctx); len(snap.Stickies) != 1 || len(snap.Attachments) != 4 {
			e.t.Fatalf("%d sticky records, %d attachments; want 1, 4", len(snap.Stickies), len(snap.Attachments))
		}
		f := pod("c", "u3")
		f.Ordinal, f.Fixed = 2, []netip.Addr{aip("10.9.0.100")}
		if out := e.add(f); len(out) != 2 || out[0].Kind != store.KindFixed || out[1].Kind != store.KindDynamic {
			e.t.Fatalf("StatefulSet pod with a fixed address got %+v", out)
		}
		if st, _ := e.b.Sticky(e.ctx, "ns", "sts-u", 2, "net1"); st != nil {
			e.t.Fatalf("a fixed ADD remembered %+v", st)
		}
	}},
	// A remembered address the network no longer contains is an
	// OutOfRangeError telling how to release it; a corrupt one an error.
	{"sticky outside the network", `"subnet":"10.10.0.0/24"`, func(e *stratEnv) {
		for _, c := range []struct{ ip, want string }{
			{"192.168.9.9", `requested IP 192.168.9.9 (remembered for StatefulSet ns/db ordinal 0) is no longer inside network "strat"`},
			{"bogus", `corrupt sticky record of db ordinal 0: bad address "bogus"`},
		} {
			uid := "sts-" + c.ip
			if ok, err := e.mem.ImportSticky(e.ctx, store.Sticky{Namespace: "ns", StatefulSet: "db", StatefulSetUID: uid, IfName: "net1", IPs: []string{c.ip}}); !ok || err != nil {
				e.t.Fatal(ok, err)
			}
			r := sreq("c-" + c.ip)
			r.StatefulSet, r.StatefulSetUID, r.Sticky = "db", uid, true
			err := e.addErr(r)
			if !strings.Contains(err.Error(), c.want) {
				e.t.Fatalf("sticky %s: %v, want %q", c.ip, err, c.want)
			}
			var oe *OutOfRangeError
			if errors.As(err, &oe) != (c.ip != "bogus") {
				e.t.Fatalf("sticky %s: %T", c.ip, err)
			}
		}
		if e.mem.Commits() != 0 {
			e.t.Fatal("a refused ADD committed")
		}
	}},
	// The pod's next sandbox (same UID) replaces the old attachment in its
	// claim: Retired counts it, the dynamic address of a set not fixed
	// now is kept, the one replaced by a fixed address is released by
	// policy (cooling). A repeated ADD then writes nothing.
	{"takeover by the next sandbox", `"ranges":[[{"subnet":"10.11.0.0/24"}],[{"subnet":"fd00:11::/120"}]]`, func(e *stratEnv) {
		r := sreq("old")
		r.PodUID = "pod-u"
		old := e.add(r)
		r.ContainerID, r.Fixed = "new", []netip.Addr{aip("10.11.0.100")}
		a := e.alloc()
		out, err := a.Allocate(e.ctx, r)
		if err != nil || len(out) != 2 || out[0].IP != aip("10.11.0.100") || out[1].IP != old[1].IP {
			e.t.Fatalf("next sandbox got %+v (%v), want [10.11.0.100 %s]", out, err, old[1].IP)
		}
		if !a.Committed || a.Retired != 1 {
			e.t.Fatalf("Committed %v Retired %d, want true 1", a.Committed, a.Retired)
		}
		if st := e.state(old[0].IP); st.Record != nil || st.Tomb == nil || st.Tomb.Log == "" {
			e.t.Fatalf("replaced dynamic address %s: %+v, want released to the release log", old[0].IP, st)
		}
		if att, _ := e.b.Attachment(e.ctx, "old", "net1"); att != nil {
			e.t.Fatalf("old attachment left: %+v", att)
		}
		a = e.alloc()
		if again, err := a.Allocate(e.ctx, r); err != nil || !slices.Equal(again, out) || a.Committed || a.Retired != 0 {
			e.t.Fatalf("repeated ADD got %+v (%v), Committed %v Retired %d", again, err, a.Committed, a.Retired)
		}
	}},
	// A previous sandbox's dynamic address that the network no longer gives
	// dynamically (a fixed block now covers it) is not kept: the next
	// sandbox gets a new one and the old goes.
	{"takeover keeps only addresses still dynamic", `"subnet":"10.12.0.0/24"`, func(e *stratEnv) {
		r := sreq("old")
		r.PodUID = "pod-u"
		d := e.add1(r)
		e.n = stratNet(e.t, `"subnet":"10.12.0.0/24","fixedStart":"10.12.0.2","fixedEnd":"10.12.0.9"`)
		r.ContainerID = "new"
		got := e.add1(r)
		if got == d || got != aip("10.12.0.10") {
			e.t.Fatalf("next sandbox got %s, want 10.12.0.10 (its old %s is in the fixed block now)", got, d)
		}
		if st := e.state(d); st.Record != nil || st.Tomb != nil {
			e.t.Fatalf("old address %s: %+v, want freed without a trace (outside the dynamic ranges)", d, st)
		}
	}},
	// A claim whose outcome is unknown is read back: applied means success
	// without a second claim; not applied means claiming again.
	{"ambiguous commit read back", `"subnet":"10.13.0.0/24"`, func(e *stratEnv) {
		for i, applied := range []bool{true, false} {
			cid := fmt.Sprint("c", i)
			before := e.mem.Commits()
			e.mem.FailNextCommit(applied)
			a := e.alloc()
			out, err := a.Allocate(e.ctx, sreq(cid))
			if err != nil || len(out) != 1 {
				e.t.Fatalf("applied=%v: ADD got %+v (%v)", applied, out, err)
			}
			wantCommits := 1
			if !applied {
				wantCommits = 2
			}
			if n := e.mem.Commits() - before; a.Unknown != 1 || !a.Committed || n != wantCommits {
				e.t.Fatalf("applied=%v: Unknown %d Committed %v commits %d; want 1 true %d", applied, a.Unknown, a.Committed, n, wantCommits)
			}
			att, _ := e.b.Attachment(e.ctx, cid, "net1")
			if att == nil || !slices.Equal(att.IPs, []string{out[0].IP.String()}) {
				e.t.Fatalf("applied=%v: attachment %+v, want %s", applied, att, out[0].IP)
			}
		}
		if snap, _ := e.b.Snapshot(e.ctx); len(snap.Records) != 2 || len(snap.Attachments) != 2 {
			e.t.Fatalf("%d records, %d attachments; want 2, 2", len(snap.Records), len(snap.Attachments))
		}
	}},
	// A Partial attachment (a claim cut short) is released, then claimed
	// afresh; its address cools down like any released one.
	{"partial attachment released and reclaimed", `"subnet":"10.14.0.0/24"`, func(e *stratEnv) {
		first := e.add1(sreq("c"))
		e.mem.MarkPartial("c", "net1")
		a := e.alloc()
		out, err := a.Allocate(e.ctx, sreq("c"))
		if err != nil || len(out) != 1 || out[0].IP == first || !a.Committed {
			e.t.Fatalf("ADD over a partial attachment got %+v (%v), Committed %v; want a new claim", out, err, a.Committed)
		}
		if st := e.state(first); st.Record != nil || st.Tomb == nil || st.Tomb.Log == "" {
			e.t.Fatalf("partial claim's address %s: %+v, want released", first, st)
		}
		if att, _ := e.b.Attachment(e.ctx, "c", "net1"); att == nil || att.Partial || !slices.Equal(att.IPs, []string{out[0].IP.String()}) {
			e.t.Fatalf("attachment %+v", att)
		}
	}},
	// Claims lost to concurrent writers are retried, counted in Conflicts
	// and written into the record (LostRaces).
	{"lost races counted", `"subnet":"10.15.0.0/24","rangeStart":"10.15.0.10","rangeEnd":"10.15.0.40"`, func(e *stratEnv) {
		var stolen []string
		var steal func(c *store.Claim)
		steal = func(c *store.Claim) {
			ipStr := c.Items[0].Record.IP
			stolen = append(stolen, ipStr)
			thief := fmt.Sprint("thief", len(stolen))
			tc := &store.Claim{Attachment: store.Attachment{ContainerID: thief, IfName: "net1"},
				Items: []store.ClaimItem{{Record: store.Record{IP: ipStr, Kind: store.KindDynamic, ContainerID: thief, IfName: "net1"}, Mode: store.ClaimFresh}}}
			if ok, err := e.mem.Commit(e.ctx, tc); !ok || err != nil {
				e.t.Errorf("thief: %v %v", ok, err)
			}
			if len(stolen) < 2 {
				e.mem.BeforeNextCommit(steal)
			}
		}
		e.mem.BeforeNextCommit(steal)
		a := e.alloc()
		out, err := a.Allocate(e.ctx, sreq("c"))
		if err != nil || len(out) != 1 || slices.Contains(stolen, out[0].IP.String()) {
			e.t.Fatalf("ADD got %+v (%v); stolen %v", out, err, stolen)
		}
		if stolen[0] != "10.15.0.10" || a.Conflicts != 2 {
			e.t.Fatalf("stolen %v, Conflicts %d; want the lowest address stolen first, 2 conflicts", stolen, a.Conflicts)
		}
		if st := e.state(out[0].IP); st.Record == nil || st.Record.LostRaces != 2 {
			e.t.Fatalf("record %+v, want LostRaces 2", st.Record)
		}
	}},
	// STATUS claims nothing.
	{"CanAllocate claims nothing", `"subnet":"10.16.0.0/24"`, func(e *stratEnv) {
		if err := e.alloc().CanAllocate(e.ctx); err != nil || e.mem.Commits() != 0 {
			e.t.Fatalf("CanAllocate = %v after %d commits", err, e.mem.Commits())
		}
	}},
}

func TestStrategy(t *testing.T) {
	for _, c := range stratCases {
		t.Run(c.name, func(t *testing.T) { c.run(newStratEnv(t, c.ipam)) })
	}
}

// Fixed addresses the network cannot give are refused before anything is
// read or written.
func TestStrategyFixedValidation(t *testing.T) {
	for _, c := range []struct {
		name  string
		ipam  string
		fixed []string
		bad   string
		why   string
	}{
		{"network address", `"subnet":"10.1.0.0/24"`, []string{"10.1.0.0"}, "10.1.0.0", "is the network address of 10.1.0.0/24"},
		{"broadcast", `"subnet":"10.1.0.0/24"`, []string{"10.1.0.255"}, "10.1.0.255", "is the broadcast address of 10.1.0.0/24"},
		{"gateway", `"subnet":"10.1.0.0/24","gateway":"10.1.0.254"`, []string{"10.1.0.254"}, "10.1.0.254", "is the gateway of 10.1.0.0/24"},
		{"default gateway", `"subnet":"10.1.0.0/24"`, []string{"10.1.0.1"}, "10.1.0.1", "is the gateway of 10.1.0.0/24"},
		{"outside every subnet", `"subnet":"10.1.0.0/24"`, []string{"10.2.0.5"}, "10.2.0.5", `is outside every subnet of network "strat"`},
		{"outside the fixed block", `"subnet":"10.1.0.0/24","fixedStart":"10.1.0.200","fixedEnd":"10.1.0.210"`, []string{"10.1.0.100"}, "10.1.0.100", `is outside the fixed block 10.1.0.200-10.1.0.210 of network "strat"`},
		{"listed twice", `"subnet":"10.1.0.0/24"`, []string{"10.1.0.50", "10.1.0.50"}, "10.1.0.50", "is listed twice"},
		{"other family than the fixed block", `"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/120"}]],"fixedStart":"10.1.0.200","fixedEnd":"10.1.0.210"`, []string{"fd00::50"}, "fd00::50", `is outside the fixed block 10.1.0.200-10.1.0.210 of network "strat"`},
		{"second one bad", `"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/120"}]]`, []string{"10.1.0.50", "fd00::"}, "fd00::", "is the network address of fd00::/120"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newStratEnv(t, c.ipam)
			r := sreq("c")
			for _, s := range c.fixed {
				r.Fixed = append(r.Fixed, aip(s))
			}
			err := e.addErr(r)
			var oe *OutOfRangeError
			if !errors.As(err, &oe) || oe.IP != aip(c.bad) || oe.Reason != c.why {
				t.Fatalf("%v; want OutOfRangeError %s %s", err, c.bad, c.why)
			}
			if e.mem.Commits() != 0 {
				t.Fatal("a refused ADD committed")
			}
		})
	}
	// The same address is fine as a network's fixed address elsewhere.
	e := newStratEnv(t, `"subnet":"10.1.0.0/24"`)
	if set, err := e.alloc().ValidateFixed(aip("10.1.0.254")); set != 0 || err != nil {
		t.Fatalf("ValidateFixed(10.1.0.254) = %d, %v", set, err)
	}
}
