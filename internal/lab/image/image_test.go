package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// archive is a parsed image-layout tar.
type archive struct {
	names    []string // entries in archive order
	files    map[string][]byte
	index    ociIndex
	manifest ociManifest
	config   ociConfig
	layer    []byte
}

// parse reads an image-layout tar back and checks everything that ties its
// parts together: each blob's name is its sha256, each descriptor's size
// and digest match a blob, the config's diff_id is the layer's digest.
func parse(t *testing.T, data []byte) *archive {
	t.Helper()
	a := &archive{files: map[string][]byte{}}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: uid %d gid %d mtime %v, want 0 0 epoch", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		a.names = append(a.names, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			if h.Name != "blobs/" && h.Name != "blobs/sha256/" {
				t.Errorf("unexpected directory %s", h.Name)
			}
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			a.files[h.Name] = b
		default:
			t.Errorf("%s: unexpected type %c", h.Name, h.Typeflag)
		}
	}
	want := []string{"oci-layout", "index.json", "blobs/", "blobs/sha256/"}
	if len(a.names) != 7 || strings.Join(a.names[:4], " ") != strings.Join(want, " ") {
		t.Fatalf("archive entries %v, want %v and three blobs", a.names, want)
	}
	if got := string(a.files["oci-layout"]); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %s", got)
	}
	for name, b := range a.files {
		if hexd, ok := strings.CutPrefix(name, "blobs/sha256/"); ok {
			if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != hexd {
				t.Errorf("blob %s has sha256 %x", name, sum)
			}
		}
	}
	blob := func(d ociDescriptor, mediaType string) []byte {
		t.Helper()
		if d.MediaType != mediaType {
			t.Errorf("descriptor %s: media type %s, want %s", d.Digest, d.MediaType, mediaType)
		}
		hexd, ok := strings.CutPrefix(d.Digest, "sha256:")
		b, found := a.files["blobs/sha256/"+hexd]
		if !ok || !found {
			t.Fatalf("descriptor digest %q has no blob", d.Digest)
		}
		if int64(len(b)) != d.Size {
			t.Errorf("descriptor %s: size %d, blob has %d", d.Digest, d.Size, len(b))
		}
		return b
	}
	decode := func(b []byte, v any) {
		t.Helper()
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
	}
	decode(a.files["index.json"], &a.index)
	if a.index.SchemaVersion != 2 || a.index.MediaType != MediaTypeIndex || len(a.index.Manifests) != 1 {
		t.Fatalf("index.json = %s", a.files["index.json"])
	}
	md := a.index.Manifests[0]
	if md.Platform == nil || *md.Platform != (ociPlatform{Architecture: "amd64", OS: "linux"}) {
		t.Errorf("index platform = %+v", md.Platform)
	}
	decode(blob(md, MediaTypeManifest), &a.manifest)
	if a.manifest.SchemaVersion != 2 || a.manifest.MediaType != MediaTypeManifest || len(a.manifest.Layers) != 1 {
		t.Fatalf("manifest = %+v", a.manifest)
	}
	decode(blob(a.manifest.Config, MediaTypeConfig), &a.config)
	a.layer = blob(a.manifest.Layers[0], MediaTypeLayer)
	c := a.config
	if c.Architecture != "amd64" || c.OS != "linux" || c.RootFS.Type != "layers" || len(c.History) != 1 {
		t.Errorf("config = %+v", c)
	}
	if len(c.RootFS.DiffIDs) != 1 || c.RootFS.DiffIDs[0] != a.manifest.Layers[0].Digest {
		t.Errorf("diff_ids %v, want the (uncompressed) layer digest %s", c.RootFS.DiffIDs, a.manifest.Layers[0].Digest)
	}
	return a
}

// layerEntry is one header of a layer, with its content.
type layerEntry struct {
	*tar.Header
	data []byte
}

// entries parses a layer and checks the invariants every layer must have.
func entries(t *testing.T, layer []byte) map[string]layerEntry {
	t.Helper()
	m := map[string]layerEntry{}
	var order []string
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		name := strings.TrimSuffix(h.Name, "/")
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: uid %d gid %d mtime %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		if strings.HasPrefix(name, "/") || (h.Typeflag == tar.TypeDir) != strings.HasSuffix(h.Name, "/") {
			t.Errorf("layer entry name %q (type %c)", h.Name, h.Typeflag)
		}
		if i := strings.LastIndex(name, "/"); i > 0 {
			parent, ok := m[name[:i]]
			if !ok || parent.Typeflag != tar.TypeDir {
				t.Errorf("%s comes before its directory %s", name, name[:i])
			}
		}
		if _, dup := m[name]; dup {
			t.Errorf("%s twice", name)
		}
		m[name] = layerEntry{h, b}
		order = append(order, h.Name)
	}
	if !sort.SliceIsSorted(order, func(i, j int) bool {
		return pathLess("/"+strings.TrimSuffix(order[i], "/"), "/"+strings.TrimSuffix(order[j], "/"))
	}) {
		t.Errorf("layer entries not sorted: %v", order)
	}
	return m
}

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

func write(t *testing.T, ref string, files []File, cfg Config) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, ref, files, cfg); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestWrite(t *testing.T) {
	cfg := Config{Entrypoint: []string{"/usr/bin/hello"}, Cmd: []string{"-x"}, Env: []string{"A=1"}, WorkingDir: "/root"}
	a := parse(t, write(t, "registry.k8s.io/pause:3.10", testFiles, cfg))

	md := a.index.Manifests[0]
	if md.Annotations[AnnotationImageName] != "registry.k8s.io/pause:3.10" || md.Annotations[AnnotationRefName] != "3.10" || len(md.Annotations) != 2 {
		t.Errorf("index annotations = %v", md.Annotations)
	}
	rc := a.config.Config
	if strings.Join(rc.Entrypoint, " ") != "/usr/bin/hello" || strings.Join(rc.Cmd, " ") != "-x" || strings.Join(rc.Env, " ") != "A=1" || rc.WorkingDir != "/root" {
		t.Errorf("runtime config = %+v", rc)
	}

	m := entries(t, a.layer)
	want := map[string]struct {
		typ  byte
		mode int64
	}{
		"usr":                             {tar.TypeDir, 0o755}, // implied
		"usr/bin":                         {tar.TypeDir, 0o755},
		"usr/bin/hello":                   {tar.TypeReg, 0o755},
		"usr/bin/su":                      {tar.TypeReg, 0o4755},
		"bin":                             {tar.TypeDir, 0o755},
		"bin/hi":                          {tar.TypeSymlink, 0o777},
		"tmp":                             {tar.TypeDir, 0o1777},
		"root":                            {tar.TypeDir, 0o700},
		"etc":                             {tar.TypeDir, 0o755},
		"etc/passwd":                      {tar.TypeReg, 0o644},
		"var":                             {tar.TypeDir, 0o755},
		"var/empty":                       {tar.TypeDir, 0o555},
		"a-b":                             {tar.TypeDir, 0o755},
		"a-b/c":                           {tar.TypeReg, 0o600},
		"a":                               {tar.TypeDir, 0o755},
		"a/" + strings.Repeat("long", 40): {tar.TypeReg, 0o644},
	}
	if len(m) != len(want) {
		var got []string
		for n := range m {
			got = append(got, n)
		}
		sort.Strings(got)
		t.Errorf("layer has %d entries %v, want %d", len(m), got, len(want))
	}
	for name, w := range want {
		e, ok := m[name]
		if !ok {
			t.Errorf("layer lacks %s", name)
			continue
		}
		if e.Typeflag != w.typ || e.Mode != w.mode {
			t.Errorf("%s: type %c mode %o, want %c %o", name, e.Typeflag, e.Mode, w.typ, w.mode)
		}
	}
	if l := m["bin/hi"].Linkname; l != "/usr/bin/hello" {
		t.Errorf("bin/hi -> %q", l)
	}
	if d := string(m["usr/bin/hello"].data); d != "#!/bin/sh\necho hello\n" {
		t.Errorf("usr/bin/hello = %q", d)
	}
}

func TestDefaultEnv(t *testing.T) {
	a := parse(t, write(t, "docker.io/local/x:1", testFiles[:1], Config{}))
	rc := a.config.Config
	if len(rc.Env) != 1 || rc.Env[0] != "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" {
		t.Errorf("Env = %q", rc.Env)
	}
	if rc.Entrypoint != nil || rc.Cmd != nil || rc.WorkingDir != "" {
		t.Errorf("runtime config = %+v", rc)
	}
	if got := a.index.Manifests[0].Annotations; got[AnnotationImageName] != "docker.io/local/x:1" || got[AnnotationRefName] != "1" {
		t.Errorf("annotations %v", got)
	}
}

func TestReproducible(t *testing.T) {
	cfg := Config{Entrypoint: []string{"/bin/hi"}}
	a := write(t, "docker.io/local/busybox:1", testFiles, cfg)
	b := write(t, "docker.io/local/busybox:1", testFiles, cfg)
	if !bytes.Equal(a, b) {
		t.Fatal("two writes of the same image differ")
	}
	// Input order does not matter either.
	rev := append([]File(nil), testFiles...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	if c := write(t, "docker.io/local/busybox:1", rev, cfg); !bytes.Equal(a, c) {
		t.Fatal("the file order changes the image")
	}
	// Anything else does.
	if c := write(t, "docker.io/local/busybox:2", testFiles, cfg); bytes.Equal(a, c) {
		t.Fatal("the tag does not change the archive")
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "img.tar")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, "docker.io/local/x:1", testFiles, Config{}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, write(t, "docker.io/local/x:1", testFiles, Config{})) {
		t.Error("WriteFile and Write differ")
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", fi.Mode())
	}
	// A failed write leaves the old file and no temporary behind.
	if err := WriteFile(p, "bad ref", testFiles, Config{}); err == nil {
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
	ok := []File{{Path: "/x", Mode: 0o644, Data: []byte("x")}}
	for _, ref := range []string{
		"busybox:1", "local/busybox:1", "docker.io/local/busybox", "docker.io/busybox:1",
		"docker.io/local/BusyBox:1", "docker.io/local/busybox@sha256:" + strings.Repeat("0", 64),
		"docker.io/local/busybox:", "docker.io/local/busybox:-x", "",
	} {
		if err := Write(io.Discard, ref, ok, Config{}); err == nil {
			t.Errorf("reference %q accepted", ref)
		}
	}
	for _, ref := range []string{"docker.io/library/busybox:1.36", "localhost:5000/a/b:v1", "localhost/x:y", "registry.k8s.io/pause:3.10", "my-registry:5000/x:latest"} {
		if err := Write(io.Discard, ref, ok, Config{}); err != nil {
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
		if err := Write(io.Discard, "docker.io/local/x:1", files, Config{}); err == nil {
			t.Errorf("%s: files accepted", name)
		}
	}
}

func TestStatic(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err == nil {
		files, err := Static("/bin/busybox", "busybox")
		if err != nil {
			t.Fatal(err)
		}
		if len(files) != 1 || files[0].Path != "/busybox" || files[0].Mode != 0o755 || len(files[0].Data) == 0 {
			t.Errorf("Static = %+v", files[0].Path)
		}
	}
	if _, err := Static("/bin/busybox", "a/b"); err == nil {
		t.Error("name with a slash accepted")
	}
	if _, err := Static("/etc/passwd", "passwd"); err == nil {
		t.Error("a text file accepted as a static binary")
	}
	// A dynamically linked binary would fail in the image with a baffling
	// "no such file or directory" (its loader is missing).
	if _, err := os.Stat("/bin/ls"); err == nil {
		if _, err := Static("/bin/ls", "ls"); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
			t.Errorf("Static(/bin/ls) = %v, want a dynamically-linked error", err)
		}
	}
	if _, err := Static(filepath.Join(t.TempDir(), "none"), "none"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing binary: %v", err)
	}
}

func TestBusybox(t *testing.T) {
	const bb = "/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		missing(t, "%s not found (%v): run `apt-get install busybox-static`", bb, err)
	}
	files, err := Busybox(bb)
	if err != nil {
		t.Fatal(err)
	}
	a := parse(t, write(t, "docker.io/local/busybox:1", files, Config{Cmd: []string{"/bin/sh"}}))
	m := entries(t, a.layer)
	if e := m["bin/busybox"]; e.Typeflag != tar.TypeReg || e.Mode != 0o755 || len(e.data) < 100000 {
		t.Errorf("bin/busybox: type %c mode %o size %d", e.Typeflag, e.Mode, len(e.data))
	}
	for _, l := range []string{"bin/sh", "bin/ls", "bin/cat", "bin/sleep", "bin/false"} {
		if e := m[l]; e.Header == nil || e.Typeflag != tar.TypeSymlink || e.Linkname != "/bin/busybox" {
			t.Errorf("%s is not a symlink to /bin/busybox: %+v", l, e.Header)
		}
	}
	for name, mode := range map[string]int64{"tmp": 0o1777, "root": 0o700, "www": 0o755, "etc": 0o755} {
		if e := m[name]; e.Header == nil || e.Typeflag != tar.TypeDir || e.Mode != mode {
			t.Errorf("%s: want a directory with mode %o, got %+v", name, mode, e.Header)
		}
	}
	if p := string(m["etc/passwd"].data); !strings.HasPrefix(p, "root:x:0:0:") || !strings.Contains(p, "\nnobody:x:65534:65534:") {
		t.Errorf("etc/passwd = %q", p)
	}
	if g := string(m["etc/group"].data); !strings.Contains(g, "root:x:0:") || !strings.Contains(g, "nobody:x:65534:") {
		t.Errorf("etc/group = %q", g)
	}
	links := 0
	for _, e := range m {
		if e.Typeflag == tar.TypeSymlink {
			links++
		}
	}
	if links < 100 {
		t.Errorf("only %d applet symlinks", links)
	}
	t.Logf("busybox image: %d layer entries (%d applet symlinks), layer %d bytes", len(m), links, len(a.layer))
}

// missing reports an absent prerequisite: a skip locally, a failure when CI
// is set, so that a misconfigured CI machine cannot pass by skipping.
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format+" (failing because CI is set)", args...)
	}
	t.Skipf(format, args...)
}

// TestContainerd imports images built here into a private containerd (the
// version the lab's kubelets use) and runs them with runc: a busybox shell,
// then the lab's pause binary as PID 1, which must reap an orphan and exit 0
// on SIGTERM.
func TestContainerd(t *testing.T) {
	if os.Geteuid() != 0 {
		missing(t, "test needs root (it runs containerd and containers)")
	}
	for _, bin := range []string{"/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/containerd-shim-runc-v2", "/bin/busybox"} {
		if _, err := os.Stat(bin); err != nil {
			missing(t, "%v: run `apt-get install containerd runc busybox-static`", err)
		}
	}
	if _, err := exec.LookPath("runc"); err != nil {
		missing(t, "runc not found (%v): run `apt-get install runc`", err)
	}
	c := startContainerd(t)
	// Container IDs name cgroups, which are machine-wide: unique per run.
	shellID, pauseID := fmt.Sprintf("image-test-sh-%d", os.Getpid()), fmt.Sprintf("image-test-pause-%d", os.Getpid())

	start := time.Now()
	files, err := Busybox("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	const bbRef = "docker.io/local/busybox:1"
	bbTar := filepath.Join(c.dir, "busybox.tar")
	if err := WriteFile(bbTar, bbRef, files, Config{Cmd: []string{"/bin/sh"}}); err != nil {
		t.Fatal(err)
	}
	t.Logf("busybox image built in %v", time.Since(start).Round(time.Millisecond))
	c.importImage(bbTar, bbRef)

	start = time.Now()
	out := c.ctr("run", "--rm", "--snapshotter", c.snapshotter, bbRef, shellID,
		"/bin/sh", "-c", `echo ok $(id -u) $(stat -c %a /tmp) $(readlink /bin/sh) $(pwd)`)
	if got, want := strings.TrimSpace(out), "ok 0 1777 /bin/busybox /"; got != want {
		t.Fatalf("busybox container printed %q, want %q", got, want)
	}
	t.Logf("busybox container ran in %v", time.Since(start).Round(time.Millisecond))

	// The pause image carries busybox too, to look inside the pod.
	pause := filepath.Join(c.dir, "pause")
	build := exec.Command("go", "build", "-o", pause, "kubeipam/cmd/kube-ipam-lab-pause")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build kube-ipam-lab-pause: %v\n%s", err, b)
	}
	pf, err := Static(pause, "pause")
	if err != nil {
		t.Fatal(err)
	}
	const pauseRef = "docker.io/local/kube-ipam-lab-pause:test"
	pauseTar := filepath.Join(c.dir, "pause.tar")
	if err := WriteFile(pauseTar, pauseRef, append(files, pf...), Config{Entrypoint: []string{"/pause"}}); err != nil {
		t.Fatal(err)
	}
	c.importImage(pauseTar, pauseRef)

	run := exec.Command("/usr/bin/ctr", "-a", c.sock, "-n", "k8s.io", "run", "--rm", "--snapshotter", c.snapshotter, pauseRef, pauseID)
	var runOut bytes.Buffer
	run.Stdout, run.Stderr = &runOut, &runOut
	run.WaitDelay = 5 * time.Second // should a shim hold the output pipe
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	var runErr error
	runDone := make(chan struct{})
	go func() { runErr = run.Wait(); close(runDone) }()
	t.Cleanup(func() { // before containerd's cleanup (LIFO)
		select {
		case <-runDone:
		default:
			_ = run.Process.Kill()
			<-runDone
		}
	})
	c.waitFor("the pause task to run", func() bool {
		for _, l := range strings.Split(c.ctr("tasks", "ls"), "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == pauseID && f[2] == "RUNNING" {
				return true
			}
		}
		return false
	})
	execN := 0
	inPod := func(args ...string) string {
		execN++
		return c.ctr(append([]string{"tasks", "exec", "--exec-id", fmt.Sprintf("e%d", execN), pauseID}, args...)...)
	}
	if got := inPod("/bin/cat", "/proc/1/cmdline"); got != "/pause\x00" {
		t.Fatalf("PID 1 of the pod is %q, want /pause", got)
	}
	// The shell exits at once: its sleep is reparented to PID 1, which must
	// reap it when it exits, or it stays a zombie.
	inPod("/bin/sh", "-c", "/bin/sleep 1 </dev/null >/dev/null 2>&1 & exit 0")
	sawSleep := false
	c.waitFor("the orphaned sleep to be reaped", func() bool {
		stat := inPod("/bin/sh", "-c", "cat /proc/[0-9]*/stat")
		if strings.Contains(stat, "(sleep) S") {
			sawSleep = true
		}
		return !strings.Contains(stat, "(sleep)")
	})
	if !sawSleep {
		t.Log("the sleep ended before the first look: reaping not observed in flight")
	}
	c.ctr("tasks", "kill", "-s", "SIGTERM", pauseID)
	select {
	case <-runDone:
		if runErr != nil {
			t.Fatalf("pause after SIGTERM: %v (want exit 0)\n%s", runErr, runOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("pause still running 30s after SIGTERM\n%s", runOut.String())
	}
}

// containerd is a private containerd daemon, all of whose state lives in a
// test's temporary directory.
type containerd struct {
	t                      *testing.T
	dir, sock, snapshotter string
	cmd                    *exec.Cmd
	exited                 chan struct{}
}

func startContainerd(t *testing.T) *containerd {
	t.Helper()
	dir := t.TempDir()
	c := &containerd{t: t, dir: dir, sock: filepath.Join(dir, "containerd.sock"), exited: make(chan struct{})}
	if len(c.sock)+len(".ttrpc") >= 108 {
		t.Fatalf("socket path %s too long for a unix socket", c.sock)
	}
	// The CRI plugin is off: no kubelet here, and it would want CNI.
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.sock, c.sock+".ttrpc", filepath.Join(dir, "opt"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "containerd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	c.cmd = exec.Command("/usr/bin/containerd", "--config", cfgPath, "--log-level", "info")
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	// Pdeathsig kills containerd should the test binary die without its
	// cleanups. It fires when the forking *thread* exits, so fork from a
	// goroutine that holds its thread until containerd has exited.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := c.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = c.cmd.Wait()
		close(c.exited)
	}()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				if len(b) > 8000 {
					b = b[len(b)-8000:]
				}
				t.Logf("containerd log (tail):\n%s", b)
			}
		}
	})

	begin := time.Now()
	c.waitFor("containerd to serve", func() bool {
		select {
		case <-c.exited:
			t.Fatalf("containerd exited: %v", c.cmd.ProcessState)
		default:
		}
		return exec.Command("/usr/bin/ctr", "-a", c.sock, "version").Run() == nil
	})
	t.Logf("containerd up in %v", time.Since(begin).Round(time.Millisecond))

	// overlayfs does not stack on an overlay root (CI containers): fall
	// back to the native snapshotter there.
	c.snapshotter = "native"
	for _, l := range strings.Split(c.ctr("plugins", "ls"), "\n") {
		if f := strings.Fields(l); len(f) >= 4 && f[0] == "io.containerd.snapshotter.v1" && f[1] == "overlayfs" && f[len(f)-1] == "ok" {
			c.snapshotter = "overlayfs"
		}
	}
	t.Logf("snapshotter %s", c.snapshotter)
	return c
}

// ctr runs ctr against c in namespace k8s.io, failing the test on error.
func (c *containerd) ctr(args ...string) string {
	c.t.Helper()
	out, err := c.tryCtr(args...)
	if err != nil {
		c.t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (c *containerd) tryCtr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/ctr", append([]string{"-a", c.sock, "-n", "k8s.io"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// importImage imports an image-layout tar and checks that containerd lists
// it under ref with the manifest digest of the archive.
func (c *containerd) importImage(tarPath, ref string) {
	c.t.Helper()
	data, err := os.ReadFile(tarPath)
	if err != nil {
		c.t.Fatal(err)
	}
	digest := parse(c.t, data).index.Manifests[0].Digest
	start := time.Now()
	c.ctr("images", "import", "--snapshotter", c.snapshotter, tarPath)
	c.t.Logf("imported %s (%d bytes) in %v", ref, len(data), time.Since(start).Round(time.Millisecond))
	ls := c.ctr("images", "ls")
	for _, l := range strings.Split(ls, "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[0] == ref {
			if f[2] != digest {
				c.t.Fatalf("%s imported with digest %s, the archive's manifest is %s", ref, f[2], digest)
			}
			return
		}
	}
	c.t.Fatalf("ctr images ls does not list %s:\n%s", ref, ls)
}

func (c *containerd) waitFor(what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop removes every task and container, kills any shim left (they outlive
// containerd), stops containerd and unmounts whatever remains under c.dir.
func (c *containerd) stop() {
	t := c.t
	select {
	case <-c.exited:
	default:
		out, _ := c.tryCtr("tasks", "ls", "-q")
		for _, id := range strings.Fields(out) {
			_, _ = c.tryCtr("tasks", "kill", "-a", "-s", "SIGKILL", id)
			for i := 0; i < 50; i++ {
				if o, err := c.tryCtr("tasks", "delete", "-f", id); err == nil || strings.Contains(o, "not found") {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		out, _ = c.tryCtr("containers", "ls", "-q")
		for _, id := range strings.Fields(out) {
			if o, err := c.tryCtr("containers", "rm", id); err != nil {
				t.Logf("ctr containers rm %s: %v\n%s", id, err, o)
			}
		}
	}
	// Shims run detached from containerd; they are ours if their command
	// line names our socket. Kill their children (a container's processes)
	// first, then the shims.
	for _, shim := range pidsWhere(func(pid int, cmdline string, _ int) bool { return strings.Contains(cmdline, c.sock) }) {
		for _, child := range pidsWhere(func(_ int, _ string, ppid int) bool { return ppid == shim }) {
			t.Logf("killing process %d left by shim %d", child, shim)
			_ = syscall.Kill(child, syscall.SIGKILL)
		}
		t.Logf("killing shim %d", shim)
		_ = syscall.Kill(shim, syscall.SIGKILL)
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	// Rootfs and snapshot mounts: deepest first, lazily, or the temporary
	// directory cannot be removed.
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Log(err)
		return
	}
	var mounts []string
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], c.dir+"/") {
			mounts = append(mounts, f[4])
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			t.Logf("unmount %s: %v", m, err)
		}
	}
}

// pidsWhere returns the processes for which keep is true.
func pidsWhere(keep func(pid int, cmdline string, ppid int) bool) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err1 := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		stat, err2 := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err1 != nil || err2 != nil {
			continue
		}
		// stat: pid (comm) state ppid ...; comm may hold spaces.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		if keep(pid, string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})), ppid) {
			pids = append(pids, pid)
		}
	}
	return pids
}
