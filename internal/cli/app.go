// Package cli is kube-ipamctl, the operator's view of kube-ipam's store: it
// reads the same network config as the plugin and lists, checks and
// (guardedly) releases allocations. The commands are a cobra tree (root.go,
// one cmd_*.go per command family); App.Run maps their outcome to exit
// statuses and messages. Every command writes to an io.Writer and takes
// its clock and clients from App, so tests run it against a real etcd and
// kube-apiserver with deterministic output.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/kubernetes"

	"kubeipam/internal/cmdline"
	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/version"
)

// App runs kube-ipamctl commands. Zero fields take production defaults.
type App struct {
	Out, Err io.Writer
	Now      func() time.Time
	// Connect opens an etcd client (default store.Connect).
	Connect func(e config.Etcd, dialTimeout time.Duration) (*clientv3.Client, error)
	// Kube builds the Kubernetes clientset of check, release and gc for a
	// network whose kubeconfig in effect is kubeconfig (--kubeconfig, else
	// ipam.kubeConfig). The default follows KubeRESTConfig's rule.
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
	// Flag is --kubeconfig as given (empty when not), which wins over the
	// network's ipam.kubeConfig: see KubeRESTConfig.
	Flag string
}

// cmdLineError is a command line cobra or an Args check refuses (unknown
// flag, bad flag value, wrong number of arguments): the reason, then the
// command's whole help, exit 2.
type cmdLineError struct{ err error }

func (e *cmdLineError) Error() string { return e.err.Error() }

// Run executes args (without the program name) and returns the exit status.
func (a *App) Run(ctx context.Context, args []string) int {
	a.defaults()
	root := a.newRoot()
	// Built here, as cobra's Execute would, so that Find knows them.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	strictCompletionCmd(root)

	idx := commandIndex(root, args)
	if idx < 0 {
		return a.noCommand(root, args)
	}
	name := args[idx]
	if c, _, err := root.Find([]string{name}); !isCompletionRequest(name) && (err != nil || c == root) {
		fmt.Fprintf(a.Err, "kube-ipamctl: unknown command %q\n\n", name)
		root.SetOut(a.Err)
		_ = root.Usage()
		return cmdline.ExitUsage
	}
	// The command word first: flags may be given before it (even the
	// commands' own, "--network N list"), which cobra would otherwise
	// take for the root's.
	args = append(append([]string{name}, args[:idx]...), args[idx+1:]...)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	var cl *cmdLineError
	if errors.As(err, &cl) {
		fmt.Fprintf(a.Err, "kube-ipamctl %s: %v\n\n", cmd.Name(), cl.err)
		cmd.SetOut(a.Err)
		_ = cmd.Help()
		return cmdline.ExitUsage
	}
	var ee *ExitError
	if !errors.As(err, &ee) {
		ee = &ExitError{Code: 3, Msg: err.Error()}
	}
	fmt.Fprintf(a.Err, "kube-ipamctl %s: %s\n", cmd.Name(), ee.Msg)
	if ee.Code == cmdline.ExitUsage {
		// A flag value or argument found wrong once the command runs:
		// the whole help would bury the reason.
		fmt.Fprintf(a.Err, "\nUsage:\n  %s\nSee '%s --help'.\n", cmd.UseLine(), cmd.CommandPath())
	}
	return ee.Code
}

func (a *App) defaults() {
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
}

// noCommand answers a command line without a command word: --help and
// --version are answered, anything else is a usage error.
func (a *App) noCommand(root *cobra.Command, args []string) int {
	for _, s := range args {
		switch s {
		case "-h", "--help":
			root.SetOut(a.Out)
			_ = root.Help()
			return 0
		case "--version":
			fmt.Fprintln(a.Out, "kube-ipamctl", version.Version)
			return 0
		}
	}
	if len(args) == 0 {
		fmt.Fprint(a.Err, "kube-ipamctl: missing command\n\n")
	} else {
		fmt.Fprintf(a.Err, "kube-ipamctl: missing command (got only %s)\n\n", strings.Join(args, " "))
	}
	root.SetOut(a.Err)
	_ = root.Usage()
	return cmdline.ExitUsage
}

// commandIndex is the index in args of the command word: the first
// argument that is neither a flag nor the value of a flag that takes one
// (any command's), or -1.
func commandIndex(root *cobra.Command, args []string) int {
	takesValue := valueFlags(root)
	for i := 0; i < len(args); i++ {
		s := args[i]
		if s == "--" {
			return -1
		}
		if strings.HasPrefix(s, "-") {
			if takesValue[s] {
				i++
			}
			continue
		}
		return i
	}
	return -1
}

// valueFlags are the spellings ("--network", "-n") of every flag of the
// tree that takes a value (pflag gives the others a NoOptDefVal).
func valueFlags(root *cobra.Command) map[string]bool {
	m := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if f.NoOptDefVal == "" {
				m["--"+f.Name] = true
				if f.Shorthand != "" {
					m["-"+f.Shorthand] = true
				}
			}
		})
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	return m
}

// isCompletionRequest: cobra's hidden commands that shells call for
// dynamic completion, added by Execute itself.
func isCompletionRequest(name string) bool {
	return name == cobra.ShellCompRequestCmd || name == cobra.ShellCompNoDescRequestCmd
}
