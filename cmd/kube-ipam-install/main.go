// Command kube-ipam-install is the node installer of kube-ipam, run by the
// DaemonSet of deploy/daemonset.yaml: it copies the plugins into the node's
// CNI bin dir, writes their kubeconfig and etcd TLS files, and installs the
// validated network config (with --cluster-network=auto, built around the
// node's own cluster network config; with --ipam-only, none: another multus
// runs the plugins), then keeps them up to date. With --agent-socket it also
// runs the kube-ipam node agent (package agent), which serves the plugin's
// ADD and DEL calls. See deploy/README.md, package internal/install and
// docs/performance.md.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"kubeipam/internal/agent"
	"kubeipam/internal/cmdline"
	"kubeipam/internal/install"
	"kubeipam/internal/version"
)

func main() {
	o := install.Defaults()
	fs := install.FlagSet(&o)
	showVersion := fs.Bool("version", false, "print the version and exit")
	var ag agent.Server
	agentOnly := ag.AddFlags(fs)
	if code, ok := cmdline.Parse(fs, os.Args[1:], false); !ok {
		os.Exit(code)
	}
	if *showVersion {
		fmt.Println("kube-ipam-install", version.Version)
		return
	}
	if *agentOnly && ag.Socket == "" {
		os.Exit(cmdline.Fail(fs, "--agent-only needs --agent-socket"))
	}
	if !*agentOnly {
		if err := o.Validate(); err != nil {
			os.Exit(cmdline.Fail(fs, "%v", err))
		}
	}
	ag.Root = o.HostRoot // after parsing --host-root
	o.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	ag.Log = o.Log
	o.Log.Info("kube-ipam-install starting", "version", version.Version)
	// SIGTERM (pod deletion, DaemonSet upgrade) ends the loop with exit 0
	// and removes nothing: see package install.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *agentOnly {
		if err := ag.Serve(ctx); err != nil {
			o.Log.Error("node agent failed", "err", err)
			os.Exit(1)
		}
		return
	}
	if ag.Socket != "" {
		// The plugin takes its direct path while the agent is down, so a
		// failed agent is logged, not fatal to the installer.
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := ag.Serve(ctx); err != nil {
				o.Log.Error("node agent failed: plugin calls take the direct path (kube-ipam-direct)", "err", err)
			}
		}()
		defer func() { stop(); <-done }()
	}
	if err := install.Run(ctx, o); err != nil {
		o.Log.Error("kube-ipam-install failed: the network config on the node was not changed by this pass, and nothing was removed", "err", err)
		os.Exit(1)
	}
}
