package testenv

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Faults of the single-member Etcd of StartEtcd, for tests of how clients
// behave while it hangs or is gone. Stop and Restart (etcd.go) kill and
// revive it.

// PID is the process ID of the running server (0 when it is stopped).
func (e *Etcd) PID() int {
	if e.cmd == nil {
		return 0
	}
	return e.cmd.Process.Pid
}

// Freeze stops the server with SIGSTOP: connections stay open and the
// kernel still accepts new ones, but nothing is answered, as with a server
// stuck on a disk or in a long pause. Thaw (or the end of the test) resumes it.
func (e *Etcd) Freeze(t testing.TB) {
	t.Helper()
	if e.cmd == nil {
		t.Fatal("Freeze: etcd is not running")
	}
	if err := e.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP etcd (pid %d): %v", e.cmd.Process.Pid, err)
	}
	// Registered after StartEtcd's cleanup, so it runs first: a stopped
	// process would ignore that cleanup's SIGTERM.
	p := e.cmd.Process
	t.Cleanup(func() { _ = p.Signal(syscall.SIGCONT) })
	// The signal is delivered asynchronously: until every thread has
	// stopped, etcd may still answer (a loaded machine showed a client
	// connecting after Freeze had returned).
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := allThreadsStopped(p.Pid)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Freeze: etcd (pid %d) did not stop within 10s: %v", p.Pid, err)
		}
		time.Sleep(time.Millisecond) // polling a condition: every thread stopped
	}
}

// allThreadsStopped is nil when every thread of pid is in state T
// (stopped by a signal), else says which one is not.
func allThreadsStopped(pid int) error {
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(stats) == 0 {
		return fmt.Errorf("no threads under /proc/%d/task (%v)", pid, err)
	}
	for _, f := range stats {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		// The state follows the command name, which is in parentheses.
		i := bytes.LastIndexByte(data, ')')
		if i < 0 || i+2 >= len(data) {
			return fmt.Errorf("%s: %q", f, data)
		}
		if st := data[i+2]; st != 'T' {
			return fmt.Errorf("%s: state %c", f, st)
		}
	}
	return nil
}

// Thaw resumes a frozen server with SIGCONT.
func (e *Etcd) Thaw(t testing.TB) {
	t.Helper()
	if e.cmd == nil {
		t.Fatal("Thaw: etcd is not running")
	}
	if err := e.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("SIGCONT etcd (pid %d): %v", e.cmd.Process.Pid, err)
	}
}
