package deploy

import (
	"bytes"
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"kubeipam/internal/config"
	"kubeipam/internal/install"
	"kubeipam/internal/lab"
)

// The installer's mode components of deploy/: ipam-only (kube-ipam under a
// multus the cluster already runs) and auto-cluster-network (the meta
// config's delegates[0] from each node's own CNI config). Checked here by
// rendering them with the real kubectl's kustomize and running the real
// installer with the rendered arguments, in the rendered mounts, on a fake
// node; deploy_test.go dry-runs them against a real kube-apiserver.

// modeComponents are the installer's mode components, relative to deploy/.
var modeComponents = []string{"ipam-only", "auto-cluster-network"}

// modeComponent reports which mode component a deploy/ file is the
// kustomization of.
func modeComponent(rel string) (string, bool) {
	for _, c := range modeComponents {
		if rel == c+"/kustomization.yaml" {
			return c, true
		}
	}
	return "", false
}

// allComponentPatches are every component's patch files, relative to
// deploy/: partial objects or JSON patches, not manifests of their own.
func allComponentPatches(t *testing.T) []string {
	t.Helper()
	out := componentPatches(t)
	for _, c := range append(slices.Clone(modeComponents), certManagerComponent) {
		for _, p := range readKustomization(t, filepath.Join(deployDir(t), c)).Patches {
			out = append(out, path.Join(c, p.Path))
		}
	}
	return out
}

// renderWith renders deploy/ with the given components, in that order, from
// an overlay outside deploy/ as the components' comments tell users to.
func renderWith(t *testing.T, comps ...string) (string, []doc) {
	t.Helper()
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, deployDir(t))
	if err != nil {
		t.Fatal(err)
	}
	var cs []string
	for _, c := range comps {
		cs = append(cs, rel+"/"+c)
	}
	overlay := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [" + rel + "]\ncomponents: [" + strings.Join(cs, ", ") + "]\n"
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(overlay), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, kustomize(t, dir)
}

// rendered is what a node and the controller get from a render.
type rendered struct {
	docs      []doc
	cm        corev1.ConfigMap
	ds        appsv1.DaemonSet
	dep       appsv1.Deployment
	installer install.Options
}

func render(t *testing.T, comps ...string) rendered {
	t.Helper()
	_, ds := renderWith(t, comps...)
	r := rendered{docs: ds}
	find(t, ds, "ConfigMap", "kube-ipam-config", &r.cm)
	find(t, ds, "DaemonSet", "kube-ipam-node", &r.ds)
	find(t, ds, "Deployment", "kube-ipam-controller", &r.dep)
	r.installer = install.Defaults()
	if err := installerFlags(&r.installer).Parse(r.ds.Spec.Template.Spec.Containers[0].Args); err != nil {
		t.Fatalf("rendered installer args: %v", err)
	}
	if err := r.installer.Validate(); err != nil {
		t.Fatalf("rendered installer args %q: %v", r.ds.Spec.Template.Spec.Containers[0].Args, err)
	}
	return r
}

func (r rendered) has(kind, name string) bool {
	return slices.ContainsFunc(r.docs, func(d doc) bool { return d.kind == kind && d.name == name })
}

// TestModeComponentsList: kustomize Components (an overlay inside its base
// is refused) whose every file is used, documented in
// deploy/kustomization.yaml and deploy/README.md.
func TestModeComponentsList(t *testing.T) {
	top, _ := os.ReadFile(filepath.Join(deployDir(t), "kustomization.yaml"))
	readme, _ := os.ReadFile(filepath.Join(deployDir(t), "README.md"))
	for _, c := range modeComponents {
		dir := filepath.Join(deployDir(t), c)
		k := readKustomization(t, dir)
		if k.APIVersion != "kustomize.config.k8s.io/v1alpha1" || k.Kind != "Component" || len(k.Resources) != 0 {
			t.Errorf("%s: %s %s with resources %q, want a Component of patches only", c, k.APIVersion, k.Kind, k.Resources)
		}
		checkFilesUsed(t, c, k)
		if !bytes.Contains(top, []byte("#   - "+c+":")) || !bytes.Contains(readme, []byte("`"+c+"/`")) {
			t.Errorf("%s is not described in deploy/kustomization.yaml and deploy/README.md", c)
		}
	}
}

// TestIPAMOnlyComponentRenders: deploy/ with ipam-only (alone, and after
// kubernetes-store as documented): the installer in IPAM-only mode with
// only kube-ipam.d of the node's conf dir mounted, the controller reading
// every key of the ConfigMap, which holds the NAD configs of
// deploy/examples/nad exactly, and nothing of kube-multus (no NAD CRD, no
// kube-ipam-multus RBAC).
func TestIPAMOnlyComponentRenders(t *testing.T) {
	for _, comps := range [][]string{{"ipam-only"}, {component, "ipam-only"}} {
		t.Run(strings.Join(comps, "+"), func(t *testing.T) {
			r := render(t, comps...)
			_, before := renderWith(t, comps[:len(comps)-1]...)
			base := len(before)
			if len(r.docs) != base-3 {
				t.Errorf("rendered %d objects, want %d (the install without the NAD CRD and kube-ipam-multus's role and binding)", len(r.docs), base-3)
			}
			for _, o := range [][2]string{{"CustomResourceDefinition", "network-attachment-definitions.k8s.cni.cncf.io"}, {"ClusterRole", "kube-ipam-multus"}, {"ClusterRoleBinding", "kube-ipam-multus"}} {
				if r.has(o[0], o[1]) {
					t.Errorf("the IPAM-only install has %s %s", o[0], o[1])
				}
			}
			if !r.has("ClusterRole", "kube-ipam-plugin") || !r.has("ClusterRoleBinding", "kube-ipam-plugin") {
				t.Error("the plugin's RBAC (get pods: kube-ipam and kube-tier) is gone")
			}
			o := r.installer
			if !o.IPAMOnly || !slices.Equal(o.InstalledBinaries(), install.IPAMOnlyBinaries) || o.ClusterNetwork != install.ClusterNetworkConfig {
				t.Errorf("installer: ipam-only %v, binaries %q", o.IPAMOnly, o.InstalledBinaries())
			}
			if _, ok := r.cm.Data["00-multus.conf"]; ok {
				t.Error("the ConfigMap still has 00-multus.conf")
			}
			// The installer checks, and the controller reads, every key.
			spec := r.ds.Spec.Template.Spec
			if _, v := mountFor(t, spec, 0, o.ConfigSource+"/x"); v.ConfigMap == nil || v.ConfigMap.Name != "kube-ipam-config" || len(v.ConfigMap.Items) != 0 {
				t.Errorf("installer --config %s: %+v", o.ConfigSource, v.VolumeSource)
			}
			cspec := r.dep.Spec.Template.Spec
			cfg := strings.TrimPrefix(cspec.Containers[0].Args[0], "--config=")
			if m, v := mountFor(t, cspec, 0, cfg+"/x"); v.ConfigMap == nil || v.ConfigMap.Name != "kube-ipam-config" || len(v.ConfigMap.Items) != 0 || m.MountPath != cfg {
				t.Errorf("controller --config %s: %+v", cfg, v.VolumeSource)
			}
			// Of the node's conf dir only kube-ipam.d is mounted, and it
			// holds the kubeconfig and the etcd files.
			for _, v := range spec.Volumes {
				if v.HostPath != nil && v.HostPath.Path == "/etc/cni/net.d" {
					t.Errorf("volume %s mounts the whole /etc/cni/net.d", v.Name)
				}
			}
			for _, p := range []string{o.Kubeconfig, o.EtcdCertDir} {
				if p == "" {
					continue
				}
				if _, v := mountFor(t, spec, 0, p); v.HostPath == nil || v.HostPath.Path != "/etc/cni/net.d/"+install.StateDir {
					t.Errorf("%s is mounted from %+v", p, v.VolumeSource)
				}
			}
			// The controller's networks are the NADs' configs, each equal
			// to one of deploy/examples/nad, whose every kube-ipam NAD is
			// there.
			nads := exampleNADs(t)
			var names []string
			for key, conf := range r.cm.Data {
				if !slices.Contains(config.ConfigExtensions, filepath.Ext(key)) {
					t.Errorf("ConfigMap key %s: the controller reads only %v files", key, config.ConfigExtensions)
				}
				nets, err := config.ParseNetworks([]byte(conf), key)
				if err != nil {
					t.Fatalf("ConfigMap key %s: %v", key, err)
				}
				if _, err := install.CheckNetworks([]byte(conf), key); err != nil {
					t.Errorf("the installer refuses ConfigMap key %s: %v", key, err)
				}
				nad, ok := nads[nets[0].Name]
				if !ok {
					t.Errorf("ConfigMap key %s: no NAD of deploy/examples/nad has network %q", key, nets[0].Name)
					continue
				}
				if !jsonEqual(t, conf, nad) {
					t.Errorf("ConfigMap key %s differs from the NAD config of network %s:\n%s\n%s", key, nets[0].Name, conf, nad)
				}
				names = append(names, nets[0].Name)
			}
			for name := range nads {
				if !slices.Contains(names, name) {
					t.Errorf("NAD network %s (deploy/examples/nad) is not in the ConfigMap: the controller would not know it", name)
				}
			}
		})
	}
}

// exampleNADs are the configs of deploy/examples' NetworkAttachmentDefinitions
// that use kube-ipam, by network name.
func exampleNADs(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, m := range manifests(t) {
		if !strings.HasPrefix(m, "examples/") {
			continue
		}
		for _, d := range docs(t, filepath.Join(deployDir(t), m)) {
			if d.kind != "NetworkAttachmentDefinition" {
				continue
			}
			var nad struct {
				Spec struct {
					Config string `json:"config"`
				} `json:"spec"`
			}
			if err := yaml.Unmarshal(d.raw, &nad); err != nil {
				t.Fatal(err)
			}
			if nets, err := config.ParseNetworks([]byte(nad.Spec.Config), m); err == nil {
				out[nets[0].Name] = nad.Spec.Config
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("deploy/examples has no NetworkAttachmentDefinition with kube-ipam")
	}
	return out
}

func jsonEqual(t *testing.T, a, b string) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal([]byte(a), &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(b), &y); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(x, y)
}

// TestAutoComponentRenders: deploy/ with auto-cluster-network (alone and
// with kubernetes-store, in either order): the installer's arguments are
// deploy/'s plus --cluster-network=auto, and the ConfigMap's config as it
// is (its masterplugin delegate the cluster network's placeholder) makes,
// with flannel's conflist, the meta config kube-multus accepts.
func TestAutoComponentRenders(t *testing.T) {
	base, _ := installerOptions(t)
	for _, comps := range [][]string{{"auto-cluster-network"}, {component, "auto-cluster-network"}, {"auto-cluster-network", component}} {
		t.Run(strings.Join(comps, "+"), func(t *testing.T) {
			r := render(t, comps...)
			o := r.installer
			if o.ClusterNetwork != install.ClusterNetworkAuto {
				t.Fatalf("--cluster-network=%s", o.ClusterNetwork)
			}
			want := base
			if slices.Contains(comps, component) {
				want.EtcdCertSource = ""
			}
			o.ClusterNetwork = install.ClusterNetworkConfig
			if !reflect.DeepEqual(o, want) {
				t.Errorf("installer options %+v, want deploy/'s %+v", o, want)
			}
			key := filepath.Base(r.installer.ConfigSource)
			gen, err := install.BuildAutoConfig([]byte(r.cm.Data[key]), &install.ClusterNetworkFile{Name: "10-flannel.conflist", Data: []byte(lab.FlannelConflist)})
			if err != nil {
				t.Fatal(err)
			}
			checked, err := install.CheckConfig(gen, key)
			if err != nil {
				t.Fatalf("generated config: %v\n%s", err, gen)
			}
			if d := checked.Meta.Delegates; len(d) != 2 || d[0].Name != "cbr0" || !d[0].IsList || d[1].Name != "k8snet2" {
				t.Errorf("generated delegates %+v", d)
			}
		})
	}
	// Not with ipam-only: the installer refuses the pair.
	_, ds := renderWith(t, "ipam-only", "auto-cluster-network")
	var d appsv1.DaemonSet
	find(t, ds, "DaemonSet", "kube-ipam-node", &d)
	o := install.Defaults()
	if err := installerFlags(&o).Parse(d.Spec.Template.Spec.Containers[0].Args); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "--cluster-network=auto with --ipam-only") {
		t.Errorf("ipam-only + auto-cluster-network: %v", err)
	}
}

// podNode is a fake node and the installer pod's view of it: every hostPath
// volume of the rendered DaemonSet is a link from the pod's mount path to
// the node's directory, so the installer reaches exactly what the manifest
// mounts.
type podNode struct {
	t         *testing.T
	node, pod string
}

func newPodNode(t *testing.T, r rendered) *podNode {
	t.Helper()
	root := t.TempDir()
	p := &podNode{t: t, node: filepath.Join(root, "node"), pod: filepath.Join(root, "pod")}
	spec := r.ds.Spec.Template.Spec
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	for _, m := range spec.Containers[0].VolumeMounts {
		v := vols[m.Name]
		if v.HostPath == nil {
			continue
		}
		hostDir := filepath.Join(p.node, v.HostPath.Path) // DirectoryOrCreate
		if err := os.MkdirAll(hostDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(p.pod, m.MountPath)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(hostDir, filepath.Join(p.pod, m.MountPath)); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func (p *podNode) write(file string, data []byte, mode os.FileMode) {
	p.t.Helper()
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(file, data, mode); err != nil {
		p.t.Fatal(err)
	}
}

// files are the node's files and their contents.
func (p *podNode) files() map[string]string {
	p.t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(p.node, func(f string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(f)
		rel, _ := filepath.Rel(p.node, f)
		out["/"+rel] = string(b)
		return err
	})
	if err != nil {
		p.t.Fatal(err)
	}
	return out
}

// install runs the real installer once with the rendered arguments, every
// path moved into the pod's view, the ConfigMap mounted as kubelet mounts it
// (keys as links into ..data) and the Secret's and service account's files.
func (p *podNode) install(r rendered) error {
	t := p.t
	t.Helper()
	o := r.installer
	in := func(s string) string {
		if s == "" {
			return ""
		}
		return filepath.Join(p.pod, s)
	}
	o.BinDir, o.ConfDir, o.Kubeconfig, o.EtcdCertDir, o.HostRoot = in(o.BinDir), in(o.ConfDir), in(o.Kubeconfig), in(o.EtcdCertDir), in(o.HostRoot)
	o.BinSourceDir = in(o.BinSourceDir)
	for _, b := range install.DefaultBinaries {
		p.write(filepath.Join(o.BinSourceDir, b), []byte("#!/bin/sh\n"), 0o755)
	}
	spec := r.ds.Spec.Template.Spec
	// The ConfigMap's volume, whether --config is its directory or a file
	// in it.
	m, v := mountFor(t, spec, 0, r.installer.ConfigSource+"/x")
	cmDir := in(m.MountPath)
	data := filepath.Join(cmDir, "..2026_12_05_00_00_00.1")
	for key, val := range r.cm.Data {
		if len(v.ConfigMap.Items) > 0 && !slices.ContainsFunc(v.ConfigMap.Items, func(i corev1.KeyToPath) bool { return i.Key == key }) {
			continue
		}
		p.write(filepath.Join(data, key), []byte(val), 0o644)
		if err := os.Symlink(filepath.Join("..data", key), filepath.Join(cmDir, key)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Base(data), filepath.Join(cmDir, "..data")); err != nil {
		t.Fatal(err)
	}
	o.ConfigSource = in(o.ConfigSource)
	if o.EtcdCertSource != "" {
		o.EtcdCertSource = in(o.EtcdCertSource)
		ca, cert, key := etcdPKI(t)
		p.write(filepath.Join(o.EtcdCertSource, install.EtcdCAFile), ca, 0o400)
		p.write(filepath.Join(o.EtcdCertSource, install.EtcdCertFile), cert, 0o400)
		p.write(filepath.Join(o.EtcdCertSource, install.EtcdKeyFile), key, 0o400)
	}
	o.TokenFile, o.CAFile = in(o.TokenFile), in(o.CAFile)
	ca, _, _ := etcdPKI(t)
	p.write(o.TokenFile, []byte("token"), 0o644)
	p.write(o.CAFile, ca, 0o644)
	o.KubeServer = "https://10.96.0.1:443"
	o.Once = true
	return install.Run(t.Context(), o)
}

// TestIPAMOnlyOnAMultusNode: the rendered IPAM-only installer, on a node
// that runs multus thick over flannel, writes kube-ipam, kube-tier, the
// kubeconfig and the etcd files and nothing else; every file of multus and
// flannel stays as it was.
func TestIPAMOnlyOnAMultusNode(t *testing.T) {
	r := render(t, "ipam-only")
	p := newPodNode(t, r)
	existing := map[string]string{
		"/etc/cni/net.d/00-multus.conf":             `{"cniVersion":"0.3.1","name":"multus-cni-network","type":"multus-shim","socketDir":"/host/run/multus/"}`,
		"/etc/cni/net.d/10-flannel.conflist":        lab.FlannelConflist,
		"/etc/cni/net.d/multus.d/multus.kubeconfig": "apiVersion: v1\nkind: Config\n",
		"/opt/cni/bin/multus-shim":                  "#!/bin/sh\n",
		"/opt/cni/bin/multus-cni":                   "#!/bin/sh\n# multus v3.8\n",
		"/opt/cni/bin/macvlan":                      "#!/bin/sh\n",
	}
	for f, c := range existing {
		p.write(filepath.Join(p.node, f), []byte(c), 0o644)
	}
	if err := p.install(r); err != nil {
		t.Fatalf("installer: %v", err)
	}
	got := p.files()
	for f, c := range existing {
		if got[f] != c {
			t.Errorf("%s changed", f)
		}
		delete(got, f)
	}
	var written []string
	for f := range got {
		written = append(written, f)
	}
	slices.Sort(written)
	want := []string{
		"/etc/cni/net.d/kube-ipam.d/etcd/ca.crt", "/etc/cni/net.d/kube-ipam.d/etcd/tls.crt", "/etc/cni/net.d/kube-ipam.d/etcd/tls.key",
		"/etc/cni/net.d/kube-ipam.d/kubeconfig", "/opt/cni/bin/kube-ipam", "/opt/cni/bin/kube-ipam-direct", "/opt/cni/bin/kube-tier",
	}
	if !slices.Equal(written, want) {
		t.Errorf("written %q, want %q", written, want)
	}
}

// TestAutoOnAFlannelNode: the rendered auto-mode installer, on a node that
// runs flannel, installs 00-multus.conf with flannel's conflist as
// delegates[0], byte for byte, and the ConfigMap's k8snet2 after it.
func TestAutoOnAFlannelNode(t *testing.T) {
	r := render(t, "auto-cluster-network")
	p := newPodNode(t, r)
	p.write(filepath.Join(p.node, "/etc/cni/net.d/10-flannel.conflist"), []byte(lab.FlannelConflist), 0o644)
	if err := p.install(r); err != nil {
		t.Fatalf("installer: %v", err)
	}
	got := p.files()
	var c struct {
		Delegates []json.RawMessage `json:"delegates"`
	}
	if err := json.Unmarshal([]byte(got["/etc/cni/net.d/00-multus.conf"]), &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Delegates) != 2 || !bytes.Equal(c.Delegates[0], bytes.TrimSpace([]byte(lab.FlannelConflist))) || !strings.Contains(string(c.Delegates[1]), `"k8snet2"`) {
		t.Errorf("installed config:\n%s", got["/etc/cni/net.d/00-multus.conf"])
	}
	if got["/etc/cni/net.d/10-flannel.conflist"] != lab.FlannelConflist {
		t.Error("flannel's config changed")
	}
}
