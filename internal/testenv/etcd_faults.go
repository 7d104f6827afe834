package testenv

import (
	"syscall"
	"testing"
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
