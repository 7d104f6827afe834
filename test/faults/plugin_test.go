package faults

// The plugin runner: the real binary, one process per call as a container
// runtime runs it, optionally inside a network namespace, killed with
// SIGKILL (by PID) after a delay or right after its claim committed.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"kubeipam/internal/testenv"
)

// holdEnv names the directory where the plugin, right after its own claim
// transaction committed, creates <containerID>_<ifname> and waits until
// the file is removed (or its deadline passes) before printing the result.
const holdEnv = "KUBE_IPAM_TEST_HOLD_AFTER_COMMIT"

type killMode int

const (
	noKill          killMode = iota
	killAfterDelay           // SIGKILL after call.delay, if still running
	killAfterCommit          // SIGKILL once the hold file appears
	holdAfterCommit          // once the hold file appears, call onHold, then let the process go on
)

func (k killMode) String() string {
	return [...]string{"none", "random moment", "after commit", "held after commit"}[k]
}

// call is one CNI invocation.
type call struct {
	verb, cid, ifname string
	args              string // CNI_ARGS
	kill              killMode
	delay             time.Duration
	onHold            func() // holdAfterCommit: runs while the process waits
}

// result is what the runtime sees of one process.
type result struct {
	call
	ips    []string // ADD's addresses, without prefix length
	code   int      // 0 success; the CNI error code; -1 unusable output; -2 killed
	msg    string
	killed bool // ended by our SIGKILL
	held   bool // the after-commit hold file appeared (the claim committed)
	hung   bool // still running after the runner's guard: killed, reported
	start  time.Time
	end    time.Time
	stderr string
}

func (r *result) ok() bool                     { return r.code == 0 }
func (r *result) dur() time.Duration           { return r.end.Sub(r.start) }
func (r *result) startsAfter(t time.Time) bool { return !r.start.Before(t) }

func (r *result) String() string {
	s := fmt.Sprintf("%s %s", r.verb, r.cid)
	switch {
	case r.killed:
		s += fmt.Sprintf(" killed (%s) after %v", r.kill, r.dur().Round(time.Millisecond))
	case r.ok():
		s += fmt.Sprintf(" ok %v after %v", r.ips, r.dur().Round(time.Millisecond))
	default:
		s += fmt.Sprintf(" failed with code %d after %v: %s", r.code, r.dur().Round(time.Millisecond), r.msg)
	}
	if r.hung {
		s += " (hung: killed by the test's guard)"
	}
	return s
}

// plugin runs the kube-ipam binary.
type plugin struct {
	t     *testing.T
	bin   string
	netns ns.NetNS // nil: the test's own
	conf  []byte
	env   []string // added to every call's environment
	hold  *holdDir
	// guard: a process running longer is a hang; it is killed and the
	// result marked hung. Well above any timeout the tests configure.
	guard time.Duration

	procs, killed atomic.Int64
	running       sync.WaitGroup
}

func newPlugin(t *testing.T, bin string, netns ns.NetNS, conf []byte) *plugin {
	p := &plugin{t: t, bin: bin, netns: netns, conf: conf, guard: 60 * time.Second}
	// Every process has ended before the test's namespaces and dirs go.
	t.Cleanup(p.running.Wait)
	return p
}

// run starts one process, applies the kill plan, waits for it and parses
// what it printed. It never fails the test: the caller judges the result.
func (p *plugin) run(c call) *result {
	if c.ifname == "" {
		c.ifname = "net1"
	}
	r := &result{call: c}
	cmd := exec.Command(p.bin)
	cmd.Env = append([]string{
		"CNI_COMMAND=" + c.verb, "CNI_CONTAINERID=" + c.cid, "CNI_NETNS=/var/run/netns/" + c.cid,
		"CNI_NETNS_OVERRIDE=1", "CNI_IFNAME=" + c.ifname, "CNI_PATH=/opt/cni/bin",
		"CNI_ARGS=" + c.args, "PATH=" + os.Getenv("PATH"),
	}, p.env...)
	var held <-chan struct{}
	holdName := c.cid + "_" + c.ifname
	if c.kill == killAfterCommit || c.kill == holdAfterCommit {
		cmd.Env = append(cmd.Env, holdEnv+"="+p.hold.dir)
		held = p.hold.expect(holdName)
		defer p.hold.forget(holdName)
	}
	cmd.Stdin = bytes.NewReader(p.conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	p.running.Add(1)
	defer p.running.Done()
	r.start = time.Now()
	proc, err := testenv.StartProcess(cmd, p.netns)
	if err != nil {
		r.end, r.code, r.msg = time.Now(), -1, "starting the plugin: "+err.Error()
		return r
	}
	p.procs.Add(1)
	var hung atomic.Bool
	guard := time.AfterFunc(p.guard, func() {
		hung.Store(true)
		_ = proc.Signal(syscall.SIGKILL)
	})
	switch c.kill {
	case killAfterCommit:
		select {
		case <-held:
			r.held = true
			_ = proc.Signal(syscall.SIGKILL)
		case <-proc.Exited:
		}
	case holdAfterCommit:
		select {
		case <-held:
			r.held = true
			c.onHold()
			_ = os.Remove(filepath.Join(p.hold.dir, holdName))
		case <-proc.Exited:
		}
	case killAfterDelay:
		tm := time.NewTimer(c.delay)
		select {
		case <-tm.C:
			_ = proc.Signal(syscall.SIGKILL)
		case <-proc.Exited:
			tm.Stop()
		}
	}
	<-proc.Exited
	r.end = time.Now()
	guard.Stop()
	r.hung = hung.Load()
	r.stderr = stderr.String()
	if r.held {
		_ = os.Remove(filepath.Join(p.hold.dir, holdName))
	}
	if proc.KilledBy(syscall.SIGKILL) {
		if !r.hung {
			r.killed = true
			p.killed.Add(1)
		}
		r.code, r.msg = -2, "killed"
		return r
	}
	r.parse(proc.Wait().ExitStatus(), stdout.Bytes())
	return r
}

// parse applies the CNI contract: exit 0 with a result (ADD: with
// addresses), or a non-zero exit with {"code":N,"msg":...} on stdout.
func (r *result) parse(exit int, out []byte) {
	if exit != 0 {
		var e struct {
			Code *int   `json:"code"`
			Msg  string `json:"msg"`
		}
		if err := json.Unmarshal(out, &e); err != nil || e.Code == nil || e.Msg == "" {
			r.code, r.msg = -1, fmt.Sprintf("exit %d without a CNI error on stdout: %q (stderr %q)", exit, out, r.stderr)
			return
		}
		r.code, r.msg = *e.Code, e.Msg
		if r.code == 0 {
			r.code = -1
			r.msg = fmt.Sprintf("exit %d with code 0: %s", exit, e.Msg)
		}
		return
	}
	if r.verb != "ADD" {
		return
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) == 0 {
		r.code, r.msg = -1, fmt.Sprintf("exit 0 without addresses: %q (%v)", out, err)
		return
	}
	for _, ip := range res.IPs {
		a, _, _ := strings.Cut(ip.Address, "/")
		r.ips = append(r.ips, a)
	}
}

// holdDir is the after-commit hook's directory, watched with inotify so
// that a test kills a process the moment its hold file appears.
type holdDir struct {
	dir     string
	f       *os.File
	mu      sync.Mutex
	waiting map[string]chan struct{}
}

func newHoldDir(t *testing.T) *holdDir {
	t.Helper()
	h := &holdDir{dir: t.TempDir(), waiting: map[string]chan struct{}{}}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatalf("inotify: %v", err)
	}
	// Non-blocking, so reads go through Go's poller and Close ends them.
	h.f = os.NewFile(uintptr(fd), "inotify")
	if _, err := unix.InotifyAddWatch(fd, h.dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		h.f.Close()
		t.Fatalf("inotify watch %s: %v", h.dir, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, err := h.f.Read(buf)
			if err != nil {
				return
			}
			// struct inotify_event: wd, mask, cookie, len (4 bytes each), name.
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				l := int(binary.NativeEndian.Uint32(buf[off+12:]))
				name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+l]
				h.fire(string(bytes.TrimRight(name, "\x00")))
				off += unix.SizeofInotifyEvent + l
			}
		}
	}()
	t.Cleanup(func() { h.f.Close(); <-done })
	return h
}

// expect returns a channel closed once the file name exists in the dir.
func (h *holdDir) expect(name string) <-chan struct{} {
	ch := make(chan struct{})
	h.mu.Lock()
	h.waiting[name] = ch
	h.mu.Unlock()
	if _, err := os.Stat(filepath.Join(h.dir, name)); err == nil {
		h.fire(name)
	}
	return ch
}

func (h *holdDir) forget(name string) {
	h.mu.Lock()
	delete(h.waiting, name)
	h.mu.Unlock()
}

func (h *holdDir) fire(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ch := h.waiting[name]; ch != nil {
		close(ch)
		delete(h.waiting, name)
	}
}

// netConf is a macvlan network config with a kube-ipam ipam section.
func netConf(name string, ipam map[string]any) []byte {
	ipam["type"] = "kube-ipam"
	b, err := json.Marshal(map[string]any{"cniVersion": "0.3.1", "name": name, "type": "macvlan", "master": "eth0", "ipam": ipam})
	if err != nil {
		panic(err)
	}
	return b
}

// ctl runs kube-ipamctl (inside netns when not nil) and returns its output
// and exit status.
func ctl(t *testing.T, bin string, netns ns.NetNS, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	p, err := testenv.StartProcess(cmd, netns)
	if err != nil {
		t.Fatalf("kube-ipamctl: %v", err)
	}
	ws := p.Wait()
	if ws.Signaled() {
		return out.String(), -1
	}
	return out.String(), ws.ExitStatus()
}

// check runs `kube-ipamctl check` and fails the test unless it is clean.
func check(t *testing.T, bin string, netns ns.NetNS, confFile string) {
	t.Helper()
	start := time.Now()
	out, code := ctl(t, bin, netns, "check", "--config", confFile, "--timeout", "2m")
	if code != 0 {
		t.Errorf("kube-ipamctl check exited %d (want 0: the store is consistent):\n%s", code, tail(out, 4000))
		return
	}
	t.Logf("kube-ipamctl check: clean in %v", time.Since(start).Round(time.Millisecond))
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
