package release

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// ChartDir is the chart's directory in the repository, and ChartName its
// name (the directory of the package's entries, the prefix of its file).
const (
	ChartDir  = "charts/kube-ipam"
	ChartName = "kube-ipam"
)

// The chart package is written here rather than by `helm package` or
// helm's Go library: the format is a tar.gz of the chart's directory under
// its name, which this package already writes reproducibly for the
// binaries, whereas helm.sh/helm/v4 as a library would bring its whole
// module graph into go.mod for one archive, and the helm binary would make
// every release depend on a 3-minute build (and stamps the current time
// into the archive). test/chart lints, renders and installs the package
// with the pinned helm, which proves that helm reads it.

// semverRe is SemVer 2.0.0 (what Helm requires of a chart's version).
var semverRe = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$`)

// ChartVersion is the chart's version for a release VERSION: the VERSION
// less its "v" when that is SemVer (v0.1.0 -> 0.1.0, v0.2.0-rc.1 ->
// 0.2.0-rc.1); otherwise (an untagged `git describe`, e.g. 2e4af4d-dirty)
// a pre-release of 0.0.0 named after it, so that any release has a chart.
// The chart's appVersion, and the image tag it defaults to, is VERSION
// itself.
func ChartVersion(version string) string {
	if v := strings.TrimPrefix(version, "v"); semverRe.MatchString(v) {
		return v
	}
	ids := strings.Split(strings.NewReplacer("_", "-", "+", "-").Replace(version), ".")
	for i, id := range ids {
		if id == "" {
			ids[i] = "0"
		} else if len(id) > 1 && id[0] == '0' && strings.Trim(id, "0123456789") == "" {
			ids[i] = "x" + id // a numeric identifier has no leading zero
		}
	}
	return "0.0.0-" + strings.Join(ids, ".")
}

// ChartArchive is the chart package's file name: Helm's <name>-<version>.tgz.
func ChartArchive(version string) string {
	return ChartName + "-" + ChartVersion(version) + ".tgz"
}

// stampChart rewrites the version and appVersion lines of Chart.yaml,
// leaving the rest (comments included) as it is.
func stampChart(chartYAML []byte, version string) ([]byte, error) {
	var out bytes.Buffer
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(chartYAML))
	for sc.Scan() {
		line := sc.Text()
		for key, val := range map[string]string{"version": ChartVersion(version), "appVersion": version} {
			if strings.HasPrefix(line, key+":") {
				line = fmt.Sprintf("%s: %q", key, val)
				seen[key] = true
			}
		}
		out.WriteString(line + "\n")
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if !seen["version"] || !seen["appVersion"] {
		return nil, fmt.Errorf("release: %s/Chart.yaml: no top-level version or appVersion line to stamp", ChartDir)
	}
	return out.Bytes(), nil
}

// helmIgnore reads the chart's .helmignore: file name patterns and
// directories (a trailing "/"), one a line, "#" comments.
func helmIgnore(dir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, ".helmignore"))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var pats []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			if strings.HasPrefix(l, "!") {
				return nil, fmt.Errorf("release: %s/.helmignore: negations (%s) are not supported here", ChartDir, l)
			}
			pats = append(pats, l)
		}
	}
	return pats, nil
}

func ignored(pats []string, rel string, isDir bool) bool {
	for _, p := range pats {
		if d, ok := strings.CutSuffix(p, "/"); ok {
			if isDir && (path.Base(rel) == d || rel == d) {
				return true
			}
			continue
		}
		if ok, _ := path.Match(p, path.Base(rel)); ok {
			return true
		}
		if ok, _ := path.Match(p, rel); ok {
			return true
		}
	}
	return false
}

// PackageChart writes the chart of moduleRoot/charts/kube-ipam, stamped
// with version, as dist/ChartArchive(version): every file under
// kube-ipam/, links followed (files/ links to deploy/'s and the kube
// store's one copies), sorted, owned by root, mode 0644, mtime the epoch,
// gzip without name or time: the same source gives the same bytes.
func PackageChart(moduleRoot, dist, version string) (string, error) {
	dir := filepath.Join(moduleRoot, filepath.FromSlash(ChartDir))
	pats, err := helmIgnore(dir)
	if err != nil {
		return "", err
	}
	files := map[string][]byte{}
	var walk func(rel string) error
	walk = func(rel string) error {
		ents, err := os.ReadDir(filepath.Join(dir, filepath.FromSlash(rel)))
		if err != nil {
			return err
		}
		for _, e := range ents {
			r := path.Join(rel, e.Name())
			p := filepath.Join(dir, filepath.FromSlash(r))
			fi, err := os.Stat(p) // follows links
			if err != nil {
				return fmt.Errorf("release: chart file %s: %w", r, err)
			}
			if ignored(pats, r, fi.IsDir()) {
				continue
			}
			switch {
			case fi.IsDir():
				if err := walk(r); err != nil {
					return err
				}
			case fi.Mode().IsRegular():
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				files[r] = b
			default:
				return fmt.Errorf("release: chart file %s: unexpected %s", r, fi.Mode().Type())
			}
		}
		return nil
	}
	if err := walk("."); err != nil {
		return "", err
	}
	chart, ok := files["Chart.yaml"]
	if !ok {
		return "", fmt.Errorf("release: %s has no Chart.yaml", ChartDir)
	}
	if files["Chart.yaml"], err = stampChart(chart, version); err != nil {
		return "", err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, n := range names {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: ChartName + "/" + n, Mode: 0o644, Size: int64(len(files[n])), ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(h); err != nil {
			return "", err
		}
		if _, err := tw.Write(files[n]); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	if err := zw.Close(); err != nil {
		return "", err
	}
	name := ChartArchive(version)
	if err := os.WriteFile(filepath.Join(dist, name), buf.Bytes(), 0o644); err != nil {
		return "", err
	}
	return name, nil
}
