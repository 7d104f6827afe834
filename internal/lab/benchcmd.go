package lab

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// DefaultBenchOut is where `kube-ipam-lab bench` writes its table unless
// --out (LAB_BENCH_OUT) says otherwise: beside the lab directory, which
// the teardown removes.
const DefaultBenchOut = "/var/tmp/kube-ipam-lab-bench"

// benchMain is `kube-ipam-lab bench`: bring a lab up in a NAD mode (or
// reuse the one running in --dir), run Bench, print and write the table,
// and take down the lab it brought up (unless --keep), also after a
// failure or Ctrl-C.
func benchMain(args []string, stdout, stderr io.Writer) int {
	fs := flags("bench", stderr)
	o := DefaultOptions(repoRoot())
	keep := upDownFlags(fs, &o)
	// The variants are NADs pods ask for: the bench's default mode is nad.
	if os.Getenv("LAB_MODE") == "" {
		o.Mode = ModeNAD
		fs.Lookup("mode").DefValue = ModeNAD
	}
	bo := BenchOptions{Pods: DefaultBenchPods, Deadline: 10 * time.Minute, Rounds: 1}
	for _, e := range []struct {
		env, what string
		v         *int
	}{{"LAB_BENCH_N", "pods", &bo.Pods}, {"LAB_BENCH_ROUNDS", "rounds", &bo.Rounds}} {
		if v := os.Getenv(e.env); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				fmt.Fprintf(stderr, "kube-ipam-lab bench: %s=%q is not a number of %s\n", e.env, v, e.what)
				return 2
			}
			*e.v = n
		}
	}
	fs.IntVar(&bo.Pods, "pods", bo.Pods, "N: pods per variant, one Deployment scaled 0→N→0 (env LAB_BENCH_N)")
	fs.IntVar(&bo.Rounds, "rounds", bo.Rounds, "measure every variant this often, each round starting with another variant; the table gives the medians (env LAB_BENCH_ROUNDS)")
	fs.DurationVar(&bo.Deadline, "deadline", bo.Deadline, "a variant fails unless all its pods are Ready (then gone and free) within this")
	bo.Settle = 2 * time.Minute
	fs.DurationVar(&bo.Settle, "settle", bo.Settle, "once every pod is gone, addresses still held after this are a leak (reported; a leak of kube-ipam fails the run)")
	out := DefaultBenchOut
	if v := os.Getenv("LAB_BENCH_OUT"); v != "" {
		out = v
	}
	fs.StringVar(&out, "out", out, "directory for the table (pod-start-<time>.txt) and its JSON (env LAB_BENCH_OUT)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kube-ipam-lab bench: unexpected argument %q (it takes flags only)\n", fs.Arg(0))
		return 2
	}
	if bo.Pods < 1 {
		fmt.Fprintf(stderr, "kube-ipam-lab bench: --pods %d: want at least 1\n", bo.Pods)
		return 2
	}
	if bo.Rounds < 1 {
		fmt.Fprintf(stderr, "kube-ipam-lab bench: --rounds %d: want at least 1\n", bo.Rounds)
		return 2
	}
	if !o.NADs() {
		fmt.Fprintf(stderr, "kube-ipam-lab bench: mode %q: the benchmark's networks are NADs pods ask for: want %q (the default) or %q\n", o.Mode, ModeNAD, ModeMultus)
		return 2
	}
	if o.MaxPods == 0 {
		o.MaxPods = benchMaxPods(bo.Pods, o.Nodes)
	}
	o.Out = stdout

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var l *Lab
	ours := false
	if _, err := os.Stat(o.statePath()); err == nil {
		if l, err = Load(o.Dir); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		l.SetOutput(stdout)
		cs, err := l.client()
		if err == nil {
			_, err = cs.Discovery().ServerVersion()
		}
		if err != nil {
			fmt.Fprintf(stderr, "a lab's state is in %s but its API server does not answer (%v): run `make lab-down` first\n", o.Dir, err)
			return 1
		}
		fmt.Fprintf(stdout, "reusing the lab running in %s (mode %s); it stays up afterwards\n", o.Dir, l.opts.Mode)
	} else {
		var err error
		l, err = Up(ctx, o)
		ours = l != nil
		if err != nil {
			fmt.Fprintln(stderr, err)
			if l != nil {
				fmt.Fprintf(stderr, "logs: %s\n", filepath.Join(o.Dir, "logs"))
				if !*keep {
					benchDown(l, stop, stdout, stderr)
				}
			}
			return 1
		}
	}

	start := benchHeader(l.opts, bo) // the load average as the measurement starts
	results, err := l.Bench(ctx, bo)
	code := 0
	if err != nil {
		fmt.Fprintf(stderr, "pod-start benchmark failed: %v\n", err)
		code = 1
	}
	if len(results) > 0 {
		header := start + "\nload average at the end: " + loadAvg()
		fmt.Fprintln(stdout)
		BenchTable(stdout, results, header)
		path, werr := WriteBenchResults(out, results, header)
		if werr != nil {
			fmt.Fprintln(stderr, werr)
			code = 1
		} else {
			fmt.Fprintf(stdout, "written to %s\n", path)
		}
	}
	switch {
	case ours && *keep:
		fmt.Fprintf(stdout, "\nThe lab is up (LAB_KEEP): export KUBECONFIG=%s; take it down with: make lab-down\n", l.opts.Kubeconfig())
	case ours:
		if benchDown(l, stop, stdout, stderr) != 0 {
			code = 1
		}
	}
	return code
}

func benchDown(l *Lab, stop func(), stdout, stderr io.Writer) int {
	stop() // a second Ctrl-C now kills us; the state file allows `down` later
	fmt.Fprintln(stdout, "\ntaking the lab down (Ctrl-C again aborts; then run `make lab-down`) ...")
	if err := l.Down(context.Background()); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}
