package install

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// networksFile is an IPAM-only ConfigMap's networks: the NADs' configs
// (macvlan + kube-ipam + kube-tier conflists) under "delegates".
const networksFile = `{
  "name": "kube-ipam-networks",
  "delegates": [
    {"cniVersion": "1.0.0", "name": "db-net", "plugins": [
      {"type": "macvlan", "master": "eth0", "mode": "bridge",
       "ipam": {"type": "kube-ipam", "kubeConfig": "/etc/cni/net.d/kube-ipam.d/kubeconfig",
         "etcdConfig": {"etcdURL": "https://192.168.1.50:2379",
           "etcdCertFile": "/etc/cni/net.d/kube-ipam.d/etcd/tls.crt",
           "etcdKeyFile": "/etc/cni/net.d/kube-ipam.d/etcd/tls.key",
           "etcdTrustedCAFileFile": "/etc/cni/net.d/kube-ipam.d/etcd/ca.crt"},
         "subnet": "10.188.0.0/16", "rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.200"}},
      {"type": "kube-tier", "ingress": [{"from": ["10.188.0.0/16"], "ports": [{"protocol": "tcp", "port": 3306}]}]}
    ]},
    {"cniVersion": "1.0.0", "name": "web-net", "plugins": [
      {"type": "macvlan", "master": "eth0",
       "ipam": {"type": "kube-ipam", "podLookup": false, "etcdConfig": {"etcdURL": "https://192.168.1.50:2379",
           "etcdCertFile": "/etc/cni/net.d/kube-ipam.d/etcd/tls.crt",
           "etcdKeyFile": "/etc/cni/net.d/kube-ipam.d/etcd/tls.key",
           "etcdTrustedCAFileFile": "/etc/cni/net.d/kube-ipam.d/etcd/ca.crt"},
         "subnet": "10.189.0.0/16"}}
    ]}
  ]
}`

// multusNode is a node that already runs multus (thick: 00-multus.conf of
// type multus-shim, its kubeconfig in multus.d) over flannel, with multus's
// binaries, one of them under the v3.8 name multus-cni.
var multusNode = map[string]string{
	"etc/cni/net.d/00-multus.conf":                  `{"cniVersion":"0.3.1","name":"multus-cni-network","type":"multus-shim","logLevel":"verbose","socketDir":"/host/run/multus/"}`,
	"etc/cni/net.d/10-flannel.conflist":             flannelConflist,
	"etc/cni/net.d/multus.d/multus.kubeconfig":      "apiVersion: v1\nkind: Config\n",
	"etc/cni/net.d/whereabouts.d/whereabouts.conf":  `{"datastore": "kubernetes"}`,
	"opt/cni/bin/multus-shim":                       "#!/bin/sh\necho multus-shim\n",
	"opt/cni/bin/multus-cni":                        "#!/bin/sh\necho multus v3.8\n",
	"opt/cni/bin/macvlan":                           "#!/bin/sh\necho macvlan\n",
	"etc/cni/net.d/kube-ipam.d/etcd/unrelated.note": "left by an admin",
}

func ipamOnlyEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t)
	e.o.IPAMOnly = true
	for rel, c := range multusNode {
		mode := os.FileMode(0o644)
		if strings.HasPrefix(rel, "opt/") {
			mode = 0o755
		}
		e.write(filepath.Join(e.host, rel), []byte(c), mode)
	}
	return e
}

// TestIPAMOnlyInstallsExactlyItsFiles: kube-ipam, kube-tier, the kubeconfig
// and the etcd files, nothing else; every file that was there, multus's
// config and binaries included, is byte-identical and not even rewritten.
func TestIPAMOnlyInstallsExactlyItsFiles(t *testing.T) {
	e := ipamOnlyEnv(t)
	inodes := map[string]uint64{}
	for rel := range multusNode {
		fi, err := os.Stat(filepath.Join(e.host, rel))
		if err != nil {
			t.Fatal(err)
		}
		inodes[rel] = inode(fi)
	}
	in, err := New(e.o)
	if err != nil {
		t.Fatal(err)
	}
	res, err := in.Pass()
	if err != nil {
		t.Fatal(err)
	}
	ours := []string{
		"etc/cni/net.d/kube-ipam.d/etcd/ca.crt",
		"etc/cni/net.d/kube-ipam.d/etcd/tls.crt",
		"etc/cni/net.d/kube-ipam.d/etcd/tls.key",
		"etc/cni/net.d/kube-ipam.d/kubeconfig",
		"opt/cni/bin/kube-ipam",
		"opt/cni/bin/kube-ipam-direct",
		"opt/cni/bin/kube-tier",
	}
	var changed []string
	for _, p := range res.Changed {
		rel, _ := filepath.Rel(e.host, p)
		changed = append(changed, rel)
	}
	slices.Sort(changed)
	if !slices.Equal(changed, ours) {
		t.Errorf("written %q, want %q", changed, ours)
	}
	want := slices.Clone(ours)
	for rel := range multusNode {
		want = append(want, rel)
	}
	slices.Sort(want)
	if got := e.hostFiles(); !slices.Equal(got, want) {
		t.Errorf("host files\n got %q\nwant %q", got, want)
	}
	for rel, c := range multusNode {
		p := filepath.Join(e.host, rel)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(read(t, p)) != c || inode(fi) != inodes[rel] {
			t.Errorf("%s was changed or rewritten", rel)
		}
	}
	if slices.Contains(e.o.InstalledBinaries(), "kube-multus") || !slices.Equal(e.o.InstalledBinaries(), IPAMOnlyBinaries) {
		t.Errorf("installed binaries %q", e.o.InstalledBinaries())
	}
	if len(res.Warnings) != 0 {
		t.Errorf("warnings %q", res.Warnings)
	}
	// Idempotent.
	if res, err := in.Pass(); err != nil || len(res.Changed) != 0 {
		t.Fatalf("second pass: %v %v", res, err)
	}
}

// TestIPAMOnlyChecksTheNetworksFile: given with --config, the networks the
// controller reads are validated and the files they name must exist, but the
// file is never installed; a bad one stops the pass before any write.
func TestIPAMOnlyChecksTheNetworksFile(t *testing.T) {
	e := ipamOnlyEnv(t)
	e.write(e.confSrc, []byte(networksFile), 0o644)
	e.o.given = map[string]bool{"config": true}
	res, err := e.pass()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range res.Changed {
		if filepath.Base(p) == filepath.Base(e.confSrc) || strings.HasPrefix(filepath.Base(p), "kube-ipam-networks") {
			t.Errorf("the networks file was installed: %s", p)
		}
	}
	// The same networks as one NAD config alone (a conflist) pass too.
	c, err := CheckNetworks([]byte(networksFile), "networks.json")
	if err != nil || len(c.Networks) != 2 || c.Networks[0].Name != "db-net" || c.Networks[1].Name != "web-net" {
		t.Fatalf("CheckNetworks: %v %+v", err, c)
	}
	single := `{"cniVersion": "1.0.0", "name": "db-net", "plugins": [{"type": "macvlan", "ipam": {"type": "kube-ipam", "podLookup": false, "etcdConfig": {"etcdURL": "http://127.0.0.1:2379"}, "subnet": "10.188.0.0/16"}}]}`
	if c, err := CheckNetworks([]byte(single), "networks.json"); err != nil || len(c.Networks) != 1 {
		t.Errorf("one conflist: %v", err)
	}
	for _, bad := range []struct{ name, data, want string }{
		{"not JSON", `{"delegates": [`, "not a JSON object"},
		{"no name", strings.Replace(networksFile, `"name": "web-net", `, ``, 1), `delegates[1] has no "name"`},
		{"no plugins", strings.Replace(networksFile, `"name": "web-net", "plugins": [`, `"name": "web-net", "plugins": [], "x": [`, 1), "delegates[1] (web-net): the container runtime would refuse it"},
		{"bad kube-ipam", strings.Replace(networksFile, `"10.189.0.0/16"`, `"10.189.0.0/33"`, 1), `network "web-net"`},
		{"no kube-ipam network", strings.ReplaceAll(networksFile, `"type": "kube-ipam"`, `"type": "host-local"`), `no plugin with "ipam": {"type": "kube-ipam"}`},
		{"names a file not written", strings.Replace(networksFile, `etcd/tls.key`, `etcd/client.key`, 1), "etcdKeyFile /etc/cni/net.d/kube-ipam.d/etcd/client.key"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			e := ipamOnlyEnv(t)
			e.write(e.confSrc, []byte(bad.data), 0o644)
			e.o.given = map[string]bool{"config": true}
			before := e.snapshot()
			_, err := e.pass()
			if err == nil || !strings.Contains(err.Error(), bad.want) || !strings.Contains(err.Error(), "networks file") {
				t.Fatalf("err %v, want %q", err, bad.want)
			}
			if bad.name != "names a file not written" && !maps.Equal(before, e.snapshot()) {
				t.Error("the node changed")
			}
		})
	}
	// A directory, as a ConfigMap is mounted (keys are links into ..data):
	// every config file with a kube-ipam network, the others skipped, as
	// the controller reads it.
	e = ipamOnlyEnv(t)
	cm := filepath.Join(e.root, "configmap-dir")
	data := filepath.Join(cm, "..2026_12_05_08_00_00.1")
	var nets struct{ Delegates []json.RawMessage }
	if err := json.Unmarshal([]byte(networksFile), &nets); err != nil {
		t.Fatal(err)
	}
	e.write(filepath.Join(data, "db-net.conflist"), nets.Delegates[0], 0o644)
	e.write(filepath.Join(data, "web-net.conflist"), nets.Delegates[1], 0o644)
	e.write(filepath.Join(data, "10-flannel.conflist"), []byte(flannelConflist), 0o644)
	e.write(filepath.Join(data, "README"), []byte("not a config"), 0o644)
	if err := os.Symlink(filepath.Base(data), filepath.Join(cm, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"db-net.conflist", "web-net.conflist", "10-flannel.conflist", "README"} {
		if err := os.Symlink(filepath.Join("..data", k), filepath.Join(cm, k)); err != nil {
			t.Fatal(err)
		}
	}
	e.o.ConfigSource = cm
	if _, err := e.pass(); err != nil {
		t.Fatalf("networks directory: %v", err)
	}
	if c, err := CheckNetworksAt(cm); err != nil || len(c.Networks) != 2 || c.Networks[0].Name != "db-net" || len(c.Files) != 7 {
		t.Errorf("CheckNetworksAt: %v %+v", err, c)
	}
	e.write(filepath.Join(data, "web-net.conflist"), []byte(`{"name": "web-net", "plugins": [`), 0o644)
	if _, err := e.pass(); err == nil || !strings.Contains(err.Error(), "web-net.conflist is not a JSON object") {
		t.Errorf("a broken file in the directory: %v", err)
	}
	for _, k := range []string{"db-net.conflist", "web-net.conflist"} {
		if err := os.Remove(filepath.Join(cm, k)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.pass(); err == nil || !strings.Contains(err.Error(), "holds no config file (.conf, .conflist, .json) with a kube-ipam network") {
		t.Errorf("a directory without a network: %v", err)
	}

	// Not given: not read (the default path may not be mounted).
	e = ipamOnlyEnv(t)
	e.o.ConfigSource = Defaults().ConfigSource
	if _, err := e.pass(); err != nil {
		t.Fatalf("IPAM-only without --config: %v", err)
	}
}

// TestIPAMOnlyNeedsKubeTier: an image without kube-tier fails the pass
// before anything is written, naming the binary.
func TestIPAMOnlyNeedsKubeTier(t *testing.T) {
	for _, ipamOnly := range []bool{true, false} {
		e := newEnv(t)
		e.o.IPAMOnly = ipamOnly
		if err := os.Remove(filepath.Join(e.binSrc, "kube-tier")); err != nil {
			t.Fatal(err)
		}
		_, err := e.pass()
		if err == nil || !strings.Contains(err.Error(), "binary "+filepath.Join(e.binSrc, "kube-tier")) || !strings.Contains(err.Error(), "the image must hold") {
			t.Errorf("ipam-only %v: err %v", ipamOnly, err)
		}
		if got := e.hostFiles(); len(got) != 0 {
			t.Errorf("ipam-only %v: written %q", ipamOnly, got)
		}
	}
}

// TestModeFlags: the modes' flags parsed as the DaemonSet gives them, and
// every wrong combination refused with the flag named.
func TestModeFlags(t *testing.T) {
	parse := func(args ...string) (Options, error) {
		o := Defaults()
		if err := FlagSet(&o).Parse(args); err != nil {
			return o, err
		}
		return o, o.Validate()
	}
	o, err := parse("--ipam-only")
	if err != nil {
		t.Fatalf("--ipam-only alone: %v", err)
	}
	if !slices.Equal(o.InstalledBinaries(), IPAMOnlyBinaries) || o.networksSource() != "" {
		t.Errorf("--ipam-only: binaries %q, networks %q", o.InstalledBinaries(), o.networksSource())
	}
	o, err = parse("--ipam-only", "--multus-alias=", "--config=/etc/kube-ipam/config/networks.json", "--binaries=kube-ipam-direct,kube-ipam")
	if err != nil || !slices.Equal(o.InstalledBinaries(), []string{"kube-ipam-direct", "kube-ipam"}) || o.networksSource() != "/etc/kube-ipam/config/networks.json" {
		t.Errorf("explicit IPAM-only flags: %v %q %q", err, o.InstalledBinaries(), o.networksSource())
	}
	if o, err := parse(); err != nil || !slices.Equal(o.InstalledBinaries(), []string{"kube-ipam-direct", "kube-ipam", "kube-multus", "kube-tier", "multus-cni"}) || o.auto() {
		t.Errorf("defaults: %v %q", err, o.InstalledBinaries())
	}
	if o, err := parse("--cluster-network=auto"); err != nil || !o.auto() || o.pinnedClusterNetwork() != "" {
		t.Errorf("auto: %v", err)
	}
	if o, err := parse("--cluster-network=10-calico.conflist"); err != nil || !o.auto() || o.pinnedClusterNetwork() != "10-calico.conflist" {
		t.Errorf("pinned: %v", err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--ipam-only", "--cluster-network=auto"}, "--cluster-network=auto with --ipam-only"},
		{[]string{"--ipam-only", "--cluster-network=10-calico.conflist"}, "with --ipam-only"},
		{[]string{"--ipam-only", "--multus-alias=multus-cni"}, "--multus-alias=multus-cni with --ipam-only"},
		{[]string{"--ipam-only", "--binaries=kube-ipam,kube-multus"}, "--ipam-only installs no kube-multus"},
		{[]string{"--cluster-network=Auto"}, `--cluster-network="Auto": want "config"`},
		{[]string{"--cluster-network=flannel"}, `--cluster-network="flannel"`},
		{[]string{"--cluster-network="}, `--cluster-network=""`},
		{[]string{"--cluster-network=.conf"}, `--cluster-network=".conf"`},
		{[]string{"--cluster-network=/etc/cni/net.d/10-calico.conflist"}, "plain file name"},
		{[]string{"--cluster-network=00-multus.conf"}, "names the file this installer writes"},
		{[]string{"--cluster-network=auto", "--retry-interval=0"}, "--retry-interval must be positive"},
		{[]string{"--config="}, "--config is required"},
	} {
		if _, err := parse(c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: err %v, want %q", c.args, err, c.want)
		}
	}
	// --ipam-only needs neither --config nor --conf-dir.
	if _, err := parse("--ipam-only", "--config=", "--conf-dir="); err != nil {
		t.Errorf("--ipam-only without config: %v", err)
	}
	// Options built in code: a non-default value counts as asked for.
	o = Defaults()
	o.IPAMOnly, o.MultusAlias, o.Once = true, "multus", true
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "--multus-alias=multus with --ipam-only") {
		t.Errorf("Validate = %v", err)
	}
	o = Defaults()
	o.IPAMOnly, o.Interval = true, time.Second
	if err := o.Validate(); err != nil {
		t.Errorf("IPAM-only defaults: %v", err)
	}
}
