package cli

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"kubeipam/internal/controller"
	"kubeipam/internal/version"
)

// globals are the flags every command accepts: the root's persistent
// flags.
type globals struct {
	config, kubeconfig, namespace, output string
	timeout                               time.Duration
	kubeQPS                               float32
	kubeBurst                             int
}

// newRoot builds the command tree. Its flag values live in the closures of
// this one call: a tree serves one Run.
func (a *App) newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "kube-ipamctl",
		Short: "Inspect and repair kube-ipam's allocations",
		Long: `kube-ipamctl inspects and repairs kube-ipam's allocations (in etcd or the
Kubernetes API), using the same network config as the plugin.`,
		Example: `  kube-ipamctl networks --config /etc/cni/net.d/00-multus.conf
  kube-ipamctl list -n db
  kube-ipamctl who-has 10.188.0.12
  kube-ipamctl check --kubeconfig ~/.kube/config
  source <(kube-ipamctl completion bash)`,
		Version: version.Version,
		// Run prints errors and usages itself (reason first, then the
		// usage, exit 2: package cmdline's behaviour).
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetVersionTemplate("kube-ipamctl {{.Version}}\n")
	root.SetOut(a.Out)
	root.SetErr(a.Err)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &cmdLineError{err} })

	pf := root.PersistentFlags()
	pf.SortFlags = false
	pf.StringVar(&g.config, "config", "", "network config (single, conflist or multus with delegates); default: $KUBE_IPAMCTL_CONFIG, else the first file of /etc/cni/net.d with a kube-ipam network")
	pf.StringVar(&g.kubeconfig, "kubeconfig", "", "kubeconfig for the Kubernetes API (overrides ipam.kubeConfig; default: ipam.kubeConfig if the file exists, else the pod's in-cluster config)")
	pf.StringVarP(&g.namespace, "namespace", "n", "", "pod namespace")
	pf.StringVarP(&g.output, "output", "o", FormatTable, "output format: table, json or yaml")
	pf.DurationVar(&g.timeout, "timeout", time.Minute, "timeout of the whole command, etcd and Kubernetes API calls included")
	pf.Float32Var(&g.kubeQPS, "kube-api-qps", controller.DefaultKubeAPIQPS, "client-go rate limit for Kubernetes API calls: sustained requests per second")
	pf.IntVar(&g.kubeBurst, "kube-api-burst", controller.DefaultKubeAPIBurst, "client-go rate limit for Kubernetes API calls: burst")
	_ = root.MarkPersistentFlagFilename("config", "conf", "conflist", "json")
	_ = root.MarkPersistentFlagFilename("kubeconfig")
	_ = root.RegisterFlagCompletionFunc("output", completeFormats)

	root.AddCommand(
		a.networksCmd(g), a.listCmd(g), a.whoHasCmd(g), a.showCmd(g),
		a.checkCmd(g), a.releaseCmd(g), a.reserveCmd(g), a.gcCmd(g),
		a.migrateCmd(g), a.versionCmd(g),
	)
	return root
}

// runner is a command's work, given the networks of the config (opened,
// unless the command was built with noNetworks) and its arguments.
type runner func(ctx context.Context, nets []*Network, args []string) error

// action is the RunE of every command: it checks the global flags, bounds
// the whole command by --timeout, opens the networks of the config
// (closed when run returns) and runs.
func (a *App) action(g *globals, noNetworks bool, run runner) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := validFormat(g.output); err != nil {
			return err
		}
		if g.kubeQPS <= 0 || g.kubeBurst <= 0 {
			return usageErrorf("--kube-api-qps and --kube-api-burst must be > 0")
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
		defer cancel()
		var nets []*Network
		if !noNetworks {
			var closeAll func()
			var err error
			nets, closeAll, err = a.open(ctx, g)
			if closeAll != nil {
				defer closeAll()
			}
			if err != nil {
				return err
			}
		}
		return run(ctx, nets, args)
	}
}

// exactArgs wants n positional arguments, named in the command's Use after
// its name ("who-has IP").
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == n {
			return nil
		}
		if n == 0 {
			return &cmdLineError{fmt.Errorf("unexpected argument %q (it takes none)", args[0])}
		}
		_, names, _ := strings.Cut(cmd.Use, " ")
		return &cmdLineError{fmt.Errorf("want %d argument(s) %s, got %d", n, names, len(args))}
	}
}

func parseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, usageErrorf("%q is not an IP address", s)
	}
	return a.Unmap(), nil
}
