// Command kube-ipam-lab-pause is the lab's pod sandbox process (the "pause"
// container): it holds the pod's namespaces by doing nothing until told to
// stop. As PID 1 of the pod it also reaps the orphans reparented to it.
//
// Build it static (CGO_ENABLED=0): its image has no libc.
package main

import (
	"os"
	"os/signal"
	"syscall"

	"kubeipam/internal/cmdline"
)

func main() {
	if code, ok := cmdline.NoArgs(os.Args[1:], "kube-ipam-lab-pause", "it holds a lab pod's namespaces until SIGTERM.", os.Stdout, os.Stderr); !ok {
		os.Exit(code)
	}
	// Separate channels: a pending SIGCHLD must never crowd out SIGTERM
	// (signal.Notify drops a signal whose channel is full). One pending
	// SIGCHLD is enough, since each reaps every exited child.
	stop := make(chan os.Signal, 1)
	child := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	signal.Notify(child, syscall.SIGCHLD)
	reap() // children that exited before the handler was installed
	for {
		select {
		case <-stop:
			os.Exit(0)
		case <-child:
			reap()
		}
	}
}

// reap collects every exited child without blocking.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
	}
}
