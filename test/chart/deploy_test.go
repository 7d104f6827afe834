package chart

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"kubeipam/internal/testenv"
)

// kustomize renders deploy/ with the given components (an overlay outside
// deploy/, as their comments tell users) with the real kubectl.
func kustomize(t *testing.T, dir string, comps ...string) []obj {
	t.Helper()
	kubectl := testenv.KubeBinary(t, "kubectl")
	if len(comps) > 0 {
		overlay := t.TempDir()
		rel, err := filepath.Rel(overlay, dir)
		if err != nil {
			t.Fatal(err)
		}
		var cs []string
		for _, c := range comps {
			cs = append(cs, rel+"/"+c)
		}
		k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [" + rel + "]\ncomponents: [" + strings.Join(cs, ", ") + "]\n"
		if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
			t.Fatal(err)
		}
		dir = overlay
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, kubectl, "kustomize", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, out)
	}
	return parseDocs(t, out)
}

func fileObjs(t *testing.T, file string) []obj {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return parseDocs(t, b)
}

// normalize drops what legitimately differs between the two install paths:
// the labels (labelsCovered compares them), the CRDs' keep policy, an empty
// caBundle (the chart leaves the field to whoever fills it), the whitespace
// of CEL expressions; and it parses the ConfigMaps' JSON configs, whose key
// order toJson does not keep.
func normalize(t *testing.T, o obj) obj {
	t.Helper()
	var c obj
	if err := json.Unmarshal([]byte(mustJSON(t, o)), &c); err != nil {
		t.Fatal(err)
	}
	meta := c["metadata"].(map[string]any)
	delete(meta, "labels") // compared by labelsCovered
	if a, ok := meta["annotations"].(map[string]any); ok {
		delete(a, "helm.sh/resource-policy")
		if len(a) == 0 {
			delete(meta, "annotations")
		}
	}
	if c.kind() == "ValidatingWebhookConfiguration" {
		for _, w := range c["webhooks"].([]any) {
			cc := w.(map[string]any)["clientConfig"].(map[string]any)
			if cc["caBundle"] == "" {
				delete(cc, "caBundle")
			}
			// CEL ignores whitespace, which kustomize's re-folding of
			// the YAML block changes.
			conds, _ := w.(map[string]any)["matchConditions"].([]any)
			for _, c := range conds {
				m := c.(map[string]any)
				m["expression"] = strings.Join(strings.Fields(m["expression"].(string)), " ")
			}
		}
	}
	if c.kind() == "ConfigMap" {
		data, _ := c["data"].(map[string]any)
		for k, v := range data {
			var parsed any
			if json.Unmarshal([]byte(v.(string)), &parsed) == nil {
				data[k] = parsed
			}
		}
	}
	return c
}

// TestChartMatchesDeploy: the chart's render and deploy/'s kustomize
// install are the same objects (names, labels, containers' images and
// arguments, mounts, RBAC rules, CRDs, config, webhook), in every mode
// deploy/ has a component for, so that the two install paths cannot
// drift. Only the Namespace (the chart installs into the release's) and
// the Helm labels differ (the chart's labels are a superset of deploy/'s).
func TestChartMatchesDeploy(t *testing.T) {
	h := newHelm(t)
	root := testenv.ModuleRoot(t)
	deploy := filepath.Join(root, "deploy")

	common := "image: {tag: dev}\n"
	nad, _ := json.Marshal(nadConfig(t))
	for _, c := range []struct {
		name, values string
		comps        []string
	}{
		{"etcd", "", nil},
		{"kubernetes-store", "store: kubernetes\n", []string{"kubernetes-store"}},
		{"auto-cluster-network", "clusterNetwork: auto\n", []string{"auto-cluster-network"}},
		// deploy/ipam-only's config names its etcd, as the chart keeps
		// an etcdConfig it is given.
		{"ipam-only", "ipamOnly: true\nnadConfigs: {db-net.conflist: " + string(nad) + "}\n", []string{"ipam-only"}},
		{"kubernetes-store+auto-cluster-network", "store: kubernetes\nclusterNetwork: auto\n", []string{"kubernetes-store", "auto-cluster-network"}},
		{"webhook/cert-manager", "webhook: {certManager: {enabled: true}}\n", []string{"webhook/cert-manager"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			want := kustomize(t, deploy, c.comps...)
			objs, out, err := h.template(t, common+c.values)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, out)
			}
			compareInstalls(t, want, objs)
		})
	}

	t.Run("monitoring", func(t *testing.T) {
		want := kustomize(t, filepath.Join(deploy, "monitoring"))
		objs, out, err := h.template(t, common+"monitoring: {serviceMonitor: {enabled: true}, prometheusRule: {enabled: true}, dashboard: {enabled: true}}\n")
		if err != nil {
			t.Fatalf("helm template: %v\n%s", err, out)
		}
		for _, w := range want {
			got := find(objs, w.kind(), w.name())
			if got == nil {
				t.Errorf("the chart has no %s", w.key())
				continue
			}
			labelsCovered(t, got, w)
			if g, w := normalize(t, got), normalize(t, w); !reflect.DeepEqual(g, w) {
				t.Errorf("%s differs:\nchart:   %s\ndeploy/: %s", w.key(), mustJSON(t, g), mustJSON(t, w))
			}
		}
	})
}

// labelsCovered: every label deploy/ gives an object, the chart gives it.
func labelsCovered(t *testing.T, chart, deploy obj) {
	t.Helper()
	have, _ := chart.get("metadata", "labels").(map[string]any)
	want, _ := deploy.get("metadata", "labels").(map[string]any)
	for k, v := range want {
		if have[k] != v {
			t.Errorf("%s: label %s=%v, deploy/ has %v", deploy.key(), k, have[k], v)
		}
	}
}

// compareInstalls holds the chart's objects to deploy/'s, one by one.
func compareInstalls(t *testing.T, want, got []obj) {
	t.Helper()
	var wantKeys, gotKeys []string
	for _, w := range want {
		if w.kind() == "Namespace" {
			continue // the release's namespace, created before the chart
		}
		wantKeys = append(wantKeys, w.key())
		g := find(got, w.kind(), w.name())
		if g == nil {
			continue
		}
		labelsCovered(t, g, w)
		if gn, wn := normalize(t, g), normalize(t, w); !reflect.DeepEqual(gn, wn) {
			t.Errorf("%s differs:\nchart:   %s\ndeploy/: %s", w.key(), mustJSON(t, gn), mustJSON(t, wn))
		}
	}
	for _, g := range got {
		gotKeys = append(gotKeys, g.key())
	}
	slices.Sort(wantKeys)
	slices.Sort(gotKeys)
	if !slices.Equal(wantKeys, gotKeys) {
		t.Errorf("objects differ:\nchart:   %q\ndeploy/: %q", gotKeys, wantKeys)
	}
}
