package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"kubeipam/internal/seed"
)

func (l *Lab) cniBinDir() string { return filepath.Join(l.opts.Dir, "cni", "bin") }

// Tier is the lab's tier policy (docs/kube-multus.md): only the seed's web
// and database pods get net1, and the database pods accept on net1 only
// ping and MySQL's port from the database network.
var Tier = map[string]any{
	"attach": map[string]any{"podSelector": "app in (web,database-1,database-2)"},
	"ingress": []any{map[string]any{
		"podSelector": "app in (database-1,database-2)",
		"from":        []string{"10.188.0.0/16"},
		"ports":       []any{map[string]any{"protocol": "tcp", "port": 3306}},
		"icmp":        true,
	}},
}

// installCNI fills the shared plugin directory (every node runs the same
// binaries; the reference plugins and ours side by side, as in /opt/cni/bin)
// and writes each node's 10-multus.conf.
func (l *Lab) installCNI(context.Context) error {
	dst := l.cniBinDir()
	es, err := os.ReadDir(l.opts.CNIBin)
	if err != nil {
		return err
	}
	for _, e := range es {
		if e.Type().IsRegular() {
			if err := copyFile(filepath.Join(l.opts.CNIBin, e.Name()), filepath.Join(dst, e.Name())); err != nil {
				return err
			}
		}
	}
	for name, from := range map[string]string{"kube-ipam": "kube-ipam", "kube-multus": "kube-multus", "multus-cni": "kube-multus"} {
		if err := copyFile(filepath.Join(l.opts.RepoBin, from), filepath.Join(dst, name)); err != nil {
			return err
		}
	}
	if err := copyFile(filepath.Join(l.opts.LabBin, "flannel"), filepath.Join(dst, "flannel")); err != nil {
		return err
	}
	for _, n := range l.state.Nodes {
		conf, err := l.NodeConf(n)
		if err != nil {
			return err
		}
		dir := filepath.Join(n.Dir, "net.d")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "10-multus.conf"), conf, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// NodeConf is the seed's 10-multus.conf for node n with only the site's
// values replaced (docs/lab.md lists them): the flannel delegate gets this
// node's subnet file and data dir (every node shares one filesystem); etcd
// and kubeconfig paths point at the lab's; and the tier policy is added to
// the database network.
func (l *Lab) NodeConf(n Node) ([]byte, error) {
	var conf map[string]any
	if err := json.Unmarshal(seed.MultusConf, &conf); err != nil {
		return nil, fmt.Errorf("the seed's 10-multus.conf: %w", err)
	}
	conf["binDir"] = l.cniBinDir()
	conf["cniDir"] = filepath.Join(n.Dir, "multus")
	conf["kubeconfig"] = l.pki("plugin.kubeconfig")
	conf["logFile"] = filepath.Join(n.Dir, "kube-multus.log")
	conf["logLevel"] = "verbose"
	conf["logToStderr"] = false
	ds, _ := conf["delegates"].([]any)
	if len(ds) != 2 {
		return nil, fmt.Errorf("the seed's 10-multus.conf has %d delegates, want 2", len(ds))
	}
	flannel, _ := ds[0].(map[string]any)
	mv, _ := ds[1].(map[string]any)
	if flannel["type"] != "flannel" || mv["type"] != "macvlan" {
		return nil, fmt.Errorf("the seed's delegates are %v and %v, want flannel and macvlan", flannel["type"], mv["type"])
	}
	flannel["subnetFile"] = n.subnetFile()
	flannel["dataDir"] = filepath.Join(n.Dir, "flannel", "data")
	ipam, _ := mv["ipam"].(map[string]any)
	if ipam == nil {
		return nil, fmt.Errorf("the seed's macvlan delegate has no ipam")
	}
	ipam["kubeConfig"] = l.pki("plugin.kubeconfig")
	ipam["etcdConfig"] = map[string]any{
		"etcdURL":      l.opts.EtcdURL(),
		"etcdCertFile": l.pki("etcd-client.crt"), "etcdKeyFile": l.pki("etcd-client.key"),
		"etcdTrustedCAFileFile": l.pki("etcd-ca.crt"), // the seed's spelling
	}
	// All nodes share the host's hostname; records and CNI GC need the node.
	ipam["nodeName"] = n.Name
	ipam["logFile"] = filepath.Join(n.Dir, "kube-ipam.log")
	// The seed's "routes": [{"dst": "0.0.0.0/0"}] would give net1 a second
	// default route via a gateway the database network does not have; the
	// database network is on-link, so the lab leaves it out.
	delete(ipam, "routes")
	mv["kubeMultus"] = Tier
	return json.MarshalIndent(conf, "", "  ")
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	tmp := to + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, to)
}
