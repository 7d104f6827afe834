package meta

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"kubeipam/internal/seed"
)

func TestParseSeedConfig(t *testing.T) {
	raw := seed.MultusConf
	c, err := Parse(raw)
	if err != nil {
		t.Fatalf("the seed's 10-multus.conf must parse unchanged: %v", err)
	}
	if c.Name != "multus-demo" || c.Type != "multus-cni" || c.CNIVersion != "0.3.1" || len(c.Delegates) != 2 {
		t.Fatalf("parsed %+v", c)
	}
	if c.CNIDir != DefaultCNIDir || c.BinDir != DefaultBinDir || c.ConfDir != DefaultConfDir {
		t.Errorf("defaults: %s %s %s", c.CNIDir, c.BinDir, c.ConfDir)
	}
	master, sec := c.Delegates[0], c.Delegates[1]
	if master.Name != "k8snet1" || master.Type != "flannel" || sec.Name != "k8snet2" || sec.Type != "macvlan" {
		t.Fatalf("delegates %+v %+v", master, sec)
	}
	for _, d := range c.Delegates {
		if !d.Inherited || d.CNIVersion != "0.3.1" {
			t.Errorf("%s: cniVersion %q inherited=%v, want 0.3.1 from the meta config", d.Name, d.CNIVersion, d.Inherited)
		}
	}
	var m map[string]any
	if err := json.Unmarshal(master.Bytes, &m); err != nil {
		t.Fatal(err)
	}
	// Flannel's own keys and the ignored masterplugin pass through untouched.
	if m["masterplugin"] != true || m["cniVersion"] != "0.3.1" {
		t.Errorf("master bytes %s", master.Bytes)
	}
	if d, _ := m["delegate"].(map[string]any); d["bridge"] != "docker0" || d["mtu"] != float64(1400) || d["isDefaultGateway"] != true {
		t.Errorf("flannel's delegate block changed: %v", m["delegate"])
	}
	if err := json.Unmarshal(sec.Bytes, &m); err != nil {
		t.Fatal(err)
	}
	ipam, _ := m["ipam"].(map[string]any)
	etcd, _ := ipam["etcdConfig"].(map[string]any)
	if m["master"] != "eth0" || ipam["type"] != "kube-ipam" || ipam["subnet"] != "10.188.0.0/16" || etcd["etcdTrustedCAFileFile"] == nil {
		t.Errorf("macvlan delegate changed: %s", sec.Bytes)
	}
	if got := []string{IfName(0, "eth0"), IfName(1, "eth0"), IfName(2, "eth0")}; !slices.Equal(got, []string{"eth0", "net1", "net2"}) {
		t.Errorf("ifnames %v", got)
	}
}

func TestParseKeepsBytesWhenNothingChanges(t *testing.T) {
	in := `{"cniVersion":"1.0.0","name":"m","type":"kube-multus","delegates":[{"cniVersion":"0.4.0", "name":"a","type":"bridge","zz":1,"aa":2}]}`
	c, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(c.Delegates[0].Bytes); got != `{"cniVersion":"0.4.0", "name":"a","type":"bridge","zz":1,"aa":2}` {
		t.Errorf("bytes rewritten: %s", got)
	}
}

func TestParseExtensionStripped(t *testing.T) {
	in := `{"cniVersion":"1.0.0","name":"m","type":"multus-cni","kubeconfig":"/k","delegates":[
		{"name":"a","type":"bridge","kubeMultus":{"dropArgs":["IP"]}},
		{"name":"b","plugins":[{"type":"macvlan"}],"kubeMultus":{"attach":{"namespaces":["db"],"podSelector":"tier=db"},
		  "ingress":[{"from":["10.188.0.0/24"],"ports":[{"protocol":"tcp","port":3306}],"namespaces":["db"]}]}}]}`
	c, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range c.Delegates {
		if strings.Contains(string(d.Bytes), ExtensionKey) {
			t.Errorf("%s: extension reached the delegate: %s", d.Name, d.Bytes)
		}
	}
	if !slices.Equal(c.Delegates[0].Ext.DropArgs, []string{"IP"}) || !c.Delegates[1].IsList || !c.Delegates[1].Ext.NeedsLabels() {
		t.Errorf("extension not read: %+v %+v", c.Delegates[0].Ext, c.Delegates[1].Ext)
	}
}

func TestParseKubernetesMode(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"1.0.0","name":"m","type":"kube-multus","kubeconfig":"/k",
		"clusterNetwork":"/etc/cni/net.d/10-flannel.conflist","defaultNetworks":["extra"],"namespaceIsolation":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.MultusNamespace != "kube-system" || !slices.Equal(c.SystemNamespaces, []string{"kube-system"}) || len(c.Delegates) != 0 || !c.KubernetesMode() {
		t.Errorf("defaults: %+v", c)
	}
	iso := c.Isolation()
	if !iso.Allows("web", "default") || iso.Allows("web", "db") || !iso.Allows("db", "db") {
		t.Errorf("isolation %+v", iso)
	}
	c, err = Parse([]byte(`{"name":"m","clusterNetwork":"flannel","multusNamespace":"net","systemNamespaces":[],"globalNamespaces":"a, b"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.MultusNamespace != "net" || len(c.SystemNamespaces) != 0 || !slices.Equal(c.Isolation().Global, []string{"a", "b"}) || c.KubernetesMode() {
		t.Errorf("explicit: %+v", c)
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string]struct {
		conf string
		code uint
	}{
		"not json":          {`{`, types.ErrDecodingFailure},
		"no name":           {`{"cniVersion":"0.3.1","delegates":[{"name":"a","type":"x"}]}`, types.ErrInvalidNetworkConfig},
		"no delegates":      {`{"cniVersion":"0.3.1","name":"m"}`, types.ErrInvalidNetworkConfig},
		"both masters":      {`{"cniVersion":"0.3.1","name":"m","clusterNetwork":"flannel","delegates":[{"name":"a","type":"x"}]}`, types.ErrInvalidNetworkConfig},
		"auxiliary chain":   {`{"cniVersion":"0.3.1","name":"m","auxiliaryCNIChainName":"x","delegates":[{"name":"a","type":"x"}]}`, types.ErrUnsupportedField},
		"daemon key":        {`{"cniVersion":"0.3.1","name":"m","multusConfigFile":"auto","clusterNetwork":"flannel"}`, types.ErrUnsupportedField},
		"empty default net": {`{"cniVersion":"0.3.1","name":"m","clusterNetwork":"flannel","defaultNetworks":[" "]}`, types.ErrInvalidNetworkConfig},
		"delegate no name":  {`{"cniVersion":"0.3.1","name":"m","delegates":[{"type":"x"}]}`, types.ErrInvalidNetworkConfig},
		"delegate no type":  {`{"cniVersion":"0.3.1","name":"m","delegates":[{"name":"a"}]}`, types.ErrInvalidNetworkConfig},
		"delegate not obj":  {`{"cniVersion":"0.3.1","name":"m","delegates":["a"]}`, types.ErrInvalidNetworkConfig},
		"empty plugins":     {`{"cniVersion":"0.3.1","name":"m","delegates":[{"name":"a","plugins":[]}]}`, types.ErrInvalidNetworkConfig},
		"attach on master":  {`{"cniVersion":"0.3.1","name":"m","delegates":[{"name":"a","type":"x","kubeMultus":{"attach":{"namespaces":["db"]}}}]}`, types.ErrInvalidNetworkConfig},
		"selector no kc":    {`{"cniVersion":"0.3.1","name":"m","delegates":[{"name":"a","type":"x"},{"name":"b","type":"y","kubeMultus":{"attach":{"podSelector":"a=b"}}}]}`, types.ErrInvalidNetworkConfig},
		"extension typo":    {`{"cniVersion":"0.3.1","name":"m","delegates":[{"name":"a","type":"x"},{"name":"b","type":"y","kubeMultus":{"ingres":[]}}]}`, types.ErrInvalidNetworkConfig},
		"bad policy":        {`{"cniVersion":"0.3.1","name":"m","delegates":[{"name":"a","type":"x"},{"name":"b","type":"y","kubeMultus":{"ingress":[{"from":["nope"]}]}}]}`, types.ErrInvalidNetworkConfig},
		"bad version":       {`{"cniVersion":"x.y","name":"m","delegates":[{"name":"a","type":"x"}]}`, types.ErrIncompatibleCNIVersion},
		"bad log level":     {`{"cniVersion":"0.3.1","name":"m","logLevel":"loud","delegates":[{"name":"a","type":"x"}]}`, types.ErrInvalidNetworkConfig},
		"bad delegate vers": {`{"cniVersion":"0.3.1","name":"m","delegates":[{"name":"a","type":"x","cniVersion":"one"}]}`, types.ErrInvalidNetworkConfig},
	}
	for name, c := range cases {
		_, err := Parse([]byte(c.conf))
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Code != c.code {
			t.Errorf("%s: %v, want code %d", name, err, c.code)
		}
	}
	// Accepted multus keys, including masterplugin and any spelling case.
	ok := `{"cniVersion":"0.3.1","name":"m","type":"multus-cni","cniDir":"/c","binDir":"/b","confDir":"/d","logFile":"/l",
		"logLevel":"debug","logToStderr":false,"readinessindicatorfile":"/r","retryDeleteOnError":true,"kubeconfig":"/k",
		"logOptions":{"maxAge":5},"delegates":[{"name":"a","type":"x","masterplugin":true}]}`
	c, err := Parse([]byte(ok))
	if err != nil {
		t.Fatal(err)
	}
	if c.CNIDir != "/c" || c.BinDir != "/b" || *c.LogToStderr || c.ReadinessIndicatorFile != "/r" || !c.RetryDeleteOnError || c.Kubeconfig != "/k" {
		t.Errorf("keys not read: %+v", c)
	}
}

func TestArgs(t *testing.T) {
	kubelet := "IgnoreUnknown=1;K8S_POD_NAMESPACE=db;K8S_POD_NAME=database-2-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u1;IP=10.188.0.219"
	a, err := ParseArgs(kubelet)
	if err != nil {
		t.Fatal(err)
	}
	if a.Namespace != "db" || a.Name != "database-2-0" || a.UID != "u1" || a.InfraContainerID != "abc" || a.Label() != "db/database-2-0/u1" {
		t.Fatalf("%+v", a)
	}
	got := DelegateArgs(a, nil)
	want := [][2]string{
		{"IgnoreUnknown", "true"}, {"K8S_POD_NAMESPACE", "db"}, {"K8S_POD_NAME", "database-2-0"},
		{"K8S_POD_INFRA_CONTAINER_ID", "abc"}, {"K8S_POD_UID", "u1"},
		// multus appends every incoming pair again.
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "db"}, {"K8S_POD_NAME", "database-2-0"},
		{"K8S_POD_INFRA_CONTAINER_ID", "abc"}, {"K8S_POD_UID", "u1"}, {"IP", "10.188.0.219"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("kubelet args:\n%v\nwant\n%v", got, want)
	}
	// No CNI_ARGS: the prefix with empty values.
	none, _ := ParseArgs("")
	if got := DelegateArgs(none, nil); len(got) != 5 || got[0] != [2]string{"IgnoreUnknown", "true"} || got[1][1] != "" {
		t.Errorf("empty args: %v", got)
	}
	// An empty incoming value leaves the slot to a later pair.
	b, _ := ParseArgs("K8S_POD_UID=;FOO=1;K8S_POD_UID=u2")
	if got := DelegateArgs(b, nil); got[4] != [2]string{"K8S_POD_UID", "u2"} || got[5] != [2]string{"K8S_POD_UID", ""} || got[6] != [2]string{"FOO", "1"} {
		t.Errorf("slot filling: %v", got)
	}
	// dropArgs withholds keys from one delegate.
	for _, p := range DelegateArgs(a, []string{"IP"}) {
		if p[0] == "IP" {
			t.Error("IP passed despite dropArgs")
		}
	}
	for _, bad := range []string{"FOO", "=1", "A=1;;B=2"} {
		if _, err := ParseArgs(bad); err == nil {
			t.Errorf("ParseArgs(%q) accepted", bad)
		}
	}
}

func TestCache(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "multus")
	entries := []CacheEntry{
		{Name: "k8snet1", Bytes: []byte(`{"name":"k8snet1","type":"bridge"}`), IfName: "eth0", Index: 0, DropArgs: []string{"IP"}},
		{Name: "k8snet2", Bytes: []byte(`{"name":"k8snet2","type":"macvlan"}`), IfName: "net1", Index: 1, Policy: true},
	}
	if _, err := ReadCache(dir, "c1", "eth0"); !errors.Is(err, ErrNoCache) {
		t.Fatalf("missing cache: %v", err)
	}
	if err := WriteCache(dir, "c1", entries); err != nil {
		t.Fatal(err)
	}
	if err := WriteCache(dir, "c1", entries); err != nil { // replaces
		t.Fatal(err)
	}
	got, err := ReadCache(dir, "c1", "eth0")
	if err != nil || len(got) != 2 || got[1].IfName != "net1" || !got[1].Policy || string(got[1].Bytes) != string(entries[1].Bytes) || got[0].DropArgs[0] != "IP" {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	fi, _ := os.Stat(CachePath(dir, "c1"))
	di, _ := os.Stat(dir)
	if fi.Mode().Perm() != 0o600 || di.Mode().Perm() != 0o700 {
		t.Errorf("modes %v %v", fi.Mode(), di.Mode())
	}
	des, _ := os.ReadDir(dir)
	if len(des) != 1 {
		t.Errorf("temporary files left: %v", des)
	}
	raw, _ := os.ReadFile(CachePath(dir, "c1"))
	if !strings.Contains(string(raw), `"Bytes":"eyJuYW1l`) {
		t.Errorf("Bytes is not base64 as in multus: %s", raw)
	}
	// A cache written by multus (no ifName): entry order gives the names.
	multus := `[{"Conf":{"name":"k8snet1","type":"flannel"},"ConfList":{},"Name":"k8snet1","Bytes":"eyJuYW1lIjoiazhzbmV0MSIsInR5cGUiOiJmbGFubmVsIn0="},
		{"Conf":{"name":"k8snet2","type":"macvlan"},"ConfList":{},"Name":"k8snet2","Bytes":"eyJuYW1lIjoiazhzbmV0MiIsInR5cGUiOiJtYWN2bGFuIn0=","IsFilterV4Gateway":false}]`
	m, err := DecodeCache([]byte(multus), "eth0")
	if err != nil || m[0].IfName != "eth0" || m[1].IfName != "net1" || m[1].Name != "k8snet2" {
		t.Fatalf("multus cache: %+v %v", m, err)
	}
	for _, bad := range []string{"", "[]", "{}", `[{"Name":"a"}]`, `[{"Name":"a","Bytes":"bm90IGpzb24="}]`, `[{"Bytes":"e30="}]`, "\x00\x00"} {
		if _, err := DecodeCache([]byte(bad), "eth0"); err == nil {
			t.Errorf("corrupt cache %q accepted", bad)
		}
	}
	if err := WriteCache(dir, "../escape", entries); err == nil {
		t.Error("container ID with a path accepted")
	}
	if err := RemoveCache(dir, "c1"); err != nil {
		t.Fatal(err)
	}
	if err := RemoveCache(dir, "c1"); err != nil {
		t.Fatal(err)
	}
}
