package tier

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

const prev100 = `{"cniVersion":"1.0.0","interfaces":[{"name":"net1","mac":"0a:58:0a:bc:00:0a","sandbox":"/var/run/netns/p"}],` +
	`"ips":[{"address":"10.188.0.10/16","gateway":"10.188.0.1","interface":0}],"routes":[{"dst":"0.0.0.0/0","gw":"10.188.0.1"}],` +
	`"dns":{"nameservers":["10.96.0.10"],"search":["db.svc.cluster.local"]}}`

// chainedConf is a valid kube-tier config with the guide's database rule;
// edit changes the decoded map before it is encoded again.
func chainedConf(edit func(m map[string]any)) []byte {
	m := map[string]any{}
	_ = json.Unmarshal([]byte(`{"cniVersion":"1.0.0","name":"db-net","type":"kube-tier",
		"ingress":[{"namespaces":["db"],"from":["10.188.0.10-10.188.0.200","10.188.0.216/29"],
		"ports":[{"protocol":"tcp","port":3306}],"icmp":true}],"prevResult":`+prev100+`}`), &m)
	if edit != nil {
		edit(m)
	}
	b, _ := json.Marshal(m)
	return b
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func rule(m map[string]any) map[string]any { return m["ingress"].([]any)[0].(map[string]any) }

func code(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// TestParseChainedRefuses table-tests the configs kube-tier refuses: each
// gets a CNI error with the expected code whose message names the key.
func TestParseChainedRefuses(t *testing.T) {
	cases := []struct {
		name string
		conf []byte
		code uint
		want string // in the message
	}{
		{"not JSON", []byte(`{"name":`), types.ErrDecodingFailure, "not a JSON object"},
		{"attach", chainedConf(func(m map[string]any) { m["attach"] = map[string]any{"namespaces": []string{"db"}} }),
			types.ErrUnsupportedField, "k8s.v1.cni.cncf.io/networks"},
		{"unknown top-level key", chainedConf(func(m map[string]any) { m["ingres"] = m["ingress"]; delete(m, "ingress") }),
			types.ErrInvalidNetworkConfig, `unknown key "ingres"`},
		{"kubeMultus block", chainedConf(func(m map[string]any) { m["kubeMultus"] = map[string]any{} }),
			types.ErrInvalidNetworkConfig, `unknown key "kubeMultus"`},
		{"unknown key in a rule", chainedConf(func(m map[string]any) { rule(m)["prots"] = 3306 }),
			types.ErrInvalidNetworkConfig, `ingress[0]: unknown key "prots"`},
		{"bad CIDR", chainedConf(func(m map[string]any) { rule(m)["from"] = []string{"10.188.0.0/33"} }),
			types.ErrInvalidNetworkConfig, "ingress[0].from"},
		{"bad protocol", chainedConf(func(m map[string]any) { rule(m)["ports"] = []any{map[string]any{"protocol": "icmp", "port": 1}} }),
			types.ErrInvalidNetworkConfig, "ingress[0].ports[0].protocol"},
		{"bad selector", chainedConf(func(m map[string]any) { rule(m)["podSelector"] = "tier in (db"; m["kubeconfig"] = "/k" }),
			types.ErrInvalidNetworkConfig, "ingress[0].podSelector"},
		{"podSelector without kubeconfig", chainedConf(func(m map[string]any) { rule(m)["podSelector"] = "tier=db" }),
			types.ErrInvalidNetworkConfig, `set "kubeconfig"`},
		{"no ingress", chainedConf(func(m map[string]any) { delete(m, "ingress") }), types.ErrInvalidNetworkConfig, `missing "ingress"`},
		{"empty ingress", chainedConf(func(m map[string]any) { m["ingress"] = []any{} }), types.ErrInvalidNetworkConfig, `"ingress" is empty`},
		{"ingress not a list", chainedConf(func(m map[string]any) { m["ingress"] = rule(m) }), types.ErrInvalidNetworkConfig, "ingress: want a list"},
		{"as an IPAM plugin", []byte(`{"cniVersion":"1.0.0","name":"db-net","type":"macvlan","ipam":{"type":"kube-tier"}}`),
			types.ErrInvalidNetworkConfig, "not an IPAM plugin"},
		{"bad logLevel", chainedConf(func(m map[string]any) { m["logLevel"] = "loud" }), types.ErrInvalidNetworkConfig, "logLevel"},
		{"no name", chainedConf(func(m map[string]any) { delete(m, "name") }), types.ErrInvalidNetworkConfig, `missing "name"`},
		{"wrong type of kubeconfig", chainedConf(func(m map[string]any) { m["kubeconfig"] = 5 }), types.ErrInvalidNetworkConfig, "kubeconfig"},
	}
	for _, c := range cases {
		_, err := ParseChained(c.conf)
		if code(err) != c.code || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v (code %d); want code %d with %q", c.name, err, code(err), c.code, c.want)
		}
	}
	// The guide's rule, runtime-injected keys and case-insensitive keys
	// (as encoding/json matches them) are accepted.
	ok := chainedConf(func(m map[string]any) {
		m["runtimeConfig"] = map[string]any{"ips": []string{"10.188.0.10/16"}}
		m["args"] = map[string]any{"cni": map[string]any{}}
		m["cni.dev/valid-attachments"] = []any{}
		m["Kubeconfig"] = "/etc/cni/net.d/kube-ipam.d/kubeconfig"
		rule(m)["podSelector"] = "tier=db"
	})
	c, err := ParseChained(ok)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Ingress) != 1 || c.Kubeconfig == "" || c.LogLevel != "info" || !c.Ingress[0].NeedsLabels() {
		t.Fatalf("parsed %+v", c)
	}
}

func addArgs(conf []byte, netns, cniArgs string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: "c0ffee", Netns: netns, IfName: "net1", Args: cniArgs, StdinData: conf}
}

// TestChainedAddWithoutPrevResult: kube-tier run as a network's only
// plugin (no prevResult) fails with a config error saying where it belongs.
func TestChainedAddWithoutPrevResult(t *testing.T) {
	p := &Chained{Out: &bytes.Buffer{}, LookupTimeout: time.Second}
	conf := chainedConf(func(m map[string]any) { delete(m, "prevResult") })
	for verb, f := range map[string]func(*skel.CmdArgs) error{"ADD": p.Add, "CHECK": p.Check} {
		err := f(addArgs(conf, "/nonexistent/netns", "K8S_POD_NAMESPACE=db"))
		if code(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "chained plugin") {
			t.Errorf("%s: %v", verb, err)
		}
	}
	bad := chainedConf(func(m map[string]any) { m["prevResult"] = map[string]any{"cniVersion": "1.0.0", "ips": "no"} })
	if err := p.Add(addArgs(bad, "/nonexistent/netns", "K8S_POD_NAMESPACE=web")); code(err) != types.ErrDecodingFailure {
		t.Errorf("undecodable prevResult: %v", err)
	}
}

// TestChainedDecide: which pods the rules protect, without the API where
// namespaces decide, and the refusals when CNI_ARGS cannot tell.
func TestChainedDecide(t *testing.T) {
	// A kubeconfig that cannot be read: a read would fail with 120, so
	// success below proves that no read happened.
	noAPI := filepath.Join(t.TempDir(), "missing-kubeconfig")
	c, err := ParseChained(chainedConf(func(m map[string]any) {
		m["kubeconfig"] = noAPI
		m["ingress"] = append(m["ingress"].([]any), map[string]any{"namespaces": []string{"web"}, "podSelector": "tier=web", "icmp": true})
	}))
	if err != nil {
		t.Fatal(err)
	}
	log := discard()
	cases := []struct {
		args  string
		rules int // 0: unprotected
		code  uint
	}{
		{"IgnoreUnknown=1;K8S_POD_NAMESPACE=db;K8S_POD_NAME=database-1-0", 7, 0}, // est, ND, 2 sources x (port, icmp), drop
		{"K8S_POD_NAMESPACE=batch;K8S_POD_NAME=batch-0", 0, 0},                   // no rule selects batch: no table, no read
		{"K8S_POD_NAME=x", 0, types.ErrInvalidEnvironmentVariables},              // no namespace: refuse to guess
		{"K8S_POD_NAMESPACE=web", 0, types.ErrInvalidEnvironmentVariables},       // selector needs the name
		{"K8S_POD_NAMESPACE=web;K8S_POD_NAME=web-0", 0, CodePodLookup},           // needs labels: unusable kubeconfig
		{"K8S_POD_NAMESPACE", 0, types.ErrInvalidEnvironmentVariables},           // malformed CNI_ARGS
	}
	for _, tc := range cases {
		rules, err := c.decide(addArgs(nil, "/x", tc.args), time.Second, log)
		if code(err) != tc.code || len(rules) != tc.rules {
			t.Errorf("%s: %d rules, %v; want %d rules, code %d", tc.args, len(rules), err, tc.rules, tc.code)
		}
	}
	// Rules protecting every pod need no namespace.
	all, err := ParseChained(chainedConf(func(m map[string]any) { delete(rule(m), "namespaces") }))
	if err != nil {
		t.Fatal(err)
	}
	if rules, err := all.decide(addArgs(nil, "/x", ""), time.Second, log); err != nil || len(rules) == 0 {
		t.Errorf("rule without selection: %d rules, %v", len(rules), err)
	}
	if _, err := all.decide(&skel.CmdArgs{IfName: "a-much-too-long-name"}, time.Second, log); code(err) != types.ErrInvalidEnvironmentVariables {
		t.Errorf("bad CNI_IFNAME: %v", err)
	}
}

// TestChainedAddPassesPrevResult: an unprotected pod's ADD installs
// nothing (so needs no privilege) and prints prevResult unchanged, in the
// config's cniVersion.
func TestChainedAddPassesPrevResult(t *testing.T) {
	for _, v := range []string{"1.0.0", "1.1.0", "0.4.0", "0.3.1"} {
		var out bytes.Buffer
		p := &Chained{Out: &out, LookupTimeout: time.Second}
		prev := strings.Replace(prev100, `"1.0.0"`, `"`+v+`"`, 1)
		if v < "1" {
			prev = strings.Replace(prev, `"interface":0`, `"version":"4","interface":0`, 1)
		}
		conf := chainedConf(func(m map[string]any) {
			m["cniVersion"] = v
			var pr any
			_ = json.Unmarshal([]byte(prev), &pr)
			m["prevResult"] = pr
		})
		if err := p.Add(addArgs(conf, "/nonexistent/netns", "K8S_POD_NAMESPACE=web;K8S_POD_NAME=web-0")); err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		var got, want any
		_ = json.Unmarshal(out.Bytes(), &got)
		_ = json.Unmarshal([]byte(prev), &want)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("cniVersion %s: printed\n%s\nwant prevResult\n%s", v, out.Bytes(), prev)
		}
	}
}

// TestChainedDelNeedsNothing: DEL succeeds without a namespace, with a
// vanished one, and with a config that no longer validates; STATUS and GC
// succeed.
func TestChainedDelNeedsNothing(t *testing.T) {
	p := DefaultChained()
	bad := chainedConf(func(m map[string]any) { rule(m)["prots"] = 1; m["logFile"] = filepath.Join(t.TempDir(), "log") })
	for _, args := range []*skel.CmdArgs{
		addArgs(chainedConf(nil), "", ""),
		addArgs(chainedConf(nil), filepath.Join(t.TempDir(), "gone"), "K8S_POD_NAMESPACE=db;K8S_POD_NAME=x"),
		addArgs(bad, filepath.Join(t.TempDir(), "gone"), ""),
		addArgs(bad, t.TempDir()+"/", ""), // a directory: not a namespace (left behind by a runtime)
	} {
		if err := p.Del(args); err != nil {
			t.Errorf("DEL netns %q: %v", args.Netns, err)
		}
	}
	if err := errors.Join(p.Status(addArgs(chainedConf(nil), "", "")), p.GC(addArgs(chainedConf(nil), "", ""))); err != nil {
		t.Error(err)
	}
}
