package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc is a daemon the lab started. It is recorded in the state file so that
// `kube-ipam-lab down`, run by another process, stops exactly it: the PID is
// only signalled while /proc/<pid>/cmdline still contains Marker.
type Proc struct {
	Name   string `json:"name"`
	PID    int    `json:"pid"`
	Marker string `json:"marker"`
	Log    string `json:"log"`
}

// startDaemon starts argv with its output in <Dir>/logs/<name>.log, in its
// own session (a Ctrl-C in the terminal reaches the lab, which then stops
// the daemons in order, instead of every daemon at once). With a node, it
// runs in the node's namespaces (nodeArgv).
func (l *Lab) startDaemon(name string, n *Node, env []string, argv ...string) (*Proc, error) {
	if n != nil {
		argv = n.enter(argv...)
	}
	logPath := filepath.Join(l.opts.Dir, "logs", name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Proc{Name: name, PID: cmd.Process.Pid, Marker: l.opts.Dir, Log: logPath}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	l.reap[p.PID] = done
	l.state.Procs = append(l.state.Procs, *p)
	if err := l.saveState(); err != nil {
		return p, err
	}
	return p, nil
}

// alive reports whether p still runs. For a daemon this process started,
// its exit is known exactly (and /proc/<pid>/cmdline may still show the
// lab's own command line for a moment after fork); otherwise the PID must
// still be the daemon, which cmdline tells.
func (l *Lab) alive(p Proc) bool {
	if done, ok := l.reap[p.PID]; ok {
		select {
		case <-done:
			return false
		default:
			return true
		}
	}
	return p.running()
}

func (p Proc) running() bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
	if err != nil || !bytes.Contains(b, []byte(p.Marker)) {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID))
	if err != nil {
		return false
	}
	// Field 3, after the parenthesised command, is the state; Z is a
	// zombie waiting for its parent (gone already as far as we care).
	if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
		return false
	}
	return true
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs.
func (l *Lab) stop(p Proc, grace time.Duration) {
	if !l.alive(p) {
		return
	}
	_ = syscall.Kill(p.PID, syscall.SIGTERM)
	if l.waitGone(p, grace) {
		return
	}
	l.logf("  %s (pid %d) ignored SIGTERM for %s: SIGKILL", p.Name, p.PID, grace)
	_ = syscall.Kill(p.PID, syscall.SIGKILL)
	l.waitGone(p, 10*time.Second)
}

func (l *Lab) waitGone(p Proc, d time.Duration) bool {
	done := l.reap[p.PID]
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if done != nil {
			select {
			case <-done:
				return true
			case <-time.After(100 * time.Millisecond):
			}
		} else {
			time.Sleep(100 * time.Millisecond)
		}
		if !l.alive(p) {
			return true
		}
	}
	return false
}

// tail returns the last lines of a daemon's log, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// run runs a short command and returns its combined output; the error
// carries the output, so callers can report it as is.
func run(ctx context.Context, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// poll calls cond every interval until it returns true or an error, or
// until timeout; the last "not yet" reason is part of the timeout error.
func poll(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	for {
		ok, why, err := cond()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		last = why
		select {
		case <-ctx.Done():
			if last != "" {
				return fmt.Errorf("%s: not done after %s: %s", what, timeout, last)
			}
			return fmt.Errorf("%s: not done after %s", what, timeout)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// shimsOf lists containerd shims serving the containerd at sock: they
// outlive containerd when their containers were not deleted.
func shimsOf(sock string) []int {
	return pidsWhere(func(args []string) bool {
		if !strings.Contains(args[0], "containerd-shim") {
			return false
		}
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-address" && args[i+1] == sock {
				return true
			}
		}
		return false
	})
}

// pidsWhere lists the processes whose command line (argv) matches.
func pidsWhere(match func(args []string) bool) []int {
	var pids []int
	for _, e := range names("/proc") {
		pid, err := strconv.Atoi(e)
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e, "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if match(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

var errNotRoot = errors.New("the lab needs root (network namespaces, containerd, kubelet): run it as root")
