// Command kube-ipamctl is the operator CLI of kube-ipam: it lists, checks
// and releases the allocations kube-ipam keeps in etcd. See
// docs/kube-ipamctl.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"kubeipam/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := (&cli.App{}).Run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
