// Package chart tests charts/kube-ipam with the pinned helm (hack/helm.sh)
// and a real kube-apiserver: lint, renders of a matrix of values applied
// with a server-side dry run, values the schema refuses, the render held to
// deploy/'s kustomize install, and install, upgrade and uninstall keeping
// every allocation.
package chart

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"kubeipam/internal/testenv"
)

// helm is the pinned helm with a private home (cache, config, data in a
// temp dir: nothing under $HOME).
type helm struct {
	bin  string
	home string
}

// newHelm finds helm with hack/helm.sh (its cache, or $KUBE_IPAM_HELM):
// a missing helm skips the test, and fails it in CI (make test builds it
// first: make helm).
func newHelm(t *testing.T) *helm {
	t.Helper()
	dir := testenv.HackDir(t, "helm.sh")
	return &helm{bin: filepath.Join(dir, "helm"), home: t.TempDir()}
}

func (h *helm) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.bin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(h.home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(h.home, "config"),
		"HELM_DATA_HOME="+filepath.Join(h.home, "data"),
		"KUBECONFIG=/dev/null") // only an explicit --kubeconfig reaches a cluster
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

func (h *helm) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := h.run(t, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// chartDir is charts/kube-ipam.
func chartDir(t *testing.T) string {
	t.Helper()
	return filepath.Join(testenv.ModuleRoot(t), "charts", "kube-ipam")
}

// valuesFile writes values (YAML) to a temp file for -f.
func valuesFile(t *testing.T, values string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(f, []byte(values), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// template renders the chart as release kube-ipam in namespace kube-ipam
// with values (YAML, may be empty).
func (h *helm) template(t *testing.T, values string) ([]obj, string, error) {
	t.Helper()
	out, err := h.run(t, "template", "kube-ipam", chartDir(t), "--namespace", "kube-ipam", "-f", valuesFile(t, values))
	if err != nil {
		return nil, out, err
	}
	return parseDocs(t, []byte(out)), out, nil
}

// obj is one Kubernetes object of a render.
type obj map[string]any

func (o obj) kind() string { s, _ := o["kind"].(string); return s }
func (o obj) name() string {
	m, _ := o["metadata"].(map[string]any)
	s, _ := m["name"].(string)
	return s
}
func (o obj) key() string { return o.kind() + "/" + o.name() }

// get walks the path of map keys.
func (o obj) get(path ...string) any {
	var v any = map[string]any(o)
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// parseDocs splits a multi-document YAML stream into objects.
func parseDocs(t *testing.T, b []byte) []obj {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var out []obj
	for {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var o obj
		if err := yaml.Unmarshal(raw, &o); err != nil {
			t.Fatalf("%v in\n%s", err, raw)
		}
		if len(o) > 0 {
			out = append(out, o)
		}
	}
	return out
}

func find(objs []obj, kind, name string) obj {
	for _, o := range objs {
		if o.kind() == kind && o.name() == name {
			return o
		}
	}
	return nil
}

// into decodes o into a typed object (apps/v1 DaemonSet...).
func into(t *testing.T, o obj, v any) {
	t.Helper()
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", o.key(), err)
	}
}
