package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"kubeipam/internal/config"
	"kubeipam/internal/install"
	"kubeipam/internal/store/kubestore/crds"
	"kubeipam/internal/testenv"
)

// The kubernetes-store component of deploy/ (the Kubernetes API store):
// what it lists, its network config against the base's, and the install it
// renders to (checked here without an API server; deploy_test.go dry-runs
// it and asks the authorizer about its RBAC).

// component is deploy/'s kustomize Component for the Kubernetes API store.
const component = "kubernetes-store"

// crdsDir is the one copy of the store's CRDs, relative to deploy/.
const crdsDir = "../internal/store/kubestore/crds"

type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Components []string `json:"components"`
	Patches    []struct {
		Path string `json:"path"`
	} `json:"patches"`
}

func readKustomization(t *testing.T, dir string) kustomization {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization // only these fields (not images and the like)
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	return k
}

// checkFilesUsed fails the test for every file of component (a directory of
// deploy/, whose kustomization is k) that is neither a resource nor a
// patch of it: a file kustomize never reads.
func checkFilesUsed(t *testing.T, component string, k kustomization) {
	t.Helper()
	used := map[string]bool{"kustomization.yaml": true}
	for _, r := range k.Resources {
		used[r] = true
	}
	for _, p := range k.Patches {
		used[p.Path] = true
	}
	es, err := os.ReadDir(filepath.Join(deployDir(t), component))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if !used[e.Name()] {
			t.Errorf("%s/%s is neither a resource nor a patch of the component", component, e.Name())
		}
	}
}

// componentPatches are the component's patch files, relative to deploy/:
// partial objects (or JSON patches), not manifests of their own.
func componentPatches(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, p := range readKustomization(t, filepath.Join(deployDir(t), component)).Patches {
		out = append(out, path.Join(component, p.Path))
	}
	return out
}

// renderWithComponent renders deploy/ with the component the way
// kubernetes-store/kustomization.yaml tells users to (an overlay outside
// deploy/), with the real kubectl's kustomize, and returns the overlay's
// directory and the rendered documents.
func renderWithComponent(t *testing.T) (string, []doc) {
	t.Helper()
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, deployDir(t))
	if err != nil {
		t.Fatal(err)
	}
	overlay := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [" + rel + "]\ncomponents: [" + rel + "/" + component + "]\n"
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(overlay), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, kustomize(t, dir)
}

// kustomize renders a kustomization directory with the real kubectl.
func kustomize(t *testing.T, dir string) []doc {
	t.Helper()
	kubectl := testenv.KubeBinary(t, "kubectl")
	out := filepath.Join(t.TempDir(), "rendered.yaml")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if b, err := exec.CommandContext(ctx, kubectl, "kustomize", dir, "--output", out).CombinedOutput(); err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, b)
	}
	return docs(t, out)
}

// find strictly decodes the rendered document kind/name into obj.
func find(t *testing.T, ds []doc, kind, name string, obj any) {
	t.Helper()
	for _, d := range ds {
		if d.kind == kind && d.name == name {
			if err := yaml.UnmarshalStrict(d.raw, obj); err != nil {
				t.Fatalf("rendered %s %s: %v", kind, name, err)
			}
			return
		}
	}
	t.Fatalf("the rendered install has no %s %s", kind, name)
}

// componentObjects counts the objects the component adds to the install.
func componentObjects(t *testing.T) int {
	t.Helper()
	dir := filepath.Join(deployDir(t), component)
	n := 0
	for _, r := range readKustomization(t, dir).Resources {
		if r == path.Join("..", crdsDir) {
			n += len(crds.Files)
			continue
		}
		n += len(docs(t, filepath.Join(dir, r)))
	}
	return n
}

// TestStoreComponentLists: a Component (kustomize refuses an overlay
// inside its base) with the one copy of the CRDs and its RBAC, and every
// file of the directory used.
func TestStoreComponentLists(t *testing.T) {
	dir := filepath.Join(deployDir(t), component)
	k := readKustomization(t, dir)
	if k.APIVersion != "kustomize.config.k8s.io/v1alpha1" || k.Kind != "Component" {
		t.Errorf("%s/kustomization.yaml is %s %s, want a kustomize Component", component, k.APIVersion, k.Kind)
	}
	if want := []string{path.Join("..", crdsDir), "rbac.yaml"}; !slices.Equal(k.Resources, want) {
		t.Errorf("resources %q, want %q", k.Resources, want)
	}
	checkFilesUsed(t, component, k)
	// The CRDs the component installs are the files the store embeds
	// (InstallCRDs, the store's tests): one copy, no other CRD file.
	ck := readKustomization(t, filepath.Join(deployDir(t), crdsDir))
	if !slices.Equal(ck.Resources, crds.Files) {
		t.Errorf("%s/kustomization.yaml lists %q, the store embeds %q", crdsDir, ck.Resources, crds.Files)
	}
	for _, f := range crds.Files {
		onDisk, err := os.ReadFile(filepath.Join(deployDir(t), crdsDir, f))
		if err != nil {
			t.Fatal(err)
		}
		embedded, _ := crds.FS.ReadFile(f)
		if !bytes.Equal(onDisk, embedded) {
			t.Errorf("%s differs from the embedded copy", f)
		}
	}
	patches := allComponentPatches(t) // every component's: not manifests of their own
	for _, m := range manifests(t) {
		if slices.Contains(patches, m) {
			continue
		}
		for _, d := range docs(t, filepath.Join(deployDir(t), m)) {
			if d.kind == "CustomResourceDefinition" && strings.HasSuffix(d.name, ".ipam.kube-ipam.io") {
				t.Errorf("deploy/%s holds CRD %s: the store's CRDs have one copy, in %s", m, d.name, crdsDir)
			}
		}
	}
	// deploy/kustomization.yaml documents the switch: its commented
	// components name this directory.
	b, _ := os.ReadFile(filepath.Join(deployDir(t), "kustomization.yaml"))
	if !bytes.Contains(b, []byte("\n# components:\n#   - "+component+"\n")) {
		t.Errorf("deploy/kustomization.yaml has no commented \"components: [%s]\" to switch on", component)
	}
}

// storeConfig is the component's network config (configmap-patch.yaml).
func storeConfig(t *testing.T) []byte {
	t.Helper()
	var cm corev1.ConfigMap
	decode(t, filepath.Join(deployDir(t), component, "configmap-patch.yaml"), "ConfigMap", "kube-ipam-config", &cm)
	key, _ := networkConfig(t)
	if len(cm.Data) != 1 || cm.Data[key] == "" {
		t.Fatalf("configmap-patch.yaml keys %q, want only %s", slices.Sorted(maps.Keys(cm.Data)), key)
	}
	return []byte(cm.Data[key])
}

// TestStoreComponentConfig: the component's network config is the base's
// with ipam "store": "kubernetes" and no etcdConfig, nothing else; the
// installer accepts it and it names no etcd file.
func TestStoreComponentConfig(t *testing.T) {
	key, base := networkConfig(t)
	conf := storeConfig(t)
	var want, got map[string]any
	if err := json.Unmarshal(base, &want); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(conf, &got); err != nil {
		t.Fatalf("configmap-patch.yaml: %v", err)
	}
	ipam := want["delegates"].([]any)[1].(map[string]any)["ipam"].(map[string]any)
	delete(ipam, "etcdConfig")
	ipam["store"] = config.StoreKubernetes
	if !reflect.DeepEqual(got, want) {
		gj, _ := json.MarshalIndent(got, "", "  ")
		wj, _ := json.MarshalIndent(want, "", "  ")
		t.Errorf("the component's config is not ../configmap.yaml's with store kubernetes and no etcdConfig:\n got %s\nwant %s", gj, wj)
	}
	checked, err := install.CheckConfig(conf, key)
	if err != nil {
		t.Fatalf("the installer refuses the component's config: %v", err)
	}
	if len(checked.Networks) != 1 || checked.Networks[0].Store != config.StoreKubernetes {
		t.Fatalf("networks %+v", checked.Networks)
	}
	for _, n := range checked.Networks[0].Notes {
		if strings.Contains(n, "etcd") {
			t.Errorf("note on the config: %s", n)
		}
	}
	for _, f := range checked.Files {
		if strings.Contains(f.Key, "etcd") {
			t.Errorf("the config names etcd file %s = %s", f.Key, f.Path)
		}
	}
}

// TestStoreComponentRenders: deploy/ with the component, as kubectl's
// kustomize renders it: the CRDs and RBAC added, the ConfigMap's config
// replaced, no etcd Secret anywhere, the installer installing no etcd
// files, and the controller given a kubeconfig at the network's
// ipam.kubeConfig path that client-go reads as its in-cluster
// configuration. Switching the component on in deploy/kustomization.yaml
// (a copy of deploy/) renders the same install.
func TestStoreComponentRenders(t *testing.T) {
	_, ds := renderWithComponent(t)
	if want := expectedObjects(t, "kustomization.yaml") + componentObjects(t); len(ds) != want {
		t.Errorf("rendered %d objects, want %d (deploy/'s and the component's)", len(ds), want)
	}
	for _, name := range []string{"ipallocations.ipam.kube-ipam.io", "ipstickies.ipam.kube-ipam.io"} {
		var crd map[string]any
		find(t, ds, "CustomResourceDefinition", name, &crd)
	}
	key, _ := networkConfig(t)
	var cm corev1.ConfigMap
	find(t, ds, "ConfigMap", "kube-ipam-config", &cm)
	if cm.Data[key] != string(storeConfig(t)) {
		t.Errorf("rendered ConfigMap kube-ipam-config:\n%s\nwant configmap-patch.yaml's", cm.Data[key])
	}
	nets, err := config.ParseNetworks([]byte(cm.Data[key]), key)
	if err != nil || len(nets) != 1 {
		t.Fatalf("rendered config: %v", err)
	}
	etcdSecret := func(what string, spec corev1.PodSpec) {
		for _, v := range spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName == "kube-ipam-etcd" {
				t.Errorf("%s still mounts Secret kube-ipam-etcd (volume %s)", what, v.Name)
			}
		}
	}

	var dsNode appsv1.DaemonSet
	find(t, ds, "DaemonSet", "kube-ipam-node", &dsNode)
	etcdSecret("the installer", dsNode.Spec.Template.Spec)
	o := install.Defaults()
	if err := installerFlags(&o).Parse(dsNode.Spec.Template.Spec.Containers[0].Args); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Errorf("rendered installer args: %v", err)
	}
	if o.EtcdCertSource != "" {
		t.Errorf("the installer still copies etcd files from %s", o.EtcdCertSource)
	}
	base, _ := installerOptions(t)
	base.EtcdCertSource = ""
	if !reflect.DeepEqual(o, base) {
		t.Errorf("installer options %+v, want deploy/'s without --etcd-cert-source %+v", o, base)
	}

	var dep appsv1.Deployment
	find(t, ds, "Deployment", "kube-ipam-controller", &dep)
	spec := dep.Spec.Template.Spec
	etcdSecret("the controller", spec)
	// The controller opens the store as itself (its in-cluster
	// configuration), so it mounts nothing at the nodes' kubeconfig path.
	for _, m := range spec.Containers[0].VolumeMounts {
		if strings.HasPrefix(nets[0].KubeConfig, strings.TrimRight(m.MountPath, "/")+"/") {
			t.Errorf("the controller mounts %s over the network's ipam.kubeConfig %s: it opens the store as its own ServiceAccount", m.MountPath, nets[0].KubeConfig)
		}
	}
	// The rest of the controller is deploy/'s.
	var baseDep appsv1.Deployment
	decode(t, filepath.Join(deployDir(t), "controller.yaml"), "Deployment", "kube-ipam-controller", &baseDep)
	if !slices.Equal(spec.Containers[0].Args, baseDep.Spec.Template.Spec.Containers[0].Args) || spec.ServiceAccountName != baseDep.Spec.Template.Spec.ServiceAccountName {
		t.Errorf("controller args or ServiceAccount changed: %q %s", spec.Containers[0].Args, spec.ServiceAccountName)
	}

	// The documented switch: uncomment "components" in a copy of deploy/
	// (beside a copy of the CRDs, at the same relative path).
	root := t.TempDir()
	copyTree(t, deployDir(t), filepath.Join(root, "deploy"))
	copyTree(t, filepath.Join(deployDir(t), crdsDir), filepath.Join(root, "deploy", crdsDir))
	kf := filepath.Join(root, "deploy", "kustomization.yaml")
	b, _ := os.ReadFile(kf)
	b = bytes.Replace(b, []byte("\n# components:\n#   - "+component+"\n"), []byte("\ncomponents:\n  - "+component+"\n"), 1)
	if err := os.WriteFile(kf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	switched := kustomize(t, filepath.Join(root, "deploy"))
	if len(switched) != len(ds) {
		t.Fatalf("deploy/kustomization.yaml with its components switched on renders %d objects, the overlay %d", len(switched), len(ds))
	}
	for i := range ds {
		if !bytes.Equal(switched[i].raw, ds[i].raw) {
			t.Errorf("with the components switched on, %s %s differs from the overlay's:\n%s\n%s", ds[i].kind, ds[i].name, switched[i].raw, ds[i].raw)
		}
	}
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}
