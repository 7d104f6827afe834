package cli

import (
	"context"

	"github.com/spf13/cobra"
)

// The commands that free or claim one address: release, reserve.

func (a *App) releaseCmd(g *globals) *cobra.Command {
	var network string
	var force bool
	cmd := &cobra.Command{
		Use:   "release IP",
		Short: "Free an allocation (guarded)",
		Long: `Free the allocation of IP as a CNI DEL of its attachment would: one etcd
transaction guarded by the revisions read, so a concurrent change makes it
fail rather than free someone else's address. Every address of that
attachment (e.g. the IPv6 address of a dual-stack pod) is freed with it.
Dynamic addresses cool down for releaseCooldown before reuse.

Refuses while the owner pod still exists in the Kubernetes API, while its
StatefulSet still wants the address's ordinal (the re-created pod takes it
over), or when that cannot be checked (no usable Kubernetes API, API error,
record without a pod), unless --force is given: the rules of gc. A
reservation made by 'kube-ipamctl reserve' has no pod and is released
without --force.`,
		Example: `  kube-ipamctl release 10.188.0.12
  kube-ipamctl release 10.188.0.12 --network k8snet2 --force`,
		Args:              exactArgs(1),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: a.action(g, false, func(ctx context.Context, nets []*Network, args []string) error {
			ip, err := parseIP(args[0])
			if err != nil {
				return err
			}
			return Release(ctx, a.Out, nets, ip, network, force, a.Now())
		}),
	}
	cmd.Flags().StringVar(&network, "network", "", "the network holding the address (needed when several do)")
	cmd.Flags().BoolVar(&force, "force", false, "release even if the owner pod exists or cannot be checked")
	a.completeNetworkFlag(cmd, g)
	return cmd
}

func (a *App) reserveCmd(g *globals) *cobra.Command {
	var network, note string
	cmd := &cobra.Command{
		Use:   "reserve IP",
		Short: "Reserve an address so that nothing allocates it",
		Long: `Claim IP for nobody: neither the dynamic allocator nor a pod asking for it as
a fixed address can take it until it is released with 'kube-ipamctl release
IP'. The claim is one guarded etcd transaction from the address's current
state, so it fails (exit 1, saying who holds it) when the address is taken.
IP must be inside a subnet of the network and not its network, broadcast or
gateway address; the fixed block does not apply.

The reservation is a fixed record of container "reserved-<hex of IP>",
interface "reserved", node "kube-ipamctl" and no pod, so the controller never
frees it; list and who-has show it with kind "reserved". Once released it
follows the rules of a released fixed address.`,
		Example: `  kube-ipamctl reserve 10.188.0.99 --note "router VIP"
  kube-ipamctl reserve fd00:189::99 --network k8snet3`,
		Args:              exactArgs(1),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: a.action(g, false, func(ctx context.Context, nets []*Network, args []string) error {
			ip, err := parseIP(args[0])
			if err != nil {
				return err
			}
			return Reserve(ctx, a.Out, nets, ip, network, note, a.Now())
		}),
	}
	cmd.Flags().StringVar(&network, "network", "", "the network to reserve on (needed when several have a subnet holding IP)")
	cmd.Flags().StringVar(&note, "note", "", "why the address is reserved, shown by list and who-has")
	a.completeNetworkFlag(cmd, g)
	_ = cmd.RegisterFlagCompletionFunc("note", cobra.NoFileCompletions)
	return cmd
}
