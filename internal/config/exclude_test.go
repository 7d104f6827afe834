package config_test

import (
	"testing"

	"kubeipam/internal/config"
)

// ipam.exclude: what each syntax covers, and the one membership test.
func TestParseExclude(t *testing.T) {
	dual := `"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}]]`
	tests := []struct {
		name    string
		ipam    string
		want    [][2]string // Lo, Hi of each entry
		in, out []string    // addresses Excluded reports, and does not
	}{
		{"none", v4, nil, nil, []string{"10.1.0.5"}},
		{"empty list", v4 + `,"exclude":[]`, nil, nil, []string{"10.1.0.5"}},
		{"null", v4 + `,"exclude":null`, nil, nil, []string{"10.1.0.5"}},
		{"address", v4 + `,"exclude":["10.1.0.7"]`, [][2]string{{"10.1.0.7", "10.1.0.7"}}, []string{"10.1.0.7"}, []string{"10.1.0.6", "10.1.0.8"}},
		{"CIDR", v4 + `,"exclude":["10.1.0.16/28"]`, [][2]string{{"10.1.0.16", "10.1.0.31"}}, []string{"10.1.0.16", "10.1.0.31"}, []string{"10.1.0.15", "10.1.0.32"}},
		{"range", v4 + `,"exclude":["10.1.0.20-10.1.0.29"]`, [][2]string{{"10.1.0.20", "10.1.0.29"}}, []string{"10.1.0.20", "10.1.0.25", "10.1.0.29"}, []string{"10.1.0.19", "10.1.0.30"}},
		{"range with spaces", v4 + `,"exclude":[" 10.1.0.20 - 10.1.0.29 "]`, [][2]string{{"10.1.0.20", "10.1.0.29"}}, []string{"10.1.0.20"}, nil},
		{"one-address range", v4 + `,"exclude":["10.1.0.9-10.1.0.9"]`, [][2]string{{"10.1.0.9", "10.1.0.9"}}, []string{"10.1.0.9"}, []string{"10.1.0.10"}},
		{"IPv4-mapped address is IPv4", v4 + `,"exclude":["::ffff:10.1.0.7"]`, [][2]string{{"10.1.0.7", "10.1.0.7"}}, []string{"10.1.0.7"}, nil},
		{"wider than the subnet", v4 + `,"exclude":["10.0.0.0/8"]`, [][2]string{{"10.0.0.0", "10.255.255.255"}}, []string{"10.1.0.5"}, []string{"11.0.0.1"}},
		{"partly outside the subnet", v4 + `,"exclude":["10.1.0.250-10.1.1.5"]`, [][2]string{{"10.1.0.250", "10.1.1.5"}}, []string{"10.1.0.254"}, nil},
		{"dual stack", dual + `,"exclude":["10.1.0.0/25","fd00::100-fd00::1ff","fd00::5"]`,
			[][2]string{{"10.1.0.0", "10.1.0.127"}, {"fd00::100", "fd00::1ff"}, {"fd00::5", "fd00::5"}},
			[]string{"10.1.0.1", "fd00::100", "fd00::1ff", "fd00::5"}, []string{"10.1.0.128", "fd00::200", "fd00::4", "::ffff:10.1.0.1"}},
		{"IPv6 CIDR", dual + `,"exclude":["fd00::/120"]`, [][2]string{{"fd00::", "fd00::ff"}}, []string{"fd00::ff"}, []string{"fd00::100", "10.1.0.0"}},
		{"overlapping entries", v4 + `,"exclude":["10.1.0.0/28","10.1.0.8-10.1.0.20"]`, [][2]string{{"10.1.0.0", "10.1.0.15"}, {"10.1.0.8", "10.1.0.20"}}, []string{"10.1.0.20"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := mustParse(t, netconf("1.0.0", tc.ipam))
			if len(n.Exclude) != len(tc.want) {
				t.Fatalf("Exclude = %+v, want %v", n.Exclude, tc.want)
			}
			for i, w := range tc.want {
				if x := n.Exclude[i]; x.Lo != addr(w[0]) || x.Hi != addr(w[1]) {
					t.Errorf("Exclude[%d] = %s-%s, want %s-%s", i, x.Lo, x.Hi, w[0], w[1])
				}
			}
			for _, s := range tc.in {
				if _, ok := n.Excluded(addr(s)); !ok {
					t.Errorf("Excluded(%s) = false", s)
				}
			}
			for _, s := range tc.out {
				if x, ok := n.Excluded(addr(s)); ok {
					t.Errorf("Excluded(%s) = true (entry %q)", s, x.Entry)
				}
			}
		})
	}
	// The entry is named as written (trimmed), for messages.
	n := mustParse(t, netconf("1.0.0", v4+`,"exclude":["10.1.0.5"," 10.1.0.16/28 "]`))
	if x, ok := n.Excluded(addr("10.1.0.17")); !ok || x.Entry != "10.1.0.16/28" {
		t.Errorf("Excluded(10.1.0.17) = %+v, %v; want entry \"10.1.0.16/28\"", x, ok)
	}
}

func TestParseExcludeErrors(t *testing.T) {
	tests := []struct {
		name  string
		ipam  string
		parts []string
	}{
		{"not a list", v4 + `,"exclude":"10.1.0.5"`, []string{"ipam.exclude", "want a list of strings"}},
		{"not strings", v4 + `,"exclude":[5]`, []string{"ipam.exclude", "want a list of strings"}},
		{"empty entry", v4 + `,"exclude":["10.1.0.5",""]`, []string{`ipam.exclude[1] ""`, "empty entry"}},
		{"garbage", v4 + `,"exclude":["gateway"]`, []string{`ipam.exclude[0] "gateway"`, "not an address, CIDR or range"}},
		{"bad address", v4 + `,"exclude":["10.1.0.256"]`, []string{`ipam.exclude[0] "10.1.0.256"`}},
		{"zone", v4 + `,"exclude":["fe80::1%eth0"]`, []string{`ipam.exclude[0]`}},
		{"CIDR garbage", v4 + `,"exclude":["10.1.0.0/33"]`, []string{`ipam.exclude[0] "10.1.0.0/33"`, "not a CIDR"}},
		{"CIDR host bits", v4 + `,"exclude":["10.1.0.5/28"]`, []string{`ipam.exclude[0] "10.1.0.5/28"`, "host bits", "10.1.0.0/28"}},
		{"mapped CIDR", v4 + `,"exclude":["::ffff:10.1.0.0/120"]`, []string{"ipam.exclude[0]", "IPv4 CIDR"}},
		{"range end garbage", v4 + `,"exclude":["10.1.0.5-x"]`, []string{`ipam.exclude[0] "10.1.0.5-x"`, `"x" is not an IP address`}},
		{"range with a CIDR", v4 + `,"exclude":["10.1.0.0/28-10.1.0.40"]`, []string{`ipam.exclude[0]`, `"10.1.0.0/28" is not an IP address`}},
		{"range reversed", v4 + `,"exclude":["10.1.0.9-10.1.0.5"]`, []string{`ipam.exclude[0] "10.1.0.9-10.1.0.5"`, "10.1.0.9 is after 10.1.0.5"}},
		{"range mixed family", v4 + `,"exclude":["10.1.0.5-fd00::5"]`, []string{`ipam.exclude[0]`, "mixes IPv4 and IPv6"}},
		{"outside every subnet", v4 + `,"exclude":["10.1.0.5","10.9.0.0/24"]`, []string{`ipam.exclude[1] "10.9.0.0/24" lies outside every subnet of network "net1"`}},
		{"other family", v4 + `,"exclude":["fd00::5"]`, []string{`ipam.exclude[0] "fd00::5" lies outside every subnet`}},
		{"just below the subnet", v4 + `,"exclude":["10.0.255.0-10.0.255.255"]`, []string{"outside every subnet"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := config.Parse(netconf("1.0.0", tc.ipam))
			if n != nil {
				t.Errorf("Parse returned a network with an error: %+v", n)
			}
			wantConfigError(t, err, tc.parts...)
		})
	}
}
