package store

import (
	"math/big"
	"net/netip"
	"time"

	"kubeipam/internal/config"
	"kubeipam/internal/ipam"
)

// PoolStats count a network's addresses as a snapshot shows them. The
// controller's gauges and `kube-ipamctl networks` both come from here.
type PoolStats struct {
	// Pool is the number of addresses in the dynamic ranges (an IPv6 pool
	// may exceed any integer type).
	Pool *big.Int
	// Used: claimed addresses inside the dynamic ranges.
	Used int64
	// Fixed: claimed fixed addresses (anywhere).
	Fixed int64
	// Sticky: remembered StatefulSet ordinals.
	Sticky int64
	// Cooling: released dynamic addresses still in their reuse cooldown.
	Cooling int64
	// Blocked: released fixed or sticky addresses inside the dynamic ranges,
	// never reused dynamically.
	Blocked int64
}

// Free is Pool minus what is used, cooling or blocked, saturated to int64.
func (p PoolStats) Free() int64 {
	f := new(big.Int).Sub(p.Pool, big.NewInt(p.Used+p.Cooling+p.Blocked))
	switch {
	case f.Sign() < 0:
		return 0
	case !f.IsInt64():
		return 1<<63 - 1
	}
	return f.Int64()
}

// PoolInt64 is Pool saturated to int64.
func (p PoolStats) PoolInt64() int64 {
	if !p.Pool.IsInt64() {
		return 1<<63 - 1
	}
	return p.Pool.Int64()
}

// Stats counts the snapshot's addresses for network cfg at time now.
func (s *Snapshot) Stats(cfg *config.Network, now time.Time) PoolStats {
	st := PoolStats{Pool: new(big.Int), Sticky: int64(len(s.Stickies))}
	var dyn [][]ipam.Interval
	for i := range cfg.RangeSets {
		d := ipam.DynamicIntervals(cfg, i)
		dyn = append(dyn, d)
		st.Pool.Add(st.Pool, ipam.Size(d))
	}
	inPool := func(a netip.Addr) bool {
		set, _, ok := cfg.SetFor(a)
		return ok && ipam.InAny(dyn[set], a)
	}
	held := make(map[netip.Addr]bool, len(s.Records))
	for _, e := range s.Records {
		held[e.IP] = true
		if e.Record.Kind == KindFixed {
			st.Fixed++
		}
		if inPool(e.IP) {
			st.Used++
		}
	}
	for a, t := range s.Tombs {
		if !held[a] && t.Log == "" && inPool(a) {
			st.Blocked++
		}
	}
	cutoff := now.Add(-cfg.ReleaseCooldown)
	for _, r := range s.Released {
		t := s.Tombs[r.IP]
		if held[r.IP] || t == nil || t.Log != r.Key {
			continue // stale log entry: the allocator drops it
		}
		if r.At.After(cutoff) && inPool(r.IP) {
			st.Cooling++
		}
	}
	return st
}
