package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestSignals checks that pause blocks until SIGINT or SIGTERM and then
// exits 0. (Reaping as PID 1 is tested in a container by internal/lab/image.)
func TestSignals(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "pause")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		// A signal that beats signal.Notify kills the process the default
		// way; that race, and only it, is retried with a longer head start.
		exited0 := false
		for _, delay := range []time.Duration{200 * time.Millisecond, time.Second, 3 * time.Second} {
			cmd := exec.Command(bin)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				t.Fatalf("pause exited by itself: %v", err)
			case <-time.After(delay):
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				t.Fatalf("pause still running 10s after %v", sig)
			}
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled() {
				t.Logf("%v after %v killed pause before its handler was installed; retrying", sig, delay)
				continue
			}
			if err != nil {
				t.Fatalf("after %v: %v, want exit 0", sig, err)
			}
			exited0 = true
			break
		}
		if !exited0 {
			t.Errorf("%v kills pause even after a 3s head start: no handler", sig)
		}
	}
}
