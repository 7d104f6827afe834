package testenv

import (
	"syscall"
	"testing"
)

// Faults of the kube-apiserver of StartKube, for tests of how clients
// behave while it hangs or is gone. Its process is signalled by PID, never
// by name.

// APIServerPID is the process ID of the kube-apiserver (0 once it has been
// stopped by StopAPIServer).
func (k *Kube) APIServerPID() int {
	if k.apiserver == nil || k.apiserver.stopped {
		return 0
	}
	return k.apiserver.cmd.Process.Pid
}

// FreezeAPIServer stops the kube-apiserver with SIGSTOP: its connections
// stay open and the kernel still accepts new ones, but nothing is
// answered, as with a server stuck in a long pause. ThawAPIServer (or the
// end of the test) resumes it.
func (k *Kube) FreezeAPIServer(t testing.TB) {
	t.Helper()
	p := k.runningAPIServer(t, "FreezeAPIServer")
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP kube-apiserver (pid %d): %v", p.cmd.Process.Pid, err)
	}
	// Registered after StartKube's cleanup of the process, so it runs
	// first: a stopped process would not act on that cleanup's SIGTERM.
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
		}
	})
}

// ThawAPIServer resumes a frozen kube-apiserver with SIGCONT.
func (k *Kube) ThawAPIServer(t testing.TB) {
	t.Helper()
	p := k.runningAPIServer(t, "ThawAPIServer")
	if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("SIGCONT kube-apiserver (pid %d): %v", p.cmd.Process.Pid, err)
	}
}

// StopAPIServer stops the kube-apiserver for good (SIGTERM, SIGKILL after
// 10s) and waits until it has exited; connections to Server are then
// refused. WaitFor no longer works on k afterwards (it reports the exit).
func (k *Kube) StopAPIServer(t testing.TB) {
	t.Helper()
	p := k.runningAPIServer(t, "StopAPIServer")
	_ = p.cmd.Process.Signal(syscall.SIGCONT) // a frozen one acts on SIGTERM only when resumed
	p.stop()
}

func (k *Kube) runningAPIServer(t testing.TB, what string) *proc {
	t.Helper()
	p := k.apiserver
	if p == nil || p.stopped {
		t.Fatalf("%s: the kube-apiserver is not running", what)
	}
	select {
	case <-p.exited:
		t.Fatalf("%s: the kube-apiserver exited: %v (log %s)", what, p.cmd.ProcessState, p.log)
	default:
	}
	return p
}
