package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kubeipam/internal/config"
)

// A multus meta config: the master is not kube-ipam, k8snet2 is a single
// plugin delegate inheriting the meta config's cniVersion, k8snet3 a
// conflist delegate whose plugin takes the list's name and cniVersion.
const multusConf = `{
  "cniVersion": "0.3.1", "name": "multus-cni-network", "type": "multus-cni",
  "delegates": [
    {"cniVersion": "0.3.1", "name": "k8s-pod-network", "type": "flannel", "delegate": {"isDefaultGateway": true}},
    {"name": "k8snet2", "type": "macvlan", "master": "eth0",
     "ipam": {"type": "kube-ipam", "etcdConfig": {"etcdURL": "http://127.0.0.1:1"}, "subnet": "10.188.0.0/24"}},
    {"cniVersion": "1.0.0", "name": "k8snet3", "plugins": [
      {"type": "bridge", "bridge": "br3",
       "ipam": {"type": "kube-ipam", "etcdConfig": {"etcdURL": "http://127.0.0.1:1"},
                "ranges": [[{"subnet": "10.189.0.0/28"}], [{"subnet": "fd00:189::/120"}]]}}]},
    {"name": "k8snet2", "type": "macvlan", "master": "eth0",
     "ipam": {"type": "kube-ipam", "etcdConfig": {"etcdURL": "http://127.0.0.1:1"}, "subnet": "10.188.0.0/24"}}
  ]
}`

func TestConfigForms(t *testing.T) {
	nets, err := config.ParseNetworks([]byte(multusConf), "multus")
	if err != nil {
		t.Fatal(err)
	}
	// The repeated k8snet2 delegate (same etcd, prefix and name) is returned once.
	if len(nets) != 2 || nets[0].Name != "k8snet2" || nets[1].Name != "k8snet3" || nets[1].CNIVersion != "1.0.0" || nets[0].CNIVersion != "0.3.1" {
		t.Fatalf("got %d networks: %+v", len(nets), nets)
	}
	seed, err := config.LoadNetworks("testdata/seed-macvlan.json")
	if err != nil || len(seed) != 1 || seed[0].Name != "k8snet2" {
		t.Fatalf("seed config: %v %+v", err, seed)
	}
	if _, err := config.ParseNetworks([]byte(`{"name":"x","type":"bridge","ipam":{"type":"host-local"}}`), "x"); err == nil || !strings.Contains(err.Error(), `"kube-ipam"`) {
		t.Fatalf("a config without kube-ipam: %v", err)
	}
	if _, err := config.ParseNetworks([]byte(`{"name":"x","type":"bridge","ipam":{"type":"kube-ipam"}}`), "f.conf"); err == nil || !strings.Contains(err.Error(), `f.conf: network "x"`) {
		t.Fatalf("an invalid kube-ipam network: %v", err)
	}
	if _, err := config.LoadNetworks("testdata/does-not-exist.conf"); err == nil {
		t.Fatal("a missing file was loaded")
	}
}

// TestLoadNetworksDirectory: a mounted ConfigMap with the meta config and a
// NAD's conflist gives every kube-ipam network once; files without one are
// skipped; a directory without any is an error.
func TestLoadNetworksDirectory(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("00-multus.conf", `{"cniVersion":"0.3.1","name":"m","type":"kube-multus","kubeconfig":"/k","clusterNetwork":"/etc/cni/net.d/10-flannel.conflist"}`)
	if _, err := config.LoadNetworks(dir); err == nil || !strings.Contains(err.Error(), "1 config files") {
		t.Fatalf("no kube-ipam network: %v", err)
	}
	write("k8snet2.conflist", `{"cniVersion":"0.3.1","name":"k8snet2","plugins":[{"type":"macvlan","ipam":{"type":"kube-ipam","etcdConfig":{"etcdURL":"http://127.0.0.1:2379"},"subnet":"10.188.0.0/16"}},{"type":"kube-tier"}]}`)
	write("db2.conf", `{"cniVersion":"0.3.1","name":"k8snet2","type":"macvlan","ipam":{"type":"kube-ipam","etcdConfig":{"etcdURL":"http://127.0.0.1:2379"},"subnet":"10.188.0.0/16"}}`)
	write("README", `not a config`)
	nets, err := config.LoadNetworks(dir)
	if err != nil || len(nets) != 1 || nets[0].Name != "k8snet2" {
		t.Fatalf("networks %v %v", nets, err)
	}
	write("k8snet3.json", `{"cniVersion":"0.3.1","name":"k8snet3","type":"macvlan","ipam":{"type":"kube-ipam","etcdConfig":{"etcdURL":"http://127.0.0.1:2379"},"subnet":"10.189.0.0/16"}}`)
	if nets, err = config.LoadNetworks(dir); err != nil || len(nets) != 2 {
		t.Fatalf("two networks: %v %v", nets, err)
	}
	write("bad.conf", `{"cniVersion":"0.3.1","name":"bad","type":"macvlan","ipam":{"type":"kube-ipam","subnet":"nope"}}`)
	if _, err := config.LoadNetworks(dir); err == nil || !strings.Contains(err.Error(), "bad.conf") {
		t.Fatalf("a broken network is an error naming its file: %v", err)
	}
}

// TestReloader: a change that parses is taken, one that does not is
// refused and the last good networks stay; an unchanged file is not
// re-parsed.
func TestReloader(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "00-multus.conf")
	write := func(s string) {
		if err := os.WriteFile(f, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	conf := func(start string) string {
		return `{"cniVersion":"0.3.1","name":"k8snet2","type":"macvlan","ipam":{"type":"kube-ipam","etcdConfig":{"etcdURL":"http://127.0.0.1:2379"},"subnet":"10.188.0.0/16","rangeStart":"` + start + `"}}`
	}
	r := &config.Reloader{Path: dir}
	if _, _, err := r.Reload(); err == nil {
		t.Fatal("an empty directory loaded")
	}
	write(conf("10.188.0.10"))
	nets, changed, err := r.Reload()
	if err != nil || !changed || nets[0].RangeSets[0][0].Start.String() != "10.188.0.10" {
		t.Fatalf("first load: %v %v %v", nets, changed, err)
	}
	if _, changed, err := r.Reload(); changed || err != nil {
		t.Fatalf("unchanged: %v %v", changed, err)
	}
	write(`{"cniVersion":"0.3.1","name":"k8snet2","type":"macvlan","ipam":{"type":"kube-ipam","subnet":"nope"}}`)
	nets, changed, err = r.Reload()
	if err == nil || changed || nets[0].RangeSets[0][0].Start.String() != "10.188.0.10" {
		t.Fatalf("a bad config must be refused and the last good one kept: %v %v %v", nets, changed, err)
	}
	write(conf("10.188.0.20"))
	if nets, changed, err = r.Reload(); err != nil || !changed || nets[0].RangeSets[0][0].Start.String() != "10.188.0.20" {
		t.Fatalf("fixed config: %v %v %v", nets, changed, err)
	}
}
