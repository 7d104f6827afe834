package netattach

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestParseNetworks(t *testing.T) {
	type want struct{ ns, name, ifname, ips, mac string }
	cases := []struct {
		in      string
		want    []want
		wantErr string
	}{
		{in: "", want: nil},
		{in: "db-net", want: []want{{ns: "web", name: "db-net"}}},
		{in: "db/db-net@net1, other", want: []want{{ns: "db", name: "db-net", ifname: "net1"}, {ns: "web", name: "other"}}},
		{in: " db-net @ eth9 ", want: []want{{ns: "web", name: "db-net", ifname: "eth9"}}},
		{in: `[{"name":"db-net","namespace":"db","interface":"net1","ips":["10.188.0.219/16"],"mac":"02:00:00:00:00:01"}]`,
			want: []want{{ns: "db", name: "db-net", ifname: "net1", ips: "10.188.0.219/16", mac: "02:00:00:00:00:01"}}},
		{in: `[{"name":"db-net","ips":["10.188.0.219"]},{"name":"x"}]`,
			want: []want{{ns: "web", name: "db-net", ips: "10.188.0.219"}, {ns: "web", name: "x"}}},
		{in: "Db-Net", wantErr: "not a DNS-1123 label"},
		{in: "a/b/c", wantErr: "more than one '/'"},
		{in: "a@b@c", wantErr: "more than one '@'"},
		{in: "db-net@", wantErr: "empty interface name"},
		{in: "db-net@averyveryverylongname", wantErr: "longer than 15"},
		{in: "/db-net", wantErr: "empty namespace"},
		{in: "a,,b", wantErr: "empty network name"},
		{in: `[{"name":"db-net"`, wantErr: "not a JSON list"},
		{in: `{"name":"db-net"}`, wantErr: "not a JSON list"},
		{in: `[{"namespace":"db"}]`, wantErr: "no network name"},
		{in: `[{"name":"db-net","ips":["10.188.0.300"]}]`, wantErr: `"10.188.0.300" is not an address`},
		{in: `[{"name":"db-net","mac":"zz"}]`, wantErr: "mac"},
		{in: `[{"name":"db-net","interface":"net/1"}]`, wantErr: "'/'"},
		{in: `[{"name":"db-net","default-route":["10.0.0.1","10.0.0.2"]}]`, wantErr: "more than one gateway"},
		{in: `[{"name":"db-net","default-route":["nope"]}]`, wantErr: "not a JSON list"},
		{in: `[{"name":"db-net","infiniband-guid":"00:00:00:00:00:00:00:01"}]`, wantErr: "infiniband-guid"},
	}
	for _, c := range cases {
		got, err := ParseNetworks(c.in, "web")
		if c.wantErr != "" {
			var se *SelectionError
			if err == nil || !strings.Contains(err.Error(), c.wantErr) || !errors.As(err, &se) {
				t.Errorf("%q: want a SelectionError with %q, got %v", c.in, c.wantErr, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if len(got) != len(c.want) {
			t.Errorf("%q: got %d networks, want %d", c.in, len(got), len(c.want))
			continue
		}
		for i, w := range c.want {
			g := got[i]
			if g.Namespace != w.ns || g.Name != w.name || g.InterfaceRequest != w.ifname ||
				strings.Join(g.IPRequest, ",") != w.ips || g.MacRequest != w.mac || g.Index != i {
				t.Errorf("%q [%d]: got %+v, want %+v", c.in, i, g, w)
			}
		}
	}
}

func TestParseNetworksJSONExtras(t *testing.T) {
	got, err := ParseNetworks(`[{"name":"n","cni-args":{"k":"v"},"default-route":["10.188.0.1"]}]`, "db")
	if err != nil {
		t.Fatal(err)
	}
	if got[0].CNIArgs == nil || (*got[0].CNIArgs)["k"] != "v" || len(got[0].GatewayRequest) != 1 ||
		!got[0].GatewayRequest[0].Equal(net.ParseIP("10.188.0.1")) || got[0].Ref() != "db/n" {
		t.Fatalf("%+v", got[0])
	}
}

func TestIsolation(t *testing.T) {
	off := Isolation{}
	on := Isolation{Enabled: true, Global: SplitList(" default, shared ,")}
	for _, c := range []struct {
		iso      Isolation
		pod, net string
		want     bool
	}{
		{off, "web", "db", true},
		{on, "web", "web", true},
		{on, "web", "db", false},
		{on, "web", "default", true},
		{on, "web", "shared", true},
	} {
		if got := c.iso.Allows(c.pod, c.net); got != c.want {
			t.Errorf("%+v %s->%s: %v", c.iso, c.pod, c.net, got)
		}
	}
}

func TestConfigOf(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("10-a.conf", `{"cniVersion":"1.0.0","name":"a","type":"bridge"}`)
	write("20-db.conflist", `{"cniVersion":"1.0.0","name":"db-net","plugins":[{"type":"macvlan"}]}`)
	write("30-notes.txt", `{"name":"db-net"}`)
	nad := func(name, config string) *NAD {
		return &NAD{ObjectMeta: metav1.ObjectMeta{Namespace: "db", Name: name}, Spec: nadv1.NetworkAttachmentDefinitionSpec{Config: config}}
	}
	// Bytes kept when named.
	in := `{"cniVersion":"1.0.0", "name":"x","type":"macvlan"}`
	if b, err := ConfigOf(nad("db-net", in), dir); err != nil || string(b) != in {
		t.Fatalf("named config changed: %s %v", b, err)
	}
	// Name injected.
	b, err := ConfigOf(nad("db-net", `{"cniVersion":"1.0.0","type":"macvlan"}`), dir)
	var head map[string]any
	if err != nil || json.Unmarshal(b, &head) != nil || head["name"] != "db-net" || head["type"] != "macvlan" {
		t.Fatalf("name not injected: %s %v", b, err)
	}
	// Empty config: the file of that name in confDir.
	if b, err := ConfigOf(nad("db-net", ""), dir); err != nil || !strings.Contains(string(b), "macvlan") {
		t.Fatalf("confDir lookup: %s %v", b, err)
	}
	if _, err := ConfigOf(nad("nope", " "), dir); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "db/nope has no spec.config") {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := ConfigOf(nad("bad", "{not json"), dir); err == nil || !strings.Contains(err.Error(), "db/bad: spec.config") {
		t.Fatalf("bad JSON: %v", err)
	}
	// Paths.
	if b, f, err := File(dir); err != nil || f != filepath.Join(dir, "10-a.conf") || !strings.Contains(string(b), `"name":"a"`) {
		t.Fatalf("directory: %s %s %v", b, f, err)
	}
	if _, _, err := File(filepath.Join(dir, "missing.conf")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing path: %v", err)
	}
	if !IsPath("/etc/cni/net.d/10-flannel.conflist") || IsPath("flannel") {
		t.Fatal("IsPath")
	}
}

func TestStatuses(t *testing.T) {
	zero, one := 0, 1
	res := &current.Result{CNIVersion: "1.0.0",
		Interfaces: []*current.Interface{{Name: "cni0", Mac: "aa:00:00:00:00:01"}, {Name: "eth0", Mac: "aa:00:00:00:00:02", Sandbox: "/var/run/netns/p", Mtu: 1400}},
		IPs: []*current.IPConfig{{Interface: &one, Address: mustCIDR(t, "10.244.1.5/24"), Gateway: net.ParseIP("10.244.1.1")},
			{Interface: &zero, Address: mustCIDR(t, "10.244.1.1/24")}},
	}
	_, dst, _ := net.ParseCIDR("0.0.0.0/0")
	res.Routes = append(res.Routes, &types.Route{Dst: *dst, GW: net.ParseIP("10.244.1.1")})
	res.DNS.Nameservers = []string{"10.96.0.10"}
	st, err := Statuses(res, "cbr0", true, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || st[0].Interface != "eth0" || !st[0].Default || strings.Join(st[0].IPs, ",") != "10.244.1.5" ||
		st[0].Mac != "aa:00:00:00:00:02" || st[0].Mtu != 1400 || strings.Join(st[0].Gateway, ",") != "10.244.1.1" ||
		st[0].DNS.Nameservers[0] != "10.96.0.10" {
		t.Fatalf("%+v", st)
	}
	// A secondary network from an old (0.2.0-style) result without
	// interfaces: one element for the requested name, not default.
	old := &current.Result{CNIVersion: "1.0.0", IPs: []*current.IPConfig{{Address: mustCIDR(t, "10.188.0.219/16")}}}
	st, err = Statuses(old, "db/db-net", false, "net1")
	if err != nil || len(st) != 1 || st[0].Interface != "net1" || st[0].Default || st[0].IPs[0] != "10.188.0.219" {
		t.Fatalf("%+v %v", st, err)
	}
	enc, err := Encode(st)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(enc)
	if err != nil || back[0].Name != "db/db-net" || !strings.Contains(enc, `"interface": "net1"`) {
		t.Fatalf("round trip %s: %+v %v", enc, back, err)
	}
	if e, _ := Encode(nil); e != "[]" {
		t.Fatalf("empty: %s", e)
	}
}

func mustCIDR(t *testing.T, s string) net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return *n
}
