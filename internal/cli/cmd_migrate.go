package cli

import (
	"context"

	"github.com/spf13/cobra"
)

func (a *App) migrateCmd(g *globals) *cobra.Command {
	var to string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Copy every allocation into another store (etcd, Kubernetes API)",
		Long: `Copy the allocations of every network of the config into the store of the
network with the same name in the --to config: held addresses with their
attachments, StatefulSet sticky records, and the tombstones of released
addresses (their cooldown and reserved StatefulSet addresses carry over).

The source is only read, and nothing held in the destination is freed or
taken over. Run migrate, switch the nodes' network config to the new store,
then run migrate again (with --config naming the old config) to copy what was
allocated on the old store meanwhile: until then those addresses look free in
the new store, so keep the switch short. Allocations
released on the old store after the first copy stay held in the new one until
kube-ipam-controller's GC frees them (their pods are gone). An address already
held by the same holder in the destination is left as it is; one held by
another holder is a conflict: it is reported, none of that holder's addresses
is copied, and migrate exits 1. See docs/stores.md.`,
		Example: `  kube-ipamctl migrate --to /etc/kube-ipam/kubernetes-store.conf --dry-run
  kube-ipamctl migrate --to /etc/kube-ipam/kubernetes-store.conf
  kube-ipamctl --config /etc/kube-ipam/etcd-store.conf migrate --to /etc/cni/net.d/00-multus.conf`,
		Args:              exactArgs(0),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: a.action(g, false, func(ctx context.Context, nets []*Network, _ []string) error {
			if to == "" {
				return usageErrorf("migrate needs --to: the network config of the destination store")
			}
			dst, closeDst, err := a.openPath(ctx, g, to)
			if closeDst != nil {
				defer closeDst()
			}
			if err != nil {
				return err
			}
			return Migrate(ctx, a.Out, nets, dst, dryRun, g.output)
		}),
	}
	cmd.Flags().StringVar(&to, "to", "", "network config (a CNI config or conflist) naming the destination store")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "count what would be copied and write nothing")
	_ = cmd.MarkFlagFilename("to", "conf", "conflist", "json")
	return cmd
}
