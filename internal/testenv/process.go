package testenv

import (
	"bytes"
	"fmt"
	"os/exec"
	"syscall"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Process is a child process started by StartProcess.
type Process struct {
	Cmd *exec.Cmd
	// Exited is closed once the process has exited and been reaped; then
	// Cmd.ProcessState is set.
	Exited <-chan struct{}
}

// StartProcess starts cmd, inside network namespace n when n is not nil,
// with Pdeathsig (see startPinned): it dies with the test binary. Unlike the
// servers of this package it is not stopped at the end of the test; the
// caller waits for it (or signals it by PID).
func StartProcess(cmd *exec.Cmd, n ns.NetNS) (*Process, error) {
	path := ""
	if n != nil {
		path = n.Path()
	}
	exited, err := startPinnedIn(cmd, path)
	if err != nil {
		return nil, err
	}
	return &Process{Cmd: cmd, Exited: exited}, nil
}

// PID is the process ID.
func (p *Process) PID() int { return p.Cmd.Process.Pid }

// Signal sends sig to the process by PID unless it has been reaped (the PID
// may then belong to another process).
func (p *Process) Signal(sig syscall.Signal) error {
	select {
	case <-p.Exited:
		return fmt.Errorf("process %d has exited", p.PID())
	default:
	}
	return p.Cmd.Process.Signal(sig)
}

// Wait waits until the process has exited and returns its wait status.
func (p *Process) Wait() syscall.WaitStatus {
	<-p.Exited
	return p.Cmd.ProcessState.Sys().(syscall.WaitStatus)
}

// KilledBy reports whether the process ended because of signal sig (it
// must have exited).
func (p *Process) KilledBy(sig syscall.Signal) bool {
	ws := p.Wait()
	return ws.Signaled() && ws.Signal() == sig
}

// RunIn runs a command to completion inside network namespace n (nil: the
// caller's) with stdin and returns its combined output.
func RunIn(n ns.NetNS, stdin string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdin = bytes.NewBufferString(stdin)
	cmd.Stdout, cmd.Stderr = &out, &out
	p, err := StartProcess(cmd, n)
	if err != nil {
		return "", err
	}
	if ws := p.Wait(); ws.ExitStatus() != 0 || ws.Signaled() {
		return out.String(), fmt.Errorf("%s %v: %v: %s", name, args, p.Cmd.ProcessState, out.String())
	}
	return out.String(), nil
}
