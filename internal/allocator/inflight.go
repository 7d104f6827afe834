package allocator

import (
	"net/netip"
	"sync"
)

// InFlight holds the addresses that calls running in this process are
// claiming right now, so that concurrent calls of one process (the node
// agent) pick different addresses first instead of racing each other for
// the lowest free one and losing a transaction and a round trip each time.
// It only steers the first pick: the claim transaction stays the one
// guard, so other processes and nodes are handled as before (a lost race,
// then a spread pick). The zero value is ready to use; a nil *InFlight
// reserves nothing (the plugin process, alone in its process).
type InFlight struct {
	mu sync.Mutex
	m  map[inFlightKey]struct{}
}

type inFlightKey struct {
	pool string
	ip   netip.Addr
}

// reserve marks ip of pool as being claimed; false when another call of
// this process already claims it.
func (f *InFlight) reserve(pool string, ip netip.Addr) bool {
	if f == nil {
		return true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	k := inFlightKey{pool, ip}
	if _, taken := f.m[k]; taken {
		return false
	}
	if f.m == nil {
		f.m = map[inFlightKey]struct{}{}
	}
	f.m[k] = struct{}{}
	return true
}

func (f *InFlight) release(pool string, ip netip.Addr) {
	if f == nil {
		return
	}
	f.mu.Lock()
	delete(f.m, inFlightKey{pool, ip})
	f.mu.Unlock()
}

// taken reports whether another call of this process claims ip of pool.
func (f *InFlight) taken(pool string, ip netip.Addr) bool {
	if f == nil {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.m[inFlightKey{pool, ip}]
	return ok
}

// Len is the number of addresses reserved (for tests).
func (f *InFlight) Len() int {
	if f == nil {
		return 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.m)
}
