package release

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"kubeipam/internal/oci"
)

// TestBuild builds a real release for this machine's platform (the go
// build of every binary, their archive, the image, the checksums) and
// reads every output back.
func TestBuild(t *testing.T) {
	dist := t.TempDir()
	host := oci.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	if _, ok := map[string]bool{"amd64": true, "arm64": true}[host.Architecture]; !ok || host.OS != "linux" {
		t.Skipf("releases are built for linux/amd64 and linux/arm64; this is %s", host)
	}
	const version, revision = "v9.8.7-test.1", "0123456789abcdef"
	var log bytes.Buffer
	start := time.Now()
	r, err := Build(context.Background(), Options{
		Version: version, Revision: revision, Dist: dist, ModuleRoot: root(t),
		Image: "registry.example.com/team/kube-ipam", Platforms: []oci.Platform{host}, Log: &log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("release built in %v:\n%s", time.Since(start).Round(time.Millisecond), log.String())
	name := "kube-ipam_" + version + "_linux_" + host.Architecture
	want := &Result{Dirs: []string{name}, Archives: []string{name + ".tar.gz"}, Image: "kube-ipam_" + version + "_image.oci.tar",
		ImageRef: "registry.example.com/team/kube-ipam:" + version, Chart: "kube-ipam-9.8.7-test.1.tgz", Sums: "SHA256SUMS"}
	if !reflect.DeepEqual(r, want) {
		t.Fatalf("result %+v, want %+v", r, want)
	}

	// The directory: every binary, static, for this platform, printing the
	// version; the license beside them.
	dir := filepath.Join(dist, name)
	wantFiles := append(slices.Clone(Binaries), "LICENSE")
	if _, err := os.Stat(filepath.Join(root(t), "CHANGELOG.md")); err == nil {
		wantFiles = append(wantFiles, "CHANGELOG.md")
	}
	slices.Sort(wantFiles)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, wantFiles) {
		t.Fatalf("%s holds %v, want %v", name, got, wantFiles)
	}
	for _, b := range Binaries {
		if _, err := oci.Static(filepath.Join(dir, b), "/"+b, host); err != nil {
			t.Error(err)
		}
		arg, want := VersionCommand(b, version)
		out, err := exec.Command(filepath.Join(dir, b), arg).CombinedOutput()
		if strings.TrimSpace(string(out)) != want || err != nil {
			t.Errorf("%s %s: %q (%v), want %q", b, arg, out, err, want)
		}
	}
	// kube-ipam answered through the kube-ipam-direct beside it; alone it
	// says which binary is missing.
	alone := t.TempDir()
	shim, err := os.ReadFile(filepath.Join(dir, "kube-ipam"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(alone, "kube-ipam"), shim, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(alone, "kube-ipam"), "--version")
	cmd.Env = []string{"PATH=/usr/bin:/bin"} // no CNI_PATH to find it in either
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "kube-ipam-direct is not installed") {
		t.Errorf("kube-ipam --version without kube-ipam-direct: %q (%v), want a failure naming kube-ipam-direct", out, err)
	}

	// The archive: the directory under its name, byte for byte.
	tgz, err := os.ReadFile(filepath.Join(dist, name+".tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var entries []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, h.Name)
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: uid %d gid %d mtime %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		data, _ := io.ReadAll(tr)
		disk, err := os.ReadFile(filepath.Join(dist, filepath.FromSlash(h.Name)))
		if err != nil || !bytes.Equal(data, disk) {
			t.Errorf("%s differs from the file in dist/ (%v)", h.Name, err)
		}
		if slices.Contains(Binaries, filepath.Base(h.Name)) != (h.Mode == 0o755) {
			t.Errorf("%s: mode %o", h.Name, h.Mode)
		}
	}
	wantEntries := []string{name + "/"}
	for _, f := range wantFiles {
		wantEntries = append(wantEntries, name+"/"+f)
	}
	if !slices.Equal(entries, wantEntries) {
		t.Errorf("%s.tar.gz lists %v, want %v", name, entries, wantEntries)
	}

	// The image: the Dockerfile's layout, every binary the one in dist/.
	data, err := os.ReadFile(filepath.Join(dist, r.Image))
	if err != nil {
		t.Fatal(err)
	}
	a, err := oci.Read(data)
	if err != nil {
		t.Fatal(err)
	}
	if a.Ref != r.ImageRef || len(a.Images) != 1 || a.Images[0].Platform != host || !a.Images[0].Gzip {
		t.Fatalf("image archive %s: %d images", a.Ref, len(a.Images))
	}
	img := a.Images[0]
	wantCfg := oci.Config{Entrypoint: []string{"/kube-ipam/bin/kube-ipam-install"}, User: "65532:65532",
		Env: []string{"PATH=/kube-ipam/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, Labels: Labels(version, revision)}
	if !reflect.DeepEqual(img.Config, wantCfg) {
		t.Errorf("image config %+v, want %+v", img.Config, wantCfg)
	}
	if img.Config.Labels["org.opencontainers.image.version"] != version || img.Config.Labels["org.opencontainers.image.revision"] != revision {
		t.Errorf("labels %v", img.Config.Labels)
	}
	wantPaths := []string{"/etc", "/etc/group", "/etc/passwd", "/kube-ipam", "/kube-ipam/bin"}
	for _, b := range Binaries {
		wantPaths = append(wantPaths, "/kube-ipam/bin/"+b)
	}
	wantPaths = oci.Paths(append(fileList(wantPaths), oci.File{Path: "/tmp"}))
	if p := oci.Paths(img.Files); !slices.Equal(p, wantPaths) {
		t.Errorf("image layer %v, want %v", p, wantPaths)
	}
	for _, f := range img.Files {
		if b, ok := strings.CutPrefix(f.Path, "/kube-ipam/bin/"); ok {
			disk, _ := os.ReadFile(filepath.Join(dir, b))
			if !bytes.Equal(f.Data, disk) || f.Mode != 0o755 {
				t.Errorf("image %s (mode %v) is not dist's %s", f.Path, f.Mode, b)
			}
		}
		if f.Path == "/etc/passwd" && !strings.Contains(string(f.Data), "\nnonroot:x:65532:65532:") {
			t.Errorf("/etc/passwd = %q", f.Data)
		}
	}

	// SHA256SUMS: the format sha256sum -c reads, over every file.
	sums, err := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`^([0-9a-f]{64})  (\S+)$`)
	var listed []string
	for _, l := range strings.Split(strings.TrimSuffix(string(sums), "\n"), "\n") {
		m := line.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("SHA256SUMS line %q", l)
		}
		b, err := os.ReadFile(filepath.Join(dist, filepath.FromSlash(m[2])))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != m[1] {
			t.Errorf("SHA256SUMS: %s has sha256 %x, listed %s", m[2], sum, m[1])
		}
		listed = append(listed, m[2])
	}
	wantListed := []string{r.Archives[0], r.Image, r.Chart}
	for _, f := range wantFiles {
		wantListed = append(wantListed, name+"/"+f)
	}
	slices.Sort(wantListed)
	if !slices.Equal(listed, wantListed) {
		t.Errorf("SHA256SUMS lists %v, want %v", listed, wantListed)
	}
	if sha256sum, err := exec.LookPath("sha256sum"); err == nil {
		cmd := exec.Command(sha256sum, "--strict", "-c", "SHA256SUMS")
		cmd.Dir = dist
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("sha256sum -c SHA256SUMS: %v\n%s", err, out)
		}
	}

	// Reproducible: the same directory gives the same archive (the
	// image's bytes are package oci's TestReproducible).
	again := filepath.Join(t.TempDir(), "again.tar.gz")
	if err := writeTarGz(again, dir, name); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(again); !bytes.Equal(b, tgz) {
		t.Errorf("two archives of %s differ", name)
	}
}

// root is the repository (package testenv, which has the same helper,
// imports the lab, which imports this package).
func root(t *testing.T) string {
	t.Helper()
	r, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func fileList(paths []string) []oci.File {
	var out []oci.File
	for _, p := range paths {
		out = append(out, oci.File{Path: p})
	}
	return out
}

// TestBuildRefuses: bad options fail before anything is built, naming
// what is wrong.
func TestBuildRefuses(t *testing.T) {
	mod := root(t)
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{Version: "", Dist: t.TempDir(), ModuleRoot: mod}, "version"},
		{Options{Version: "v1.0.0+build", Dist: t.TempDir(), ModuleRoot: mod}, `version "v1.0.0+build"`},
		{Options{Version: "v1/x", Dist: t.TempDir(), ModuleRoot: mod}, "version"},
		{Options{Version: "v1", Dist: t.TempDir(), ModuleRoot: mod, Image: "example.com/kube-ipam:v1"}, "image"},
		{Options{Version: "v1", Dist: t.TempDir(), ModuleRoot: mod, Image: "example.com/kube-ipam@sha256:00"}, "image"},
		{Options{Version: "v1", Dist: t.TempDir(), ModuleRoot: t.TempDir()}, "LICENSE"},
	} {
		if _, err := Build(context.Background(), c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Build(%+v) = %v, want an error naming %s", c.o, err, c.want)
		}
	}
}

// TestMainFlags: the command's flag errors say what is wrong.
func TestMainFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--bogus"}, 2, "unknown flag: --bogus"},
		{nil, 2, "--version is required"},
		{[]string{"--version", "v1", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"--version", "v1", "--platforms", "linux"}, 2, `--platforms: "linux" is not os/arch`},
		{[]string{"--help"}, 0, "--platforms"},
	} {
		var out, errOut bytes.Buffer
		if code := Main(c.args, &out, &errOut); code != c.code || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("Main(%q) = %d, stderr %q; want %d and %q", c.args, code, errOut.String(), c.code, c.want)
		}
	}
}

// TestDockerfile: the Dockerfile builds the image this package writes:
// the same binaries into /kube-ipam/bin, PATH, user, entrypoint and
// labels; the Makefile builds the same binaries.
func TestDockerfile(t *testing.T) {
	mod := root(t)
	b, err := os.ReadFile(filepath.Join(mod, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Instructions, with continuation lines joined; the final stage only
	// for USER, ENV, ENTRYPOINT, LABEL and COPY.
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	var build, final []string
	stage := 0
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "FROM ") {
			stage++
		}
		if stage == 1 {
			build = append(build, l)
		} else {
			final = append(final, l)
		}
	}
	if stage != 2 {
		t.Fatalf("Dockerfile has %d stages, this test reads two (build, image)", stage)
	}
	var cmds []string
	for _, l := range build {
		if strings.Contains(l, "go build") {
			cmds = regexp.MustCompile(`\./cmd/([a-z-]+)`).FindAllString(l, -1)
		}
	}
	var wantCmds []string
	for _, b := range Binaries {
		wantCmds = append(wantCmds, "./cmd/"+b)
	}
	if !slices.Equal(cmds, wantCmds) {
		t.Errorf("the Dockerfile builds %v, want %v", cmds, wantCmds)
	}
	labels := map[string]string{}
	var user, entrypoint, env string
	copied := false
	for _, l := range final {
		instr, rest, _ := strings.Cut(l, " ")
		rest = strings.TrimSpace(rest)
		switch instr {
		case "LABEL":
			for _, m := range regexp.MustCompile(`([a-z.]+)="([^"]*)"`).FindAllStringSubmatch(rest, -1) {
				labels[m[1]] = m[2]
			}
		case "USER":
			user = rest
		case "ENTRYPOINT":
			entrypoint = rest
		case "ENV":
			env = rest
		case "COPY":
			copied = rest == "--from=build /out/ "+BinDir+"/"
		}
	}
	if want := Labels("${VERSION}", "${REVISION}"); !reflect.DeepEqual(labels, want) {
		t.Errorf("Dockerfile labels %v, want %v", labels, want)
	}
	if user != User || entrypoint != `["`+Entrypoint+`"]` || env != PathEnv || !copied {
		t.Errorf("Dockerfile USER %q ENTRYPOINT %q ENV %q COPY to %s: %v; want %q %q %q", user, entrypoint, env, BinDir, copied, User, `["`+Entrypoint+`"]`, PathEnv)
	}

	mk, err := os.ReadFile(filepath.Join(mod, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^BINARIES\s*:=\s*(.*)$`).FindSubmatch(mk)
	if m == nil || !slices.Equal(strings.Fields(string(m[1])), Binaries) {
		t.Errorf("Makefile BINARIES = %q, want %v", m, Binaries)
	}
}
