package ipam_test

import (
	"net/netip"
	"slices"
	"testing"

	"kubeipam/internal/config"
	"kubeipam/internal/ipam"
)

// The ipam.exclude blocks are cut out of the dynamic intervals (so out of
// the pool's size too), together with the gateway and the fixed block,
// whatever their overlaps; a huge excluded block costs one interval cut.
func TestDynamicIntervalsExclude(t *testing.T) {
	for _, tc := range []struct {
		name string
		ipam string
		set  int
		want []ipam.Interval
		size int64
	}{
		{"address, CIDR and range",
			`"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.99","exclude":["10.1.0.10","10.1.0.32/28","10.1.0.60-10.1.0.69"]`, 0,
			[]ipam.Interval{iv("10.1.0.11", "10.1.0.31"), iv("10.1.0.48", "10.1.0.59"), iv("10.1.0.70", "10.1.0.99")}, 21 + 12 + 30},
		{"overlapping the fixed block and the gateway",
			`"subnet":"10.1.0.0/24","fixedStart":"10.1.0.200","fixedEnd":"10.1.0.220","exclude":["10.1.0.1-10.1.0.5","10.1.0.210-10.1.0.230"]`, 0,
			[]ipam.Interval{iv("10.1.0.6", "10.1.0.199"), iv("10.1.0.231", "10.1.0.254")}, 194 + 24},
		{"everything",
			`"subnet":"10.1.0.0/24","exclude":["10.0.0.0/8"]`, 0, nil, 0},
		{"a /8 inside a /8 pool",
			`"subnet":"10.0.0.0/8","exclude":["10.0.0.0/9"]`, 0,
			[]ipam.Interval{iv("10.128.0.0", "10.255.255.254")}, 1<<23 - 1},
		{"other family untouched",
			`"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/120"}]],"exclude":["10.1.0.0/25","fd00::80/121"]`, 1,
			[]ipam.Interval{iv("fd00::2", "fd00::7f")}, 126},
		{"IPv6 range",
			`"ranges":[[{"subnet":"fd00::/64"}]],"exclude":["fd00::100-fd00::ffff:ffff:ffff:ffff"]`, 0,
			[]ipam.Interval{iv("fd00::2", "fd00::ff")}, 254},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := config.Parse([]byte(`{"cniVersion":"1.0.0","name":"x","ipam":{"etcdConfig":{"etcdURL":"http://e:2379"},` + tc.ipam + `}}`))
			if err != nil {
				t.Fatal(err)
			}
			got := ipam.DynamicIntervals(n, tc.set)
			if !slices.Equal(got, tc.want) {
				t.Errorf("DynamicIntervals = %s, want %s", fmtIvs(got), fmtIvs(tc.want))
			}
			if s := ipam.Size(got); s.Int64() != tc.size {
				t.Errorf("Size = %s, want %d", s, tc.size)
			}
			for _, x := range got {
				for _, a := range []netip.Addr{x.Lo, x.Hi} {
					if e, ok := n.Excluded(a); ok {
						t.Errorf("interval end %s is excluded by %q", a, e.Entry)
					}
				}
			}
		})
	}
}

func TestNextIn(t *testing.T) {
	ivs := []ipam.Interval{iv("10.0.0.10", "10.0.0.14"), iv("10.200.0.0", "10.200.0.5")}
	for _, tc := range []struct {
		a, want string // want "" for none
	}{
		{"10.0.0.1", "10.0.0.10"},
		{"10.0.0.10", "10.0.0.10"},
		{"10.0.0.12", "10.0.0.12"},
		{"10.0.0.14", "10.0.0.14"},
		{"10.0.0.15", "10.200.0.0"},
		{"10.100.0.0", "10.200.0.0"},
		{"10.200.0.5", "10.200.0.5"},
		{"10.200.0.6", ""},
		{"fd00::1", ""},
	} {
		got, ok := ipam.NextIn(ivs, netip.MustParseAddr(tc.a))
		if (tc.want == "") == ok || (ok && got != netip.MustParseAddr(tc.want)) {
			t.Errorf("NextIn(%s) = %s, %v; want %q", tc.a, got, ok, tc.want)
		}
	}
}
