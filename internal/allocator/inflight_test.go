package allocator

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

// TestInFlightSpreadsConcurrentFirstPicks: calls of one process that read
// the same free pool at the same time pick different addresses when they
// share an InFlight, so none loses a claim race; without it they all pick
// the lowest free address and all but one lose at least once (the control, which shows
// the test can tell the two apart). Every call holds its first claim until
// all have picked, so the picks are made from the same snapshot.
func TestInFlightSpreadsConcurrentFirstPicks(t *testing.T) {
	const calls = 8
	for _, tc := range []struct {
		name       string
		inFlight   *InFlight
		wantLosses func(int) bool
	}{
		{"shared InFlight", &InFlight{}, func(n int) bool { return n == 0 }},
		{"no InFlight", nil, func(n int) bool { return n >= calls-1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newStratEnv(t, `"subnet":"10.9.0.0/24"`)
			var picked sync.WaitGroup
			picked.Add(calls)
			var (
				wg     sync.WaitGroup
				mu     sync.Mutex
				losses int
				got    = map[netip.Addr]string{}
				errs   []error
			)
			for i := range calls {
				wg.Add(1)
				go func() {
					defer wg.Done()
					a := e.alloc()
					a.InFlight, a.Pool = tc.inFlight, "etcd\x00strat"
					var once sync.Once
					a.beforeCommit = func() {
						once.Do(func() { picked.Done(); picked.Wait() })
					}
					cid := "c" + string(rune('a'+i))
					out, err := a.Allocate(e.ctx, sreq(cid))
					mu.Lock()
					defer mu.Unlock()
					losses += a.Conflicts
					if err != nil {
						errs = append(errs, err)
						return
					}
					if prev, dup := got[out[0].IP]; dup {
						t.Errorf("%s and %s both got %s", prev, cid, out[0].IP)
					}
					got[out[0].IP] = cid
				}()
			}
			wg.Wait()
			if len(errs) > 0 {
				t.Fatalf("ADDs failed: %v", errs)
			}
			if len(got) != calls {
				t.Fatalf("%d distinct addresses for %d calls: %v", len(got), calls, got)
			}
			if !tc.wantLosses(losses) {
				t.Errorf("%d claim races lost", losses)
			}
			claiming, settled := tc.inFlight.Counts()
			if claiming != 0 {
				t.Errorf("%d addresses still being claimed in InFlight after every call ended", claiming)
			}
			if tc.inFlight != nil && settled != calls {
				t.Errorf("%d addresses settled in InFlight, want the %d claimed", settled, calls)
			}
		})
	}
}

// TestInFlightSettledPassesOverStaleReads: a call whose read of the pool
// predates another call's commit (here: a second store that never saw it)
// passes over the address that call just claimed while it is settled, and
// picks it again once Settle has passed. Without InFlight it picks the
// claimed address (and, on one store, would lose the race).
func TestInFlightSettledPassesOverStaleReads(t *testing.T) {
	for _, tc := range []struct {
		name   string
		f      *InFlight
		second string
	}{
		{"settled", &InFlight{}, "10.9.0.3"},
		{"expired", &InFlight{Settle: time.Nanosecond}, "10.9.0.2"},
		{"no InFlight", nil, "10.9.0.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, cid := range []string{"a", "b"} {
				e := newStratEnv(t, `"subnet":"10.9.0.0/24"`) // a store of its own: b's read misses a's claim
				a := e.alloc()
				a.InFlight, a.Pool = tc.f, "etcd\x00strat"
				out, err := a.Allocate(e.ctx, sreq(cid))
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, out[0].IP.String())
			}
			if got[0] != "10.9.0.2" || got[1] != tc.second { // .1 is the gateway
				t.Errorf("picks %v, want [10.9.0.2 %s]", got, tc.second)
			}
		})
	}
}

func TestInFlightReserve(t *testing.T) {
	var f InFlight
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	if !f.reserve("p", a) || f.reserve("p", a) {
		t.Fatal("the second reserve of one address in one pool must fail")
	}
	if !f.reserve("q", a) || !f.reserve("p", b) {
		t.Fatal("another pool or another address must be free")
	}
	if !f.taken("p", a) || f.taken("r", a) {
		t.Fatal("taken disagrees with reserve")
	}
	f.release("p", a)
	f.settle("p", b)
	if f.taken("p", a) || !f.taken("p", b) || f.reserve("p", b) {
		t.Fatal("a released address is free; a settled one is taken")
	}
	if c, s := f.Counts(); c != 1 || s != 1 {
		t.Fatalf("counts %d claiming, %d settled; want 1 and 1", c, s)
	}
	var none *InFlight
	if !none.reserve("p", a) || none.taken("p", a) {
		t.Fatal("a nil InFlight reserves nothing and refuses nothing")
	}
	if c, s := none.Counts(); c != 0 || s != 0 {
		t.Fatal("a nil InFlight holds nothing")
	}
}
