package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// ConfigKey is the network config's key in deploy/configmap.yaml and its
// file name on the nodes.
const ConfigKey = "00-multus.conf"

// installCNI does the seed's section 2.1 on every node: the reference
// plugins (Debian's, in place of the cni-plugins tarball) and flannel's CNI
// plugin go into the node's /opt/cni/bin. kube-ipam's own binaries and the
// network config come from the installer DaemonSet (deployKubeIPAM).
func (l *Lab) installCNI(context.Context) error {
	es, err := os.ReadDir(l.opts.CNIBin)
	if err != nil {
		return err
	}
	for _, n := range l.state.Nodes {
		dst := n.FS("/opt/cni/bin")
		for _, e := range es {
			if e.Type().IsRegular() {
				if err := copyFile(filepath.Join(l.opts.CNIBin, e.Name()), filepath.Join(dst, e.Name())); err != nil {
					return err
				}
			}
		}
		if err := copyFile(filepath.Join(l.opts.LabBin, "flannel"), filepath.Join(dst, "flannel")); err != nil {
			return err
		}
	}
	if l.opts.NADs() {
		return l.writeFlannelConflist()
	}
	return nil
}

// NetworkConfig is the network config of deploy/configmap.yaml (the seed's
// 10-multus.conf adapted for a deployment) with the two site values a user
// would edit: the etcd URL (the lab's dedicated etcd) and the tier policy of
// the ConfigMap's commented block, switched on. On the Kubernetes store it
// also says "store": "kubernetes" (the etcdConfig stays, ignored).
func (l *Lab) NetworkConfig() ([]byte, error) {
	path := filepath.Join(l.opts.Deploy, "configmap.yaml")
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cm corev1.ConfigMap
	if err := yaml.Unmarshal(raw, &cm); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var conf map[string]any
	if err := json.Unmarshal([]byte(cm.Data[ConfigKey]), &conf); err != nil {
		return nil, fmt.Errorf("%s: data %q: %w", path, ConfigKey, err)
	}
	ds, _ := conf["delegates"].([]any)
	if len(ds) != 2 {
		return nil, fmt.Errorf("%s: %d delegates, want the seed's 2", path, len(ds))
	}
	mv, _ := ds[1].(map[string]any)
	ipam, _ := mv["ipam"].(map[string]any)
	etcd, _ := ipam["etcdConfig"].(map[string]any)
	if etcd == nil {
		return nil, fmt.Errorf("%s: delegates[1] has no ipam.etcdConfig", path)
	}
	etcd["etcdURL"] = l.opts.EtcdURL()
	if l.opts.KubernetesStore() {
		ipam["store"] = StoreKubernetes
	}
	tier, err := commentedTier(string(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	mv["kubeMultus"] = tier
	return json.MarshalIndent(conf, "", "  ")
}

// commentedTier reads the ConfigMap's "# BEGIN tier policy" … "# END tier
// policy" block: the documented policy is the one the lab runs.
func commentedTier(yamlText string) (any, error) {
	var body []string
	in := false
	for _, line := range strings.Split(yamlText, "\n") {
		t := strings.TrimSpace(line)
		switch {
		case t == "# BEGIN tier policy":
			in = true
		case t == "# END tier policy":
			in = false
		case in:
			body = append(body, strings.TrimPrefix(t, "#"))
		}
	}
	if len(body) == 0 {
		return nil, fmt.Errorf("no '# BEGIN tier policy' … '# END tier policy' block")
	}
	var v map[string]any
	if err := json.Unmarshal([]byte("{"+strings.Join(body, "\n")+"}"), &v); err != nil {
		return nil, fmt.Errorf("the commented tier policy: %w", err)
	}
	tier, ok := v["kubeMultus"]
	if !ok {
		return nil, fmt.Errorf("the commented tier policy has no kubeMultus key")
	}
	return tier, nil
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

// NADFile is the guide's database network as a NetworkAttachmentDefinition,
// relative to Examples.
const NADFile = "nad/db-net.yaml"

// NADConfig is spec.config of deploy/examples/nad/db-net.yaml with the site
// value a user would edit, the etcd URL (the lab's dedicated etcd), and on
// the Kubernetes store "store": "kubernetes", as NetworkConfig does for the
// ConfigMap.
func (l *Lab) NADConfig() (nad map[string]any, config []byte, err error) {
	path := filepath.Join(l.opts.Examples, NADFile)
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	if err := yaml.Unmarshal(raw, &nad); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	spec, _ := nad["spec"].(map[string]any)
	text, _ := spec["config"].(string)
	var conf map[string]any
	if err := json.Unmarshal([]byte(text), &conf); err != nil {
		return nil, nil, fmt.Errorf("%s: spec.config: %w", path, err)
	}
	plugins, _ := conf["plugins"].([]any)
	var ipam map[string]any
	for _, p := range plugins {
		if m, _ := p.(map[string]any); m != nil {
			if i, _ := m["ipam"].(map[string]any); i != nil && i["type"] == "kube-ipam" {
				ipam = i
			}
		}
	}
	etcd, _ := ipam["etcdConfig"].(map[string]any)
	if etcd == nil {
		return nil, nil, fmt.Errorf("%s: no kube-ipam plugin with an etcdConfig in spec.config", path)
	}
	etcd["etcdURL"] = l.opts.EtcdURL()
	if l.opts.KubernetesStore() {
		ipam["store"] = StoreKubernetes
	}
	config, err = json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, nil, err
	}
	spec["config"] = string(config)
	return nad, config, nil
}

// NADManifest writes the lab's db-net.yaml (NADConfig) under the lab dir
// and returns its path, for `kubectl apply -f`.
func (l *Lab) NADManifest() (string, error) {
	nad, _, err := l.NADConfig()
	if err != nil {
		return "", err
	}
	b, err := yaml.Marshal(nad)
	if err != nil {
		return "", err
	}
	path := filepath.Join(l.opts.Dir, "manifests", "db-net.yaml")
	return path, os.WriteFile(path, b, 0o644)
}
