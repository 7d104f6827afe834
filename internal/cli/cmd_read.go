package cli

import (
	"context"
	"strings"

	"github.com/spf13/cobra"
)

// The read-only views: networks, list, who-has, show.

func (a *App) networksCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "networks",
		Short: "Show every kube-ipam network of the config with its pool usage",
		Long: `One row per kube-ipam network found in the config: its subnets, the size
of its dynamic pool (ranges minus gateways minus the fixed block), how many
pool addresses are used, free now, and cooling (released less than
releaseCooldown ago, so not yet reusable), how many fixed addresses are
allocated, and how many StatefulSet ordinals have a sticky address.`,
		Example: `  kube-ipamctl networks --config /etc/cni/net.d/00-multus.conf
  kube-ipamctl networks -o json`,
		Args:              exactArgs(0),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: a.action(g, false, func(ctx context.Context, nets []*Network, _ []string) error {
			return Networks(ctx, a.Out, nets, a.Now(), g.output)
		}),
	}
}

func (a *App) listCmd(g *globals) *cobra.Command {
	var f ListFilter
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List allocations",
		Long: `List allocated addresses with their owner: network, kind (fixed, dynamic,
sticky), pod, container (short ID), interface, node and age. Without -n every
namespace is listed.`,
		Example: `  kube-ipamctl list
  kube-ipamctl list --network k8snet2 --node worker-1
  kube-ipamctl list -n db -o yaml`,
		Args:              exactArgs(0),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: a.action(g, false, func(ctx context.Context, nets []*Network, _ []string) error {
			f.Namespace = g.namespace
			return List(ctx, a.Out, nets, f, a.Now(), g.output)
		}),
	}
	cmd.Flags().StringVar(&f.Network, "network", "", "only this network")
	cmd.Flags().StringVar(&f.Node, "node", "", "only allocations made on this node")
	a.completeNetworkFlag(cmd, g)
	_ = cmd.RegisterFlagCompletionFunc("node", cobra.NoFileCompletions)
	return cmd
}

func (a *App) whoHasCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "who-has IP",
		Short: "Show who holds an address",
		Long: `Print the allocation record of IP on every configured network. When no
network holds it, say what the store knows (never used, released and cooling
down, ...) and exit 1.`,
		Example: `  kube-ipamctl who-has 10.188.0.12
  kube-ipamctl who-has fd00:188::1c -o json`,
		Args:              exactArgs(1),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: a.action(g, false, func(ctx context.Context, nets []*Network, args []string) error {
			ip, err := parseIP(args[0])
			if err != nil {
				return err
			}
			return WhoHas(ctx, a.Out, nets, ip, a.Now(), g.output)
		}),
	}
}

func (a *App) showCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show POD",
		Short: "Show every allocation of a pod",
		Long: `Print every address a pod holds on the configured networks. The pod is
NAME in the namespace given by -n (default "default"), or NAMESPACE/NAME.
Exit 1 when it holds none.`,
		Example: `  kube-ipamctl show -n db mysql-0
  kube-ipamctl show db/mysql-0 -o json`,
		Args:              exactArgs(1),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: a.action(g, false, func(ctx context.Context, nets []*Network, args []string) error {
			ns, name := g.namespace, args[0]
			if before, after, ok := strings.Cut(name, "/"); ok {
				if ns != "" && ns != before {
					return usageErrorf("pod %q and -n %q disagree on the namespace", name, ns)
				}
				ns, name = before, after
			}
			if ns == "" {
				ns = "default"
			}
			return Show(ctx, a.Out, nets, ns, name, a.Now(), g.output)
		}),
	}
}
