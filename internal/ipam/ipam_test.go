package ipam_test

import (
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"kubeipam/internal/config"
	"kubeipam/internal/ipam"
)

func a(s string) netip.Addr { return netip.MustParseAddr(s) }

func iv(lo, hi string) ipam.Interval { return ipam.Interval{Lo: a(lo), Hi: a(hi)} }

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, a(s))
	}
	return out
}

// span lists lo..hi inclusive (small ranges only).
func span(lo, hi string) []netip.Addr {
	var out []netip.Addr
	for x := a(lo); x.Compare(a(hi)) <= 0; x = x.Next() {
		out = append(out, x)
	}
	return out
}

func rng(subnet, start, end, gw string) config.Range {
	r := config.Range{Subnet: netip.MustParsePrefix(subnet), Start: a(start), End: a(end)}
	if gw != "" {
		r.Gateway = a(gw)
	}
	return r
}

func fmtIvs(ivs []ipam.Interval) string {
	var parts []string
	for _, x := range ivs {
		parts = append(parts, x.Lo.String()+"-"+x.Hi.String())
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func fmtAddrs(as []netip.Addr) string {
	var parts []string
	for _, x := range as {
		parts = append(parts, x.String())
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// --- DynamicIntervals ----------------------------------------------------------

func TestDynamicIntervals(t *testing.T) {
	tests := []struct {
		name  string
		sets  []config.RangeSet
		fixed [2]string
		set   int
		want  []ipam.Interval
	}{
		{
			name: "gateway outside the range (seed)",
			sets: []config.RangeSet{{rng("10.188.0.0/16", "10.188.0.10", "10.188.0.200", "10.188.0.1")}},
			want: []ipam.Interval{iv("10.188.0.10", "10.188.0.200")},
		},
		{
			name: "default range starts at the gateway",
			sets: []config.RangeSet{{rng("10.1.0.0/24", "10.1.0.1", "10.1.0.254", "10.1.0.1")}},
			want: []ipam.Interval{iv("10.1.0.2", "10.1.0.254")},
		},
		{
			name: "gateway in the middle splits the range",
			sets: []config.RangeSet{{rng("10.1.0.0/24", "10.1.0.10", "10.1.0.200", "10.1.0.100")}},
			want: []ipam.Interval{iv("10.1.0.10", "10.1.0.99"), iv("10.1.0.101", "10.1.0.200")},
		},
		{
			name: "gateway at the low edge",
			sets: []config.RangeSet{{rng("10.1.0.0/24", "10.1.0.10", "10.1.0.200", "10.1.0.10")}},
			want: []ipam.Interval{iv("10.1.0.11", "10.1.0.200")},
		},
		{
			name: "gateway at the high edge",
			sets: []config.RangeSet{{rng("10.1.0.0/24", "10.1.0.10", "10.1.0.200", "10.1.0.200")}},
			want: []ipam.Interval{iv("10.1.0.10", "10.1.0.199")},
		},
		{
			name: "single-address range equal to the gateway is empty",
			sets: []config.RangeSet{{rng("10.1.0.0/24", "10.1.0.1", "10.1.0.1", "10.1.0.1")}},
			want: nil,
		},
		{
			name: "no gateway",
			sets: []config.RangeSet{{rng("10.1.0.0/24", "10.1.0.1", "10.1.0.254", "")}},
			want: []ipam.Interval{iv("10.1.0.1", "10.1.0.254")},
		},
		{
			name:  "fixed block in the middle removed",
			sets:  []config.RangeSet{{rng("10.1.0.0/24", "10.1.0.10", "10.1.0.200", "10.1.0.1")}},
			fixed: [2]string{"10.1.0.50", "10.1.0.60"},
			want:  []ipam.Interval{iv("10.1.0.10", "10.1.0.49"), iv("10.1.0.61", "10.1.0.200")},
		},
		{
			name:  "fixed block covering the low end",
			sets:  []config.RangeSet{{rng("10.1.0.0/24", "10.1.0.10", "10.1.0.200", "10.1.0.1")}},
			fixed: [2]string{"10.1.0.0", "10.1.0.19"},
			want:  []ipam.Interval{iv("10.1.0.20", "10.1.0.200")},
		},
		{
			name:  "fixed block covering the high end",
			sets:  []config.RangeSet{{rng("10.1.0.0/24", "10.1.0.10", "10.1.0.200", "10.1.0.1")}},
			fixed: [2]string{"10.1.0.150", "10.1.0.255"},
			want:  []ipam.Interval{iv("10.1.0.10", "10.1.0.149")},
		},
		{
			name:  "fixed block covering everything",
			sets:  []config.RangeSet{{rng("10.1.0.0/24", "10.1.0.10", "10.1.0.200", "10.1.0.1")}},
			fixed: [2]string{"10.1.0.1", "10.1.0.254"},
			want:  nil,
		},
		{
			name:  "fixed block outside the range changes nothing",
			sets:  []config.RangeSet{{rng("10.1.0.0/24", "10.1.0.10", "10.1.0.200", "10.1.0.1")}},
			fixed: [2]string{"10.1.0.201", "10.1.0.254"},
			want:  []ipam.Interval{iv("10.1.0.10", "10.1.0.200")},
		},
		{
			name:  "gateway and fixed block both removed",
			sets:  []config.RangeSet{{rng("10.1.0.0/24", "10.1.0.1", "10.1.0.254", "10.1.0.1")}},
			fixed: [2]string{"10.1.0.200", "10.1.0.254"},
			want:  []ipam.Interval{iv("10.1.0.2", "10.1.0.199")},
		},
		{
			name: "multiple ranges sorted, each gateway removed",
			sets: []config.RangeSet{{
				rng("10.30.0.0/24", "10.30.0.1", "10.30.0.254", "10.30.0.1"),
				rng("10.10.0.0/24", "10.10.0.10", "10.10.0.20", "10.10.0.15"),
				rng("10.20.0.0/24", "10.20.0.5", "10.20.0.6", "10.20.0.1"),
			}},
			want: []ipam.Interval{
				iv("10.10.0.10", "10.10.0.14"), iv("10.10.0.16", "10.10.0.20"),
				iv("10.20.0.5", "10.20.0.6"),
				iv("10.30.0.2", "10.30.0.254"),
			},
		},
		{
			name: "two ranges of one subnet: a gateway inside the other range is removed too",
			sets: []config.RangeSet{{
				rng("10.1.0.0/24", "10.1.0.100", "10.1.0.110", "10.1.0.5"),
				rng("10.1.0.0/24", "10.1.0.1", "10.1.0.10", "10.1.0.105"),
			}},
			want: []ipam.Interval{iv("10.1.0.1", "10.1.0.4"), iv("10.1.0.6", "10.1.0.10"), iv("10.1.0.100", "10.1.0.104"), iv("10.1.0.106", "10.1.0.110")},
		},
		{
			name: "second set selected; v4 fixed block does not touch v6",
			sets: []config.RangeSet{
				{rng("10.1.0.0/24", "10.1.0.1", "10.1.0.254", "10.1.0.1")},
				{rng("fd00::/120", "fd00::1", "fd00::ff", "fd00::1")},
			},
			fixed: [2]string{"10.1.0.1", "10.1.0.254"},
			set:   1,
			want:  []ipam.Interval{iv("fd00::2", "fd00::ff")},
		},
		{
			name:  "v6 fixed block",
			sets:  []config.RangeSet{{rng("fd00::/64", "fd00::1", "fd00::ffff:ffff:ffff:ffff", "fd00::1")}},
			fixed: [2]string{"fd00::1:0", "fd00::1:ffff"},
			want:  []ipam.Interval{iv("fd00::2", "fd00::ffff"), iv("fd00::2:0", "fd00::ffff:ffff:ffff:ffff")},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := &config.Network{Name: "n", RangeSets: tc.sets}
			if tc.fixed[0] != "" {
				n.FixedStart, n.FixedEnd = a(tc.fixed[0]), a(tc.fixed[1])
			}
			got := ipam.DynamicIntervals(n, tc.set)
			if !slices.Equal(got, tc.want) {
				t.Errorf("DynamicIntervals = %s, want %s", fmtIvs(got), fmtIvs(tc.want))
			}
			// Invariants: ascending, disjoint, never the gateway or the fixed block.
			for i := 1; i < len(got); i++ {
				if got[i-1].Hi.Compare(got[i].Lo) >= 0 {
					t.Errorf("intervals %d and %d not ascending/disjoint: %s", i-1, i, fmtIvs(got))
				}
			}
			for _, r := range tc.sets[tc.set] {
				if r.Gateway.IsValid() && ipam.InAny(got, r.Gateway) {
					t.Errorf("gateway %s is dynamic", r.Gateway)
				}
			}
			if n.HasFixedBlock() {
				for _, x := range got {
					if n.InFixedBlock(x.Lo) || n.InFixedBlock(x.Hi) {
						t.Errorf("interval %s-%s touches the fixed block", x.Lo, x.Hi)
					}
				}
			}
		})
	}
}

func TestDynamicIntervalsFromParsedSeed(t *testing.T) {
	n, err := config.Parse([]byte(`{"cniVersion":"0.3.1","name":"k8snet2","ipam":{"etcdConfig":{"etcdURL":"http://e:2379"},
		"subnet":"10.188.0.0/16","rangeStart":"10.188.0.10","rangeEnd":"10.188.0.200","gateway":"10.188.0.1",
		"fixedStart":"10.188.0.100","fixedEnd":"10.188.0.109"}}`))
	if err != nil {
		t.Fatal(err)
	}
	got := ipam.DynamicIntervals(n, 0)
	want := []ipam.Interval{iv("10.188.0.10", "10.188.0.99"), iv("10.188.0.110", "10.188.0.200")}
	if !slices.Equal(got, want) {
		t.Errorf("DynamicIntervals = %s, want %s", fmtIvs(got), fmtIvs(want))
	}
	if s := ipam.Size(got); s.Int64() != 181 {
		t.Errorf("Size = %s, want 181", s)
	}
}

// --- Contains / InAny ----------------------------------------------------------

func TestContainsAndInAny(t *testing.T) {
	ivs := []ipam.Interval{iv("10.0.0.10", "10.0.0.14"), iv("10.0.0.20", "10.0.0.20"), iv("fd00::10", "fd00::20")}
	tests := []struct {
		ip   string
		want bool
	}{
		{"10.0.0.9", false},
		{"10.0.0.10", true},
		{"10.0.0.12", true},
		{"10.0.0.14", true},
		{"10.0.0.15", false},
		{"10.0.0.20", true},
		{"10.0.0.21", false},
		{"fd00::f", false},
		{"fd00::10", true},
		{"fd00::20", true},
		{"fd00::21", false},
		{"::ffff:10.0.0.12", false}, // other bit length
		{"::a00:c", false},          // 10.0.0.12 as plain v6 bits
	}
	for _, tc := range tests {
		if got := ipam.InAny(ivs, a(tc.ip)); got != tc.want {
			t.Errorf("InAny(%s) = %v, want %v", tc.ip, got, tc.want)
		}
	}
	if ipam.InAny(nil, a("10.0.0.1")) {
		t.Error("InAny(nil) = true")
	}
	if !iv("10.0.0.1", "10.0.0.1").Contains(a("10.0.0.1")) {
		t.Error("single-address interval does not contain its address")
	}
}

// --- Free ------------------------------------------------------------------------

func TestFree(t *testing.T) {
	two := []ipam.Interval{iv("10.0.0.10", "10.0.0.14"), iv("10.0.0.20", "10.0.0.22")}
	none := netip.Addr{}
	tests := []struct {
		name  string
		ivs   []ipam.Interval
		from  netip.Addr
		used  []netip.Addr
		limit netip.Addr
		max   int
		want  []netip.Addr
	}{
		{"everything", two, none, nil, none, 100, append(span("10.0.0.10", "10.0.0.14"), span("10.0.0.20", "10.0.0.22")...)},
		{"from before the intervals", two, a("10.0.0.1"), nil, none, 100, append(span("10.0.0.10", "10.0.0.14"), span("10.0.0.20", "10.0.0.22")...)},
		{"from the first address", two, a("10.0.0.10"), nil, none, 3, span("10.0.0.10", "10.0.0.12")},
		{"from inside the first interval", two, a("10.0.0.12"), nil, none, 100, append(span("10.0.0.12", "10.0.0.14"), span("10.0.0.20", "10.0.0.22")...)},
		{"from the last address of an interval", two, a("10.0.0.14"), nil, none, 100, append(addrs("10.0.0.14"), span("10.0.0.20", "10.0.0.22")...)},
		{"from in the gap", two, a("10.0.0.16"), nil, none, 100, span("10.0.0.20", "10.0.0.22")},
		{"from inside the last interval", two, a("10.0.0.21"), nil, none, 100, span("10.0.0.21", "10.0.0.22")},
		{"from after every interval", two, a("10.0.0.23"), nil, none, 100, nil},
		{"used addresses skipped", two, none, addrs("10.0.0.10", "10.0.0.12", "10.0.0.20"), none, 100, addrs("10.0.0.11", "10.0.0.13", "10.0.0.14", "10.0.0.21", "10.0.0.22")},
		{"used runs skipped", two, none, span("10.0.0.10", "10.0.0.13"), none, 100, append(addrs("10.0.0.14"), span("10.0.0.20", "10.0.0.22")...)},
		{"used run across the gap", two, none, append(span("10.0.0.12", "10.0.0.14"), a("10.0.0.20")), none, 100, addrs("10.0.0.10", "10.0.0.11", "10.0.0.21", "10.0.0.22")},
		{"used keys outside the intervals ignored", two, none, addrs("10.0.0.1", "10.0.0.11", "10.0.0.16", "10.0.0.17", "10.0.0.21", "10.0.0.99"), none, 100, addrs("10.0.0.10", "10.0.0.12", "10.0.0.13", "10.0.0.14", "10.0.0.20", "10.0.0.22")},
		{"used below from ignored", two, a("10.0.0.13"), addrs("10.0.0.10", "10.0.0.11", "10.0.0.14"), none, 100, addrs("10.0.0.13", "10.0.0.20", "10.0.0.21", "10.0.0.22")},
		{"everything used", two, none, append(span("10.0.0.10", "10.0.0.14"), span("10.0.0.20", "10.0.0.22")...), none, 100, nil},
		{"max stops early", two, none, nil, none, 3, span("10.0.0.10", "10.0.0.12")},
		{"max crossing the interval boundary", two, none, nil, none, 6, append(span("10.0.0.10", "10.0.0.14"), a("10.0.0.20"))},
		{"max exactly the first interval", two, none, nil, none, 5, span("10.0.0.10", "10.0.0.14")},
		{"max with used", two, none, addrs("10.0.0.10", "10.0.0.11"), none, 2, addrs("10.0.0.12", "10.0.0.13")},
		{"max zero", two, none, nil, none, 0, nil},
		{"limit inside the first interval", two, none, nil, a("10.0.0.12"), 100, span("10.0.0.10", "10.0.0.12")},
		{"limit in the gap", two, none, nil, a("10.0.0.17"), 100, span("10.0.0.10", "10.0.0.14")},
		{"limit on an interval's last address", two, none, nil, a("10.0.0.20"), 100, append(span("10.0.0.10", "10.0.0.14"), a("10.0.0.20"))},
		{"limit below everything", two, none, nil, a("10.0.0.5"), 100, nil},
		{"limit and from", two, a("10.0.0.13"), addrs("10.0.0.14"), a("10.0.0.21"), 100, addrs("10.0.0.13", "10.0.0.20", "10.0.0.21")},
		{"limit above everything", two, none, nil, a("10.0.1.0"), 100, append(span("10.0.0.10", "10.0.0.14"), span("10.0.0.20", "10.0.0.22")...)},
		{"no intervals", nil, none, nil, none, 100, nil},
		{"top of the v4 space", []ipam.Interval{iv("255.255.255.253", "255.255.255.255")}, none, nil, none, 100, addrs("255.255.255.253", "255.255.255.254", "255.255.255.255")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ipam.Free(tc.ivs, tc.from, tc.used, tc.limit, tc.max)
			if !slices.Equal(got, tc.want) {
				t.Errorf("Free = %s, want %s", fmtAddrs(got), fmtAddrs(tc.want))
			}
		})
	}
}

func TestFreeIPv6HugeRange(t *testing.T) {
	// A /64: the seed-style dynamic interval of fd00::/64 after the gateway.
	n := &config.Network{Name: "n", RangeSets: []config.RangeSet{{rng("fd00::/64", "fd00::1", "fd00::ffff:ffff:ffff:ffff", "fd00::1")}}}
	ivs := ipam.DynamicIntervals(n, 0)
	none := netip.Addr{}
	tests := []struct {
		name  string
		from  netip.Addr
		used  []netip.Addr
		limit netip.Addr
		max   int
		want  []netip.Addr
	}{
		{"bottom", none, nil, none, 3, addrs("fd00::2", "fd00::3", "fd00::4")},
		{"near the top: stops at the last address", a("fd00::ffff:ffff:ffff:fffc"), nil, none, 64, addrs("fd00::ffff:ffff:ffff:fffc", "fd00::ffff:ffff:ffff:fffd", "fd00::ffff:ffff:ffff:fffe", "fd00::ffff:ffff:ffff:ffff")},
		{"near the top with used", a("fd00::ffff:ffff:ffff:fffc"), addrs("fd00::ffff:ffff:ffff:fffd", "fd00::ffff:ffff:ffff:ffff"), none, 64, addrs("fd00::ffff:ffff:ffff:fffc", "fd00::ffff:ffff:ffff:fffe")},
		{"the last address", a("fd00::ffff:ffff:ffff:ffff"), nil, none, 64, addrs("fd00::ffff:ffff:ffff:ffff")},
		{"in the middle, limited by max", a("fd00::8000:0:0:0"), nil, none, 2, addrs("fd00::8000:0:0:0", "fd00::8000:0:0:1")},
		{"in the middle, limited by limit", a("fd00::8000:0:0:0"), nil, a("fd00::8000:0:0:1"), 1 << 20, addrs("fd00::8000:0:0:0", "fd00::8000:0:0:1")},
		{"after the /64", a("fd00:0:0:1::"), nil, none, 64, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan []netip.Addr, 1)
			go func() { done <- ipam.Free(ivs, tc.from, tc.used, tc.limit, tc.max) }()
			select {
			case got := <-done:
				if !slices.Equal(got, tc.want) {
					t.Errorf("Free = %s, want %s", fmtAddrs(got), fmtAddrs(tc.want))
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Free iterates the whole /64")
			}
		})
	}

	// The very top of the IPv6 space: Next() of the last address is invalid.
	top := []ipam.Interval{iv("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")}
	got := ipam.Free(top, netip.Addr{}, nil, netip.Addr{}, 10)
	if want := addrs("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"); !slices.Equal(got, want) {
		t.Errorf("Free at the top of the space = %s", fmtAddrs(got))
	}
}

// --- Size --------------------------------------------------------------------------

func TestSize(t *testing.T) {
	pow := func(n uint) *big.Int { return new(big.Int).Lsh(big.NewInt(1), n) }
	sub := func(x *big.Int, y int64) *big.Int { return new(big.Int).Sub(x, big.NewInt(y)) }
	v6n := &config.Network{Name: "n", RangeSets: []config.RangeSet{{rng("fd00::/64", "fd00::1", "fd00::ffff:ffff:ffff:ffff", "fd00::1")}}}
	v4n := &config.Network{Name: "n", RangeSets: []config.RangeSet{{rng("10.0.0.0/8", "10.0.0.1", "10.255.255.254", "10.0.0.1")}}}
	tests := []struct {
		name string
		ivs  []ipam.Interval
		want *big.Int
	}{
		{"empty", nil, big.NewInt(0)},
		{"single address", []ipam.Interval{iv("10.0.0.5", "10.0.0.5")}, big.NewInt(1)},
		{"seed range", []ipam.Interval{iv("10.188.0.10", "10.188.0.200")}, big.NewInt(191)},
		{"two intervals", []ipam.Interval{iv("10.0.0.10", "10.0.0.14"), iv("10.0.0.20", "10.0.0.22")}, big.NewInt(8)},
		{"whole v4 space", []ipam.Interval{iv("0.0.0.0", "255.255.255.255")}, pow(32)},
		{"v4 /8 dynamic", ipam.DynamicIntervals(v4n, 0), sub(pow(24), 3)},
		{"v6 /64 dynamic: 2^64 - 2", ipam.DynamicIntervals(v6n, 0), sub(pow(64), 2)},
		{"whole v6 space", []ipam.Interval{iv("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")}, pow(128)},
		{"mixed families add up", []ipam.Interval{iv("10.0.0.1", "10.0.0.2"), iv("fd00::1", "fd00::3")}, big.NewInt(5)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ipam.Size(tc.ivs); got.Cmp(tc.want) != 0 {
				t.Errorf("Size = %s, want %s", got, tc.want)
			}
		})
	}
}

// --- Cooled ---------------------------------------------------------------------------

func TestCooled(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	entries := []ipam.Released{
		{IP: a("10.0.0.1"), At: ago(60 * time.Second)},
		{IP: a("10.0.0.2"), At: ago(30 * time.Second)},
		{IP: a("10.0.0.3"), At: ago(29 * time.Second)},
		{IP: a("10.0.0.4"), At: ago(1 * time.Second)},
	}
	tests := []struct {
		name      string
		entries   []ipam.Released
		cooldown  time.Duration
		wantReady []netip.Addr
		wantNext  time.Time
	}{
		{"empty", nil, 30 * time.Second, nil, time.Time{}},
		{"empty, cooldown 0", nil, 0, nil, time.Time{}},
		{"cooldown 0: all ready, oldest first", entries, 0, addrs("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"), time.Time{}},
		{"some ready (exactly cooled counts)", entries, 30 * time.Second, addrs("10.0.0.1", "10.0.0.2"), time.Time{}},
		{"only the oldest ready", entries, 31 * time.Second, addrs("10.0.0.1"), time.Time{}},
		{"none ready: next is the oldest's", entries, 2 * time.Minute, nil, ago(60 * time.Second).Add(2 * time.Minute)},
		{"single entry not ready", entries[3:], 30 * time.Second, nil, ago(time.Second).Add(30 * time.Second)},
		{"all ready", entries, time.Second, addrs("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"), time.Time{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ready, next := ipam.Cooled(tc.entries, now, tc.cooldown)
			if !slices.Equal(ready, tc.wantReady) {
				t.Errorf("ready = %s, want %s", fmtAddrs(ready), fmtAddrs(tc.wantReady))
			}
			if !next.Equal(tc.wantNext) {
				t.Errorf("next = %v, want %v", next, tc.wantNext)
			}
			if len(ready) > 0 && !next.IsZero() {
				t.Error("both ready addresses and a next time")
			}
		})
	}
}

// --- Pick ----------------------------------------------------------------------------

func TestPick(t *testing.T) {
	hundred := make([]netip.Addr, 100)
	for i := range hundred {
		hundred[i] = netip.AddrFrom4([4]byte{10, 0, 1, byte(i)})
	}
	tests := []struct {
		name   string
		cands  []netip.Addr
		spread int
		want   int // how many leading candidates may be (and, over many draws, are) picked
	}{
		{"spread 32 of 100", hundred, 32, 32},
		{"spread 1 is the first", hundred, 1, 1},
		{"spread equal to the list", hundred[:8], 8, 8},
		{"spread larger than the list", hundred[:3], 32, 3},
		{"single candidate", hundred[:1], 32, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[netip.Addr]int{}
			for range 5000 {
				got := ipam.Pick(tc.cands, tc.spread)
				i := slices.Index(tc.cands, got)
				if i < 0 || i >= tc.want {
					t.Fatalf("Pick returned %s (index %d), want one of the first %d", got, i, tc.want)
				}
				seen[got]++
			}
			// Spreading must really spread: every allowed candidate shows up
			// (missing one in 5000 draws of 32 has probability ~1e-68).
			if len(seen) != tc.want {
				t.Errorf("picked %d distinct candidates, want all %d: %v", len(seen), tc.want, seen)
			}
		})
	}
}

func ExampleFree() {
	ivs := []ipam.Interval{iv("10.0.0.10", "10.0.0.14"), iv("10.0.0.20", "10.0.0.22")}
	fmt.Println(ipam.Free(ivs, a("10.0.0.13"), addrs("10.0.0.14", "10.0.0.20"), netip.Addr{}, 3))
	// Output: [10.0.0.13 10.0.0.21 10.0.0.22]
}

func TestAdvance(t *testing.T) {
	for _, c := range []struct {
		a    string
		n    uint64
		want string
	}{
		{"10.0.0.1", 0, "10.0.0.1"},
		{"10.0.0.1", 1023, "10.0.4.0"},
		{"10.0.0.255", 1, "10.0.1.0"},
		{"255.255.255.250", 10, "255.255.255.255"},
		{"fd00::ffff:ffff:ffff:ffff", 1, "fd00:0:0:1::"},
		{"fd00::", 1 << 40, "fd00::100:0:0"},
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0", 1 << 20, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
	} {
		if got := ipam.Advance(netip.MustParseAddr(c.a), c.n); got.String() != c.want {
			t.Errorf("Advance(%s, %d) = %s, want %s", c.a, c.n, got, c.want)
		}
	}
}
