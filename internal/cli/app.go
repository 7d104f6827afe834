// Package cli is kube-ipamctl, the operator's view of kube-ipam's etcd
// store: it reads the same network config as the plugin and lists, checks
// and (guardedly) releases allocations. Every command writes to an
// io.Writer and takes its clock and clients from App, so tests run it
// against a real etcd with deterministic output.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"kubeipam/internal/config"
	"kubeipam/internal/controller"
	"kubeipam/internal/store"
	"kubeipam/internal/stores"
	"kubeipam/internal/version"
)

// App runs kube-ipamctl commands. Zero fields take production defaults.
type App struct {
	Out, Err io.Writer
	Now      func() time.Time
	// Connect opens an etcd client (default store.Connect).
	Connect func(e config.Etcd, dialTimeout time.Duration) (*clientv3.Client, error)
	// Kube builds the Kubernetes clientset of check, release and gc from a
	// kubeconfig path (default: client-go after checking that the file
	// exists).
	Kube func(kubeconfig string, o KubeOptions) (kubernetes.Interface, error)
	// ConfDir is searched when --config is not given (default /etc/cni/net.d).
	ConfDir string
}

// KubeOptions configure the Kubernetes API client.
type KubeOptions struct {
	// Timeout of each request (--timeout).
	Timeout time.Duration
	// QPS and Burst are client-go's rate limit (--kube-api-qps,
	// --kube-api-burst).
	QPS   float32
	Burst int
}

// globals are the flags every command accepts.
type globals struct {
	config, kubeconfig, namespace, output string
	timeout                               time.Duration
	kubeQPS                               float32
	kubeBurst                             int
}

type command struct {
	name, args, short, long, example string
	flags                            func(fs *pflag.FlagSet)
	run                              func(ctx context.Context, a *App, g *globals, nets []*Network, args []string) error
	nargs                            int
	noNetworks                       bool
}

// valueFlags are the global flags that take a value, so that the command
// word can be found among flags given before it.
var valueFlags = map[string]bool{"--config": true, "--kubeconfig": true, "-n": true, "--namespace": true, "-o": true, "--output": true, "--timeout": true,
	"--kube-api-qps": true, "--kube-api-burst": true,
	// Command flags that take a value, so "--network N list" works too.
	"--network": true, "--node": true, "--note": true, "--to": true}

func (a *App) commands() []*command {
	var listF ListFilter
	var relNetwork string
	var force, dryRun bool
	var resNetwork, resNote, migrateTo string
	return []*command{
		{
			name: "networks", short: "Show every kube-ipam network of the config with its pool usage",
			long: `One row per kube-ipam network found in the config: its subnets, the size
of its dynamic pool (ranges minus gateways minus the fixed block), how many
pool addresses are used, free now, and cooling (released less than
releaseCooldown ago, so not yet reusable), how many fixed addresses are
allocated, and how many StatefulSet ordinals have a sticky address.`,
			example: `  kube-ipamctl networks --config /etc/cni/net.d/00-multus.conf
  kube-ipamctl networks -o json`,
			run: func(ctx context.Context, a *App, g *globals, nets []*Network, _ []string) error {
				return Networks(ctx, a.Out, nets, a.Now(), g.output)
			},
		},
		{
			name: "list", short: "List allocations",
			long: `List allocated addresses with their owner: network, kind (fixed, dynamic,
sticky), pod, container (short ID), interface, node and age. Without -n every
namespace is listed.`,
			example: `  kube-ipamctl list
  kube-ipamctl list --network k8snet2 --node worker-1
  kube-ipamctl list -n db -o yaml`,
			flags: func(fs *pflag.FlagSet) {
				fs.StringVar(&listF.Network, "network", "", "only this network")
				fs.StringVar(&listF.Node, "node", "", "only allocations made on this node")
			},
			run: func(ctx context.Context, a *App, g *globals, nets []*Network, _ []string) error {
				listF.Namespace = g.namespace
				return List(ctx, a.Out, nets, listF, a.Now(), g.output)
			},
		},
		{
			name: "who-has", args: "IP", nargs: 1, short: "Show who holds an address",
			long: `Print the allocation record of IP on every configured network. When no
network holds it, say what the store knows (never used, released and cooling
down, ...) and exit 1.`,
			example: `  kube-ipamctl who-has 10.188.0.12
  kube-ipamctl who-has fd00:188::1c -o json`,
			run: func(ctx context.Context, a *App, g *globals, nets []*Network, args []string) error {
				ip, err := parseIP(args[0])
				if err != nil {
					return err
				}
				return WhoHas(ctx, a.Out, nets, ip, a.Now(), g.output)
			},
		},
		{
			name: "show", args: "POD", nargs: 1, short: "Show every allocation of a pod",
			long: `Print every address a pod holds on the configured networks. The pod is
NAME in the namespace given by -n (default "default"), or NAMESPACE/NAME.
Exit 1 when it holds none.`,
			example: `  kube-ipamctl show -n db mysql-0
  kube-ipamctl show db/mysql-0 -o json`,
			run: func(ctx context.Context, a *App, g *globals, nets []*Network, args []string) error {
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
			},
		},
		{
			name: "check", short: "Look for inconsistencies in the store",
			long: `Report, and exit 1 when there is any:
  stale-attachment  an attachment lists an address whose record names another
                    container (or that no record holds)
  orphan            a record whose attachment is missing or does not list it
  out-of-range      a fixed address outside every subnet, or a dynamic/sticky
                    address outside the dynamic ranges of the config
  leaked            what 'kube-ipamctl gc' would free, by the same rules: an
                    address whose pod no longer exists in the Kubernetes API
                    (or was re-created with another UID) and whose
                    StatefulSet, if any, no longer wants its ordinal; or a
                    StatefulSet's sticky address once the StatefulSet is
                    deleted or scaled below the ordinal. Skipped, with a
                    note, when no usable kubeconfig is configured or the API
                    cannot tell
  corrupt           keys or values that do not parse
  duplicate         a second record of one address under another spelling
                    of its key
Addresses of deleted StatefulSet pods whose StatefulSet still wants the
ordinal are not problems: they are listed under "Kept on purpose"
(statefulset-ordinal), for the re-created pod to take over.
check only reads; free leaked addresses with gc (or release IP), orphaned
ones with release IP.`,
			example: `  kube-ipamctl check
  kube-ipamctl check --kubeconfig ~/.kube/config -o json`,
			run: func(ctx context.Context, a *App, g *globals, nets []*Network, _ []string) error {
				return Check(ctx, a.Out, nets, a.Now(), g.output)
			},
		},
		{
			name: "release", args: "IP", nargs: 1, short: "Free an allocation (guarded)",
			long: `Free the allocation of IP as a CNI DEL of its attachment would: one etcd
transaction guarded by the revisions read, so a concurrent change makes it
fail rather than free someone else's address. Every address of that
attachment (e.g. the IPv6 address of a dual-stack pod) is freed with it.
Dynamic addresses cool down for releaseCooldown before reuse.

Refuses while the owner pod still exists in the Kubernetes API, while its
StatefulSet still wants the address's ordinal (the re-created pod takes it
over), or when that cannot be checked (no usable kubeconfig, API error,
record without a pod), unless --force is given: the rules of gc. A
reservation made by 'kube-ipamctl reserve' has no pod and is released
without --force.`,
			example: `  kube-ipamctl release 10.188.0.12
  kube-ipamctl release 10.188.0.12 --network k8snet2 --force`,
			flags: func(fs *pflag.FlagSet) {
				fs.StringVar(&relNetwork, "network", "", "the network holding the address (needed when several do)")
				fs.BoolVar(&force, "force", false, "release even if the owner pod exists or cannot be checked")
			},
			run: func(ctx context.Context, a *App, g *globals, nets []*Network, args []string) error {
				ip, err := parseIP(args[0])
				if err != nil {
					return err
				}
				return Release(ctx, a.Out, nets, ip, relNetwork, force, a.Now())
			},
		},
		{
			name: "reserve", args: "IP", nargs: 1, short: "Reserve an address so that nothing allocates it",
			long: `Claim IP for nobody: neither the dynamic allocator nor a pod asking for it as
a fixed address can take it until it is released with 'kube-ipamctl release
IP'. The claim is one guarded etcd transaction from the address's current
state, so it fails (exit 1, saying who holds it) when the address is taken.
IP must be inside a subnet of the network and not its network, broadcast or
gateway address; the fixed block does not apply.

The reservation is a fixed record of container "reserved-<hex of IP>",
interface "reserved", node "kube-ipamctl" and no pod, so the controller never
frees it; list and who-has show it with kind "reserved". Once released it
follows the rules of a released fixed address.`,
			example: `  kube-ipamctl reserve 10.188.0.99 --note "router VIP"
  kube-ipamctl reserve fd00:189::99 --network k8snet3`,
			flags: func(fs *pflag.FlagSet) {
				fs.StringVar(&resNetwork, "network", "", "the network to reserve on (needed when several have a subnet holding IP)")
				fs.StringVar(&resNote, "note", "", "why the address is reserved, shown by list and who-has")
			},
			run: func(ctx context.Context, a *App, g *globals, nets []*Network, args []string) error {
				ip, err := parseIP(args[0])
				if err != nil {
					return err
				}
				return Reserve(ctx, a.Out, nets, ip, resNetwork, resNote, a.Now())
			},
		},
		{
			name: "gc", short: "Free leaked allocations once, as the controller does",
			long: `Run one pass of kube-ipam-controller's garbage collection over every network:
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
gc needs the Kubernetes API (--kubeconfig or ipam.kubeConfig). Progress goes
to stderr every 1000 allocations.`,
			example: `  kube-ipamctl gc --dry-run
  kube-ipamctl gc --kubeconfig ~/.kube/config`,
			flags: func(fs *pflag.FlagSet) {
				fs.BoolVar(&dryRun, "dry-run", false, "list what would be freed and change nothing")
			},
			run: func(ctx context.Context, a *App, g *globals, nets []*Network, _ []string) error {
				return GC(ctx, a.Out, a.Err, nets, dryRun, a.Now(), g.output)
			},
		},
		{
			name: "migrate", short: "Copy every allocation into another store (etcd, Kubernetes API)",
			long: `Copy the allocations of every network of the config into the store of the
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
			example: `  kube-ipamctl migrate --to /etc/kube-ipam/kubernetes-store.conf --dry-run
  kube-ipamctl migrate --to /etc/kube-ipam/kubernetes-store.conf
  kube-ipamctl --config /etc/kube-ipam/etcd-store.conf migrate --to /etc/cni/net.d/00-multus.conf`,
			flags: func(fs *pflag.FlagSet) {
				fs.StringVar(&migrateTo, "to", "", "network config (a CNI config or conflist) naming the destination store")
				fs.BoolVar(&dryRun, "dry-run", false, "count what would be copied and write nothing")
			},
			run: func(ctx context.Context, a *App, g *globals, nets []*Network, _ []string) error {
				if migrateTo == "" {
					return usageErrorf("migrate needs --to: the network config of the destination store")
				}
				dst, closeDst, err := a.openPath(ctx, g, migrateTo)
				if closeDst != nil {
					defer closeDst()
				}
				if err != nil {
					return err
				}
				return Migrate(ctx, a.Out, nets, dst, dryRun, g.output)
			},
		},
		{
			name: "version", short: "Print the version", noNetworks: true,
			example: `  kube-ipamctl version`,
			run: func(_ context.Context, a *App, _ *globals, _ []*Network, _ []string) error {
				_, err := fmt.Fprintln(a.Out, "kube-ipamctl", version.Version)
				return err
			},
		},
	}
}

func parseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, usageErrorf("%q is not an IP address", s)
	}
	return a.Unmap(), nil
}

func globalFlags(fs *pflag.FlagSet, g *globals) {
	fs.StringVar(&g.config, "config", "", "network config (single, conflist or multus with delegates); default: $KUBE_IPAMCTL_CONFIG, else the first file of /etc/cni/net.d with a kube-ipam network")
	fs.StringVar(&g.kubeconfig, "kubeconfig", "", "kubeconfig for pod lookups (overrides ipam.kubeConfig)")
	fs.StringVarP(&g.namespace, "namespace", "n", "", "pod namespace")
	fs.StringVarP(&g.output, "output", "o", FormatTable, "output format: table, json or yaml")
	fs.DurationVar(&g.timeout, "timeout", time.Minute, "timeout of the whole command, etcd and Kubernetes API calls included")
	fs.Float32Var(&g.kubeQPS, "kube-api-qps", controller.DefaultKubeAPIQPS, "client-go rate limit for Kubernetes API calls: sustained requests per second")
	fs.IntVar(&g.kubeBurst, "kube-api-burst", controller.DefaultKubeAPIBurst, "client-go rate limit for Kubernetes API calls: burst")
}

// Run executes args (without the program name) and returns the exit status.
func (a *App) Run(ctx context.Context, args []string) int {
	if a.Out == nil {
		a.Out = os.Stdout
	}
	if a.Err == nil {
		a.Err = os.Stderr
	}
	if a.Now == nil {
		a.Now = time.Now
	}
	if a.Connect == nil {
		a.Connect = store.Connect
	}
	if a.Kube == nil {
		a.Kube = defaultKube
	}
	if a.ConfDir == "" {
		a.ConfDir = DefaultConfDir
	}
	cmds := a.commands()
	idx := -1
	for i := 0; i < len(args); i++ {
		s := args[i]
		if s == "--" {
			break
		}
		if strings.HasPrefix(s, "-") {
			if valueFlags[s] {
				i++
			}
			continue
		}
		idx = i
		break
	}
	if idx < 0 {
		help := false
		for _, s := range args {
			help = help || s == "-h" || s == "--help"
		}
		if help {
			a.usage(a.Out, cmds)
			return 0
		}
		if len(args) == 0 {
			fmt.Fprint(a.Err, "kube-ipamctl: missing command\n\n")
		} else {
			fmt.Fprintf(a.Err, "kube-ipamctl: missing command (got only %s)\n\n", strings.Join(args, " "))
		}
		a.usage(a.Err, cmds)
		return 2
	}
	name := args[idx]
	rest := append(append([]string{}, args[:idx]...), args[idx+1:]...)
	if name == "help" {
		for _, c := range cmds {
			if len(rest) > 0 && c.name == rest[0] {
				a.commandHelp(a.Out, c)
				return 0
			}
		}
		a.usage(a.Out, cmds)
		return 0
	}
	var cmd *command
	for _, c := range cmds {
		if c.name == name {
			cmd = c
		}
	}
	if cmd == nil {
		fmt.Fprintf(a.Err, "kube-ipamctl: unknown command %q\n\n", name)
		a.usage(a.Err, cmds)
		return 2
	}
	var g globals
	fs := cmdFlags(cmd, &g)
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			a.commandHelp(a.Out, cmd)
			return 0
		}
		fmt.Fprintf(a.Err, "kube-ipamctl %s: %v\n\n", cmd.name, err)
		a.commandHelp(a.Err, cmd)
		return 2
	}
	if fs.NArg() != cmd.nargs {
		fmt.Fprintf(a.Err, "kube-ipamctl %s: want %d argument(s) %s, got %d\n\n", cmd.name, cmd.nargs, cmd.args, fs.NArg())
		a.commandHelp(a.Err, cmd)
		return 2
	}
	err := validFormat(g.output)
	if err == nil && (g.kubeQPS <= 0 || g.kubeBurst <= 0) {
		err = usageErrorf("--kube-api-qps and --kube-api-burst must be > 0")
	}
	var nets []*Network
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	if err == nil && !cmd.noNetworks {
		var closeAll func()
		nets, closeAll, err = a.open(ctx, &g)
		if closeAll != nil {
			defer closeAll()
		}
	}
	if err == nil {
		err = cmd.run(ctx, a, &g, nets, fs.Args())
	}
	if err == nil {
		return 0
	}
	var ee *ExitError
	if !errors.As(err, &ee) {
		ee = &ExitError{Code: 3, Msg: err.Error()}
	}
	fmt.Fprintf(a.Err, "kube-ipamctl %s: %s\n", cmd.name, ee.Msg)
	if ee.Code == 2 {
		a.usageLine(a.Err, cmd)
	}
	return ee.Code
}

func cmdFlags(cmd *command, g *globals) *pflag.FlagSet {
	fs := pflag.NewFlagSet(cmd.name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	globalFlags(fs, g)
	return fs
}

// open parses the config and opens every network's store (one client per
// distinct connection); closeAll closes them.
func (a *App) open(ctx context.Context, g *globals) ([]*Network, func(), error) {
	path := g.config
	if path == "" {
		path = os.Getenv("KUBE_IPAMCTL_CONFIG")
	}
	if path == "" {
		var err error
		if path, err = FindConfig(a.ConfDir); err != nil {
			return nil, nil, &ExitError{Code: 3, Msg: err.Error()}
		}
	}
	return a.openPath(ctx, g, path)
}

// openPath is open for the network config at path.
func (a *App) openPath(ctx context.Context, g *globals, path string) ([]*Network, func(), error) {
	cfgs, err := config.LoadNetworks(path)
	if err != nil {
		return nil, nil, &ExitError{Code: 3, Msg: err.Error()}
	}
	opener := stores.New(min(g.timeout, 5*time.Second))
	opener.WaitReady = true // fail in seconds, naming the reason
	opener.Kubeconfig = g.kubeconfig
	opener.InCluster = true
	opener.ConnectEtcd = a.Connect
	closeAll := func() { _ = opener.Close() }
	type kubeOrNote struct {
		kube kubernetes.Interface
		note string
	}
	kubes := map[string]kubeOrNote{}
	var nets []*Network
	for _, cfg := range cfgs {
		b, err := opener.Open(ctx, cfg)
		if err != nil {
			return nil, closeAll, &ExitError{Code: 3, Msg: err.Error()}
		}
		n := NewNetwork(cfg, b)
		kc := cfg.KubeConfig
		if g.kubeconfig != "" {
			kc = g.kubeconfig
		}
		k, ok := kubes[kc]
		if !ok {
			kube, err := a.Kube(kc, KubeOptions{Timeout: g.timeout, QPS: g.kubeQPS, Burst: g.kubeBurst})
			if err != nil {
				k = kubeOrNote{note: "Kubernetes API not configured: " + err.Error()}
			} else {
				k = kubeOrNote{kube: kube}
			}
			kubes[kc] = k
		}
		n.Kube, n.KubeNote, n.KubeConfig = k.kube, k.note, kc
		nets = append(nets, n)
	}
	return nets, closeAll, nil
}

func defaultKube(kubeconfig string, o KubeOptions) (kubernetes.Interface, error) {
	if kubeconfig == "" {
		return nil, fmt.Errorf("no kubeconfig (give one with --kubeconfig, or set ipam.kubeConfig)")
	}
	if _, err := os.Stat(kubeconfig); err != nil {
		// In a pod (the controller's), the network's ipam.kubeConfig is a
		// node path: the pod's own identity is what to use there.
		if ic, icErr := rest.InClusterConfig(); errors.Is(err, fs.ErrNotExist) && icErr == nil {
			ic.QPS, ic.Burst, ic.Timeout = o.QPS, o.Burst, o.Timeout
			return kubernetes.NewForConfig(ic)
		}
		return nil, fmt.Errorf("kubeconfig %s: %v (give one with --kubeconfig)", kubeconfig, err)
	}
	rc, err := controller.KubeClientConfig(kubeconfig, o.QPS, o.Burst)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	rc.Timeout = o.Timeout
	return kubernetes.NewForConfig(rc)
}

func (a *App) usage(w io.Writer, cmds []*command) {
	fmt.Fprint(w, `kube-ipamctl inspects and repairs kube-ipam's allocations in etcd, using the
same network config as the plugin.

Usage:
  kube-ipamctl COMMAND [ARGS] [flags]

Commands:
`)
	sorted := append([]*command{}, cmds...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].name < sorted[j].name })
	for _, c := range sorted {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.short)
	}
	var g globals
	fs := pflag.NewFlagSet("global", pflag.ContinueOnError)
	fs.SortFlags = false
	globalFlags(fs, &g)
	fmt.Fprintf(w, `
Examples:
  kube-ipamctl networks --config /etc/cni/net.d/00-multus.conf
  kube-ipamctl list -n db
  kube-ipamctl who-has 10.188.0.12
  kube-ipamctl check --kubeconfig ~/.kube/config

Flags (accepted by every command):
%s
Use "kube-ipamctl COMMAND --help" for more about a command.
`, fs.FlagUsages())
}

// usageLine is the short usage after an error in a flag's value or an
// argument, found once the command runs: the whole help would bury the
// reason.
func (a *App) usageLine(w io.Writer, c *command) {
	fmt.Fprintf(w, "\nUsage:\n  %s [flags]\nSee 'kube-ipamctl %s --help'.\n", commandUsage(c), c.name)
}

// commandUsage is "kube-ipamctl <command> <args>".
func commandUsage(c *command) string {
	if c.args == "" {
		return "kube-ipamctl " + c.name
	}
	return "kube-ipamctl " + c.name + " " + c.args
}

func (a *App) commandHelp(w io.Writer, c *command) {
	var g globals
	fs := cmdFlags(c, &g)
	long := c.long
	if long == "" {
		long = c.short + "."
	}
	fmt.Fprintf(w, "%s\n\nUsage:\n  %s [flags]\n\nExamples:\n%s\n\nFlags:\n%s", long, commandUsage(c), c.example, fs.FlagUsages())
}
