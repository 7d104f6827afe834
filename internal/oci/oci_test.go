package oci

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var (
	amd64 = Platform{OS: "linux", Architecture: "amd64"}
	arm64 = Platform{OS: "linux", Architecture: "arm64"}
)

var testFiles = []File{
	{Path: "/usr/bin/hello", Mode: 0o755, Data: []byte("#!/bin/sh\necho hello\n")},
	{Path: "/bin/hi", Mode: fs.ModeSymlink | 0o777, Link: "/usr/bin/hello"},
	{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
	{Path: "/root", Mode: fs.ModeDir | 0o700},
	{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
	{Path: "/usr/bin/su", Mode: fs.ModeSetuid | 0o755, Data: []byte("x")},
	{Path: "/var/empty", Mode: fs.ModeDir | 0o555},
	{Path: "/a-b/c", Mode: 0o600, Data: []byte{}},
	{Path: "/a/" + strings.Repeat("long", 40), Mode: 0o644, Data: []byte("long name")},
}

func write(t *testing.T, ref string, images ...Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, ref, images...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func read(t *testing.T, data []byte) *Archive {
	t.Helper()
	a, err := Read(data)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// topEntry is index.json's one descriptor, as written.
func topEntry(t *testing.T, data []byte) ociDescriptor {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no index.json: %v", err)
		}
		if h.Name == "index.json" {
			var idx ociIndex
			if err := json.NewDecoder(tr).Decode(&idx); err != nil {
				t.Fatal(err)
			}
			return idx.Manifests[0]
		}
	}
}

func TestWrite(t *testing.T) {
	cfg := Config{Entrypoint: []string{"/usr/bin/hello"}, Cmd: []string{"-x"}, Env: []string{"A=1"}, WorkingDir: "/root"}
	data := write(t, "registry.k8s.io/pause:3.10", Image{Platform: amd64, Files: testFiles, Config: cfg})
	a := read(t, data)
	if a.Ref != "registry.k8s.io/pause:3.10" || len(a.Images) != 1 {
		t.Fatalf("archive %s with %d images", a.Ref, len(a.Images))
	}
	// One image: index.json names its manifest, with the platform.
	if e := topEntry(t, data); e.MediaType != MediaTypeManifest || e.Platform == nil || e.Platform.Architecture != "amd64" ||
		e.Annotations[AnnotationRefName] != "3.10" || e.Digest != a.Digest {
		t.Errorf("index.json entry = %+v", e)
	}
	img := a.Images[0]
	if img.Platform != amd64 || !reflect.DeepEqual(img.Config, cfg) {
		t.Errorf("image %s config %+v, want %+v", img.Platform, img.Config, cfg)
	}
	want := []File{
		{Path: "/a", Mode: fs.ModeDir | 0o755}, // implied
		{Path: "/a/" + strings.Repeat("long", 40), Mode: 0o644, Data: []byte("long name")},
		// Component order: a directory just before its contents.
		{Path: "/a-b", Mode: fs.ModeDir | 0o755},
		{Path: "/a-b/c", Mode: 0o600, Data: []byte{}},
		{Path: "/bin", Mode: fs.ModeDir | 0o755},
		{Path: "/bin/hi", Mode: fs.ModeSymlink | 0o777, Link: "/usr/bin/hello"},
		{Path: "/etc", Mode: fs.ModeDir | 0o755},
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
		{Path: "/root", Mode: fs.ModeDir | 0o700},
		{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		{Path: "/usr", Mode: fs.ModeDir | 0o755},
		{Path: "/usr/bin", Mode: fs.ModeDir | 0o755},
		{Path: "/usr/bin/hello", Mode: 0o755, Data: []byte("#!/bin/sh\necho hello\n")},
		{Path: "/usr/bin/su", Mode: fs.ModeSetuid | 0o755, Data: []byte("x")},
		{Path: "/var", Mode: fs.ModeDir | 0o755},
		{Path: "/var/empty", Mode: fs.ModeDir | 0o555},
	}
	if len(img.Files) != len(want) {
		t.Fatalf("layer paths %v, want %v", Paths(img.Files), Paths(want))
	}
	for i, w := range want {
		g := img.Files[i]
		if g.Path != w.Path || g.Mode != w.Mode || g.Link != w.Link || !bytes.Equal(g.Data, w.Data) {
			t.Errorf("layer entry %d = %s %v %q (%d bytes), want %s %v %q (%d bytes)", i, g.Path, g.Mode, g.Link, len(g.Data), w.Path, w.Mode, w.Link, len(w.Data))
		}
	}
}

func TestDefaultEnv(t *testing.T) {
	a := read(t, write(t, "docker.io/local/x:1", Image{Platform: amd64, Files: testFiles[:1]}))
	c := a.Images[0].Config
	if !reflect.DeepEqual(c, Config{Env: defaultEnv}) {
		t.Errorf("config = %+v, want only the default PATH", c)
	}
}

func TestUserAndLabels(t *testing.T) {
	cfg := Config{User: "65532:65532", Labels: map[string]string{"org.opencontainers.image.version": "v1.2.3"}, Env: []string{"A=1"}}
	a := read(t, write(t, "docker.io/local/x:1", Image{Platform: arm64, Files: testFiles[:1], Config: cfg}))
	if got := a.Images[0]; got.Platform != arm64 || !reflect.DeepEqual(got.Config, cfg) {
		t.Errorf("image %s config %+v, want %+v", got.Platform, got.Config, cfg)
	}
}

// TestMultiPlatform: several images are one image index, named in
// index.json, whose manifests carry their platforms in the given order.
func TestMultiPlatform(t *testing.T) {
	cfg := Config{Entrypoint: []string{"/usr/bin/hello"}, User: "65532:65532"}
	arm := []File{{Path: "/usr/bin/hello", Mode: 0o755, Data: []byte("arm")}}
	data := write(t, "docker.io/local/multi:v1", Image{Platform: amd64, Files: testFiles, Config: cfg}, Image{Platform: arm64, Files: arm, Config: cfg})
	a := read(t, data)
	e := topEntry(t, data)
	if e.MediaType != MediaTypeIndex || e.Platform != nil || e.Digest != a.Digest || e.Annotations[AnnotationImageName] != "docker.io/local/multi:v1" {
		t.Errorf("index.json entry = %+v", e)
	}
	if len(a.Images) != 2 || a.Images[0].Platform != amd64 || a.Images[1].Platform != arm64 {
		t.Fatalf("images %+v", a.Images)
	}
	if !reflect.DeepEqual(a.Images[1].Config, Config{Entrypoint: cfg.Entrypoint, User: cfg.User, Env: defaultEnv}) {
		t.Errorf("arm64 config %+v", a.Images[1].Config)
	}
	if p := Paths(a.Images[1].Files); strings.Join(p, " ") != "/usr /usr/bin /usr/bin/hello" || string(a.Images[1].Files[2].Data) != "arm" {
		t.Errorf("arm64 layer %v", p)
	}
	// The same image alone is the same manifest: the index only adds.
	single := topEntry(t, write(t, "docker.io/local/multi:v1", Image{Platform: arm64, Files: arm, Config: cfg}))
	if !bytes.Contains(data, []byte(single.Digest)) {
		t.Errorf("the index does not list the arm64 image's manifest %s", single.Digest)
	}
}

// TestGzip: a compressed layer holds the same files, its config's diff_id
// is the uncompressed layer's digest (Read checks it), and it is smaller.
func TestGzip(t *testing.T) {
	big := append([]File{{Path: "/big", Mode: 0o644, Data: bytes.Repeat([]byte("kube-ipam "), 10000)}}, testFiles...)
	plain := write(t, "docker.io/local/x:1", Image{Platform: amd64, Files: big})
	gz := write(t, "docker.io/local/x:1", Image{Platform: amd64, Files: big, Gzip: true})
	if again := write(t, "docker.io/local/x:1", Image{Platform: amd64, Files: big, Gzip: true}); !bytes.Equal(gz, again) {
		t.Fatal("two writes of the same compressed image differ")
	}
	a, b := read(t, plain), read(t, gz)
	if a.Images[0].Gzip || !b.Images[0].Gzip || !reflect.DeepEqual(a.Images[0].Files, b.Images[0].Files) {
		t.Error("the compressed image's files differ from the uncompressed one's")
	}
	if len(gz) >= len(plain)/2 {
		t.Errorf("compressed archive %d bytes, uncompressed %d", len(gz), len(plain))
	}
}

func TestReproducible(t *testing.T) {
	img := Image{Platform: amd64, Files: testFiles, Config: Config{Entrypoint: []string{"/bin/hi"}, Labels: map[string]string{"a": "1", "b": "2", "c": "3"}}}
	a := write(t, "docker.io/local/busybox:1", img, Image{Platform: arm64, Files: testFiles})
	b := write(t, "docker.io/local/busybox:1", img, Image{Platform: arm64, Files: testFiles})
	if !bytes.Equal(a, b) {
		t.Fatal("two writes of the same images differ")
	}
	// Input order does not matter either.
	rev := append([]File(nil), testFiles...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	img2 := img
	img2.Files = rev
	if c := write(t, "docker.io/local/busybox:1", img2, Image{Platform: arm64, Files: testFiles}); !bytes.Equal(a, c) {
		t.Fatal("the file order changes the image")
	}
	// Anything else does.
	if c := write(t, "docker.io/local/busybox:2", img, Image{Platform: arm64, Files: testFiles}); bytes.Equal(a, c) {
		t.Fatal("the tag does not change the archive")
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "img.tar")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	img := Image{Platform: amd64, Files: testFiles}
	if err := WriteFile(p, "docker.io/local/x:1", img); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, write(t, "docker.io/local/x:1", img)) {
		t.Error("WriteFile and Write differ")
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", fi.Mode())
	}
	// A failed write leaves the old file and no temporary behind.
	if err := WriteFile(p, "bad ref", img); err == nil {
		t.Error("WriteFile accepted a bad reference")
	}
	if got2, _ := os.ReadFile(p); !bytes.Equal(got2, got) {
		t.Error("a failed WriteFile changed the file")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only img.tar", len(ents))
	}
}

func TestWriteErrors(t *testing.T) {
	ok := Image{Platform: amd64, Files: []File{{Path: "/x", Mode: 0o644, Data: []byte("x")}}}
	for _, ref := range []string{
		"busybox:1", "local/busybox:1", "docker.io/local/busybox", "docker.io/busybox:1",
		"docker.io/local/BusyBox:1", "docker.io/local/busybox@sha256:" + strings.Repeat("0", 64),
		"docker.io/local/busybox:", "docker.io/local/busybox:-x", "",
	} {
		if err := Write(io.Discard, ref, ok); err == nil {
			t.Errorf("reference %q accepted", ref)
		}
	}
	for _, ref := range []string{"docker.io/library/busybox:1.36", "localhost:5000/a/b:v1", "localhost/x:y", "registry.k8s.io/pause:3.10", "my-registry:5000/x:latest"} {
		if err := Write(io.Discard, ref, ok); err != nil {
			t.Errorf("reference %q: %v", ref, err)
		}
	}
	for name, files := range map[string][]File{
		"relative":       {{Path: "x", Mode: 0o644}},
		"unclean":        {{Path: "/a/../x", Mode: 0o644}},
		"root":           {{Path: "/", Mode: fs.ModeDir | 0o755}},
		"duplicate":      {{Path: "/x", Mode: 0o644}, {Path: "/x", Mode: 0o644}},
		"file parent":    {{Path: "/x", Mode: 0o644}, {Path: "/x/y", Mode: 0o644}},
		"symlink parent": {{Path: "/lib", Mode: fs.ModeSymlink | 0o777, Link: "usr/lib"}, {Path: "/lib/y", Mode: 0o644}},
		"device":         {{Path: "/dev/null", Mode: fs.ModeDevice | 0o666}},
		"empty link":     {{Path: "/l", Mode: fs.ModeSymlink | 0o777}},
		"dir with data":  {{Path: "/d", Mode: fs.ModeDir | 0o755, Data: []byte("x")}},
		"file with link": {{Path: "/f", Mode: 0o644, Link: "/x"}},
	} {
		if err := Write(io.Discard, "docker.io/local/x:1", Image{Platform: amd64, Files: files}); err == nil {
			t.Errorf("%s: files accepted", name)
		}
	}
	for name, images := range map[string][]Image{
		"no image":         nil,
		"no platform":      {{Files: ok.Files}},
		"no architecture":  {{Platform: Platform{OS: "linux"}, Files: ok.Files}},
		"platform twice":   {ok, ok},
		"bad second image": {ok, {Platform: arm64, Files: []File{{Path: "x"}}}},
	} {
		if err := Write(io.Discard, "docker.io/local/x:1", images...); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestReadRefuses: Read notices a broken archive instead of returning
// half of it.
func TestReadRefuses(t *testing.T) {
	good := write(t, "docker.io/local/x:1", Image{Platform: amd64, Files: testFiles})
	// Flip one byte of the layer's content ("long name" is in it only).
	i := bytes.Index(good, []byte("long name"))
	bad := append([]byte(nil), good...)
	bad[i] ^= 1
	if _, err := Read(bad); err == nil || !strings.Contains(err.Error(), "has sha256") {
		t.Errorf("Read of a corrupted blob: %v", err)
	}
	if _, err := Read([]byte("not a tar")); err == nil {
		t.Error("Read accepted garbage")
	}
}

func TestStatic(t *testing.T) {
	// Debian's busybox-static is a static x86-64 binary; the Go toolchain's
	// own go binary is not necessarily static, so busybox it is.
	const bb = "/bin/busybox"
	if _, err := os.Stat(bb); err == nil {
		f, err := Static(bb, "/kube-ipam/bin/busybox", amd64)
		if err != nil {
			t.Fatal(err)
		}
		if f.Path != "/kube-ipam/bin/busybox" || f.Mode != 0o755 || len(f.Data) == 0 {
			t.Errorf("Static = %s %v (%d bytes)", f.Path, f.Mode, len(f.Data))
		}
		if _, err := Static(bb, "/busybox", arm64); err == nil || !strings.Contains(err.Error(), "EM_X86_64") {
			t.Errorf("an x86-64 binary for linux/arm64: %v", err)
		}
		if _, err := Static(bb, "/busybox", Platform{OS: "linux", Architecture: "s390x"}); err == nil || !strings.Contains(err.Error(), "not supported") {
			t.Errorf("linux/s390x: %v", err)
		}
		if _, err := Static(bb, "busybox", amd64); err == nil {
			t.Error("a relative image path accepted")
		}
	}
	if _, err := Static("/etc/passwd", "/passwd", amd64); err == nil {
		t.Error("a text file accepted as a static binary")
	}
	if _, err := os.Stat("/bin/ls"); err == nil {
		if _, err := Static("/bin/ls", "/ls", amd64); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
			t.Errorf("Static(/bin/ls) = %v, want a dynamically-linked error", err)
		}
	}
	if _, err := Static(filepath.Join(t.TempDir(), "none"), "/none", amd64); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing binary: %v", err)
	}
}
