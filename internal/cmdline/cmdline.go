// Package cmdline is the one home of how kube-ipam's binaries answer a
// command line they cannot use: the reason, naming the flag or argument,
// then the usage, on stderr, and exit status 2 (ExitUsage); --help prints
// the usage and exits 0. A daemon (kube-ipam-controller,
// kube-ipam-install) whose pod has a typo in its args then shows why in
// its log instead of a CrashLoopBackOff with empty logs. test/cmdline runs
// every built binary with an unknown flag.
package cmdline

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// ExitUsage is the exit status of a command line that cannot be used.
const ExitUsage = 2

// Parse parses args with fs, whose errors are ContinueOnError (pflag then
// prints nothing itself). ok is false when the program must stop now, with
// code: 0 after --help (the usage printed on stdout), ExitUsage after a bad
// flag, a bad flag value, or a positional argument when positional is
// false (the reason and the usage printed on fs.Output(), stderr unless
// set).
func Parse(fs *pflag.FlagSet, args []string, positional bool) (code int, ok bool) {
	// pflag prints the usage itself on --help, to fs.Output() (stderr):
	// muted here, since help that is asked for goes to stdout.
	usage := fs.Usage
	fs.Usage = func() {}
	err := fs.Parse(args)
	fs.Usage = usage
	if errors.Is(err, pflag.ErrHelp) {
		out := fs.Output()
		fs.SetOutput(stdout(out))
		printUsage(fs)
		fs.SetOutput(out)
		return 0, false
	}
	if err != nil {
		return Fail(fs, "%v", err), false
	}
	if !positional && fs.NArg() > 0 {
		return Fail(fs, "unexpected argument %q (it takes flags only)", fs.Arg(0)), false
	}
	return 0, true
}

// Fail prints "<name>: <reason>" and the usage of fs on fs.Output(), and
// returns ExitUsage: for a flag value that parses but cannot be used
// (--log-level loud, a missing required flag).
func Fail(fs *pflag.FlagSet, format string, a ...any) int {
	fmt.Fprintf(fs.Output(), "%s: %s\n\n", fs.Name(), fmt.Sprintf(format, a...))
	printUsage(fs)
	return ExitUsage
}

// printUsage is fs.Usage when set, else "Usage of <name>:" and the flags.
func printUsage(fs *pflag.FlagSet) {
	if fs.Usage != nil {
		fs.Usage()
		return
	}
	fmt.Fprintf(fs.Output(), "Usage of %s:\n%s", fs.Name(), fs.FlagUsages())
}

// stdout is where help goes: os.Stdout when fs writes to os.Stderr, else
// fs's own writer (a test's buffer).
func stdout(out io.Writer) io.Writer {
	if out == io.Writer(os.Stderr) {
		return os.Stdout
	}
	return out
}

// Plugin answers the command line of a CNI plugin, which a container
// runtime runs without arguments (CNI_COMMAND in the environment, the
// config on stdin). ok is false when the program must stop now, with
// code: --version (or -version, version) prints "<name> <version>" on
// stdout, --help (-help, -h) prints the usage on stdout, both exit 0; any
// other argument prints the reason and the usage on stderr and exits
// ExitUsage. usage says what the plugin is, after "<name> <version> is ".
func Plugin(args []string, name, version, usage string, stdout, stderr io.Writer) (code int, ok bool) {
	if len(args) == 0 {
		return 0, true
	}
	text := fmt.Sprintf("%s %s is %s\n\nUsage:\n  %s            (run by the container runtime)\n  %s --version\n  %s --help\n",
		name, version, strings.TrimSpace(usage), name, name, name)
	switch args[0] {
	case "-version", "--version", "version":
		fmt.Fprintln(stdout, name, version)
		return 0, false
	case "-help", "--help", "-h", "help":
		fmt.Fprint(stdout, text)
		return 0, false
	}
	what := "argument"
	if strings.HasPrefix(args[0], "-") {
		what = "flag"
	}
	fmt.Fprintf(stderr, "%s: unknown %s %q\n\n%s", name, what, args[0], text)
	return ExitUsage, false
}

// NoArgs answers the command line of a program that takes none
// (kube-ipam-lab-pause): any argument prints the reason and the usage
// ("Usage: <name>", then what, a sentence) on stderr and exits ExitUsage;
// --help prints the usage on stdout and exits 0.
func NoArgs(args []string, name, what string, stdout, stderr io.Writer) (code int, ok bool) {
	if len(args) == 0 {
		return 0, true
	}
	text := fmt.Sprintf("Usage:\n  %s\n\n%s takes no arguments: %s\n", name, name, strings.TrimSpace(what))
	switch args[0] {
	case "-help", "--help", "-h":
		fmt.Fprint(stdout, text)
		return 0, false
	}
	fmt.Fprintf(stderr, "%s: unexpected argument %q\n\n%s", name, args[0], text)
	return ExitUsage, false
}
