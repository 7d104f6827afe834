// Package ipam holds the pure address arithmetic of kube-ipam: which
// addresses of a range set the dynamic allocator may hand out, which of them
// are free in a window of claimed keys, and which released addresses have
// cooled down. Nothing here does I/O, so every rule is unit-tested directly.
package ipam

import (
	"math/big"
	"math/rand/v2"
	"net/netip"
	"time"

	"kubeipam/internal/config"
)

// Interval is an inclusive block of addresses [Lo, Hi].
type Interval struct{ Lo, Hi netip.Addr }

// Contains reports whether a lies in the interval.
func (iv Interval) Contains(a netip.Addr) bool {
	return a.BitLen() == iv.Lo.BitLen() && a.Compare(iv.Lo) >= 0 && a.Compare(iv.Hi) <= 0
}

// DynamicIntervals lists, in ascending order, the addresses of range set i
// that may be handed out dynamically: every [rangeStart, rangeEnd] minus the
// gateways, the fixed block and the ipam.exclude blocks. Cutting the
// exclusions out here, once, lets every walk over the pool (Free, the
// allocator's windows, the pool's size) skip an excluded block as a whole
// instead of testing its addresses one by one.
func DynamicIntervals(n *config.Network, i int) []Interval {
	var out []Interval
	for _, r := range n.RangeSets[i] {
		out = append(out, Interval{r.Start, r.End})
	}
	sortIntervals(out)
	for _, r := range n.RangeSets[i] {
		if r.Gateway.IsValid() {
			out = subtract(out, Interval{r.Gateway, r.Gateway})
		}
	}
	if n.HasFixedBlock() {
		out = subtract(out, Interval{n.FixedStart, n.FixedEnd})
	}
	for _, x := range n.Exclude {
		out = subtract(out, Interval{x.Lo, x.Hi})
	}
	return out
}

func sortIntervals(ivs []Interval) {
	for i := 1; i < len(ivs); i++ {
		for j := i; j > 0 && ivs[j].Lo.Compare(ivs[j-1].Lo) < 0; j-- {
			ivs[j], ivs[j-1] = ivs[j-1], ivs[j]
		}
	}
}

func subtract(ivs []Interval, cut Interval) []Interval {
	var out []Interval
	for _, iv := range ivs {
		if cut.Hi.Compare(iv.Lo) < 0 || cut.Lo.Compare(iv.Hi) > 0 || cut.Lo.BitLen() != iv.Lo.BitLen() {
			out = append(out, iv)
			continue
		}
		if cut.Lo.Compare(iv.Lo) > 0 {
			out = append(out, Interval{iv.Lo, cut.Lo.Prev()})
		}
		if cut.Hi.Compare(iv.Hi) < 0 {
			out = append(out, Interval{cut.Hi.Next(), iv.Hi})
		}
	}
	return out
}

// InAny reports whether a lies in one of ivs.
func InAny(ivs []Interval, a netip.Addr) bool {
	for _, iv := range ivs {
		if iv.Contains(a) {
			return true
		}
	}
	return false
}

// NextIn returns the lowest address of ivs (ascending, disjoint) at or
// above a, and false when there is none. A walk that lands in a gap (an
// excluded block, the fixed block) jumps over it in one step.
func NextIn(ivs []Interval, a netip.Addr) (netip.Addr, bool) {
	for _, iv := range ivs {
		if a.BitLen() != iv.Lo.BitLen() || a.Compare(iv.Hi) > 0 {
			continue
		}
		if a.Compare(iv.Lo) < 0 {
			return iv.Lo, true
		}
		return a, true
	}
	return netip.Addr{}, false
}

// Size counts the addresses in ivs.
func Size(ivs []Interval) *big.Int {
	total := new(big.Int)
	for _, iv := range ivs {
		lo := new(big.Int).SetBytes(iv.Lo.AsSlice())
		hi := new(big.Int).SetBytes(iv.Hi.AsSlice())
		total.Add(total, hi.Sub(hi, lo).Add(hi, big.NewInt(1)))
	}
	return total
}

// Free walks ivs upwards from `from` and returns at most max addresses that
// are not in used (ascending, as read from the store). It never returns an
// address above limit when limit is valid: beyond the last key of a full
// window the store has not been read.
func Free(ivs []Interval, from netip.Addr, used []netip.Addr, limit netip.Addr, max int) []netip.Addr {
	var out []netip.Addr
	u := 0
	for _, iv := range ivs {
		a := iv.Lo
		if from.IsValid() && from.Compare(a) > 0 {
			if from.Compare(iv.Hi) > 0 {
				continue
			}
			a = from
		}
		for len(out) < max {
			if limit.IsValid() && a.Compare(limit) > 0 {
				return out
			}
			for u < len(used) && used[u].Compare(a) < 0 {
				u++
			}
			if u >= len(used) || used[u] != a {
				out = append(out, a)
			}
			if a == iv.Hi {
				break
			}
			a = a.Next()
		}
		if len(out) >= max {
			break
		}
	}
	return out
}

// Released is an address in the release log, oldest first.
type Released struct {
	IP netip.Addr
	At time.Time
}

// Cooled returns the released addresses whose cooldown is over, oldest first,
// and, when none is, the time the oldest one will be ready (zero if there is
// none at all).
func Cooled(entries []Released, now time.Time, cooldown time.Duration) ([]netip.Addr, time.Time) {
	var ready []netip.Addr
	for _, e := range entries {
		if now.Sub(e.At) >= cooldown {
			ready = append(ready, e.IP)
		}
	}
	if len(ready) == 0 && len(entries) > 0 {
		return nil, entries[0].At.Add(cooldown)
	}
	return ready, time.Time{}
}

// Pick spreads concurrent allocators over the first candidates so that they
// rarely race for one key; order is kept loosely (the low end is favoured).
func Pick(cands []netip.Addr, spread int) netip.Addr {
	if len(cands) < spread {
		spread = len(cands)
	}
	return cands[rand.IntN(spread)]
}

// Advance returns a+n, or the highest address of a's family when that
// overflows.
func Advance(a netip.Addr, n uint64) netip.Addr {
	b := a.AsSlice()
	carry := n
	for i := len(b) - 1; i >= 0 && carry > 0; i-- {
		sum := uint64(b[i]) + carry&0xff
		b[i] = byte(sum)
		carry = carry>>8 + sum>>8
	}
	if carry > 0 {
		for i := range b {
			b[i] = 0xff
		}
	}
	out, _ := netip.AddrFromSlice(b)
	return out
}
