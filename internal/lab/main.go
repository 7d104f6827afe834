package lab

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

const usage = `kube-ipam-lab: the seed's web and database layering on real kubelet nodes, on this machine.

Usage:
  kube-ipam-lab up [flags]    bring the lab up, replay the seed's sections 3-5, print
                              PASS/FAIL, and take it down again (unless --keep);
                              --store kubernetes (LAB_STORE=kubernetes) keeps the
                              allocations in the Kubernetes API instead of etcd;
                              --mode nad|multus (LAB_MODE) gives pods the database
                              network as a NetworkAttachmentDefinition under
                              kube-multus's Kubernetes mode or upstream multus
  kube-ipam-lab down [flags]  take down a lab kept with --keep (or left by a crash)
  kube-ipam-lab bench [flags] the pod-start benchmark: N pods (--pods, LAB_BENCH_N) by one
                              Deployment scaled at once, eth0 only, then net1 with
                              kube-ipam, then with whereabouts; brings a lab up in mode
                              nad (or reuses the one running in --dir) and takes it down
                              afterwards unless --keep (kube-ipam-lab bench -h)

Flags:
`

// Main is the command line of kube-ipam-lab; it returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "bench" {
		return benchMain(args[1:], stdout, stderr)
	}
	if len(args) == 0 || (args[0] != "up" && args[0] != "down") {
		out, code := stderr, 2
		switch {
		case len(args) == 0:
			fmt.Fprint(stderr, "kube-ipam-lab: missing command (up or down)\n\n")
		case args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help":
			out, code = stdout, 0
		case strings.HasPrefix(args[0], "-"):
			fmt.Fprintf(stderr, "kube-ipam-lab: %q before the command: flags come after up or down\n\n", args[0])
		default:
			fmt.Fprintf(stderr, "kube-ipam-lab: unknown command %q (want up or down)\n\n", args[0])
		}
		fmt.Fprint(out, usage)
		fs := flags("", out)
		upDownFlags(fs, new(DefaultOptions(repoRoot())))
		fs.PrintDefaults()
		return code
	}
	verb := args[0]
	fs := flags(verb, stderr)
	o := DefaultOptions(repoRoot())
	keep := upDownFlags(fs, &o)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2 // flag printed the reason and the flags
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kube-ipam-lab %s: unexpected argument %q (it takes flags only)\n\n", verb, fs.Arg(0))
		fs.PrintDefaults()
		return 2
	}
	o.Out = stdout
	if verb == "down" {
		l, err := Load(o.Dir)
		if errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stdout, "no lab in %s\n", o.Dir)
			return 0
		}
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		l.SetOutput(stdout)
		if err := l.Down(context.Background()); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	down := func(l *Lab) int {
		stop() // a second Ctrl-C now kills us; the state file allows `down` later
		fmt.Fprintln(stdout, "\ntaking the lab down (Ctrl-C again aborts; then run `make lab-down`) ...")
		if err := l.Down(context.Background()); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		return 0
	}
	l, err := Up(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, err)
		if l != nil {
			fmt.Fprintf(stderr, "logs: %s\n", filepath.Join(o.Dir, "logs"))
			if *keep {
				fmt.Fprintln(stderr, "LAB_KEEP: the partial lab stays up for inspection; `make lab-down` removes it")
				return 1
			}
			down(l)
		}
		return 1
	}
	results, err := l.Replay(ctx)
	failed := Summary(stdout, results)
	if err != nil {
		fmt.Fprintln(stderr, err)
		failed++
	}
	if ctx.Err() == nil && *keep {
		registry := "kubectl " + strings.Join(IPAMCtl("networks"), " ")
		if o.KubernetesStore() {
			registry = "kubectl get ipallocations   # the Kubernetes store: one object per address\n  " + registry
		}
		fmt.Fprintf(stdout, `
The lab is up (LAB_KEEP). Use it with:
  export KUBECONFIG=%[1]s PATH=%[2]s:$PATH
  kubectl get pod -o wide
  %[3]s
  nsenter --net=/run/netns/%[4]s-node1 --mount=%[5]s/ns/node1.mnt --uts=%[5]s/ns/node1.uts bash   # a shell on node1
Logs: %[6]s
Take it down with: make lab-down
`, o.Kubeconfig(), o.KubeBin, registry, o.Name, o.Dir, filepath.Join(o.Dir, "logs"))
		if failed > 0 {
			return 1
		}
		return 0
	}
	if down(l) != 0 || failed > 0 {
		return 1
	}
	return 0
}

// Summary prints the PASS/FAIL table and returns the number of failures.
func Summary(w io.Writer, results []Result) int {
	fmt.Fprintln(w, "\n== Summary ==")
	failed := 0
	if len(results) == 0 {
		fmt.Fprintln(w, "FAIL  nothing was checked")
		return 1
	}
	for _, r := range results {
		if r.Passed {
			fmt.Fprintf(w, "PASS  %s\n", r.Check)
		} else {
			failed++
			fmt.Fprintf(w, "FAIL  %s: %s\n", r.Check, r.Detail)
		}
	}
	fmt.Fprintf(w, "%d passed, %d failed\n", len(results)-failed, failed)
	return failed
}

// upDownFlags defines the flags of up and down on fs, into o (defaults from
// the environment), and returns --keep.
func upDownFlags(fs *flag.FlagSet, o *Options) *bool {
	fs.StringVar(&o.Dir, "dir", o.Dir, "lab directory (state, PKI, logs)")
	fs.IntVar(&o.Nodes, "nodes", o.Nodes, "number of kubelet nodes")
	fs.StringVar(&o.Examples, "examples", o.Examples, "directory of the manifests to apply (db.yaml, web.yaml, web-svc.yaml, web-ingress.yaml)")
	fs.StringVar(&o.Deploy, "deploy", o.Deploy, "directory of the install manifests (namespace, rbac, configmap, daemonset, controller)")
	fs.StringVar(&o.Name, "name", o.Name, "prefix of host-visible names: bridge <name>0, netns <name>-node<i>")
	fs.Func("underlay", "node network; .1 is this host, .11... the nodes (default "+o.Underlay.String()+")", func(v string) error {
		p, err := netip.ParsePrefix(v)
		o.Underlay = p
		return err
	})
	fs.IntVar(&o.APIPort, "api-port", o.APIPort, "API server port on the underlay's host address")
	fs.IntVar(&o.MaxPods, "max-pods", o.MaxPods, fmt.Sprintf("each kubelet's maxPods (0: %d; kube-ipam-lab bench: enough for its pods)", DefaultMaxPods))
	o.Store = StoreEtcd
	if v := os.Getenv("LAB_STORE"); v != "" {
		o.Store = v
	}
	fs.StringVar(&o.Store, "store", o.Store, "where kube-ipam keeps its allocations: "+StoreEtcd+
		" (the guide's dedicated etcd) or "+StoreKubernetes+" (IPAllocation objects in the API; env LAB_STORE)")
	o.Mode = ModeDelegates
	if v := os.Getenv("LAB_MODE"); v != "" {
		o.Mode = v
	}
	fs.StringVar(&o.Mode, "mode", o.Mode, "how pods get the database network: "+ModeDelegates+" (the guide: kube-multus delegates mode), "+
		ModeNAD+" (a NetworkAttachmentDefinition under kube-multus in Kubernetes mode) or "+ModeMultus+
		" (the same NAD under upstream multus "+MultusVersion+", kube-ipam installed IPAM-only; hack/multus.sh); env LAB_MODE")
	return fs.Bool("keep", envBool("LAB_KEEP"), "keep the lab running after the replay (env LAB_KEEP=1)")
}

func flags(name string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("kube-ipam-lab "+name, flag.ContinueOnError)
	fs.SetOutput(out)
	return fs
}

func envBool(k string) bool {
	b, _ := strconv.ParseBool(os.Getenv(k))
	return b
}

// repoRoot is the checkout the binary was built in (bin/kube-ipam-lab).
func repoRoot() string {
	exe, err := os.Executable()
	if err != nil {
		wd, _ := os.Getwd()
		return wd
	}
	return filepath.Dir(filepath.Dir(exe))
}
