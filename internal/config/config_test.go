package config_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"kubeipam/internal/config"
)

// --- helpers ---------------------------------------------------------------

const etcdHTTP = `"etcdConfig":{"etcdURL":"http://127.0.0.1:2379"}`

// netconf builds a network config with a valid etcdConfig and the given
// extra ipam members (a JSON fragment without surrounding braces, may be "").
func netconf(cniVersion, ipamExtra string) []byte {
	body := etcdHTTP
	if ipamExtra != "" {
		body += "," + ipamExtra
	}
	return []byte(fmt.Sprintf(`{"cniVersion":%q,"name":"net1","type":"macvlan","ipam":{"type":"kube-ipam",%s}}`, cniVersion, body))
}

// v4 is the smallest valid ipam body.
const v4 = `"subnet":"10.1.0.0/24"`

func mustParse(t *testing.T, data []byte) *config.Network {
	t.Helper()
	n, err := config.Parse(data)
	if err != nil {
		t.Fatalf("Parse(%s): unexpected error: %v", data, err)
	}
	return n
}

// wantConfigError asserts err is a *config.Error whose message contains every
// part (case-insensitive), so that the test fails when the error is raised
// for another reason than the one under test.
func wantConfigError(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want a *config.Error containing %q, got nil", parts)
	}
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Fatalf("want *config.Error, got %T: %v", err, err)
	}
	for _, p := range parts {
		if !strings.Contains(strings.ToLower(ce.Error()), strings.ToLower(p)) {
			t.Errorf("error %q does not mention %q", ce.Error(), p)
		}
	}
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func checkRange(t *testing.T, got config.Range, subnet, start, end, gw string) {
	t.Helper()
	if got.Subnet != pfx(subnet) {
		t.Errorf("subnet = %s, want %s", got.Subnet, subnet)
	}
	if got.Start != addr(start) {
		t.Errorf("start = %s, want %s", got.Start, start)
	}
	if got.End != addr(end) {
		t.Errorf("end = %s, want %s", got.End, end)
	}
	if gw == "" {
		if got.Gateway.IsValid() {
			t.Errorf("gateway = %s, want none", got.Gateway)
		}
	} else if got.Gateway != addr(gw) {
		t.Errorf("gateway = %s, want %s", got.Gateway, gw)
	}
}

func containsSub(list []string, sub string) bool {
	return slices.ContainsFunc(list, func(s string) bool { return strings.Contains(s, sub) })
}

// --- the seed config ---------------------------------------------------------

func TestParseSeedMacvlan(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "seed-macvlan.json"))
	if err != nil {
		t.Fatal(err)
	}
	n := mustParse(t, data)

	if n.CNIVersion != "0.3.1" {
		t.Errorf("CNIVersion = %q", n.CNIVersion)
	}
	if n.Name != "k8snet2" {
		t.Errorf("Name = %q, want k8snet2 (the network name keys the pool, ipam.name is ignored)", n.Name)
	}
	if !containsSub(n.Notes, `ipam.name "kube-subnet" is ignored`) {
		t.Errorf("Notes %q do not record that ipam.name kube-subnet is ignored", n.Notes)
	}
	wantEP := []string{"https://192.168.1.50:2379", "https://192.168.1.58:2379", "https://192.168.1.63:2379"}
	if !slices.Equal(n.Etcd.Endpoints, wantEP) {
		t.Errorf("Endpoints = %q, want %q", n.Etcd.Endpoints, wantEP)
	}
	if !n.Etcd.TLS() {
		t.Error("TLS() = false for https endpoints")
	}
	if n.Etcd.CertFile != "/etc/kubernetes/ssl/kubernetes.pem" {
		t.Errorf("CertFile = %q", n.Etcd.CertFile)
	}
	if n.Etcd.KeyFile != "/etc/kubernetes/ssl/kubernetes-key.pem" {
		t.Errorf("KeyFile = %q", n.Etcd.KeyFile)
	}
	if n.Etcd.CAFile != "/etc/kubernetes/ssl/k8s-root-ca.pem" {
		t.Errorf("CAFile = %q, want the value of etcdTrustedCAFileFile", n.Etcd.CAFile)
	}
	if n.Etcd.Prefix != config.DefaultEtcdPrefix {
		t.Errorf("Prefix = %q, want default %q", n.Etcd.Prefix, config.DefaultEtcdPrefix)
	}
	if n.KubeConfig != "/etc/kubernetes/ssl/kube.kubeconfig" {
		t.Errorf("KubeConfig = %q", n.KubeConfig)
	}
	if len(n.RangeSets) != 1 || len(n.RangeSets[0]) != 1 {
		t.Fatalf("RangeSets = %+v, want one set with one range", n.RangeSets)
	}
	if f := n.RangeSets[0].Family(); f != 4 {
		t.Errorf("Family = %d", f)
	}
	checkRange(t, n.RangeSets[0][0], "10.188.0.0/16", "10.188.0.10", "10.188.0.200", "10.188.0.1")
	if len(n.Routes) != 1 || n.Routes[0].Dst.String() != "0.0.0.0/0" || n.Routes[0].GW != nil {
		t.Errorf("Routes = %v, want one route dst 0.0.0.0/0 without gw", n.Routes)
	}
	if !containsSub(n.Warnings, "default route") {
		t.Errorf("Warnings %q lack the default-route warning", n.Warnings)
	}
	if n.ResolvConf != "/etc/resolv.conf" {
		t.Errorf("ResolvConf = %q", n.ResolvConf)
	}
	if n.HasFixedBlock() {
		t.Error("HasFixedBlock() without fixedStart/fixedEnd")
	}
	if !n.PodLookup {
		t.Error("PodLookup defaults to true")
	}
	if n.ReleaseCooldown != config.DefaultReleaseCooldown || n.Timeout != config.DefaultTimeout {
		t.Errorf("ReleaseCooldown = %v, Timeout = %v", n.ReleaseCooldown, n.Timeout)
	}
	if n.LogFile != config.DefaultLogFile || n.LogLevel != "info" {
		t.Errorf("LogFile = %q, LogLevel = %q", n.LogFile, n.LogLevel)
	}
	if len(n.RequestedIPs) != 0 {
		t.Errorf("RequestedIPs = %v", n.RequestedIPs)
	}
	// SetFor finds the range of an address of the seed subnet, not others.
	if i, r, ok := n.SetFor(addr("10.188.3.4")); !ok || i != 0 || r.Subnet != pfx("10.188.0.0/16") {
		t.Errorf("SetFor(10.188.3.4) = %d, %v, %v", i, r, ok)
	}
	if i, _, ok := n.SetFor(addr("10.189.0.1")); ok || i != -1 {
		t.Errorf("SetFor(10.189.0.1) = %d, %v; want -1, false", i, ok)
	}
}

// --- etcdConfig --------------------------------------------------------------

func TestParseEtcd(t *testing.T) {
	tests := []struct {
		name     string
		etcd     string // the etcdConfig object
		ipam     string // extra ipam members
		wantEP   []string
		wantTLS  bool
		wantCA   string
		wantPfx  string
		wantKube string
		wantWarn string
	}{
		{
			name:   "single http endpoint",
			etcd:   `{"etcdURL":"http://10.0.0.1:2379"}`,
			wantEP: []string{"http://10.0.0.1:2379"}, wantPfx: config.DefaultEtcdPrefix, wantKube: config.DefaultKubeConfig,
		},
		{
			name:    "list with spaces and empty entries",
			etcd:    `{"etcdURL":" https://a:2379 , ,https://b:2379,"}`,
			wantEP:  []string{"https://a:2379", "https://b:2379"},
			wantTLS: true, wantPfx: config.DefaultEtcdPrefix, wantKube: config.DefaultKubeConfig,
		},
		{
			name:    "upper-case scheme is TLS",
			etcd:    `{"etcdURL":"HTTPS://a:2379"}`,
			wantEP:  []string{"HTTPS://a:2379"},
			wantTLS: true, wantPfx: config.DefaultEtcdPrefix, wantKube: config.DefaultKubeConfig,
		},
		{
			name:    "TLS follows the first endpoint (original rule)",
			etcd:    `{"etcdURL":"https://a:2379,http://b:2379"}`,
			wantEP:  []string{"https://a:2379", "http://b:2379"},
			wantTLS: true, wantPfx: config.DefaultEtcdPrefix, wantKube: config.DefaultKubeConfig,
		},
		{
			name:   "correctly spelled etcdTrustedCAFile alias",
			etcd:   `{"etcdURL":"https://a:2379","etcdTrustedCAFile":"/ca.pem"}`,
			wantEP: []string{"https://a:2379"}, wantTLS: true, wantCA: "/ca.pem",
			wantPfx: config.DefaultEtcdPrefix, wantKube: config.DefaultKubeConfig,
		},
		{
			name:   "both CA spellings agreeing",
			etcd:   `{"etcdURL":"https://a:2379","etcdTrustedCAFile":"/ca.pem","etcdTrustedCAFileFile":"/ca.pem"}`,
			wantEP: []string{"https://a:2379"}, wantTLS: true, wantCA: "/ca.pem",
			wantPfx: config.DefaultEtcdPrefix, wantKube: config.DefaultKubeConfig,
		},
		{
			name:   "etcdPrefix trailing slash trimmed",
			etcd:   `{"etcdURL":"http://a:2379","etcdPrefix":"/my/ipam/"}`,
			wantEP: []string{"http://a:2379"}, wantPfx: "/my/ipam", wantKube: config.DefaultKubeConfig,
		},
		{
			name:   "etcdPrefix root",
			etcd:   `{"etcdURL":"http://a:2379","etcdPrefix":"/"}`,
			wantEP: []string{"http://a:2379"}, wantPfx: "", wantKube: config.DefaultKubeConfig,
		},
		{
			name:   "kubeConfig misplaced inside etcdConfig is used with a warning",
			etcd:   `{"etcdURL":"http://a:2379","kubeConfig":"/etc/k/misplaced.kubeconfig"}`,
			wantEP: []string{"http://a:2379"}, wantPfx: config.DefaultEtcdPrefix,
			wantKube: "/etc/k/misplaced.kubeconfig", wantWarn: "belongs directly under ipam; it was used",
		},
		{
			name:   "kubeConfig in both places: ipam wins, still a warning",
			etcd:   `{"etcdURL":"http://a:2379","kubeConfig":"/etc/k/misplaced.kubeconfig"}`,
			ipam:   `"kubeConfig":"/etc/k/right.kubeconfig"`,
			wantEP: []string{"http://a:2379"}, wantPfx: config.DefaultEtcdPrefix,
			wantKube: "/etc/k/right.kubeconfig", wantWarn: "belongs directly under ipam; it is ignored",
		},
		{
			name:   "kubeConfig in ipam only",
			etcd:   `{"etcdURL":"http://a:2379"}`,
			ipam:   `"kubeConfig":"/etc/k/right.kubeconfig"`,
			wantEP: []string{"http://a:2379"}, wantPfx: config.DefaultEtcdPrefix, wantKube: "/etc/k/right.kubeconfig",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			extra := v4
			if tc.ipam != "" {
				extra += "," + tc.ipam
			}
			data := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"n","ipam":{"etcdConfig":%s,%s}}`, tc.etcd, extra)
			n := mustParse(t, []byte(data))
			if !slices.Equal(n.Etcd.Endpoints, tc.wantEP) {
				t.Errorf("Endpoints = %q, want %q", n.Etcd.Endpoints, tc.wantEP)
			}
			if n.Etcd.TLS() != tc.wantTLS {
				t.Errorf("TLS() = %v, want %v", n.Etcd.TLS(), tc.wantTLS)
			}
			if n.Etcd.CAFile != tc.wantCA {
				t.Errorf("CAFile = %q, want %q", n.Etcd.CAFile, tc.wantCA)
			}
			if n.Etcd.Prefix != tc.wantPfx {
				t.Errorf("Prefix = %q, want %q", n.Etcd.Prefix, tc.wantPfx)
			}
			if n.KubeConfig != tc.wantKube {
				t.Errorf("KubeConfig = %q, want %q", n.KubeConfig, tc.wantKube)
			}
			if tc.wantWarn == "" {
				if len(n.Warnings) != 0 {
					t.Errorf("unexpected warnings %q", n.Warnings)
				}
			} else if !containsSub(n.Warnings, tc.wantWarn) {
				t.Errorf("Warnings %q lack %q", n.Warnings, tc.wantWarn)
			}
		})
	}
}

func TestEtcdTLSZeroValue(t *testing.T) {
	if (config.Etcd{}).TLS() {
		t.Error("TLS() with no endpoints")
	}
}

// --- keys are matched case-insensitively, as by the original ----------------

func TestParseCaseInsensitiveKeys(t *testing.T) {
	data := `{"CNIVERSION":"0.3.1","NAME":"ci","IPAM":{
		"ETCDCONFIG":{"etcdurl":"https://e1:2379,https://e2:2379","ETCDCERTFILE":"/c","etcdkeyfile":"/k","etcdtrustedcafilefile":"/ca","EtcdPrefix":"/p"},
		"kubeconfig":"/kc","SUBNET":"10.2.0.0/16","rangestart":"10.2.0.10","RANGEEND":"10.2.0.20","Gateway":"10.2.0.254",
		"resolvconf":"/r","ROUTES":[{"DST":"10.3.0.0/16","gw":"10.2.0.254"}],"fixedstart":"10.2.1.0","FIXEDEND":"10.2.1.9",
		"releasecooldown":"5s","TIMEOUT":"7s","loglevel":"DEBUG","logfile":"/l","nodename":"nn","podlookup":false}}`
	n := mustParse(t, []byte(data))
	if n.CNIVersion != "0.3.1" || n.Name != "ci" {
		t.Errorf("CNIVersion %q Name %q", n.CNIVersion, n.Name)
	}
	if !slices.Equal(n.Etcd.Endpoints, []string{"https://e1:2379", "https://e2:2379"}) {
		t.Errorf("Endpoints = %q", n.Etcd.Endpoints)
	}
	if n.Etcd.CertFile != "/c" || n.Etcd.KeyFile != "/k" || n.Etcd.CAFile != "/ca" || n.Etcd.Prefix != "/p" {
		t.Errorf("Etcd = %+v", n.Etcd)
	}
	if n.KubeConfig != "/kc" || n.ResolvConf != "/r" || n.LogFile != "/l" || n.NodeName != "nn" || n.PodLookup {
		t.Errorf("KubeConfig %q ResolvConf %q LogFile %q NodeName %q PodLookup %v", n.KubeConfig, n.ResolvConf, n.LogFile, n.NodeName, n.PodLookup)
	}
	checkRange(t, n.RangeSets[0][0], "10.2.0.0/16", "10.2.0.10", "10.2.0.20", "10.2.0.254")
	if len(n.Routes) != 1 || n.Routes[0].Dst.String() != "10.3.0.0/16" || n.Routes[0].GW.String() != "10.2.0.254" {
		t.Errorf("Routes = %v", n.Routes)
	}
	if n.FixedStart != addr("10.2.1.0") || n.FixedEnd != addr("10.2.1.9") {
		t.Errorf("fixed block %s-%s", n.FixedStart, n.FixedEnd)
	}
	if n.ReleaseCooldown != 5*time.Second || n.Timeout != 7*time.Second || n.LogLevel != "debug" {
		t.Errorf("ReleaseCooldown %v Timeout %v LogLevel %q", n.ReleaseCooldown, n.Timeout, n.LogLevel)
	}
}

// --- defaults of a range -----------------------------------------------------

func TestParseRangeDefaults(t *testing.T) {
	tests := []struct {
		name                   string
		ipam                   string
		subnet, start, end, gw string
	}{
		{"v4 /24 defaults", `"subnet":"10.1.0.0/24"`, "10.1.0.0/24", "10.1.0.1", "10.1.0.254", "10.1.0.1"},
		{"v4 /16 defaults", `"subnet":"10.188.0.0/16"`, "10.188.0.0/16", "10.188.0.1", "10.188.255.254", "10.188.0.1"},
		{"v4 /30 smallest", `"subnet":"10.1.0.4/30"`, "10.1.0.4/30", "10.1.0.5", "10.1.0.6", "10.1.0.5"},
		{"v4 only start", `"subnet":"10.1.0.0/24","rangeStart":"10.1.0.100"`, "10.1.0.0/24", "10.1.0.100", "10.1.0.254", "10.1.0.1"},
		{"v4 only end", `"subnet":"10.1.0.0/24","rangeEnd":"10.1.0.50"`, "10.1.0.0/24", "10.1.0.1", "10.1.0.50", "10.1.0.1"},
		{"v4 gateway elsewhere", `"subnet":"10.1.0.0/24","gateway":"10.1.0.254"`, "10.1.0.0/24", "10.1.0.1", "10.1.0.254", "10.1.0.254"},
		{"v4 single-address range", `"subnet":"10.1.0.0/24","rangeStart":"10.1.0.7","rangeEnd":"10.1.0.7"`, "10.1.0.0/24", "10.1.0.7", "10.1.0.7", "10.1.0.1"},
		{"v4 spaces trimmed", `"subnet":" 10.1.0.0/24 ","rangeStart":" 10.1.0.9 ","gateway":" 10.1.0.3 "`, "10.1.0.0/24", "10.1.0.9", "10.1.0.254", "10.1.0.3"},
		{"v6 /64 defaults: last address, no broadcast", `"subnet":"fd00:1::/64"`, "fd00:1::/64", "fd00:1::1", "fd00:1::ffff:ffff:ffff:ffff", "fd00:1::1"},
		{"v6 /126 smallest", `"subnet":"fd00::/126"`, "fd00::/126", "fd00::1", "fd00::3", "fd00::1"},
		{"v6 explicit last address", `"subnet":"fd00::/120","rangeStart":"fd00::10","rangeEnd":"fd00::ff"`, "fd00::/120", "fd00::10", "fd00::ff", "fd00::1"},
		{"v4-mapped addresses unmapped", `"subnet":"10.1.0.0/24","rangeStart":"::ffff:10.1.0.20","gateway":"::ffff:10.1.0.2"`, "10.1.0.0/24", "10.1.0.20", "10.1.0.254", "10.1.0.2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := mustParse(t, netconf("1.0.0", tc.ipam))
			if len(n.RangeSets) != 1 || len(n.RangeSets[0]) != 1 {
				t.Fatalf("RangeSets = %+v", n.RangeSets)
			}
			checkRange(t, n.RangeSets[0][0], tc.subnet, tc.start, tc.end, tc.gw)
		})
	}
}

func TestParseTopLevelDefaults(t *testing.T) {
	t.Setenv("KUBE_IPAM_NODE_NAME", "node-from-env")
	n := mustParse(t, netconf("1.0.0", v4))
	if n.KubeConfig != config.DefaultKubeConfig {
		t.Errorf("KubeConfig = %q", n.KubeConfig)
	}
	if n.LogFile != config.DefaultLogFile || n.LogLevel != "info" {
		t.Errorf("LogFile %q LogLevel %q", n.LogFile, n.LogLevel)
	}
	if n.ReleaseCooldown != 30*time.Second || n.Timeout != 30*time.Second {
		t.Errorf("ReleaseCooldown %v Timeout %v", n.ReleaseCooldown, n.Timeout)
	}
	if !n.PodLookup {
		t.Error("PodLookup default false")
	}
	if n.NodeName != "node-from-env" {
		t.Errorf("NodeName = %q, want KUBE_IPAM_NODE_NAME", n.NodeName)
	}
	if len(n.Warnings) != 0 || len(n.Notes) != 0 {
		t.Errorf("Warnings %q Notes %q", n.Warnings, n.Notes)
	}
	if n.Etcd.TLS() {
		t.Error("TLS() for http")
	}

	n = mustParse(t, netconf("1.0.0", v4+`,"nodeName":"explicit","podLookup":false`))
	if n.NodeName != "explicit" || n.PodLookup {
		t.Errorf("NodeName %q PodLookup %v", n.NodeName, n.PodLookup)
	}

	t.Setenv("KUBE_IPAM_NODE_NAME", "")
	host, _ := os.Hostname()
	if n := mustParse(t, netconf("1.0.0", v4)); n.NodeName != host {
		t.Errorf("NodeName = %q, want hostname %q", n.NodeName, host)
	}
}

func TestParseNames(t *testing.T) {
	tests := []struct {
		name     string
		data     string
		wantName string
		wantNote bool
	}{
		{"top-level only", `{"name":"top","ipam":{` + etcdHTTP + `,` + v4 + `}}`, "top", false},
		{"ipam.name used when top-level missing", `{"ipam":{"name":"inner",` + etcdHTTP + `,` + v4 + `}}`, "inner", false},
		{"same name in both: no note", `{"name":"same","ipam":{"name":"same",` + etcdHTTP + `,` + v4 + `}}`, "same", false},
		{"different names: top-level wins, note", `{"name":"top","ipam":{"name":"inner",` + etcdHTTP + `,` + v4 + `}}`, "top", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := mustParse(t, []byte(tc.data))
			if n.Name != tc.wantName {
				t.Errorf("Name = %q, want %q", n.Name, tc.wantName)
			}
			if got := containsSub(n.Notes, "is ignored"); got != tc.wantNote {
				t.Errorf("Notes = %q, want note %v", n.Notes, tc.wantNote)
			}
		})
	}
}

// --- range sets --------------------------------------------------------------

func TestParseRangeSets(t *testing.T) {
	type rng struct{ subnet, start, end, gw string }
	tests := []struct {
		name    string
		data    []byte
		want    [][]rng
		familes []int
	}{
		{
			name: "ranges: v4 set and v6 set",
			data: netconf("1.0.0", `"ranges":[[{"subnet":"10.10.0.0/24","rangeStart":"10.10.0.10","rangeEnd":"10.10.0.20","gateway":"10.10.0.1"}],[{"subnet":"fd10::/64","rangeStart":"fd10::10","rangeEnd":"fd10::20","gateway":"fd10::1"}]]`),
			want: [][]rng{
				{{"10.10.0.0/24", "10.10.0.10", "10.10.0.20", "10.10.0.1"}},
				{{"fd10::/64", "fd10::10", "fd10::20", "fd10::1"}},
			},
			familes: []int{4, 6},
		},
		{
			name: "set with two subnets, defaults per range",
			data: netconf("1.0.0", `"ranges":[[{"subnet":"10.10.0.0/24"},{"subnet":"10.20.0.0/24","gateway":"10.20.0.254"}]]`),
			want: [][]rng{{
				{"10.10.0.0/24", "10.10.0.1", "10.10.0.254", "10.10.0.1"},
				{"10.20.0.0/24", "10.20.0.1", "10.20.0.254", "10.20.0.254"},
			}},
			familes: []int{4},
		},
		{
			name: "set with two disjoint ranges of one subnet",
			data: netconf("1.0.0", `"ranges":[[{"subnet":"10.10.0.0/24","rangeStart":"10.10.0.100","rangeEnd":"10.10.0.120"},{"subnet":"10.10.0.0/24","rangeStart":"10.10.0.10","rangeEnd":"10.10.0.20"}]]`),
			want: [][]rng{{
				{"10.10.0.0/24", "10.10.0.100", "10.10.0.120", "10.10.0.1"},
				{"10.10.0.0/24", "10.10.0.10", "10.10.0.20", "10.10.0.1"},
			}},
			familes: []int{4},
		},
		{
			name: "legacy subnet comes before ranges",
			data: netconf("1.0.0", `"subnet":"10.1.0.0/24","ranges":[[{"subnet":"fd00::/64"}]]`),
			want: [][]rng{
				{{"10.1.0.0/24", "10.1.0.1", "10.1.0.254", "10.1.0.1"}},
				{{"fd00::/64", "fd00::1", "fd00::ffff:ffff:ffff:ffff", "fd00::1"}},
			},
			familes: []int{4, 6},
		},
		{
			name: "runtimeConfig.ipRanges prepended to subnet and ranges",
			data: []byte(`{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ipRanges":[[{"subnet":"10.99.0.0/24","rangeStart":"10.99.0.5","rangeEnd":"10.99.0.6"}]]},
				"ipam":{` + etcdHTTP + `,"subnet":"10.1.0.0/24","ranges":[[{"subnet":"10.2.0.0/24"}]]}}`),
			want: [][]rng{
				{{"10.99.0.0/24", "10.99.0.5", "10.99.0.6", "10.99.0.1"}},
				{{"10.1.0.0/24", "10.1.0.1", "10.1.0.254", "10.1.0.1"}},
				{{"10.2.0.0/24", "10.2.0.1", "10.2.0.254", "10.2.0.1"}},
			},
			familes: []int{4, 4, 4},
		},
		{
			name: "runtimeConfig.ipRanges alone",
			data: []byte(`{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ipRanges":[[{"subnet":"fd99::/120"}]]},"ipam":{` + etcdHTTP + `}}`),
			want: [][]rng{
				{{"fd99::/120", "fd99::1", "fd99::ff", "fd99::1"}},
			},
			familes: []int{6},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := mustParse(t, tc.data)
			if len(n.RangeSets) != len(tc.want) {
				t.Fatalf("got %d range sets %+v, want %d", len(n.RangeSets), n.RangeSets, len(tc.want))
			}
			for i, set := range tc.want {
				if len(n.RangeSets[i]) != len(set) {
					t.Fatalf("set %d has %d ranges, want %d", i, len(n.RangeSets[i]), len(set))
				}
				if f := n.RangeSets[i].Family(); f != tc.familes[i] {
					t.Errorf("set %d family %d, want %d", i, f, tc.familes[i])
				}
				for j, r := range set {
					checkRange(t, n.RangeSets[i][j], r.subnet, r.start, r.end, r.gw)
				}
			}
		})
	}
}

// --- legacy cniVersion: one address per family -------------------------------

func TestParseLegacyVersionSets(t *testing.T) {
	twoV4 := `"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.2.0.0/24"}]]`
	twoV6 := `"ranges":[[{"subnet":"fd01::/64"}],[{"subnet":"fd02::/64"}]]`
	v4v6 := `"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd01::/64"}]]`
	tests := []struct {
		version string
		ranges  string
		wantErr bool
	}{
		{"0.1.0", twoV4, true},
		{"0.2.0", twoV4, true},
		{"", twoV4, true},
		{"0.2.0", twoV6, true},
		{"0.1.0", v4v6, false},
		{"0.2.0", v4v6, false},
		{"", v4v6, false},
		{"0.2.0", `"subnet":"10.1.0.0/24"`, false},
		{"0.3.0", twoV4, false},
		{"0.3.1", twoV4, false},
		{"0.4.0", twoV4, false},
		{"1.0.0", twoV4, false},
		{"1.1.0", twoV6, false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%q/%s", tc.version, tc.ranges), func(t *testing.T) {
			var data []byte
			if tc.version == "" {
				data = []byte(`{"name":"n","ipam":{` + etcdHTTP + `,` + tc.ranges + `}}`)
			} else {
				data = netconf(tc.version, tc.ranges)
			}
			n, err := config.Parse(data)
			if tc.wantErr {
				wantConfigError(t, err, "cniVersion", "one IPv")
				return
			}
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			if n.CNIVersion != tc.version {
				t.Errorf("CNIVersion = %q", n.CNIVersion)
			}
		})
	}
}

// --- fixed block -------------------------------------------------------------

func TestParseFixedBlock(t *testing.T) {
	n := mustParse(t, netconf("1.0.0", `"subnet":"10.188.0.0/16","rangeStart":"10.188.0.10","rangeEnd":"10.188.0.200","fixedStart":"10.188.1.0","fixedEnd":"10.188.1.255"`))
	if !n.HasFixedBlock() {
		t.Fatal("HasFixedBlock() = false")
	}
	if n.FixedStart != addr("10.188.1.0") || n.FixedEnd != addr("10.188.1.255") {
		t.Errorf("fixed block %s-%s", n.FixedStart, n.FixedEnd)
	}
	tests := []struct {
		ip   string
		want bool
	}{
		{"10.188.1.0", true},
		{"10.188.1.255", true},
		{"10.188.1.77", true},
		{"10.188.0.255", false},
		{"10.188.2.0", false},
		{"10.188.0.50", false},
		{"::ffff:10.188.1.5", false}, // not unmapped here: callers unmap
		{"fd00::1", false},
	}
	for _, tc := range tests {
		if got := n.InFixedBlock(addr(tc.ip)); got != tc.want {
			t.Errorf("InFixedBlock(%s) = %v, want %v", tc.ip, got, tc.want)
		}
	}

	// A single-address block and a v6 block in a second set.
	n = mustParse(t, netconf("1.0.0", `"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}]],"fixedStart":"fd00::100","fixedEnd":"fd00::100"`))
	if !n.InFixedBlock(addr("fd00::100")) || n.InFixedBlock(addr("fd00::101")) || n.InFixedBlock(addr("10.1.0.5")) {
		t.Error("single-address v6 fixed block membership wrong")
	}

	// Without a block, nothing is in it.
	n = mustParse(t, netconf("1.0.0", v4))
	if n.HasFixedBlock() || n.InFixedBlock(addr("10.1.0.5")) {
		t.Error("no fixed block configured, but an address is in it")
	}
}

// --- durations and log level -------------------------------------------------

func TestParseDurationsAndLogLevel(t *testing.T) {
	tests := []struct {
		name         string
		ipam         string
		wantCooldown time.Duration
		wantTimeout  time.Duration
		wantLevel    string
	}{
		{"defaults", ``, 30 * time.Second, 30 * time.Second, "info"},
		{"cooldown zero", `"releaseCooldown":"0s"`, 0, 30 * time.Second, "info"},
		{"cooldown bare zero", `"releaseCooldown":"0"`, 0, 30 * time.Second, "info"},
		{"cooldown compound", `"releaseCooldown":"1m30s"`, 90 * time.Second, 30 * time.Second, "info"},
		{"timeout", `"timeout":"250ms"`, 30 * time.Second, 250 * time.Millisecond, "info"},
		{"timeout empty means default", `"timeout":""`, 30 * time.Second, 30 * time.Second, "info"},
		{"level debug", `"logLevel":"debug"`, 30 * time.Second, 30 * time.Second, "debug"},
		{"level upper-case", `"logLevel":"WARN"`, 30 * time.Second, 30 * time.Second, "warn"},
		{"level error", `"logLevel":"Error"`, 30 * time.Second, 30 * time.Second, "error"},
		{"level info", `"logLevel":"info"`, 30 * time.Second, 30 * time.Second, "info"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			extra := v4
			if tc.ipam != "" {
				extra += "," + tc.ipam
			}
			n := mustParse(t, netconf("1.0.0", extra))
			if n.ReleaseCooldown != tc.wantCooldown {
				t.Errorf("ReleaseCooldown = %v, want %v", n.ReleaseCooldown, tc.wantCooldown)
			}
			if n.Timeout != tc.wantTimeout {
				t.Errorf("Timeout = %v, want %v", n.Timeout, tc.wantTimeout)
			}
			if n.LogLevel != tc.wantLevel {
				t.Errorf("LogLevel = %q, want %q", n.LogLevel, tc.wantLevel)
			}
		})
	}
}

// --- requested IPs -----------------------------------------------------------

func TestParseRequestedIPs(t *testing.T) {
	data := `{"cniVersion":"1.0.0","name":"n","ipam":{` + etcdHTTP + `,` + v4 + `},
		"runtimeConfig":{"ips":["10.1.0.5","fd00::5/64"]},"args":{"cni":{"ips":["10.1.0.6/24"," ::ffff:10.1.0.7 "]}}}`
	n := mustParse(t, []byte(data))
	want := []config.IPSpec{
		{Addr: addr("10.1.0.5"), Bits: -1},
		{Addr: addr("fd00::5"), Bits: 64},
		{Addr: addr("10.1.0.6"), Bits: 24},
		{Addr: addr("10.1.0.7"), Bits: -1},
	}
	if !slices.Equal(n.RequestedIPs, want) {
		t.Errorf("RequestedIPs = %v, want %v", n.RequestedIPs, want)
	}

	for _, bad := range []string{
		`"runtimeConfig":{"ips":["10.1.0.300"]}`,
		`"args":{"cni":{"ips":["10.1.0.5","nope"]}}`,
		`"args":{"cni":{"ips":[""]}}`,
	} {
		_, err := config.Parse([]byte(`{"cniVersion":"1.0.0","name":"n","ipam":{` + etcdHTTP + `,` + v4 + `},` + bad + `}`))
		wantConfigError(t, err, "requested IP")
	}
}

func TestParsePassthrough(t *testing.T) {
	data := `{"cniVersion":"1.1.0","name":"n","ipam":{` + etcdHTTP + `,` + v4 + `},
		"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"},{"containerID":"c2","ifname":"net1"}],
		"prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.1.0.5/24"}]}}`
	n := mustParse(t, []byte(data))
	if len(n.ValidAttachments) != 2 || n.ValidAttachments[0].ContainerID != "c1" || n.ValidAttachments[1].IfName != "net1" {
		t.Errorf("ValidAttachments = %+v", n.ValidAttachments)
	}
	ips, ok := n.RawPrevResult["ips"].([]any)
	if !ok || len(ips) != 1 {
		t.Errorf("RawPrevResult = %v", n.RawPrevResult)
	}
	n = mustParse(t, netconf("1.0.0", v4))
	if n.RawPrevResult != nil || n.ValidAttachments != nil {
		t.Errorf("RawPrevResult %v ValidAttachments %v without the keys", n.RawPrevResult, n.ValidAttachments)
	}
}

// --- every invalid config is a *config.Error naming the problem --------------

func TestParseErrors(t *testing.T) {
	noEtcd := func(ipam string) []byte {
		return []byte(`{"cniVersion":"1.0.0","name":"n","ipam":{` + ipam + `}}`)
	}
	withEtcd := func(etcd string) []byte {
		return []byte(`{"cniVersion":"1.0.0","name":"n","ipam":{"etcdConfig":` + etcd + `,` + v4 + `}}`)
	}
	tests := []struct {
		name  string
		data  []byte
		parts []string
	}{
		// document level
		{"not JSON", []byte(`{"name":`), []string{"not valid JSON"}},
		{"empty input", []byte(``), []string{"not valid JSON"}},
		{"wrong type for subnet", netconf("1.0.0", `"subnet":24`), []string{"not valid JSON"}},
		{"releaseCooldown as a number", netconf("1.0.0", v4+`,"releaseCooldown":30`), []string{"not valid JSON"}},
		{"missing ipam", []byte(`{"cniVersion":"1.0.0","name":"n","type":"macvlan"}`), []string{"IPAM config missing 'ipam' key"}},
		{"null ipam", []byte(`{"cniVersion":"1.0.0","name":"n","ipam":null}`), []string{"missing 'ipam'"}},
		{"no name anywhere", []byte(`{"cniVersion":"1.0.0","ipam":{` + etcdHTTP + `,` + v4 + `}}`), []string{"name"}},
		{"name with slash", []byte(`{"cniVersion":"1.0.0","name":"a/b","ipam":{` + etcdHTTP + `,` + v4 + `}}`), []string{`"a/b"`}},
		{"name with spaces", []byte(`{"cniVersion":"1.0.0","name":" a","ipam":{` + etcdHTTP + `,` + v4 + `}}`), []string{`" a"`}},

		// etcdConfig
		{"missing etcdConfig", noEtcd(v4), []string{"etcdConfig is required"}},
		{"null etcdConfig", noEtcd(`"etcdConfig":null,` + v4), []string{"etcdConfig is required"}},
		{"empty etcdURL", withEtcd(`{"etcdURL":""}`), []string{"etcdURL is empty"}},
		{"missing etcdURL", withEtcd(`{"etcdCertFile":"/c","etcdKeyFile":"/k"}`), []string{"etcdURL is empty"}},
		{"only commas in etcdURL", withEtcd(`{"etcdURL":" , ,"}`), []string{"etcdURL is empty"}},
		{"bad scheme", withEtcd(`{"etcdURL":"unix:///run/etcd.sock"}`), []string{"etcdURL", "unix:///run/etcd.sock"}},
		{"no scheme", withEtcd(`{"etcdURL":"10.0.0.1:2379"}`), []string{"etcdURL", "10.0.0.1:2379"}},
		{"second endpoint bad", withEtcd(`{"etcdURL":"https://a:2379,b:2379"}`), []string{"etcdURL", `"b:2379"`}},
		{"CA spellings disagree", withEtcd(`{"etcdURL":"https://a:2379","etcdTrustedCAFileFile":"/a.pem","etcdTrustedCAFile":"/b.pem"}`), []string{"disagree", "/a.pem", "/b.pem"}},
		{"cert without key", withEtcd(`{"etcdURL":"https://a:2379","etcdCertFile":"/c"}`), []string{"etcdCertFile and etcdKeyFile"}},
		{"key without cert", withEtcd(`{"etcdURL":"https://a:2379","etcdKeyFile":"/k"}`), []string{"etcdCertFile and etcdKeyFile"}},
		{"relative etcdPrefix", withEtcd(`{"etcdURL":"http://a:2379","etcdPrefix":"kube-ipam"}`), []string{"etcdPrefix", "start with '/'"}},

		// ranges
		{"no subnet nor ranges", netconf("1.0.0", ``), []string{"'subnet' or 'ranges'"}},
		{"rangeStart without subnet", netconf("1.0.0", `"rangeStart":"10.0.0.5"`), []string{"need ipam.subnet"}},
		{"gateway without subnet", netconf("1.0.0", `"gateway":"10.0.0.1","ranges":[[{"subnet":"10.0.0.0/24"}]]`), []string{"need ipam.subnet"}},
		{"empty range set", netconf("1.0.0", `"ranges":[[]]`), []string{"range set 0 is empty"}},
		{"subnet not a CIDR", netconf("1.0.0", `"subnet":"10.0.0.0"`), []string{"not a CIDR"}},
		{"subnet garbage", netconf("1.0.0", `"subnet":"ten/8"`), []string{"not a CIDR"}},
		{"subnet host bits", netconf("1.0.0", `"subnet":"10.188.0.5/16"`), []string{"host bits", "10.188.0.0/16"}},
		{"v6 subnet host bits", netconf("1.0.0", `"subnet":"fd00::1/64"`), []string{"host bits", "fd00::/64"}},
		{"v4 /31 too small", netconf("1.0.0", `"subnet":"10.0.0.0/31"`), []string{"too small"}},
		{"v4 /32 too small", netconf("1.0.0", `"subnet":"10.0.0.1/32"`), []string{"too small"}},
		{"v6 /127 too small", netconf("1.0.0", `"subnet":"fd00::/127"`), []string{"too small"}},
		{"v6 /128 too small", netconf("1.0.0", `"subnet":"fd00::1/128"`), []string{"too small"}},
		{"rangeStart garbage", netconf("1.0.0", `"subnet":"10.0.0.0/24","rangeStart":"x"`), []string{"rangeStart", "not an IP"}},
		{"rangeEnd garbage", netconf("1.0.0", `"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.256"`), []string{"rangeEnd", "not an IP"}},
		{"gateway garbage", netconf("1.0.0", `"subnet":"10.0.0.0/24","gateway":"gw"`), []string{"gateway", "not an IP"}},
		{"rangeStart outside subnet", netconf("1.0.0", `"subnet":"10.0.0.0/24","rangeStart":"10.0.1.5"`), []string{"rangeStart 10.0.1.5 is outside"}},
		{"rangeEnd outside subnet", netconf("1.0.0", `"subnet":"10.0.0.0/24","rangeEnd":"10.0.1.5"`), []string{"rangeEnd 10.0.1.5 is outside"}},
		{"rangeStart other family", netconf("1.0.0", `"subnet":"10.0.0.0/24","rangeStart":"fd00::5"`), []string{"rangeStart", "outside"}},
		{"rangeStart > rangeEnd", netconf("1.0.0", `"subnet":"10.0.0.0/24","rangeStart":"10.0.0.50","rangeEnd":"10.0.0.40"`), []string{"after rangeEnd"}},
		{"rangeStart network address", netconf("1.0.0", `"subnet":"10.0.0.0/24","rangeStart":"10.0.0.0"`), []string{"rangeStart", "network or broadcast"}},
		{"rangeEnd broadcast", netconf("1.0.0", `"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.255"`), []string{"rangeEnd", "network or broadcast"}},
		{"rangeStart broadcast", netconf("1.0.0", `"subnet":"10.0.0.0/24","rangeStart":"10.0.0.255"`), []string{"rangeStart", "network or broadcast"}},
		{"v6 rangeStart network address", netconf("1.0.0", `"subnet":"fd00::/64","rangeStart":"fd00::"`), []string{"rangeStart", "network"}},
		{"gateway outside subnet", netconf("1.0.0", `"subnet":"10.0.0.0/24","gateway":"10.0.1.1"`), []string{"gateway 10.0.1.1 is outside"}},
		{"error names the range set", netconf("1.0.0", `"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.2.0.0/24"},{"subnet":"10.3.0.0/24","gateway":"10.4.0.1"}]]`), []string{"range set 1, range 1", "gateway"}},
		{"overlapping sets", netconf("1.0.0", `"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.0/25"}]]`), []string{"range sets 0 and 1 overlap"}},
		{"legacy subnet overlapping ranges", netconf("1.0.0", `"subnet":"10.0.0.0/16","ranges":[[{"subnet":"10.0.5.0/24"}]]`), []string{"overlap"}},
		{"runtime ipRanges overlapping subnet", []byte(`{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ipRanges":[[{"subnet":"10.1.0.0/24"}]]},"ipam":{` + etcdHTTP + `,` + v4 + `}}`), []string{"overlap"}},
		{"overlapping v6 sets", netconf("1.0.0", `"ranges":[[{"subnet":"fd00::/48"}],[{"subnet":"fd00:0:0:1::/64"}]]`), []string{"overlap"}},
		{"mixed family in a set", netconf("1.0.0", `"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]`), []string{"mixes IPv4 and IPv6"}},
		{"overlapping ranges in a set", netconf("1.0.0", `"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.10","rangeEnd":"10.0.0.50"},{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.40","rangeEnd":"10.0.0.60"}]]`), []string{"ranges 0 and 1 overlap"}},
		{"touching ranges in a set", netconf("1.0.0", `"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.10","rangeEnd":"10.0.0.50"},{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.50","rangeEnd":"10.0.0.60"}]]`), []string{"overlap"}},
		{"identical subnets in a set", netconf("1.0.0", `"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.0.0/24"}]]`), []string{"overlap"}},

		// fixed block
		{"fixedStart only", netconf("1.0.0", v4+`,"fixedStart":"10.1.0.5"`), []string{"fixedStart and ipam.fixedEnd must be given together"}},
		{"fixedEnd only", netconf("1.0.0", v4+`,"fixedEnd":"10.1.0.5"`), []string{"given together"}},
		{"fixed garbage", netconf("1.0.0", v4+`,"fixedStart":"x","fixedEnd":"10.1.0.5"`), []string{"fixedStart", "not an IP"}},
		{"fixedEnd garbage", netconf("1.0.0", v4+`,"fixedStart":"10.1.0.5","fixedEnd":"y"`), []string{"fixedEnd", "not an IP"}},
		{"fixed outside subnets", netconf("1.0.0", v4+`,"fixedStart":"10.9.0.5","fixedEnd":"10.9.0.9"`), []string{"one configured subnet"}},
		{"fixedEnd outside subnet", netconf("1.0.0", v4+`,"fixedStart":"10.1.0.5","fixedEnd":"10.1.1.9"`), []string{"one configured subnet"}},
		{"fixed spans two subnets", netconf("1.0.0", `"ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"10.1.1.0/24"}]],"fixedStart":"10.1.0.200","fixedEnd":"10.1.1.9"`), []string{"one configured subnet"}},
		{"fixed mixed family", netconf("1.0.0", `"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}]],"fixedStart":"10.1.0.5","fixedEnd":"fd00::9"`), []string{"one configured subnet"}},
		{"fixed reversed", netconf("1.0.0", v4+`,"fixedStart":"10.1.0.9","fixedEnd":"10.1.0.5"`), []string{"fixedStart 10.1.0.9 is after fixedEnd 10.1.0.5"}},

		// durations, log level
		{"cooldown garbage", netconf("1.0.0", v4+`,"releaseCooldown":"soon"`), []string{"releaseCooldown", `"soon"`}},
		{"cooldown without unit", netconf("1.0.0", v4+`,"releaseCooldown":"30"`), []string{"releaseCooldown"}},
		{"cooldown negative", netconf("1.0.0", v4+`,"releaseCooldown":"-1s"`), []string{"releaseCooldown", "non-negative"}},
		{"timeout garbage", netconf("1.0.0", v4+`,"timeout":"long"`), []string{"timeout", `"long"`}},
		{"timeout negative", netconf("1.0.0", v4+`,"timeout":"-5s"`), []string{"timeout"}},
		{"timeout zero", netconf("1.0.0", v4+`,"timeout":"0s"`), []string{"timeout must be positive"}},
		{"bad logLevel", netconf("1.0.0", v4+`,"logLevel":"trace"`), []string{"logLevel", `"trace"`}},
		{"logLevel warning", netconf("1.0.0", v4+`,"logLevel":"warning"`), []string{"logLevel"}},

		// routes
		{"route without dst", netconf("1.0.0", v4+`,"routes":[{"gw":"10.1.0.1"}]`), []string{"routes[0]", "dst"}},
		{"null route", netconf("1.0.0", v4+`,"routes":[{"dst":"10.5.0.0/16"},null]`), []string{"routes[1]"}},
		{"route bad dst", netconf("1.0.0", v4+`,"routes":[{"dst":"nowhere"}]`), []string{"not valid JSON"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := config.Parse(tc.data)
			if n != nil {
				t.Errorf("Parse returned a network with an error: %+v", n)
			}
			wantConfigError(t, err, tc.parts...)
		})
	}
}

func TestConfigErrorMessage(t *testing.T) {
	e := &config.Error{Msg: "boom"}
	if e.Error() != "boom" {
		t.Errorf("Error() = %q", e.Error())
	}
}

func TestParseRoutesWarning(t *testing.T) {
	n := mustParse(t, netconf("1.0.0", v4+`,"routes":[{"dst":"10.5.0.0/16","gw":"10.1.0.1"},{"dst":"fd05::/64"}]`))
	if len(n.Routes) != 2 || n.Routes[0].Dst.String() != "10.5.0.0/16" || n.Routes[0].GW.String() != "10.1.0.1" || n.Routes[1].Dst.String() != "fd05::/64" {
		t.Errorf("Routes = %v", n.Routes)
	}
	if len(n.Warnings) != 0 {
		t.Errorf("no default route, but Warnings %q", n.Warnings)
	}
	n = mustParse(t, netconf("1.0.0", v4+`,"routes":[{"dst":"::/0"}]`))
	if !containsSub(n.Warnings, "default route") {
		t.Errorf("v6 default route: Warnings %q", n.Warnings)
	}
}

// --- ParseIPOrCIDR -----------------------------------------------------------

func TestParseIPOrCIDR(t *testing.T) {
	tests := []struct {
		in       string
		want     string // "" for error
		wantBits int
	}{
		{"10.0.0.5", "10.0.0.5", -1},
		{"  10.0.0.5\t", "10.0.0.5", -1},
		{"10.0.0.5/16", "10.0.0.5", 16},
		{"10.0.0.5/32", "10.0.0.5", 32},
		{"10.0.0.5/0", "10.0.0.5", 0},
		{"fd00::5", "fd00::5", -1},
		{"fd00::5/64", "fd00::5", 64},
		{"FD00::A/128", "fd00::a", 128},
		{"::ffff:10.0.0.1", "10.0.0.1", -1},
		{"::ffff:10.0.0.1/120", "10.0.0.1", 24},
		{"::ffff:10.0.0.1/128", "10.0.0.1", 32},
		{"::ffff:10.0.0.1/96", "10.0.0.1", 0},
		{"::ffff:10.0.0.1/64", "", 0}, // the v4 prefix would be negative
		{"fe80::1%eth0", "", 0},
		{"fe80::1%eth0/64", "", 0},
		{"", "", 0},
		{"   ", "", 0},
		{"garbage", "", 0},
		{"10.0.0.256", "", 0},
		{"10.0.0", "", 0},
		{"10.0.0.5/33", "", 0},
		{"fd00::5/129", "", 0},
		{"10.0.0.5/", "", 0},
		{"/16", "", 0},
		{"10.0.0.5/abc", "", 0},
		{"10.0.0.5/-1", "", 0},
		{"10.0.0.5,10.0.0.6", "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := config.ParseIPOrCIDR(tc.in)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("ParseIPOrCIDR(%q) = %+v, want error", tc.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseIPOrCIDR(%q): %v", tc.in, err)
			}
			if got.Addr != addr(tc.want) || got.Bits != tc.wantBits {
				t.Errorf("ParseIPOrCIDR(%q) = %s bits %d, want %s bits %d", tc.in, got.Addr, got.Bits, tc.want, tc.wantBits)
			}
			if got.Addr.Is4In6() || got.Addr.Zone() != "" {
				t.Errorf("ParseIPOrCIDR(%q) = %s: must be unmapped and zone-free", tc.in, got.Addr)
			}
		})
	}
}

func TestMergeRequests(t *testing.T) {
	spec := func(s string) config.IPSpec {
		p, err := config.ParseIPOrCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		in      []string
		want    string
		wantErr bool
	}{
		{in: nil, want: "[]"},
		{in: []string{"10.188.0.219/16", "10.188.0.219/16"}, want: "[10.188.0.219/16]"},
		{in: []string{"10.188.0.219", "10.188.0.219/16"}, want: "[10.188.0.219/16]"},
		{in: []string{"10.188.0.219/16", "10.188.0.219"}, want: "[10.188.0.219/16]"},
		{in: []string{"10.188.0.219", "10.188.0.218", "10.188.0.219"}, want: "[10.188.0.219/-1 10.188.0.218/-1]"},
		{in: []string{"10.188.0.219/16", "10.188.0.219/24"}, wantErr: true},
	} {
		var in []config.IPSpec
		for _, s := range c.in {
			in = append(in, spec(s))
		}
		got, err := config.MergeRequests(in)
		if (err != nil) != c.wantErr {
			t.Errorf("%v: err %v", c.in, err)
			continue
		}
		var parts []string
		for _, g := range got {
			parts = append(parts, fmt.Sprintf("%s/%d", g.Addr, g.Bits))
		}
		if s := "[" + strings.Join(parts, " ") + "]"; !c.wantErr && s != c.want {
			t.Errorf("%v: got %s, want %s", c.in, s, c.want)
		}
	}
}
