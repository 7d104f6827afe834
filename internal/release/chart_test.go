package release

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestChartVersion(t *testing.T) {
	for version, want := range map[string]string{
		"v0.1.0":            "0.1.0",
		"v0.2.0-rc.1":       "0.2.0-rc.1",
		"1.2.3":             "1.2.3",
		"v0.1.0-3-gabc1234": "0.1.0-3-gabc1234",
		"2e4af4d":           "0.0.0-2e4af4d",
		"2e4af4d-dirty":     "0.0.0-2e4af4d-dirty",
		"dev":               "0.0.0-dev",
		"v1.2":              "0.0.0-v1.2",
		"v1.02.3":           "0.0.0-v1.x02.3",
		"my_build":          "0.0.0-my-build",
	} {
		got := ChartVersion(version)
		if got != want || !semverRe.MatchString(got) {
			t.Errorf("ChartVersion(%q) = %q, want %q (SemVer)", version, got, want)
		}
	}
}

// readChart reads a chart package: entry name -> content.
func readChart(t *testing.T, b []byte) map[string]string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	files := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg || h.Uid != 0 || h.Mode != 0o644 || !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: type %c uid %d mode %o mtime %v", h.Name, h.Typeflag, h.Uid, h.Mode, h.ModTime)
		}
		data, _ := io.ReadAll(tr)
		files[h.Name] = string(data)
	}
}

// TestPackageChart packages the repository's chart: every file under
// kube-ipam/, files/ links resolved to their targets' content, Chart.yaml
// stamped, the same bytes twice. test/chart has helm read the package.
func TestPackageChart(t *testing.T) {
	root := root(t)
	a, b := t.TempDir(), t.TempDir()
	name, err := PackageChart(root, a, "v1.2.3-rc.1")
	if err != nil {
		t.Fatal(err)
	}
	if name != "kube-ipam-1.2.3-rc.1.tgz" {
		t.Errorf("package %s", name)
	}
	if _, err := PackageChart(root, b, "v1.2.3-rc.1"); err != nil {
		t.Fatal(err)
	}
	pa, _ := os.ReadFile(filepath.Join(a, name))
	pb, _ := os.ReadFile(filepath.Join(b, name))
	if !bytes.Equal(pa, pb) {
		t.Error("two packages of the same chart and version differ")
	}
	files := readChart(t, pa)
	chart := files["kube-ipam/Chart.yaml"]
	if !strings.Contains(chart, "\nversion: \"1.2.3-rc.1\"\n") || !strings.Contains(chart, "\nappVersion: \"v1.2.3-rc.1\"\n") {
		t.Errorf("Chart.yaml not stamped:\n%s", chart)
	}
	rules, err := os.ReadFile(filepath.Join(root, "deploy", "monitoring", "kube-ipam.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if files["kube-ipam/files/kube-ipam.rules.yml"] != string(rules) {
		t.Error("files/kube-ipam.rules.yml is not deploy/monitoring's")
	}
	for _, f := range []string{"values.yaml", "values.schema.json", "templates/NOTES.txt", "templates/daemonset.yaml",
		"templates/crds.yaml", "files/ipallocations.yaml", "files/network-attachment-definitions.yaml", "README.md"} {
		if files["kube-ipam/"+f] == "" {
			t.Errorf("the package has no %s", f)
		}
	}
}

func TestStampChartRefuses(t *testing.T) {
	if _, err := stampChart([]byte("apiVersion: v2\nname: x\nversion: 1.0.0\n"), "v1.0.0"); err == nil ||
		!strings.Contains(err.Error(), "appVersion") {
		t.Errorf("a Chart.yaml without appVersion: %v", err)
	}
}
