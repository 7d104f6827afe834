package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
)

// exclude rewrites the fixture's config as an operator adding ipam.exclude
// entries after the fact would: k8snet2 and k8snet3 get the given lists.
func (f *fixture) exclude(k8snet2, k8snet3 string) {
	f.t.Helper()
	conf := strings.Replace(confTmpl, `"releaseCooldown": "30s"`, `"releaseCooldown": "30s", "exclude": `+k8snet2, 1)
	conf = strings.Replace(conf, `"ranges": [[{"subnet": "10.189.0.0/28"}], [{"subnet": "fd00:189::/120"}]]`,
		`"ranges": [[{"subnet": "10.189.0.0/28"}], [{"subnet": "fd00:189::/120"}]], "exclude": `+k8snet3, 1)
	if err := os.WriteFile(f.conf, fmt.Appendf(nil, conf, f.etcd.ClientURL, prefix), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// After an operator excludes addresses that are held, check reports each
// with its holder and the entry (exit 1); networks no longer counts the
// excluded addresses in the pool nor as free; reserve refuses an excluded
// address. On the real etcd of the fixture.
func TestCheckReportsExcludedAllocations(t *testing.T) {
	f := newFixture(t)
	f.seed()
	if out, errs, code := f.run("reserve", "10.188.0.99", "--note", "router VIP"); code != 0 {
		t.Fatalf("reserve: exit %d %s %s", code, out, errs)
	}
	if _, _, code := f.run("check"); code != 0 {
		t.Fatalf("check before the exclusion: exit %d", code)
	}
	f.exclude(`["10.188.0.10-10.188.0.11", "10.188.0.96/28", "10.188.0.201"]`, `["fd00:189::2"]`)

	out, stderr, code := f.run("check", "-o", "json")
	var rep CheckReport
	if err := json.Unmarshal([]byte(out), &rep); code != 1 || err != nil || !strings.Contains(stderr, "check found 5 inconsistencies") {
		t.Fatalf("check: exit %d, %v, stderr %q\n%s", code, err, stderr, out)
	}
	found := map[string]string{}
	for _, p := range rep.Problems {
		found[p.Kind+" "+p.Network+" "+p.IP] = p.Detail
	}
	for want, detail := range map[string]string{
		"excluded k8snet2 10.188.0.10":  `dynamic address of pod default/web-1 (container 01c0ffeec0ff, interface net1, node worker-1) is excluded by ipam.exclude entry "10.188.0.10-10.188.0.11"`,
		"excluded k8snet2 10.188.0.11":  `sticky address of pod db/mysql-1 (container 03c0ffeec0ff, interface net1, node worker-2) is excluded by ipam.exclude entry "10.188.0.10-10.188.0.11"`,
		"excluded k8snet2 10.188.0.201": `fixed address of pod db/mysql-0 (container 02c0ffeec0ff, interface net1, node worker-2) is excluded by ipam.exclude entry "10.188.0.201"`,
		"excluded k8snet2 10.188.0.99":  `reservation (kube-ipamctl reserve) is excluded by ipam.exclude entry "10.188.0.96/28"`,
		"excluded k8snet3 fd00:189::2":  `dynamic address of pod default/web-1 (container 01c0ffeec0ff, interface net2, node worker-1) is excluded by ipam.exclude entry "fd00:189::2"`,
	} {
		if got, ok := found[want]; !ok || !strings.Contains(got, detail) {
			t.Errorf("%s: detail %q, want it to contain %q (all: %v)", want, got, detail, found)
		}
	}
	if len(rep.Problems) != 5 {
		t.Errorf("%d problems, want 5: %v", len(rep.Problems), found)
	}
	out, _, code = f.run("check")
	if code != 1 || !strings.Contains(out, "excluded   k8snet2   10.188.0.10 ") {
		t.Errorf("check (table): exit %d\n%s", code, out)
	}

	// k8snet2's pool: .10-.199 (the fixed block is .200-.250) minus .10-.11
	// and .96-.111 = 172; nothing held inside it any more; .12 cooling.
	out, _, code = f.run("networks", "-o", "json")
	var rows []NetworkRow
	if err := json.Unmarshal([]byte(out), &rows); code != 0 || err != nil {
		t.Fatalf("networks: exit %d, %v: %s", code, err, out)
	}
	want := NetworkRow{Name: "k8snet2", Subnets: []string{"10.188.0.0/24"}, Pool: 172, Used: 0, Free: 171, Fixed: 2, Sticky: 1, Cooling: 1}
	if fmt.Sprint(rows[0]) != fmt.Sprint(want) {
		t.Errorf("k8snet2 = %+v, want %+v", rows[0], want)
	}
	// k8snet3: 13 + 254, minus fd00:189::2, whose holder no longer counts.
	if rows[1].Pool != 13+253 || rows[1].Used != 1 || rows[1].Free != 13+253-1 {
		t.Errorf("k8snet3 = %+v", rows[1])
	}

	_, stderr, code = f.run("reserve", "10.188.0.100")
	if code != 2 || !strings.Contains(stderr, `10.188.0.100 is excluded by ipam.exclude entry "10.188.0.96/28" of network k8snet2`) {
		t.Errorf("reserve of an excluded address: exit %d, %q", code, stderr)
	}
}
