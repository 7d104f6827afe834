package allocator

import (
	"net/netip"
	"sync"
	"time"
)

// InFlight holds the addresses that calls running in this process are
// claiming, and those they claimed a moment ago, so that concurrent calls
// of one process (the node agent) pick different addresses first instead
// of racing each other for the lowest free one and losing a transaction
// and a round trip each time.
//
// A claimed address stays here for Settle after its claim commits: a call
// that read the pool before that commit still sees the address free, and
// would otherwise pick it and lose. Within Settle, an address this process
// freed again is only passed over, never refused: InFlight steers the
// first pick and nothing else. The claim transaction stays the one guard,
// so other processes and nodes are handled as before (a lost race, then a
// spread pick). The zero value is ready to use; a nil *InFlight reserves
// nothing (the plugin process, alone in its process).
type InFlight struct {
	// Settle is how long a committed claim keeps its address here
	// (default DefaultSettle).
	Settle time.Duration

	mu sync.Mutex
	m  map[inFlightKey]time.Time // zero: being claimed; else settled until then
}

// DefaultSettle covers how stale a concurrent call's read of the pool can
// be when it picks: its read and its pick are one plan, milliseconds
// apart, or a few hundred on a machine with 50 calls in flight on 2 cores.
const DefaultSettle = 5 * time.Second

type inFlightKey struct {
	pool string
	ip   netip.Addr
}

// reserve marks ip of pool as being claimed; false when another call of
// this process already claims it (or just has).
func (f *InFlight) reserve(pool string, ip netip.Addr) bool {
	_, ok := f.reserveFirst(pool, []netip.Addr{ip})
	return ok
}

// reserveFirst marks the first of cands that no other call of this
// process claims (or just has) as being claimed, and returns it; false
// when every one is taken. A nil InFlight takes the first.
func (f *InFlight) reserveFirst(pool string, cands []netip.Addr) (netip.Addr, bool) {
	if f == nil {
		return cands[0], true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	f.sweep(now)
	for _, ip := range cands {
		k := inFlightKey{pool, ip}
		if until, held := f.m[k]; held && live(until, now) {
			continue
		}
		if f.m == nil {
			f.m = map[inFlightKey]time.Time{}
		}
		f.m[k] = time.Time{}
		return ip, true
	}
	return netip.Addr{}, false
}

// live: an entry being claimed (zero) or settled until after now.
func live(until, now time.Time) bool { return until.IsZero() || now.Before(until) }

// release drops a claim that did not commit.
func (f *InFlight) release(pool string, ip netip.Addr) {
	if f == nil {
		return
	}
	f.mu.Lock()
	delete(f.m, inFlightKey{pool, ip})
	f.mu.Unlock()
}

// settle keeps a committed claim's address for Settle.
func (f *InFlight) settle(pool string, ip netip.Addr) {
	if f == nil {
		return
	}
	d := f.Settle
	if d <= 0 {
		d = DefaultSettle
	}
	f.mu.Lock()
	f.m[inFlightKey{pool, ip}] = time.Now().Add(d)
	f.mu.Unlock()
}

// sweep drops the settled entries that have expired (f.mu held).
func (f *InFlight) sweep(now time.Time) {
	for k, until := range f.m {
		if !live(until, now) {
			delete(f.m, k)
		}
	}
}

// taken reports whether another call of this process claims, or has just
// claimed, ip of pool (for tests).
func (f *InFlight) taken(pool string, ip netip.Addr) bool {
	if f == nil {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	until, ok := f.m[inFlightKey{pool, ip}]
	return ok && live(until, time.Now())
}

// Counts are the addresses being claimed and those settled (for tests).
func (f *InFlight) Counts() (claiming, settled int) {
	if f == nil {
		return 0, 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	for _, until := range f.m {
		switch {
		case until.IsZero():
			claiming++
		case now.Before(until):
			settled++
		}
	}
	return claiming, settled
}
