package tier

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"kubeipam/internal/testenv"
)

func TestParseSource(t *testing.T) {
	for in, want := range map[string]string{
		"10.188.1.0/24":             "10.188.1.0/24",
		"10.188.0.10-10.188.0.200":  "10.188.0.10-10.188.0.200",
		"10.188.0.218":              "10.188.0.218",
		"10.188.0.219/32":           "10.188.0.219",
		"10.188.0.5/22":             "10.188.0.0/22",
		"fd00::/126":                "fd00::/126",
		" 10.1.0.1 - 10.1.0.9 ":     "10.1.0.1-10.1.0.9",
		"::ffff:10.0.0.1":           "10.0.0.1",
		"192.168.5.0/31":            "192.168.5.0/31",
		"172.16.0.0/12":             "172.16.0.0/12",
		"10.0.0.0/0":                "0.0.0.0/0",
		"::ffff:10.1.2.0/120":       "10.1.2.0/24",
		"fd00:1::1-fd00:1::ff":      "fd00:1::1-fd00:1::ff",
		"10.188.0.219-10.188.0.219": "10.188.0.219",
	} {
		got, err := ParseSource(in)
		if err != nil || got.String() != want {
			t.Errorf("ParseSource(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "10.0.0.300", "10.0.0.9-10.0.0.1", "10.0.0.1-fd00::1", "10.0.0.0/33", "web"} {
		if _, err := ParseSource(bad); err == nil {
			t.Errorf("ParseSource(%q) accepted", bad)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	bad := map[string]string{
		"empty attach":   `{"attach":{}}`,
		"bad selector":   `{"attach":{"podSelector":"tier in (web"}}`,
		"bad from":       `{"ingress":[{"from":["10.0.0.1/40"]}]}`,
		"bad protocol":   `{"ingress":[{"ports":[{"protocol":"icmp","port":1}]}]}`,
		"no port":        `{"ingress":[{"ports":[{"protocol":"tcp"}]}]}`,
		"reversed range": `{"ingress":[{"ports":[{"protocol":"tcp","port":9,"endPort":8}]}]}`,
		"empty ns":       `{"attach":{"namespaces":[""]}}`,
		"empty dropArg":  `{"dropArgs":[""]}`,
	}
	for name, js := range bad {
		var c Config
		if err := json.Unmarshal([]byte(js), &c); err != nil {
			t.Fatal(err)
		}
		if err := c.Validate("x"); err == nil {
			t.Errorf("%s: %s accepted", name, js)
		}
	}
	var c Config
	if err := json.Unmarshal([]byte(`{"attach":{"namespaces":["db","web"],"podSelector":"tier in (web,db)"},
		"ingress":[{"from":["10.188.0.10-10.188.0.200"],"ports":[{"protocol":"TCP","port":3306}],"icmp":true,"namespaces":["db"]}]}`), &c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate("x"); err != nil {
		t.Fatal(err)
	}
	if !c.NeedsLabels() {
		t.Error("a podSelector needs labels")
	}
}

func TestSelection(t *testing.T) {
	sel := &Selection{Namespaces: []string{"db", "web"}, PodSelector: "tier in (web,db)"}
	if err := sel.validate("t"); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		pod  Pod
		want bool
		err  bool
	}{
		{Pod{Namespace: "db", Labels: map[string]string{"tier": "db"}}, true, false},
		{Pod{Namespace: "web", Labels: map[string]string{"tier": "web", "app": "x"}}, true, false},
		{Pod{Namespace: "web", Labels: map[string]string{"tier": "batch"}}, false, false},
		{Pod{Namespace: "batch", Labels: map[string]string{"tier": "web"}}, false, false},
		{Pod{Namespace: "db"}, false, true}, // labels never read: no silent decision
		{Pod{Namespace: "other"}, false, false},
	}
	for i, c := range cases {
		got, err := sel.Matches(c.pod)
		if got != c.want || (err != nil) != c.err {
			t.Errorf("case %d: %v, %v; want %v (error %v)", i, got, err, c.want, c.err)
		}
	}
	nsOnly := &Selection{Namespaces: []string{"db"}}
	if ok, err := nsOnly.Matches(Pod{Namespace: "db"}); !ok || err != nil || nsOnly.NeedsLabels() {
		t.Errorf("namespace-only selection: %v %v", ok, err)
	}
	var none *Selection
	if ok, _ := none.Matches(Pod{Namespace: "any"}); !ok || !none.Empty() {
		t.Error("no selection must match every pod")
	}
}

func TestPolicyFor(t *testing.T) {
	c := Config{Ingress: []Rule{
		{From: []string{"10.188.0.10-10.188.0.200"}, Ports: []Port{{Protocol: "tcp", Port: 3306}}, Namespaces: []string{"db"}},
		{From: []string{"10.188.0.216/29"}, ICMP: true, Namespaces: []string{"db"}},
		{From: []string{"10.188.0.0/16"}, PodSelector: "role=cache"},
	}}
	if err := c.Validate("x"); err != nil {
		t.Fatal(err)
	}
	if rs, err := c.PolicyFor(Pod{Namespace: "db", Labels: map[string]string{}}); err != nil || len(rs) != 2 {
		t.Fatalf("db pod: %d rules, %v", len(rs), err)
	}
	if rs, err := c.PolicyFor(Pod{Namespace: "web", Labels: map[string]string{}}); err != nil || len(rs) != 0 {
		t.Fatalf("web pod: %d rules, %v", len(rs), err)
	}
	if rs, err := c.PolicyFor(Pod{Namespace: "web", Labels: map[string]string{"role": "cache"}}); err != nil || len(rs) != 1 {
		t.Fatalf("cache pod: %d rules, %v", len(rs), err)
	}
}

func TestRulesAsData(t *testing.T) {
	if rs, err := Rules("net1", nil); err != nil || rs != nil {
		t.Fatalf("empty policy must yield no rules: %v %v", rs, err)
	}
	policy := []Rule{
		{From: []string{"10.188.0.10-10.188.0.200", "10.188.1.0/24"}, Ports: []Port{{Protocol: "tcp", Port: 3306}, {Protocol: "udp", Port: 5000, EndPort: 5010}}, ICMP: true},
		{From: []string{"10.188.0.218"}},
		{ICMP: true},
	}
	for i := range policy {
		if err := policy[i].Validate("p"); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := Rules("net1", policy)
	if err != nil {
		t.Fatal(err)
	}
	var descs []string
	for _, r := range rs {
		descs = append(descs, r.Desc)
		// Every rule is bound to net1 first: nothing else is filtered.
		m, ok1 := r.Exprs[0].(*expr.Meta)
		c, ok2 := r.Exprs[1].(*expr.Cmp)
		if !ok1 || !ok2 || m.Key != expr.MetaKeyIIFNAME || string(c.Data) != "net1"+strings.Repeat("\x00", 12) {
			t.Errorf("rule %q does not start with iifname net1", r.Desc)
		}
	}
	want := []string{
		"iifname net1 ct state established,related accept",
		"iifname net1 icmpv6 type 133-137 accept (neighbour discovery)",
		"iifname net1 ip saddr 10.188.0.10-10.188.0.200 tcp dport 3306 accept",
		"iifname net1 ip saddr 10.188.0.10-10.188.0.200 udp dport 5000-5010 accept",
		"iifname net1 ip saddr 10.188.0.10-10.188.0.200 icmp type echo-request accept",
		"iifname net1 ip saddr 10.188.1.0/24 tcp dport 3306 accept",
		"iifname net1 ip saddr 10.188.1.0/24 udp dport 5000-5010 accept",
		"iifname net1 ip saddr 10.188.1.0/24 icmp type echo-request accept",
		"iifname net1 ip saddr 10.188.0.218 accept",
		"iifname net1 icmp type echo-request accept",
		"iifname net1 icmpv6 type echo-request accept",
		"iifname net1 counter drop",
	}
	if strings.Join(descs, "\n") != strings.Join(want, "\n") {
		t.Fatalf("rules:\n%s\nwant:\n%s", strings.Join(descs, "\n"), strings.Join(want, "\n"))
	}
	// The tcp rule, expression by expression.
	tcp := rs[2].Exprs
	saddr := tcp[4].(*expr.Payload)
	srange := tcp[5].(*expr.Range)
	if saddr.Base != expr.PayloadBaseNetworkHeader || saddr.Offset != 12 || saddr.Len != 4 ||
		net.IP(srange.FromData).String() != "10.188.0.10" || net.IP(srange.ToData).String() != "10.188.0.200" {
		t.Errorf("source match: %+v %+v", saddr, srange)
	}
	if l4 := tcp[7].(*expr.Cmp); l4.Data[0] != unix.IPPROTO_TCP {
		t.Errorf("l4 proto %v", l4.Data)
	}
	dport := tcp[8].(*expr.Payload)
	pcmp := tcp[9].(*expr.Cmp)
	if dport.Base != expr.PayloadBaseTransportHeader || dport.Offset != 2 || dport.Len != 2 || string(pcmp.Data) != "\x0c\xea" {
		t.Errorf("port match: %+v %+v", dport, pcmp)
	}
	udp := rs[3].Exprs
	if pr := udp[9].(*expr.Range); string(pr.FromData) != "\x13\x88" || string(pr.ToData) != "\x13\x92" {
		t.Errorf("port range: %+v", pr)
	}
	// A CIDR source is a masked comparison.
	cidr := rs[5].Exprs
	mask, net0 := cidr[5].(*expr.Bitwise), cidr[6].(*expr.Cmp)
	if net.IP(mask.Mask).String() != "255.255.255.0" || net.IP(net0.Data).String() != "10.188.1.0" {
		t.Errorf("cidr match: %+v %+v", mask, net0)
	}
	if v, ok := tcp[len(tcp)-1].(*expr.Verdict); !ok || v.Kind != expr.VerdictAccept {
		t.Errorf("tcp rule does not accept: %#v", tcp[len(tcp)-1])
	}
	last := rs[len(rs)-1].Exprs
	if v, ok := last[len(last)-1].(*expr.Verdict); !ok || v.Kind != expr.VerdictDrop {
		t.Errorf("last rule does not drop")
	}
	if _, err := Rules("a-very-long-interface-name", policy); err == nil {
		t.Error("an over-long interface name was accepted")
	}
}

// TestApplyInNetns installs a policy in a real namespace with nftables,
// proves it with traffic over a veth pair, and removes it.
func TestApplyInNetns(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("ping not installed")
	}
	pod, peer := testenv.NewNS(t), testenv.NewNS(t)
	testenv.VethPair(t, pod, "net1", peer, "eth0")
	addr := func(n ns.NetNS, dev, cidr string) {
		if out, err := exec.Command("ip", "-n", filepath.Base(n.Path()), "addr", "add", cidr, "dev", dev).CombinedOutput(); err != nil {
			t.Fatalf("ip addr: %v %s", err, out)
		}
	}
	addr(pod, "net1", "192.168.77.1/24")
	addr(peer, "eth0", "192.168.77.2/24")
	addr(peer, "eth0", "192.168.77.3/24")

	var ln net.Listener
	if err := pod.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", "192.168.77.1:3306")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dial := func(src string) error {
		return peer.Do(func(ns.NetNS) error {
			d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
			c, err := d.Dial("tcp", "192.168.77.1:3306")
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	if err := dial("192.168.77.3"); err != nil {
		t.Fatalf("before the policy: %v", err)
	}
	policy := []Rule{{From: []string{"192.168.77.2"}, Ports: []Port{{Protocol: "tcp", Port: 3306}}}}
	_ = policy[0].Validate("p")
	rules, err := Rules("net1", policy)
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(pod.Path(), "net1", rules); err != nil {
		t.Fatal(err)
	}
	if err := Apply(pod.Path(), "net1", rules); err != nil { // idempotent
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "netns", "exec", filepath.Base(pod.Path()), "nft", "list", "ruleset").CombinedOutput(); err == nil {
		t.Logf("nft list ruleset in the pod namespace:\n%s", out)
	}
	if ok, err := Installed(pod.Path(), "net1"); !ok || err != nil {
		t.Fatalf("Installed: %v %v", ok, err)
	}
	if err := dial("192.168.77.2"); err != nil {
		t.Errorf("allowed source refused: %v", err)
	}
	if err := dial("192.168.77.3"); err == nil {
		t.Error("other source got through")
	}
	if err := peer.Do(func(ns.NetNS) error {
		return exec.Command("ping", "-c1", "-W1", "-I", "192.168.77.2", "192.168.77.1").Run()
	}); err == nil {
		t.Error("ping got through a policy without icmp")
	}
	if err := Remove(pod.Path(), "net1"); err != nil {
		t.Fatal(err)
	}
	if err := Remove(pod.Path(), "net1"); err != nil { // idempotent
		t.Fatal(err)
	}
	if ok, _ := Installed(pod.Path(), "net1"); ok {
		t.Fatal("table still there")
	}
	if err := dial("192.168.77.3"); err != nil {
		t.Errorf("after removal: %v", err)
	}
	if err := Apply("/nonexistent/netns", "net1", rules); !IsNotExist(err) {
		t.Errorf("missing namespace: %v", err)
	}
}

func TestReadLabels(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/api/v1/namespaces/db/pods/database-1-0":
			_, _ = w.Write([]byte(`{"kind":"Pod","apiVersion":"v1","metadata":{"name":"database-1-0","namespace":"db","labels":{"tier":"db"}}}`))
		case "/api/v1/namespaces/db/pods/busy":
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"x\" not found","code":404}`))
		}
	}))
	defer srv.Close()
	kc := kubeconfig(t, srv.URL)
	ctx := context.Background()
	lbls, err := ReadLabels(ctx, kc, "db", "database-1-0", 5*time.Second)
	if err != nil || lbls["tier"] != "db" {
		t.Fatalf("labels %v, %v", lbls, err)
	}
	var lk *LookupError
	if _, err := ReadLabels(ctx, kc, "db", "gone", 5*time.Second); !errors.As(err, &lk) {
		t.Errorf("not found: %T %v", err, err)
	}
	var un *UnavailableError
	if _, err := ReadLabels(ctx, kc, "db", "busy", 5*time.Second); !errors.As(err, &un) {
		t.Errorf("503: %T %v", err, err)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + l.Addr().String()
	l.Close()
	if _, err := ReadLabels(ctx, kubeconfig(t, dead), "db", "database-1-0", 2*time.Second); !errors.As(err, &un) {
		t.Errorf("unreachable API: %T %v", err, err)
	}
	if _, err := ReadLabels(ctx, filepath.Join(t.TempDir(), "missing"), "db", "x", time.Second); !errors.As(err, &lk) {
		t.Errorf("missing kubeconfig: %T %v", err, err)
	}
}

func kubeconfig(t *testing.T, server string) string {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	kc := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"" + server + "\"}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
