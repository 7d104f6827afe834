package image

import (
	"bytes"
	"context"
	"fmt"
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

	"kubeipam/internal/oci"
)

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
	// oci.Static's checks (ELF, static, architecture) are tested there.
	if _, err := os.Stat("/bin/ls"); err == nil {
		if _, err := Static("/bin/ls", "ls"); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
			t.Errorf("Static(/bin/ls) = %v, want a dynamically-linked error", err)
		}
	}
}

// layer reads back the single lab image of an archive, as oci.Read checks
// it, with its layer's files by path (no leading slash).
func layer(t testing.TB, data []byte) (*oci.Archive, map[string]File) {
	t.Helper()
	a, err := oci.Read(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Images) != 1 || a.Images[0].Platform != Platform {
		t.Fatalf("lab archive %s holds %d images, want one for %s", a.Ref, len(a.Images), Platform)
	}
	m := map[string]File{}
	for _, f := range a.Images[0].Files {
		m[f.Path[1:]] = f
	}
	return a, m
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
	var buf bytes.Buffer
	if err := Write(&buf, "docker.io/local/busybox:1", files, Config{Cmd: []string{"/bin/sh"}}); err != nil {
		t.Fatal(err)
	}
	_, m := layer(t, buf.Bytes())
	if e := m["bin/busybox"]; e.Mode != 0o755 || len(e.Data) < 100000 {
		t.Errorf("bin/busybox: mode %v size %d", e.Mode, len(e.Data))
	}
	for _, l := range []string{"bin/sh", "bin/ls", "bin/cat", "bin/sleep", "bin/false"} {
		if e := m[l]; e.Mode.Type() != fs.ModeSymlink || e.Link != "/bin/busybox" {
			t.Errorf("%s is not a symlink to /bin/busybox: %v %q", l, e.Mode, e.Link)
		}
	}
	for name, mode := range map[string]fs.FileMode{"tmp": fs.ModeDir | fs.ModeSticky | 0o777, "root": fs.ModeDir | 0o700, "www": fs.ModeDir | 0o755, "etc": fs.ModeDir | 0o755} {
		if e := m[name]; e.Mode != mode {
			t.Errorf("%s: mode %v, want %v", name, e.Mode, mode)
		}
	}
	if p := string(m["etc/passwd"].Data); !strings.HasPrefix(p, "root:x:0:0:") || !strings.Contains(p, "\nnobody:x:65534:65534:") {
		t.Errorf("etc/passwd = %q", p)
	}
	if g := string(m["etc/group"].Data); !strings.Contains(g, "root:x:0:") || !strings.Contains(g, "nobody:x:65534:") {
		t.Errorf("etc/group = %q", g)
	}
	links := 0
	for _, e := range m {
		if e.Mode.Type() == fs.ModeSymlink {
			links++
		}
	}
	if links < 100 {
		t.Errorf("only %d applet symlinks", links)
	}
	t.Logf("busybox image: %d layer entries (%d applet symlinks), archive %d bytes", len(m), links, buf.Len())
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

	// A multi-platform archive with gzip layers (an image index, as make
	// release writes): containerd names it after index.json's entry, whose
	// digest is the index's, and runs the host's platform as the image's
	// user.
	const multiRef = "docker.io/local/multi:1"
	multiTar := filepath.Join(c.dir, "multi.tar")
	arm := oci.Platform{OS: "linux", Architecture: "arm64"}
	user := Config{Cmd: []string{"/bin/sh"}, User: "65532:65532"}
	if err := oci.WriteFile(multiTar, multiRef,
		oci.Image{Platform: Platform, Files: files, Config: user, Gzip: true},
		oci.Image{Platform: arm, Files: []File{{Path: "/bin/sh", Mode: 0o755, Data: []byte("not for this host")}}, Config: user, Gzip: true},
	); err != nil {
		t.Fatal(err)
	}
	c.importImage(multiTar, multiRef)
	if got := strings.TrimSpace(c.ctr("run", "--rm", "--snapshotter", c.snapshotter, multiRef, shellID+"-multi", "/bin/sh", "-c", "id -u")); got != "65532" {
		t.Fatalf("multi-platform image ran as uid %q, want the image's user 65532", got)
	}

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
	a, err := oci.Read(data)
	if err != nil {
		c.t.Fatal(err)
	}
	digest := a.Digest
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
