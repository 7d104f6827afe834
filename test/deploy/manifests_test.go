// Package deploy checks deploy/: every manifest against a real
// kube-apiserver (deploy_test.go), and, without one, that the manifests agree
// with each other and with the code (this file): the installer's and the
// controller's flags, the paths the network config names, the webhook wiring,
// and the seed examples.
package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"kubeipam/internal/install"
	"kubeipam/internal/testenv"
	"kubeipam/internal/tier"
)

func deployDir(t *testing.T) string {
	t.Helper()
	return filepath.Join(testenv.ModuleRoot(t), "deploy")
}

// doc is one YAML document of a manifest file.
type doc struct {
	file string
	kind string
	name string
	raw  []byte
}

// docs splits a manifest file into its documents.
func docs(t *testing.T, file string) []doc {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var out []doc
	for {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		var u unstructured.Unstructured
		if err := yaml.Unmarshal(raw, &u.Object); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		out = append(out, doc{file: file, kind: u.GetKind(), name: u.GetName(), raw: raw})
	}
	return out
}

// decode strictly decodes the one document of kind/name in file into obj.
func decode(t *testing.T, file, kind, name string, obj any) {
	t.Helper()
	for _, d := range docs(t, file) {
		if d.kind == kind && d.name == name {
			if err := yaml.UnmarshalStrict(d.raw, obj); err != nil {
				t.Fatalf("%s: %s %s: %v", file, kind, name, err)
			}
			return
		}
	}
	t.Fatalf("%s has no %s %s", file, kind, name)
}

// manifests lists the YAML files under deploy/ (relative paths), sorted,
// but not deploy/monitoring/.
func manifests(t *testing.T) []string {
	t.Helper()
	root := deployDir(t)
	var out []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		// monitoring/ is off by default and needs the prometheus-operator's
		// CRDs, which the test API server has not: test/controller checks it.
		if d.IsDir() && p == filepath.Join(root, "monitoring") {
			return filepath.SkipDir
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	if len(out) < 10 {
		t.Fatalf("only %d manifests under %s: %q", len(out), root, out)
	}
	return out
}

// TestExamplesDB checks the corrected seed db.yaml: exactly the two
// StatefulSets of the seed (its broken first object gone) with their
// annotations, each with the headless Service its serviceName names.
func TestExamplesDB(t *testing.T) {
	file := filepath.Join(deployDir(t), "examples", "db.yaml")
	ds := docs(t, file)
	var kinds []string
	for _, d := range ds {
		kinds = append(kinds, d.kind+"/"+d.name)
	}
	want := []string{"Service/database-1", "StatefulSet/database-1", "Service/database-2", "StatefulSet/database-2"}
	if !slices.Equal(kinds, want) {
		t.Fatalf("db.yaml objects %q, want %q", kinds, want)
	}
	for i, ip := range []string{"10.188.0.218", "10.188.0.219"} {
		name := "database-" + strconv.Itoa(i+1)
		var sts appsv1.StatefulSet
		decode(t, file, "StatefulSet", name, &sts)
		tmpl := sts.Spec.Template
		wantAnn := map[string]string{"kube-ipam.ip": ip, "kube-ipam.netmask": "255.255.0.0", "kube-ipam.gateway": "10.188.0.1"}
		if !maps.Equal(tmpl.Annotations, wantAnn) {
			t.Errorf("%s annotations %v, want %v", name, tmpl.Annotations, wantAnn)
		}
		if sts.Spec.ServiceName != name || sts.Spec.Selector.MatchLabels["app"] != name || tmpl.Labels["app"] != name {
			t.Errorf("%s: serviceName %q, selector %v, labels %v", name, sts.Spec.ServiceName, sts.Spec.Selector.MatchLabels, tmpl.Labels)
		}
		if g := tmpl.Spec.TerminationGracePeriodSeconds; g == nil || *g != 10 {
			t.Errorf("%s terminationGracePeriodSeconds %v", name, g)
		}
		c := tmpl.Spec.Containers
		if len(c) != 1 || c[0].Name != name+"c" || c[0].Image != "docker.io/library/busybox:1.36" ||
			!slices.Equal(c[0].Command, []string{"sleep", "infinity"}) {
			t.Errorf("%s containers %+v", name, c)
		}
		var svc corev1.Service
		decode(t, file, "Service", name, &svc)
		if svc.Spec.ClusterIP != corev1.ClusterIPNone || svc.Spec.Selector["app"] != name {
			t.Errorf("Service %s is not headless for app=%s: %+v", name, name, svc.Spec)
		}
	}
}

func TestExamplesWeb(t *testing.T) {
	dir := filepath.Join(deployDir(t), "examples")
	var dep appsv1.Deployment
	decode(t, filepath.Join(dir, "web.yaml"), "Deployment", "web", &dep)
	c := dep.Spec.Template.Spec.Containers
	if len(c) != 1 || c[0].Image != "docker.io/library/nginx:1.27" || c[0].ImagePullPolicy != corev1.PullIfNotPresent ||
		len(c[0].Ports) != 1 || c[0].Ports[0].ContainerPort != 80 || *dep.Spec.Replicas != 2 {
		t.Errorf("web Deployment %+v", dep.Spec)
	}
	var svc corev1.Service
	decode(t, filepath.Join(dir, "web-svc.yaml"), "Service", "web-svc", &svc)
	if svc.Spec.Type != corev1.ServiceTypeNodePort || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Protocol != corev1.ProtocolTCP ||
		svc.Spec.Ports[0].Port != 80 || svc.Spec.Selector["app"] != "web" {
		t.Errorf("web-svc %+v", svc.Spec)
	}
	var ing networkingv1.Ingress
	decode(t, filepath.Join(dir, "web-ingress.yaml"), "Ingress", "web-ingress", &ing)
	if b := ing.Spec.DefaultBackend; b == nil || b.Service.Name != "web-svc" || b.Service.Port.Number != 80 {
		t.Errorf("web-ingress backend %+v", ing.Spec.DefaultBackend)
	}
	// Every example says what was corrected versus the seed.
	for _, f := range []string{"db.yaml", "web.yaml", "web-svc.yaml", "web-ingress.yaml"} {
		b, _ := os.ReadFile(filepath.Join(dir, f))
		if !bytes.HasPrefix(b, []byte("# The seed guide's "+f)) {
			t.Errorf("examples/%s does not start with the comment on what changed versus the seed", f)
		}
	}
}

// networkConfig returns the ConfigMap's 00-multus.conf.
func networkConfig(t *testing.T) (string, []byte) {
	t.Helper()
	var cm corev1.ConfigMap
	decode(t, filepath.Join(deployDir(t), "configmap.yaml"), "ConfigMap", "kube-ipam-config", &cm)
	if len(cm.Data) != 1 {
		t.Fatalf("ConfigMap keys %v, want one", cm.Data)
	}
	for k, v := range cm.Data {
		return k, []byte(v)
	}
	panic("unreachable")
}

// installerOptions parses the DaemonSet's args with the installer's own
// flags.
func installerOptions(t *testing.T) (install.Options, *appsv1.DaemonSet) {
	t.Helper()
	var ds appsv1.DaemonSet
	decode(t, filepath.Join(deployDir(t), "daemonset.yaml"), "DaemonSet", "kube-ipam-node", &ds)
	c := ds.Spec.Template.Spec.Containers
	if len(c) != 1 || !slices.Equal(c[0].Command, []string{"/kube-ipam/bin/kube-ipam-install"}) {
		t.Fatalf("DaemonSet containers %+v", c)
	}
	o := install.Defaults()
	if err := installerFlags(&o).Parse(c[0].Args); err != nil {
		t.Fatalf("DaemonSet args %q: %v", c[0].Args, err)
	}
	if err := o.Validate(); err != nil {
		t.Fatalf("DaemonSet args %q: %v", c[0].Args, err)
	}
	return o, &ds
}

// mountFor returns the volume mounted at the directory holding p.
func mountFor(t *testing.T, spec corev1.PodSpec, container int, p string) (corev1.VolumeMount, corev1.Volume) {
	t.Helper()
	var best corev1.VolumeMount
	for _, m := range spec.Containers[container].VolumeMounts {
		if (p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/")) && len(m.MountPath) > len(best.MountPath) {
			best = m
		}
	}
	if best.Name == "" {
		t.Fatalf("no volume mounted over %s", p)
	}
	for _, v := range spec.Volumes {
		if v.Name == best.Name {
			return best, v
		}
	}
	t.Fatalf("volume %s not defined", best.Name)
	panic("unreachable")
}

// TestNetworkConfigAndInstaller: the shipped config passes the installer's
// validation (kube-multus and kube-ipam parsers), names exactly the files the
// DaemonSet's installer writes, and the DaemonSet mounts what the installer
// reads and writes.
func TestNetworkConfigAndInstaller(t *testing.T) {
	key, conf := networkConfig(t)
	if key != "00-multus.conf" {
		t.Errorf("ConfigMap key %q, want 00-multus.conf", key)
	}
	checked, err := install.CheckConfig(conf, key)
	if err != nil {
		t.Fatalf("shipped network config: %v", err)
	}
	if len(checked.Networks) != 1 || checked.Networks[0].Name != "k8snet2" || checked.Meta == nil || len(checked.Meta.Delegates) != 2 {
		t.Fatalf("shipped network config: %+v", checked)
	}
	o, ds := installerOptions(t)
	spec := ds.Spec.Template.Spec
	nodePath := func(p string) string {
		rel, err := filepath.Rel(o.HostRoot, p)
		if err != nil || strings.HasPrefix(rel, "..") {
			t.Fatalf("%s is not under --host-root %s", p, o.HostRoot)
		}
		return "/" + rel
	}
	written := map[string]bool{nodePath(o.Kubeconfig): true}
	for _, f := range []string{install.EtcdCAFile, install.EtcdCertFile, install.EtcdKeyFile} {
		written[path.Join(nodePath(o.EtcdCertDir), f)] = true
	}
	for _, f := range checked.Files {
		if !written[f.Path] {
			t.Errorf("the config's %s = %s is not a file the installer writes (%v)", f.Key, f.Path, written)
		}
	}
	if filepath.Base(o.ConfigSource) != key || o.ConfigName != "" {
		t.Errorf("--config %s does not install the ConfigMap key %s", o.ConfigSource, key)
	}
	// Host mounts: bin and conf dirs are the node's /opt/cni/bin and
	// /etc/cni/net.d, and the kubeconfig and etcd files go under the conf dir.
	for p, hostPath := range map[string]string{o.BinDir: "/opt/cni/bin", o.ConfDir: "/etc/cni/net.d", o.Kubeconfig: "/etc/cni/net.d", o.EtcdCertDir: "/etc/cni/net.d"} {
		m, v := mountFor(t, spec, 0, p)
		if v.HostPath == nil || v.HostPath.Path != hostPath || m.ReadOnly || nodePath(m.MountPath) != hostPath {
			t.Errorf("%s: mounted from %+v at %s (read-only %v), want hostPath %s", p, v.VolumeSource, m.MountPath, m.ReadOnly, hostPath)
		}
	}
	if _, v := mountFor(t, spec, 0, o.ConfigSource); v.ConfigMap == nil || v.ConfigMap.Name != "kube-ipam-config" {
		t.Errorf("--config %s is not from ConfigMap kube-ipam-config: %+v", o.ConfigSource, v.VolumeSource)
	} else if m, _ := mountFor(t, spec, 0, o.ConfigSource); m.SubPath != "" {
		t.Error("the ConfigMap is mounted with subPath: kubelet would never update it")
	}
	if _, v := mountFor(t, spec, 0, o.EtcdCertSource); v.Secret == nil || v.Secret.SecretName != "kube-ipam-etcd" {
		t.Errorf("--etcd-cert-source %s is not from Secret kube-ipam-etcd: %+v", o.EtcdCertSource, v.VolumeSource)
	}
	if !slices.Equal(o.InstalledBinaries(), []string{"kube-ipam-direct", "kube-ipam", "kube-multus", "kube-tier", "multus-cni"}) || o.ClusterNetwork != install.ClusterNetworkConfig || o.IPAMOnly {
		t.Errorf("binaries %q, cluster network %q, ipam-only %v", o.InstalledBinaries(), o.ClusterNetwork, o.IPAMOnly)
	}
	// The pod: host network, every taint tolerated, node-critical, the
	// plugin's ServiceAccount, root without capabilities, read-only root.
	sc := spec.Containers[0].SecurityContext
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" || spec.ServiceAccountName != "kube-ipam-plugin" ||
		len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" ||
		spec.SecurityContext.RunAsUser == nil || *spec.SecurityContext.RunAsUser != 0 ||
		sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.Capabilities == nil ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || spec.Containers[0].Resources.Limits.Memory().IsZero() {
		t.Errorf("DaemonSet pod spec: %+v", spec)
	}
}

// TestTierPolicyComment: the commented tier policy of configmap.yaml, added
// to delegates[1] as the comment says, is a valid config.
func TestTierPolicyComment(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(deployDir(t), "configmap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i, j := strings.Index(s, "# BEGIN tier policy\n"), strings.Index(s, "# END tier policy\n")
	if i < 0 || j < i {
		t.Fatal("configmap.yaml has no BEGIN/END tier policy block")
	}
	var snippet strings.Builder
	for _, line := range strings.Split(s[i+len("# BEGIN tier policy\n"):j], "\n") {
		snippet.WriteString(strings.TrimPrefix(line, "#") + "\n")
	}
	key, conf := networkConfig(t)
	var m map[string]any
	if err := json.Unmarshal(conf, &m); err != nil {
		t.Fatal(err)
	}
	var ext map[string]any
	if err := json.Unmarshal([]byte("{"+snippet.String()+"}"), &ext); err != nil {
		t.Fatalf("tier policy block is not JSON: %v\n%s", err, snippet.String())
	}
	m["delegates"].([]any)[1].(map[string]any)["kubeMultus"] = ext["kubeMultus"]
	withPolicy, _ := json.Marshal(m)
	c, err := install.CheckConfig(withPolicy, key)
	if err != nil {
		t.Fatalf("config with the commented tier policy: %v", err)
	}
	d := c.Meta.Delegates[1]
	if d.Ext.Attach == nil || len(d.Ext.Ingress) != 1 {
		t.Fatalf("tier policy not parsed: %+v", d.Ext)
	}
	// It fits deploy/examples: every example pod gets net1, the databases
	// are protected (MySQL and ping from the web range and each other), the
	// web pods are not.
	dir := filepath.Join(deployDir(t), "examples")
	var web appsv1.Deployment
	decode(t, filepath.Join(dir, "web.yaml"), "Deployment", "web", &web)
	pods := map[string]tier.Pod{"web": examplePod(web.ObjectMeta, web.Spec.Template.ObjectMeta)}
	for _, name := range []string{"database-1", "database-2"} {
		var sts appsv1.StatefulSet
		decode(t, filepath.Join(dir, "db.yaml"), "StatefulSet", name, &sts)
		pods[name] = examplePod(sts.ObjectMeta, sts.Spec.Template.ObjectMeta)
	}
	webRange, _ := tier.ParseSource("10.188.0.10-10.188.0.200")
	for name, p := range pods {
		if ok, err := d.Ext.Attach.Matches(p); !ok || err != nil {
			t.Errorf("example %s (%s, labels %v) does not get net1: %v", name, p.Namespace, p.Labels, err)
		}
		rules, err := d.Ext.PolicyFor(p)
		if err != nil {
			t.Fatal(err)
		}
		if name == "web" {
			if len(rules) != 0 {
				t.Errorf("example web is protected: %+v", rules)
			}
			continue
		}
		if len(rules) != 1 || !rules[0].ICMP || len(rules[0].Ports) != 1 || rules[0].Ports[0] != (tier.Port{Protocol: "tcp", Port: 3306}) {
			t.Fatalf("example %s: policy %+v, want tcp 3306 and icmp", name, rules)
		}
		for _, want := range []tier.Source{webRange, mustSource(t, "10.188.0.218"), mustSource(t, "10.188.0.219")} {
			if !slices.ContainsFunc(rules[0].From, func(f string) bool {
				src := mustSource(t, f)
				return src.First.Compare(want.First) <= 0 && want.Last.Compare(src.Last) <= 0
			}) {
				t.Errorf("example %s: policy sources %v do not admit %v", name, rules[0].From, want)
			}
		}
	}
}

// examplePod is the pod a workload of deploy/examples creates: its namespace
// (default when unset) and its template's labels.
func examplePod(obj, tmpl metav1.ObjectMeta) tier.Pod {
	ns := obj.Namespace
	if ns == "" {
		ns = "default"
	}
	return tier.Pod{Namespace: ns, Name: obj.Name + "-0", Labels: tmpl.Labels}
}

func mustSource(t *testing.T, s string) tier.Source {
	t.Helper()
	src, err := tier.ParseSource(s)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// controllerFlags returns the flag names kube-ipam-controller defines, read
// from its source (fs.XxxVar(&v, "name", ...) and fs.Xxx("name", ...)).
func controllerFlags(t *testing.T) map[string]bool {
	t.Helper()
	file := filepath.Join(testenv.ModuleRoot(t), "cmd", "kube-ipam-controller", "main.go")
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	flags := map[string]bool{}
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok || fmtIdent(sel.X) != "fs" {
			return true
		}
		for _, a := range call.Args[:min(2, len(call.Args))] {
			if lit, ok := a.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				name, _ := strconv.Unquote(lit.Value)
				flags[name] = true
				break
			}
		}
		return true
	})
	if !flags["config"] || !flags["webhook-addr"] {
		t.Fatalf("could not read the controller's flags: %v", flags)
	}
	return flags
}

func fmtIdent(e ast.Expr) string {
	if id, ok := e.(*ast.Ident); ok {
		return id.Name
	}
	return ""
}

// TestControllerManifest: the Deployment's args are real controller flags,
// its paths are mounted from the right objects, and the metrics and webhook
// Services, the PDB and the webhook configuration all point at it.
func TestControllerManifest(t *testing.T) {
	dir := deployDir(t)
	var dep appsv1.Deployment
	decode(t, filepath.Join(dir, "controller.yaml"), "Deployment", "kube-ipam-controller", &dep)
	spec := dep.Spec.Template.Spec
	c := spec.Containers[0]
	if !slices.Equal(c.Command, []string{"/kube-ipam/bin/kube-ipam-controller"}) {
		t.Errorf("command %q", c.Command)
	}
	known := controllerFlags(t)
	args := map[string]string{}
	for _, a := range c.Args {
		name, val, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !ok {
			t.Errorf("arg %q: want --flag=value", a)
			continue
		}
		if !known[name] {
			t.Errorf("arg %q: kube-ipam-controller has no flag --%s", a, name)
		}
		args[name] = val
	}
	if *dep.Spec.Replicas != 2 || args["leader-elect"] != "true" || args["leader-elect-namespace"] != "kube-ipam" ||
		args["leader-elect-name"] != "kube-ipam-controller" || args["metrics-addr"] != ":9548" || args["webhook-addr"] != ":8443" {
		t.Errorf("replicas %d, args %v", *dep.Spec.Replicas, args)
	}
	if a := spec.Affinity; a == nil || a.PodAntiAffinity == nil || spec.ServiceAccountName != "kube-ipam-controller" {
		t.Errorf("anti-affinity %+v, serviceAccountName %q", spec.Affinity, spec.ServiceAccountName)
	}
	if c.ReadinessProbe == nil || c.LivenessProbe == nil {
		t.Error("probes missing")
	}
	// The config, and the etcd files it names at their node paths.
	key, conf := networkConfig(t)
	if _, v := mountFor(t, spec, 0, args["config"]); v.ConfigMap == nil || v.ConfigMap.Name != "kube-ipam-config" || filepath.Base(args["config"]) != key {
		t.Errorf("--config %s: %+v", args["config"], v.VolumeSource)
	}
	checked, err := install.CheckConfig(conf, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range checked.Networks {
		for _, p := range []string{n.Etcd.CertFile, n.Etcd.KeyFile, n.Etcd.CAFile} {
			if m, v := mountFor(t, spec, 0, p); v.Secret == nil || v.Secret.SecretName != "kube-ipam-etcd" || filepath.Join(m.MountPath, filepath.Base(p)) != p {
				t.Errorf("etcd file %s is not mounted from Secret kube-ipam-etcd: %+v", p, v.VolumeSource)
			}
		}
	}
	// The webhook's certificate: self-managed (internal/servingcert), no
	// files; the namespace of its Secret from the downward API.
	if args["webhook-cert-secret"] != "kube-ipam-webhook-tls" || args["webhook-cert"] != "" || args["webhook-key"] != "" {
		t.Errorf("webhook certificate args %v: want the self-managed Secret and no files", args)
	}
	var podNS bool
	for _, e := range c.Env {
		podNS = podNS || e.Name == "POD_NAMESPACE" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace"
	}
	if !podNS {
		t.Errorf("env %+v: no POD_NAMESPACE from metadata.namespace", c.Env)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["metrics"] != 9548 || ports["webhook"] != 8443 {
		t.Errorf("container ports %v", ports)
	}
	podLabels := dep.Spec.Template.Labels
	selects := func(sel map[string]string) bool {
		for k, v := range sel {
			if podLabels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	var metrics corev1.Service
	decode(t, filepath.Join(dir, "controller.yaml"), "Service", "kube-ipam-controller-metrics", &metrics)
	if !selects(metrics.Spec.Selector) || metrics.Spec.Ports[0].TargetPort.String() != "metrics" {
		t.Errorf("metrics Service %+v", metrics.Spec)
	}
	var pdb policyv1.PodDisruptionBudget
	decode(t, filepath.Join(dir, "controller.yaml"), "PodDisruptionBudget", "kube-ipam-controller", &pdb)
	if !selects(pdb.Spec.Selector.MatchLabels) || pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("PDB %+v", pdb.Spec)
	}

	// The webhook: configuration → Service → these pods' webhook port; the
	// certificate is made for that Service, the caBundle of that
	// configuration kept by the controller.
	var svc corev1.Service
	decode(t, filepath.Join(dir, "webhook", "service.yaml"), "Service", "kube-ipam-webhook", &svc)
	if svc.Namespace != dep.Namespace || !selects(svc.Spec.Selector) || svc.Spec.Ports[0].TargetPort.String() != "webhook" {
		t.Errorf("webhook Service %s/%s %+v", svc.Namespace, svc.Name, svc.Spec)
	}
	var vwc admissionregv1.ValidatingWebhookConfiguration
	decode(t, filepath.Join(dir, "webhook", "validatingwebhookconfiguration.yaml"), "ValidatingWebhookConfiguration", "kube-ipam", &vwc)
	ref := vwc.Webhooks[0].ClientConfig.Service
	if ref == nil || ref.Name != svc.Name || ref.Namespace != svc.Namespace || *ref.Port != svc.Spec.Ports[0].Port || *ref.Path != "/validate" {
		t.Errorf("webhook clientConfig %+v, Service %s/%s", ref, svc.Namespace, svc.Name)
	}
	if args["webhook-service"] != svc.Name || args["webhook-configuration"] != vwc.Name {
		t.Errorf("--webhook-service %q --webhook-configuration %q; Service %s, configuration %s", args["webhook-service"], args["webhook-configuration"], svc.Name, vwc.Name)
	}
	// No caBundle (the controller owns it: a re-apply must not reset it)
	// and no cert-manager annotation by default.
	if len(vwc.Webhooks[0].ClientConfig.CABundle) != 0 || len(vwc.Annotations) != 0 {
		t.Errorf("webhook configuration: caBundle %q, annotations %v", vwc.Webhooks[0].ClientConfig.CABundle, vwc.Annotations)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "webhook", "validatingwebhookconfiguration.yaml"))
	if regexp.MustCompile(`(?m)^\s+caBundle:`).Match(raw) {
		t.Error("validatingwebhookconfiguration.yaml sets caBundle")
	}
	if !slices.Contains(vwc.Webhooks[0].NamespaceSelector.MatchExpressions[0].Values, dep.Namespace) {
		t.Errorf("the webhook does not exclude its own namespace %s", dep.Namespace)
	}
}

// TestRBACLeastPrivilege: the plugin's ClusterRole is exactly get pods, the
// controller's exactly what internal/controller calls; on the Kubernetes
// store, each one's exactly what internal/store/kubestore calls for it.
func TestRBACLeastPrivilege(t *testing.T) {
	file := filepath.Join(deployDir(t), "rbac.yaml")
	rules := func(kind, name string) []rbacv1.PolicyRule {
		if kind == "ClusterRole" {
			var r rbacv1.ClusterRole
			decode(t, file, kind, name, &r)
			return r.Rules
		}
		var r rbacv1.Role
		decode(t, file, kind, name, &r)
		if r.Namespace != "kube-ipam" {
			t.Errorf("Role %s in namespace %q", name, r.Namespace)
		}
		return r.Rules
	}
	for _, c := range []struct {
		kind, name string
		want       []rbacv1.PolicyRule
	}{
		{"ClusterRole", "kube-ipam-plugin", []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}},
		{"ClusterRole", "kube-ipam-multus", []rbacv1.PolicyRule{
			{APIGroups: []string{"k8s.cni.cncf.io"}, Resources: []string{"network-attachment-definitions"}, Verbs: []string{"get"}},
			{APIGroups: []string{""}, Resources: []string{"pods/status"}, Verbs: []string{"patch"}},
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create"}},
		}},
		{"ClusterRole", "kube-ipam-controller", []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"apps"}, Resources: []string{"statefulsets"}, Verbs: []string{"get"}},
			{APIGroups: []string{"k8s.cni.cncf.io"}, Resources: []string{"network-attachment-definitions"}, Verbs: []string{"list"}},
			{APIGroups: []string{"admissionregistration.k8s.io"}, Resources: []string{"validatingwebhookconfigurations"}, ResourceNames: []string{"kube-ipam"}, Verbs: []string{"get", "patch"}},
		}},
		// internal/servingcert: Get, Create, Update, and Delete of a
		// Secret of the wrong type.
		{"Role", "kube-ipam-controller-webhook-cert", []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create"}},
			{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"kube-ipam-webhook-tls"}, Verbs: []string{"get", "update", "delete"}},
		}},
		{"Role", "kube-ipam-controller-leader-election", []rbacv1.PolicyRule{
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{"kube-ipam-controller"}, Verbs: []string{"get", "update"}},
		}},
	} {
		got := rules(c.kind, c.name)
		gj, _ := json.Marshal(got)
		wj, _ := json.Marshal(c.want)
		if !bytes.Equal(gj, wj) {
			t.Errorf("%s %s rules\n got %s\nwant %s", c.kind, c.name, gj, wj)
		}
	}
	var crb rbacv1.ClusterRoleBinding
	decode(t, file, "ClusterRoleBinding", "kube-ipam-plugin", &crb)
	if crb.RoleRef.Name != "kube-ipam-plugin" || len(crb.Subjects) != 1 || crb.Subjects[0].Name != "kube-ipam-plugin" || crb.Subjects[0].Namespace != "kube-ipam" {
		t.Errorf("plugin binding %+v", crb)
	}
	decode(t, file, "ClusterRoleBinding", "kube-ipam-multus", &crb)
	if crb.RoleRef.Name != "kube-ipam-multus" || len(crb.Subjects) != 1 || crb.Subjects[0].Name != "kube-ipam-plugin" || crb.Subjects[0].Namespace != "kube-ipam" {
		t.Errorf("kube-multus binding %+v", crb)
	}
	// The Kubernetes API store: each component exactly the requests
	// internal/store/kubestore makes for it (see the comments there).
	storeFile := filepath.Join(deployDir(t), component, "rbac.yaml")
	const group = "ipam.kube-ipam.io"
	for _, c := range []struct {
		role, sa string
		want     []rbacv1.PolicyRule
	}{
		{"kube-ipam-plugin-kubernetes-store", "kube-ipam-plugin", []rbacv1.PolicyRule{
			{APIGroups: []string{group}, Resources: []string{"ipallocations"}, Verbs: []string{"get", "list", "create", "update", "delete"}},
			{APIGroups: []string{group}, Resources: []string{"ipstickies"}, Verbs: []string{"get", "create", "delete"}},
		}},
		{"kube-ipam-controller-kubernetes-store", "kube-ipam-controller", []rbacv1.PolicyRule{
			{APIGroups: []string{group}, Resources: []string{"ipallocations"}, Verbs: []string{"get", "list", "watch", "update", "delete"}},
			{APIGroups: []string{group}, Resources: []string{"ipstickies"}, Verbs: []string{"list", "create", "delete"}},
		}},
	} {
		var r rbacv1.ClusterRole
		decode(t, storeFile, "ClusterRole", c.role, &r)
		gj, _ := json.Marshal(r.Rules)
		wj, _ := json.Marshal(c.want)
		if !bytes.Equal(gj, wj) {
			t.Errorf("ClusterRole %s rules\n got %s\nwant %s", c.role, gj, wj)
		}
		var b rbacv1.ClusterRoleBinding
		decode(t, storeFile, "ClusterRoleBinding", c.role, &b)
		if b.RoleRef.Kind != "ClusterRole" || b.RoleRef.Name != c.role || len(b.Subjects) != 1 || b.Subjects[0].Kind != "ServiceAccount" ||
			b.Subjects[0].Name != c.sa || b.Subjects[0].Namespace != "kube-ipam" {
			t.Errorf("ClusterRoleBinding %s: %+v", c.role, b)
		}
	}
	if n := len(docs(t, storeFile)); n != 4 {
		t.Errorf("%s has %d objects, want the 2 ClusterRoles and their bindings", storeFile, n)
	}
	// Only the documented kinds, nothing bound to a built-in role.
	for _, d := range append(docs(t, file), docs(t, storeFile)...) {
		if !slices.Contains([]string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}, d.kind) {
			t.Errorf("unexpected %s %s in rbac.yaml", d.kind, d.name)
		}
		if strings.HasSuffix(d.kind, "Binding") {
			var b rbacv1.RoleBinding
			if err := yaml.Unmarshal(d.raw, &b); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(b.RoleRef.Name, "kube-ipam-") {
				t.Errorf("%s %s binds %s", d.kind, d.name, b.RoleRef.Name)
			}
		}
	}
}

// TestKustomizationListsTheInstall: every install manifest and nothing else.
func TestKustomizationListsTheInstall(t *testing.T) {
	var k struct {
		Resources []string `json:"resources"`
	}
	b, err := os.ReadFile(filepath.Join(deployDir(t), "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, m := range manifests(t) {
		switch {
		case m == "kustomization.yaml", strings.HasPrefix(m, "examples/"), strings.Contains(m, ".example."),
			// The Kubernetes store's component, switched on separately
			// (store_test.go checks it), and the installer's mode
			// components (modes_test.go).
			strings.HasPrefix(m, component+"/"), slices.ContainsFunc(modeComponents, func(c string) bool { return strings.HasPrefix(m, c+"/") }),
			// cert-manager instead of the controller's own certificate
			// (certmanager_test.go).
			strings.HasPrefix(m, certManagerComponent+"/"):
		default:
			want = append(want, m)
		}
	}
	got := slices.Sorted(slices.Values(k.Resources))
	if !slices.Equal(got, want) {
		t.Errorf("kustomization resources %q, want %q", got, want)
	}
}
