package chart

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"kubeipam/internal/config"
	"kubeipam/internal/install"
	"kubeipam/internal/lab"
	"kubeipam/internal/release"
	"kubeipam/internal/testenv"
	"kubeipam/internal/version"
)

// TestChartMetadata: version and appVersion are the project's version
// (make release stamps the release's), and files/ links to the one copy of
// every file the templates read.
func TestChartMetadata(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(chartDir(t), "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		APIVersion, Name, Version, AppVersion string
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if c.APIVersion != "v2" || c.Name != "kube-ipam" {
		t.Errorf("Chart.yaml: apiVersion %q name %q", c.APIVersion, c.Name)
	}
	if c.AppVersion != version.Version || c.Version != strings.TrimPrefix(version.Version, "v") {
		t.Errorf("Chart.yaml: version %q appVersion %q; want %q and %q (internal/version.Version)",
			c.Version, c.AppVersion, strings.TrimPrefix(version.Version, "v"), version.Version)
	}
	root := testenv.ModuleRoot(t)
	for link, target := range map[string]string{
		"kube-ipam.rules.yml":                 "deploy/monitoring/kube-ipam.rules.yml",
		"kube-ipam-dashboard.json":            "deploy/monitoring/kube-ipam-dashboard.json",
		"network-attachment-definitions.yaml": "deploy/crds/network-attachment-definitions.yaml",
		"ipallocations.yaml":                  "internal/store/kubestore/crds/ipallocations.yaml",
		"ipstickies.yaml":                     "internal/store/kubestore/crds/ipstickies.yaml",
	} {
		p := filepath.Join(chartDir(t), "files", link)
		got, err := filepath.EvalSymlinks(p)
		if err != nil {
			t.Errorf("files/%s: %v", link, err)
			continue
		}
		if want := filepath.Join(root, target); got != want {
			t.Errorf("files/%s resolves to %s, want a link to %s (the one copy)", link, got, want)
		}
	}
}

// TestHelmVersionPinnedOnce: the helm hack/helm.sh builds is the one the
// lab looks for.
func TestHelmVersionPinnedOnce(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(testenv.ModuleRoot(t), "hack", "helm.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "\nHELM_VERSION=" + lab.HelmVersion + "\n"; !strings.Contains(string(b), want) {
		t.Errorf("hack/helm.sh does not pin %q (lab.HelmVersion)", strings.TrimSpace(want))
	}
	if !strings.HasSuffix(lab.HelmBinary(), "/helm-"+lab.HelmVersion+"/helm") && os.Getenv("KUBE_IPAM_HELM") == "" {
		t.Errorf("lab.HelmBinary() = %s", lab.HelmBinary())
	}
}

// TestLint: helm lint --strict, with the defaults and with every mode.
func TestLint(t *testing.T) {
	h := newHelm(t)
	for name, values := range map[string]string{
		"defaults":   "",
		"kubernetes": "store: kubernetes\n",
		"ipam-only":  ipamOnlyValues(t),
		"everything": "clusterNetwork: auto\nmonitoring: {serviceMonitor: {enabled: true}, prometheusRule: {enabled: true}, dashboard: {enabled: true}}\nwebhook: {certManager: {enabled: true}}\n",
	} {
		t.Run(name, func(t *testing.T) {
			h.must(t, "lint", "--strict", chartDir(t), "--namespace", "kube-ipam", "-f", valuesFile(t, values))
		})
	}
}

// nadConfig is deploy/ipam-only's db-net.conflist: the guide's database
// network as a NAD's config.
func nadConfig(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.ModuleRoot(t), "deploy", "ipam-only", "configmap-patch.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	if err := yaml.Unmarshal(b, &cm); err != nil {
		t.Fatal(err)
	}
	c := cm.Data["db-net.conflist"]
	if c == "" {
		t.Fatal("deploy/ipam-only/configmap-patch.yaml has no db-net.conflist")
	}
	return c
}

// withoutEtcdConfig is a config with no etcdConfig: the chart fills it.
func withoutEtcdConfig(t *testing.T, conf string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(conf), &m); err != nil {
		t.Fatal(err)
	}
	for _, p := range m["plugins"].([]any) {
		if ipam, ok := p.(map[string]any)["ipam"].(map[string]any); ok {
			delete(ipam, "etcdConfig")
		}
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func ipamOnlyValues(t *testing.T) string {
	t.Helper()
	b, _ := json.Marshal(withoutEtcdConfig(t, nadConfig(t)))
	return "ipamOnly: true\nnadConfigs:\n  db-net.conflist: " + string(b) + "\n"
}

// matrixCase is one set of values and what its render must hold.
type matrixCase struct {
	name   string
	values string
	check  func(t *testing.T, r render)
}

// render is one chart render, decoded.
type render struct {
	objs      []obj
	ds        appsv1.DaemonSet
	dep       appsv1.Deployment
	cm        corev1.ConfigMap
	installer install.Options
	ctrlArgs  []string
}

func (r render) has(kind, name string) bool { return find(r.objs, kind, name) != nil }

func decodeRender(t *testing.T, objs []obj) render {
	t.Helper()
	r := render{objs: objs}
	for _, k := range []struct {
		kind, name string
		v          any
	}{{"DaemonSet", "kube-ipam-node", &r.ds}, {"Deployment", "kube-ipam-controller", &r.dep}, {"ConfigMap", "kube-ipam-config", &r.cm}} {
		o := find(objs, k.kind, k.name)
		if o == nil {
			t.Fatalf("the render has no %s %s", k.kind, k.name)
		}
		into(t, o, k.v)
	}
	// The installer's arguments as the installer parses and checks them.
	r.installer = install.Defaults()
	args := r.ds.Spec.Template.Spec.Containers[0].Args
	if err := installerFlags(&r.installer).Parse(args); err != nil {
		t.Fatalf("installer args %q: %v", args, err)
	}
	if err := r.installer.Validate(); err != nil {
		t.Fatalf("installer args %q: %v", args, err)
	}
	r.ctrlArgs = r.dep.Spec.Template.Spec.Containers[0].Args
	// Every config in the ConfigMap parses as kube-ipam reads it.
	dir := t.TempDir()
	for k, v := range r.cm.Data {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := config.LoadNetworks(dir); err != nil {
		t.Fatalf("the ConfigMap's configs: %v", err)
	}
	return r
}

// ipamOf is the ipam section of the kube-ipam network in conf (the meta
// config's delegates or a conflist's plugins).
func ipamOf(t *testing.T, conf string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(conf), &m); err != nil {
		t.Fatalf("%v in %s", err, conf)
	}
	list, _ := m["delegates"].([]any)
	plugins, _ := m["plugins"].([]any)
	list = append(list, plugins...)
	for _, d := range list {
		if ipam, ok := d.(map[string]any)["ipam"].(map[string]any); ok && ipam["type"] == "kube-ipam" {
			return ipam
		}
	}
	t.Fatalf("no kube-ipam network in %s", conf)
	return nil
}

func volumeNames(spec corev1.PodSpec) []string {
	var n []string
	for _, v := range spec.Volumes {
		n = append(n, v.Name)
	}
	return n
}

func matrix(t *testing.T) []matrixCase {
	return []matrixCase{
		{"defaults", "", func(t *testing.T, r render) {
			ipam := ipamOf(t, r.cm.Data["00-multus.conf"])
			etcd, _ := ipam["etcdConfig"].(map[string]any)
			if etcd["etcdURL"] != "https://192.168.1.50:2379,https://192.168.1.58:2379,https://192.168.1.63:2379" || ipam["store"] != nil {
				t.Errorf("the guide's network on etcd: %v", ipam)
			}
			if r.ds.Spec.Template.Spec.Containers[0].Image != "kube-ipam:v0.1.0-dev" {
				t.Errorf("image %q, want the appVersion's tag", r.ds.Spec.Template.Spec.Containers[0].Image)
			}
			for _, a := range []string{"--webhook-cert-secret=kube-ipam-webhook-tls", "--webhook-service=kube-ipam-webhook",
				"--webhook-configuration=kube-ipam"} {
				if !slices.Contains(r.ctrlArgs, a) {
					t.Errorf("controller args %q lack %s (self-managed certificate)", r.ctrlArgs, a)
				}
			}
			if env := r.dep.Spec.Template.Spec.Containers[0].Env; len(env) != 1 || env[0].Name != "POD_NAMESPACE" ||
				env[0].ValueFrom.FieldRef.FieldPath != "metadata.namespace" {
				t.Errorf("controller env %+v: want POD_NAMESPACE from the downward API", env)
			}
			if slices.Contains(volumeNames(r.dep.Spec.Template.Spec), "webhook-tls") {
				t.Error("self-managed certificate: the controller mounts no webhook Secret")
			}
			if !r.has("Role", "kube-ipam-controller-webhook-cert") || !strings.Contains(mustJSON(t, find(r.objs, "ClusterRole", "kube-ipam-controller")), "validatingwebhookconfigurations") ||
				!r.has("ValidatingWebhookConfiguration", "kube-ipam") || !r.has("Service", "kube-ipam-webhook") {
				t.Error("the webhook and its certificate's RBAC are missing")
			}
			if r.has("Secret", "kube-ipam-etcd") || r.has("CustomResourceDefinition", "ipallocations.ipam.kube-ipam.io") ||
				r.has("ServiceMonitor", "kube-ipam-controller") {
				t.Error("objects of other values in the default render")
			}
			vwc := find(r.objs, "ValidatingWebhookConfiguration", "kube-ipam")
			if strings.Contains(mustJSON(t, vwc), "caBundle") {
				t.Error("the VWC sets caBundle: helm upgrade would wipe the controller's")
			}
		}},
		{"store kubernetes", "store: kubernetes\n", func(t *testing.T, r render) {
			ipam := ipamOf(t, r.cm.Data["00-multus.conf"])
			if ipam["store"] != "kubernetes" || ipam["etcdConfig"] != nil {
				t.Errorf("ipam %v", ipam)
			}
			if r.installer.EtcdCertSource != "" || slices.Contains(volumeNames(r.ds.Spec.Template.Spec), "etcd-tls") ||
				slices.Contains(volumeNames(r.dep.Spec.Template.Spec), "etcd-tls") {
				t.Error("etcd files on the kubernetes store")
			}
			for _, n := range []string{"ipallocations.ipam.kube-ipam.io", "ipstickies.ipam.kube-ipam.io"} {
				crd := find(r.objs, "CustomResourceDefinition", n)
				if crd == nil || crd.get("metadata", "annotations", "helm.sh/resource-policy") != "keep" {
					t.Errorf("CRD %s missing or without resource-policy keep", n)
				}
			}
		}},
		{"ipam-only", ipamOnlyValues(t), func(t *testing.T, r render) {
			if !r.installer.IPAMOnly || r.cm.Data["00-multus.conf"] != "" || r.cm.Data["db-net.conflist"] == "" {
				t.Errorf("installer %+v, config keys %v", r.installer, r.cm.Data)
			}
			if !slices.Contains(r.ctrlArgs, "--config=/etc/kube-ipam/config") {
				t.Errorf("controller args %q: want the config directory", r.ctrlArgs)
			}
			if r.has("ClusterRole", "kube-ipam-multus") || r.has("CustomResourceDefinition", "network-attachment-definitions.k8s.cni.cncf.io") {
				t.Error("kube-multus RBAC or the NAD CRD with ipamOnly")
			}
		}},
		{"auto cluster network", "clusterNetwork: auto\n", func(t *testing.T, r render) {
			if r.installer.ClusterNetwork != "auto" {
				t.Errorf("installer cluster network %q", r.installer.ClusterNetwork)
			}
		}},
		{"existing etcd Secret", "etcd: {secretName: my-etcd-client}\n", func(t *testing.T, r render) {
			for _, s := range []corev1.PodSpec{r.ds.Spec.Template.Spec, r.dep.Spec.Template.Spec} {
				i := slices.Index(volumeNames(s), "etcd-tls")
				if i < 0 || s.Volumes[i].Secret.SecretName != "my-etcd-client" {
					t.Errorf("volumes %+v", s.Volumes)
				}
			}
			if r.has("Secret", "my-etcd-client") {
				t.Error("the chart created an existing Secret")
			}
		}},
		{"etcd Secret from values", "etcd: {tls: {cert: CERT, key: KEY, ca: CA}}\n", func(t *testing.T, r render) {
			s := find(r.objs, "Secret", "kube-ipam-etcd")
			if s == nil || s.get("stringData", "tls.key") != "KEY" || s.get("type") != "kubernetes.io/tls" {
				t.Errorf("Secret %v", s)
			}
		}},
		{"monitoring", "monitoring: {serviceMonitor: {enabled: true, labels: {release: prometheus}}, prometheusRule: {enabled: true}, dashboard: {enabled: true}}\n", func(t *testing.T, r render) {
			sm := find(r.objs, "ServiceMonitor", "kube-ipam-controller")
			if sm == nil || sm.get("metadata", "labels", "release") != "prometheus" {
				t.Errorf("ServiceMonitor %v", sm)
			}
			if !r.has("PrometheusRule", "kube-ipam") || !r.has("ConfigMap", "kube-ipam-grafana-dashboard") {
				t.Error("no PrometheusRule or dashboard")
			}
		}},
		{"cert-manager", "webhook: {certManager: {enabled: true}}\n", func(t *testing.T, r render) {
			if r.ctrlArgs[len(r.ctrlArgs)-1] != "--webhook-cert-secret=" || !slices.Contains(volumeNames(r.dep.Spec.Template.Spec), "webhook-tls") {
				t.Errorf("controller args %q, volumes %q: want the files of cert-manager's Secret", r.ctrlArgs, volumeNames(r.dep.Spec.Template.Spec))
			}
			if !r.has("Certificate", "kube-ipam-webhook") || !r.has("Issuer", "kube-ipam-selfsigned") {
				t.Error("cert-manager objects")
			}
			vwc := find(r.objs, "ValidatingWebhookConfiguration", "kube-ipam")
			if vwc.get("metadata", "annotations", "cert-manager.io/inject-ca-from") != "kube-ipam/kube-ipam-webhook" {
				t.Errorf("VWC annotations %v", vwc.get("metadata", "annotations"))
			}
		}},
		{"cert-manager issuer", "webhook: {certManager: {enabled: true, issuerRef: {name: corp-ca, kind: ClusterIssuer}}}\n", func(t *testing.T, r render) {
			if r.has("Issuer", "kube-ipam-selfsigned") || find(r.objs, "Certificate", "kube-ipam-webhook").get("spec", "issuerRef", "name") != "corp-ca" {
				t.Error("issuerRef not used")
			}
		}},
		{"scheduling", `installer:
  priorityClassName: system-cluster-critical
  tolerations: [{key: dedicated, operator: Equal, value: net, effect: NoSchedule}]
  nodeSelector: {node-role.kubernetes.io/worker: ""}
  resources: {requests: {cpu: 20m, memory: 40Mi}, limits: {memory: 100Mi}}
controller:
  replicas: 3
  priorityClassName: system-cluster-critical
  tolerations: [{key: dedicated, operator: Exists}]
  nodeSelector: {kubernetes.io/os: linux, pool: infra}
  resources: {requests: {cpu: 100m, memory: 128Mi}}
  podSecurityContext: {runAsNonRoot: true, runAsUser: 1000, fsGroup: 1000}
  securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
image: {repository: registry.example.com/net/kube-ipam, tag: v9.9.9}
`, func(t *testing.T, r render) {
			ds, dep := r.ds.Spec.Template.Spec, r.dep.Spec.Template.Spec
			if ds.PriorityClassName != "system-cluster-critical" || len(ds.Tolerations) != 1 || ds.Tolerations[0].Key != "dedicated" ||
				// Helm merges maps: the default kubernetes.io/os stays.
				ds.NodeSelector["node-role.kubernetes.io/worker"] != "" || len(ds.NodeSelector) != 2 ||
				ds.Containers[0].Resources.Limits.Memory().String() != "100Mi" {
				t.Errorf("installer pod spec %+v", ds)
			}
			if *r.dep.Spec.Replicas != 3 || dep.PriorityClassName != "system-cluster-critical" || dep.NodeSelector["pool"] != "infra" ||
				*dep.SecurityContext.RunAsUser != 1000 || dep.Containers[0].Resources.Requests.Cpu().String() != "100m" {
				t.Errorf("controller pod spec %+v", dep)
			}
			if img := dep.Containers[0].Image; img != "registry.example.com/net/kube-ipam:v9.9.9" || ds.Containers[0].Image != img {
				t.Errorf("image %q", img)
			}
		}},
		{"webhook off", "webhook: {enabled: false}\n", func(t *testing.T, r render) {
			if r.has("ValidatingWebhookConfiguration", "kube-ipam") || r.has("Service", "kube-ipam-webhook") ||
				slices.ContainsFunc(r.ctrlArgs, func(a string) bool { return strings.HasPrefix(a, "--webhook") }) {
				t.Errorf("webhook objects or args %q", r.ctrlArgs)
			}
			if p := r.dep.Spec.Template.Spec.Containers[0].ReadinessProbe.HTTPGet.Port.String(); p != "metrics" {
				t.Errorf("readiness probe on %s", p)
			}
		}},
		{"kubernetes mode with a NAD", nadModeValues(t), func(t *testing.T, r render) {
			if r.installer.ClusterNetwork != "auto" || r.cm.Data["00-multus.conf"] == "" || r.cm.Data["db-net.conflist"] == "" ||
				!slices.Contains(r.ctrlArgs, "--config=/etc/kube-ipam/config") || r.installer.ConfigSource != "/etc/kube-ipam/config/00-multus.conf" {
				t.Errorf("installer %+v, controller %q, keys %v", r.installer, r.ctrlArgs, r.cm.Data)
			}
			if ipam := ipamOf(t, r.cm.Data["db-net.conflist"]); ipam["store"] != "kubernetes" {
				t.Errorf("NAD config's ipam %v", ipam)
			}
		}},
	}
}

// nadModeValues: kube-multus in Kubernetes mode (no network of its own),
// the cluster network from the node, the database network as a NAD on the
// Kubernetes store: the lab's nad mode as values.
func nadModeValues(t *testing.T) string {
	t.Helper()
	nad, _ := json.Marshal(withoutEtcdConfig(t, nadConfig(t)))
	return `store: kubernetes
clusterNetwork: auto
networkConfig: {cniVersion: 0.3.1, name: multus-cni-network, type: kube-multus, kubeconfig: /etc/cni/net.d/kube-ipam.d/kubeconfig}
nadConfigs:
  db-net.conflist: ` + string(nad) + "\n"
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestBadValuesRefused: values that cannot work fail helm template with
// a message naming the value.
func TestBadValuesRefused(t *testing.T) {
	h := newHelm(t)
	for _, c := range []struct{ name, values, want string }{
		{"unknown store", "store: mongo\n", "store"},
		{"misspelt key", "stor: kubernetes\n", "stor"},
		{"image tag type", "image: {tag: 1.2}\n", "tag"},
		{"bad cluster network", "clusterNetwork: /etc/cni/net.d/x.conflist\n", "clusterNetwork"},
		{"bad duration", "controller: {resync: soon}\n", "resync"},
		{"bad failure policy", "webhook: {failurePolicy: Maybe}\n", "failurePolicy"},
		{"bad endpoint", "etcd: {endpoints: [192.168.1.50:2379]}\n", "endpoints"},
		{"ipam-only without NADs", "ipamOnly: true\n", "ipamOnly needs nadConfigs"},
		{"ipam-only with auto", ipamOnlyValues(t) + "clusterNetwork: auto\n", "clusterNetwork cannot go with ipamOnly"},
		{"half the etcd PEMs", "etcd: {tls: {cert: CERT}}\n", "etcd.tls: give cert, key and ca together"},
		{"config not JSON", "networkConfig: '{\"name\": '\n", "networkConfig is not valid JSON"},
		{"etcdConfig on kubernetes", "store: kubernetes\nnadConfigs: {db-net.conflist: " + mustJSON(t, nadConfig(t)) + "}\n",
			"nadConfigs.db-net.conflist: kube-ipam network kube-subnet has an etcdConfig, but store is kubernetes"},
		{"no etcd endpoints", "etcd: {endpoints: []}\n", "needs etcd.endpoints"},
		{"NAD key", "nadConfigs: {db-net: {name: x}}\n", "nadConfigs.db-net: want a ConfigMap key ending in .conflist"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, out, err := h.template(t, c.values)
			if err == nil {
				t.Fatalf("rendered; want a refusal naming %q", c.want)
			}
			if !strings.Contains(out, c.want) {
				t.Errorf("refused with\n%s\nwant it to name %q", out, c.want)
			}
		})
	}
}

// TestReleasePackage: the package make release writes (internal/release,
// in Go) is a chart helm reads: it lints, shows the stamped version and
// appVersion, and renders what the chart's directory renders, the image
// tag following the appVersion.
func TestReleasePackage(t *testing.T) {
	h := newHelm(t)
	dist := t.TempDir()
	name, err := release.PackageChart(testenv.ModuleRoot(t), dist, "v1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	pkg := filepath.Join(dist, name)
	h.must(t, "lint", "--strict", pkg, "--namespace", "kube-ipam")
	var meta struct{ Version, AppVersion string }
	if err := yaml.Unmarshal([]byte(h.must(t, "show", "chart", pkg)), &meta); err != nil {
		t.Fatal(err)
	}
	if meta.Version != "1.2.3" || meta.AppVersion != "v1.2.3" {
		t.Errorf("helm show chart: version %q appVersion %q", meta.Version, meta.AppVersion)
	}
	values := valuesFile(t, "store: kubernetes\nmonitoring: {prometheusRule: {enabled: true}}\n")
	fromPkg := h.must(t, "template", "kube-ipam", pkg, "-n", "kube-ipam", "-f", values)
	fromDir := h.must(t, "template", "kube-ipam", chartDir(t), "-n", "kube-ipam", "-f", values, "--set", "image.tag=v1.2.3")
	strip := strings.NewReplacer("kube-ipam-1.2.3", "CHART", "kube-ipam-"+strings.TrimPrefix(version.Version, "v"), "CHART",
		`"v1.2.3"`, "APP", `"`+version.Version+`"`, "APP", "version: v1.2.3", "version: APP", "version: "+version.Version, "version: APP")
	if a, b := strip.Replace(fromPkg), strip.Replace(fromDir); a != b {
		t.Errorf("the package renders differently from the chart's directory:\n%s\n---- directory:\n%s", a, b)
	}
	if !strings.Contains(fromPkg, "image: kube-ipam:v1.2.3") || !strings.Contains(fromPkg, "KubeIPAMControllerDown") {
		t.Error("the package's render lacks the release's image tag or the alert rules")
	}
}
