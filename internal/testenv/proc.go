package testenv

import (
	"os/exec"
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"
)

// startPinned starts cmd with Pdeathsig, so that it is killed if the test
// binary dies without running its cleanups (a -timeout panic, say), and
// returns a channel closed once cmd has exited and been reaped.
//
// Pdeathsig fires when the *thread* that forked the child exits, not the
// process. Go retires an OS thread whenever a goroutine locked to it returns
// without unlocking, which network-namespace code does on purpose
// (plugins/pkg/testutils.NewNS, a failed ns.Do). A child forked from an
// ordinary thread could therefore be killed at a random moment of the test.
// So the child is forked from a goroutine that keeps its thread locked, and
// so out of the scheduler's reach, until the child has exited.
func startPinned(cmd *exec.Cmd) (<-chan struct{}, error) { return startPinnedIn(cmd, "") }

// startPinnedIn is startPinned with the child started inside the network
// namespace mounted at nsPath ("" for the caller's): the forking thread
// switches into it first, and a child inherits its forking thread's
// namespace. That thread is never switched back; since its goroutine ends
// still locked to it, Go retires the thread once the child has exited.
func startPinnedIn(cmd *exec.Cmd, nsPath string) (<-chan struct{}, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	errc := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if nsPath == "" {
			defer runtime.UnlockOSThread()
		} else if err := enterNS(nsPath); err != nil {
			errc <- err // the thread may be half switched: it stays locked and is retired
			return
		}
		if err := cmd.Start(); err != nil {
			errc <- err
			return
		}
		errc <- nil
		_ = cmd.Wait()
		close(exited)
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return exited, nil
}

// enterNS switches the calling (locked) thread into the network namespace
// mounted at path.
func enterNS(path string) error {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer h.Close()
	return netns.Set(h)
}
