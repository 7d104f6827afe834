package cli

import (
	"context"

	"github.com/spf13/cobra"
)

func (a *App) gcCmd(g *globals) *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Free leaked allocations once, as the controller does",
		Long: `Run one pass of kube-ipam-controller's garbage collection over every network:
free the attachments whose pod is gone (a fresh read from the API says it does
not exist, or it was re-created with another UID) unless a StatefulSet still
wants the ordinal, and sticky addresses whose StatefulSet is gone or scaled
down. Every release is one etcd transaction guarded by the revisions read, so
an allocation that changed meanwhile is left alone.

An allocation whose owner cannot be read (API error, client rate limiter,
--timeout) is kept and counted as skipped, with the reason; gc then exits 3,
as it does when a pass stops early (etcd error, --timeout). Run it again.

Unlike the controller, gc cannot wait for a second observation across runs:
it frees what it finds on this pass. Use --dry-run first to see what that is.
gc needs the Kubernetes API (--kubeconfig, else ipam.kubeConfig if the file
exists, else the pod's in-cluster config). Progress goes to stderr every 1000
allocations.`,
		Example: `  kube-ipamctl gc --dry-run
  kube-ipamctl gc --kubeconfig ~/.kube/config`,
		Args:              exactArgs(0),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: a.action(g, false, func(ctx context.Context, nets []*Network, _ []string) error {
			return GC(ctx, a.Out, a.Err, nets, dryRun, a.Now(), g.output)
		}),
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list what would be freed and change nothing")
	return cmd
}
