package lab

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"kubeipam/internal/config"
	"kubeipam/internal/meta"
	"kubeipam/internal/seed"
)

func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// The lab runs deploy/'s config with two site values changed; everything
// else, the flannel delegate included, is what users install.
func TestNetworkConfig(t *testing.T) {
	l := &Lab{opts: DefaultOptions(moduleRoot(t))}
	conf, err := l.NetworkConfig()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := meta.Parse(conf); err != nil {
		t.Fatalf("kube-multus refuses the lab's config: %v\n%s", err, conf)
	}
	nets, err := config.ParseNetworks(conf, "lab")
	if err != nil || len(nets) != 1 || nets[0].Name != "k8snet2" {
		t.Fatalf("kube-ipam networks %v, %v", nets, err)
	}
	if got := strings.Join(nets[0].Etcd.Endpoints, ","); got != "https://172.30.0.1:2379" {
		t.Errorf("etcd endpoints %q, want the lab's dedicated etcd", got)
	}
	var c, s struct {
		Delegates []map[string]json.RawMessage `json:"delegates"`
	}
	_ = json.Unmarshal(conf, &c)
	_ = json.Unmarshal(seed.MultusConf, &s)
	for _, k := range []string{"name", "type", "masterplugin", "delegate"} {
		if !jsonEqual(c.Delegates[0][k], s.Delegates[0][k]) {
			t.Errorf("delegates[0].%s = %s, the seed's is %s", k, c.Delegates[0][k], s.Delegates[0][k])
		}
	}
	var tier struct {
		Attach  map[string]any   `json:"attach"`
		Ingress []map[string]any `json:"ingress"`
	}
	if err := json.Unmarshal(c.Delegates[1]["kubeMultus"], &tier); err != nil || tier.Attach == nil || len(tier.Ingress) == 0 {
		t.Fatalf("tier policy %s (%v): want the ConfigMap's commented policy switched on", c.Delegates[1]["kubeMultus"], err)
	}
}

// On the Kubernetes store the config says so and keeps the rest, the
// guide's etcdConfig included (ignored then).
func TestNetworkConfigKubernetesStore(t *testing.T) {
	o := DefaultOptions(moduleRoot(t))
	etcdConf, err := (&Lab{opts: o}).NetworkConfig()
	if err != nil {
		t.Fatal(err)
	}
	o.Store = StoreKubernetes
	conf, err := (&Lab{opts: o}).NetworkConfig()
	if err != nil {
		t.Fatal(err)
	}
	nets, err := config.ParseNetworks(conf, "lab")
	if err != nil || len(nets) != 1 || nets[0].Store != config.StoreKubernetes {
		t.Fatalf("kube-ipam networks %+v, %v", nets, err)
	}
	var c, e struct {
		Delegates []struct {
			IPAM map[string]json.RawMessage `json:"ipam"`
		} `json:"delegates"`
	}
	_ = json.Unmarshal(conf, &c)
	_ = json.Unmarshal(etcdConf, &e)
	if string(c.Delegates[1].IPAM["store"]) != `"kubernetes"` {
		t.Errorf("ipam.store %s", c.Delegates[1].IPAM["store"])
	}
	delete(c.Delegates[1].IPAM, "store")
	a, _ := json.Marshal(c)
	b, _ := json.Marshal(e)
	if !bytes.Equal(a, b) {
		t.Errorf("apart from ipam.store, the configs differ:\n%s\n%s", a, b)
	}
}

// The chart's values for each store and mode: the image built here, the
// store, the etcd Secret from the lab's PKI, the config of the mode
// (the chart refuses an etcdConfig on the Kubernetes store).
func TestChartValues(t *testing.T) {
	for _, c := range []struct{ store, mode string }{
		{StoreEtcd, ModeDelegates}, {StoreKubernetes, ModeDelegates}, {StoreEtcd, ModeNAD}, {StoreKubernetes, ModeNAD}, {StoreEtcd, ModeMultus},
	} {
		t.Run(c.store+"/"+c.mode, func(t *testing.T) {
			o := DefaultOptions(moduleRoot(t))
			o.Dir, o.Store, o.Mode = t.TempDir(), c.store, c.mode
			l := &Lab{opts: o}
			if err := os.MkdirAll(filepath.Join(o.Dir, "pki"), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"etcd-client.crt", "etcd-client.key", "etcd-ca.crt"} {
				if err := os.WriteFile(l.pki(f), []byte("PEM of "+f), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			b, err := l.chartValues()
			if err != nil {
				t.Fatal(err)
			}
			var v struct {
				Image map[string]string `json:"image"`
				Store string            `json:"store"`
				Etcd  *struct {
					Endpoints []string          `json:"endpoints"`
					TLS       map[string]string `json:"tls"`
				} `json:"etcd"`
				NetworkConfig  string            `json:"networkConfig"`
				NADConfigs     map[string]string `json:"nadConfigs"`
				IPAMOnly       bool              `json:"ipamOnly"`
				ClusterNetwork string            `json:"clusterNetwork"`
			}
			if err := yaml.UnmarshalStrict(b, &v); err != nil {
				t.Fatalf("%v\n%s", err, b)
			}
			if ref := "docker.io/library/" + v.Image["repository"] + ":" + v.Image["tag"]; ref != ImageRef || v.Store != c.store {
				t.Errorf("image %s store %s", ref, v.Store)
			}
			if (c.store == StoreEtcd) != (v.Etcd != nil && v.Etcd.TLS["key"] == "PEM of etcd-client.key" && v.Etcd.Endpoints[0] == o.EtcdURL()) {
				t.Errorf("etcd %+v", v.Etcd)
			}
			var confs []string
			if c.mode != ModeNAD { // kube-multus's own config there: no network
				confs = append(confs, v.NetworkConfig)
			}
			for _, n := range v.NADConfigs {
				confs = append(confs, n)
			}
			for _, conf := range confs {
				if conf == "" {
					continue
				}
				nets, err := config.ParseNetworks([]byte(conf), "lab")
				if err != nil {
					t.Fatalf("%v in %s", err, conf)
				}
				for _, n := range nets {
					if n.Store != c.store {
						t.Errorf("network %s on %s", n.Name, n.Store)
					}
				}
				if c.store == StoreKubernetes && strings.Contains(conf, "etcdConfig") {
					t.Errorf("etcdConfig on the Kubernetes store: %s", conf)
				}
			}
			nads := c.mode != ModeDelegates
			if (v.NADConfigs[NADConfigKey] != "") != nads || v.IPAMOnly != (c.mode == ModeMultus) ||
				(v.ClusterNetwork == "auto") != (c.mode == ModeNAD) || (v.NetworkConfig == "") != (c.mode == ModeMultus) {
				t.Errorf("mode %s: %s", c.mode, b)
			}
		})
	}
}

func TestTableRows(t *testing.T) {
	out := `NAME                     ADDRESS        NETWORK   STATE      POD                    NODE    KIND      AGE
0abc00da.k8snet2         10.188.0.218   k8snet2   held       default/database-1-0   node2   fixed     2m
0abc000a.k8snet2         10.188.0.10    k8snet2   released                                  dynamic   3m
`
	rows := tableRows(out)
	if len(rows) != 2 || rows[0]["POD"] != "default/database-1-0" || rows[0]["NODE"] != "node2" || rows[0]["AGE"] != "2m" ||
		rows[1]["POD"] != "" || rows[1]["KIND"] != "dynamic" || rows[1]["STATE"] != "released" {
		t.Errorf("%q", rows)
	}
	if rows := tableRows("No resources found\n"); rows != nil {
		t.Errorf("%q", rows)
	}
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	_ = json.Unmarshal(a, &x)
	_ = json.Unmarshal(b, &y)
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}

func TestCommentedTier(t *testing.T) {
	for _, c := range []struct{ name, text, err string }{
		{"none", "apiVersion: v1\n", "no '# BEGIN tier policy'"},
		{"bad json", "# BEGIN tier policy\n#  \"kubeMultus\": {\n# END tier policy\n", "the commented tier policy"},
		{"other key", "# BEGIN tier policy\n#  \"x\": 1\n# END tier policy\n", "no kubeMultus key"},
	} {
		if _, err := commentedTier(c.text); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.err)
		}
	}
	got, err := commentedTier("x\n  # BEGIN tier policy\n  #  \"kubeMultus\": {\"attach\": {\"namespaces\": [\"db\"]}}\n  # END tier policy\n")
	if err != nil || got.(map[string]any)["attach"] == nil {
		t.Fatalf("%v, %v", got, err)
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"nginx:1.27":                   "docker.io/library/nginx:1.27",
		"library/busybox:1.36":         "docker.io/library/busybox:1.36",
		"docker.io/library/nginx:1.27": "docker.io/library/nginx:1.27",
		"registry.k8s.io/pause:3.10":   "registry.k8s.io/pause:3.10",
		"localhost/x:1":                "localhost/x:1",
		"192.168.1.12:5000/db:v1.0":    "192.168.1.12:5000/db:v1.0",
	} {
		if got := normalize(in); got != want {
			t.Errorf("normalize(%q) = %q, want %q", in, got, want)
		}
	}
}

// Every image deploy/examples names is one the lab builds.
func TestExamplesUseLabImages(t *testing.T) {
	dir := filepath.Join(moduleRoot(t), "deploy", "examples")
	n := 0
	for _, f := range []string{"db.yaml", "web.yaml"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range imageRef.FindAllStringSubmatch(string(b), -1) {
			n++
			if r := normalize(m[1]); r != BusyboxImage && r != WebImage {
				t.Errorf("%s: image %s is not built by the lab", f, m[1])
			}
		}
	}
	if n != 3 {
		t.Errorf("found %d image references in db.yaml and web.yaml, want 3", n)
	}
}

func TestValidate(t *testing.T) {
	good := DefaultOptions("/repo")
	for _, store := range []string{"", StoreEtcd, StoreKubernetes} {
		o := good
		o.Store = store
		if err := o.validate(); err != nil {
			t.Fatalf("store %q: %v", store, err)
		}
	}
	for name, mod := range map[string]func(*Options){
		"relative dir":  func(o *Options) { o.Dir = "lab" },
		"long name":     func(o *Options) { o.Name = "toolongname" },
		"one node":      func(o *Options) { o.Nodes = 1 },
		"ipv6 underlay": func(o *Options) { o.Underlay = netip.MustParsePrefix("fd00::/64") },
		"tiny underlay": func(o *Options) { o.Underlay = netip.MustParsePrefix("172.30.0.0/29") },
		"unknown store": func(o *Options) { o.Store = "consul" },
	} {
		o := good
		mod(&o)
		if err := o.validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestSummary(t *testing.T) {
	var b bytes.Buffer
	if n := Summary(&b, nil); n != 1 || !strings.Contains(b.String(), "nothing was checked") {
		t.Errorf("empty replay: %d failures, %q", n, b.String())
	}
	b.Reset()
	n := Summary(&b, []Result{{Check: "a", Passed: true}, {Check: "b", Detail: "why"}})
	if n != 1 || !strings.Contains(b.String(), "FAIL  b: why") || !strings.Contains(b.String(), "1 passed, 1 failed") {
		t.Errorf("%d failures, %q", n, b.String())
	}
}
