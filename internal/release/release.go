// Package release builds what `make release` puts into dist/ for one
// version: static binaries for each platform, a tar.gz of each platform's
// binaries, the OCI image archive of the Dockerfile's layout (one image
// index over every platform, written without a Docker daemon by package
// oci) and SHA256SUMS over all of it. Every output is reproducible: the
// same source, Go toolchain and version give the same bytes.
//
// The Dockerfile and this package describe the same image (binaries,
// user, entrypoint, PATH, labels): release_test.go holds them to it.
// The Helm chart charts/kube-ipam is packaged beside them (chart.go),
// stamped with the version, and listed in SHA256SUMS like every output.
package release

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"time"

	"kubeipam/internal/oci"
)

// Binaries are the commands of a release, in /kube-ipam/bin of the image
// and in each platform's archive (the Makefile's BINARIES, the
// Dockerfile's build, the lab's image). kube-ipam is the plugin process the
// runtime runs, a shim that hands the call to the node agent or execs
// kube-ipam-direct, the whole plugin, from its own directory: the two are
// always installed together, kube-ipam-direct first.
var Binaries = []string{"kube-ipam-direct", "kube-ipam", "kube-multus", "kube-tier", "kube-ipamctl", "kube-ipam-controller", "kube-ipam-install"}

// DefaultPlatforms are the platforms of a release.
var DefaultPlatforms = []oci.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}

// DefaultImage is the image's repository: what deploy/'s "kube-ipam"
// expands to, so that an archive imported into a node's containerd under
// kube-ipam:<version> is what `kustomize edit set image
// kube-ipam=kube-ipam:<version>` names.
const DefaultImage = "docker.io/library/kube-ipam"

// The image's layout, as in the Dockerfile (distroless static's nonroot).
const (
	BinDir     = "/kube-ipam/bin"
	Entrypoint = BinDir + "/kube-ipam-install"
	User       = "65532:65532"
	PathEnv    = "PATH=" + BinDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// Labels are the image's OCI labels for version and revision (a git
// commit; left out when empty).
func Labels(version, revision string) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":       "kube-ipam",
		"org.opencontainers.image.description": "kube-ipam CNI IPAM plugin, kube-multus, kube-tier, controller, node installer and kube-ipamctl",
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.licenses":    "Apache-2.0",
	}
	if revision != "" {
		l["org.opencontainers.image.revision"] = revision
	}
	return l
}

// versionArgs are the arguments that make each binary print
// "<name> <version>" (default --version).
var versionArgs = map[string]string{"kube-ipamctl": "version"}

// versionNames are the names binaries print that are not their own:
// kube-ipam-direct is the plugin kube-ipam always was, and says so (the
// shim kube-ipam answers --version by exec'ing it, so both print the same).
var versionNames = map[string]string{"kube-ipam-direct": "kube-ipam"}

// VersionCommand is the argument that makes binary b print its version,
// and the line it prints for version.
func VersionCommand(b, version string) (arg, want string) {
	arg = versionArgs[b]
	if arg == "" {
		arg = "--version"
	}
	name := versionNames[b]
	if name == "" {
		name = b
	}
	return arg, name + " " + version
}

// Options is one release build.
type Options struct {
	Version    string         // e.g. v0.1.0: the binaries' version, the image's tag, part of every file name
	Revision   string         // the git commit, for the image's label; optional
	Dist       string         // output directory, created if missing
	ModuleRoot string         // the repository: go build runs there; LICENSE and CHANGELOG.md come from there
	Image      string         // image repository, without tag; empty = DefaultImage
	Platforms  []oci.Platform // empty = DefaultPlatforms
	Go         string         // the go command; empty = "go"
	Log        io.Writer      // progress; nil = none
}

// Result is what Build wrote, as paths relative to Options.Dist.
type Result struct {
	Dirs     []string // per platform: kube-ipam_<version>_<os>_<arch>/ with the binaries, LICENSE, CHANGELOG.md
	Archives []string // per platform: the same directory as .tar.gz
	Image    string   // kube-ipam_<version>_image.oci.tar
	ImageRef string   // the reference the image archive carries: <Image>:<Version>
	Chart    string   // kube-ipam-<chart version>.tgz: charts/kube-ipam stamped with the version
	Sums     string   // SHA256SUMS
}

// versionRe is what a version may be: an OCI tag, which also keeps it a
// plain file name.
var versionRe = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// Name is the base name of a release's files for a platform.
func Name(version string, p oci.Platform) string {
	return fmt.Sprintf("kube-ipam_%s_%s_%s", version, p.OS, p.Architecture)
}

// ImageArchive is the image archive's file name.
func ImageArchive(version string) string { return "kube-ipam_" + version + "_image.oci.tar" }

// Build builds the release of o into o.Dist, replacing that version's
// earlier outputs.
func Build(ctx context.Context, o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Dist, 0o755); err != nil {
		return nil, err
	}
	docs, err := o.docs()
	if err != nil {
		return nil, err
	}
	r := &Result{Image: ImageArchive(o.Version), ImageRef: o.Image + ":" + o.Version, Sums: "SHA256SUMS"}
	var images []oci.Image
	for _, p := range o.Platforms {
		name := Name(o.Version, p)
		dir := filepath.Join(o.Dist, name)
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
		if err := o.build(ctx, p, dir); err != nil {
			return nil, err
		}
		if p.OS == runtime.GOOS && p.Architecture == runtime.GOARCH {
			if err := checkVersions(ctx, dir, o.Version); err != nil {
				return nil, err
			}
		}
		for _, d := range docs {
			if err := os.WriteFile(filepath.Join(dir, d.name), d.data, 0o644); err != nil {
				return nil, err
			}
		}
		if err := writeTarGz(filepath.Join(o.Dist, name+".tar.gz"), dir, name); err != nil {
			return nil, err
		}
		img, err := ImageFor(dir, p, o.Version, o.Revision)
		if err != nil {
			return nil, err
		}
		images = append(images, img)
		r.Dirs = append(r.Dirs, name)
		r.Archives = append(r.Archives, name+".tar.gz")
		o.logf("%s: binaries in %s/, archive %s.tar.gz", p, name, name)
	}
	if err := oci.WriteFile(filepath.Join(o.Dist, r.Image), r.ImageRef, images...); err != nil {
		return nil, err
	}
	o.logf("image %s (%d platforms) in %s", r.ImageRef, len(images), r.Image)
	if r.Chart, err = PackageChart(o.ModuleRoot, o.Dist, o.Version); err != nil {
		return nil, err
	}
	o.logf("chart %s %s (appVersion %s) in %s", ChartName, ChartVersion(o.Version), o.Version, r.Chart)
	if err := writeSums(o.Dist, r); err != nil {
		return nil, err
	}
	o.logf("checksums in %s", r.Sums)
	return r, nil
}

func (o *Options) defaults() error {
	if !versionRe.MatchString(o.Version) {
		return fmt.Errorf("release: version %q: want an image tag (letters, digits, '_', '.', '-'; e.g. v0.1.0)", o.Version)
	}
	if o.Dist == "" || o.ModuleRoot == "" {
		return errors.New("release: the output directory and the module root are required")
	}
	if o.Image == "" {
		o.Image = DefaultImage
	}
	if strings.ContainsAny(o.Image, "@") || strings.Contains(o.Image[strings.LastIndex(o.Image, "/")+1:], ":") {
		return fmt.Errorf("release: image %q: give a repository without tag or digest (the tag is the version)", o.Image)
	}
	if len(o.Platforms) == 0 {
		o.Platforms = DefaultPlatforms
	}
	if o.Go == "" {
		o.Go = "go"
	}
	return nil
}

func (o *Options) logf(format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", args...)
	}
}

type doc struct {
	name string
	data []byte
}

// docs are the files every platform's archive carries beside the
// binaries: the license (required), the changelog (when there is one).
func (o *Options) docs() ([]doc, error) {
	var out []doc
	for _, n := range []string{"LICENSE", "CHANGELOG.md"} {
		b, err := os.ReadFile(filepath.Join(o.ModuleRoot, n))
		if errors.Is(err, fs.ErrNotExist) && n != "LICENSE" {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("release: %w", err)
		}
		out = append(out, doc{n, b})
	}
	return out, nil
}

// build compiles every binary for p into dir: static, without the
// build machine's paths, stamped with the version (as make build does).
func (o *Options) build(ctx context.Context, p oci.Platform, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	args := []string{"build", "-trimpath", "-ldflags", "-s -w -X kubeipam/internal/version.Version=" + o.Version, "-o", dir + string(filepath.Separator)}
	for _, b := range Binaries {
		args = append(args, "./cmd/"+b)
	}
	cmd := exec.CommandContext(ctx, o.Go, args...)
	cmd.Dir = o.ModuleRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("release: go build for %s: %v\n%s", p, err, out)
	}
	o.logf("%s: built %d binaries in %v", p, len(Binaries), time.Since(start).Round(time.Second))
	return nil
}

// checkVersions runs every binary of dir (built for this machine) and
// checks that it reports version: a binary whose ldflags missed would say
// the default instead.
func checkVersions(ctx context.Context, dir, version string) error {
	for _, b := range Binaries {
		arg, want := VersionCommand(b, version)
		out, err := exec.CommandContext(ctx, filepath.Join(dir, b), arg).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != want {
			return fmt.Errorf("release: %s %s printed %q (%v), want %q", b, arg, out, err, want)
		}
	}
	return nil
}

// ImageFor is the image of one platform from the binaries in dir: the
// Dockerfile's layout on a minimal rootfs standing in for distroless
// static (the passwd and group entries of root and nonroot, /tmp).
func ImageFor(dir string, p oci.Platform, version, revision string) (oci.Image, error) {
	files := []oci.File{
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnonroot:x:65532:\n")},
		{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
	}
	for _, b := range Binaries {
		f, err := oci.Static(filepath.Join(dir, b), BinDir+"/"+b, p)
		if err != nil {
			return oci.Image{}, err
		}
		files = append(files, f)
	}
	return oci.Image{Platform: p, Files: files, Gzip: true, Config: oci.Config{
		Entrypoint: []string{Entrypoint},
		Env:        []string{PathEnv},
		User:       User,
		Labels:     Labels(version, revision),
	}}, nil
}

// writeTarGz writes dir as path, every entry under prefix/: sorted, owned
// by root, mtime the epoch, gzip without name or time, so that the same
// files give the same bytes.
func writeTarGz(path, dir, prefix string) (err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	epoch := time.Unix(0, 0)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: prefix + "/", Mode: 0o755, ModTime: epoch}); err != nil {
		return err
	}
	for _, e := range ents { // ReadDir sorts by name
		if !e.Type().IsRegular() {
			return fmt.Errorf("release: %s: unexpected %s (regular files only)", filepath.Join(dir, e.Name()), e.Type())
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		h := &tar.Header{Typeflag: tar.TypeReg, Name: prefix + "/" + e.Name(), Mode: int64(fi.Mode().Perm()), Size: int64(len(b)), ModTime: epoch}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := tw.Write(b); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// writeSums writes SHA256SUMS (the format of sha256sum, so `sha256sum -c
// SHA256SUMS` in dist/ checks it) over every file of r: each platform's
// binaries and docs, its archive, the image archive, the chart.
func writeSums(dist string, r *Result) error {
	var names []string
	for _, d := range r.Dirs {
		ents, err := os.ReadDir(filepath.Join(dist, d))
		if err != nil {
			return err
		}
		for _, e := range ents {
			names = append(names, d+"/"+e.Name())
		}
	}
	names = append(append(names, r.Archives...), r.Image)
	if r.Chart != "" {
		names = append(names, r.Chart)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		f, err := os.Open(filepath.Join(dist, filepath.FromSlash(n)))
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(h.Sum(nil)), n)
	}
	return os.WriteFile(filepath.Join(dist, r.Sums), []byte(b.String()), 0o644)
}
