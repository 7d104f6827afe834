package cmdline_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"kubeipam/internal/cmdline"
)

// Parse and Fail: each refused command line names the flag or argument,
// then prints the usage, and exits 2; --help prints the usage and exits 0.
func TestParse(t *testing.T) {
	for _, c := range []struct {
		args       []string
		positional bool
		code       int
		ok         bool
		want       []string // in the output, in this order
	}{
		{[]string{"--resync", "1m"}, false, 0, true, nil},
		{[]string{"--resycn", "1m"}, false, 2, false, []string{"demo: unknown flag: --resycn", "Usage of demo:", "--resync duration"}},
		{[]string{"-x"}, false, 2, false, []string{"unknown shorthand flag: 'x' in -x", "Usage of demo:"}},
		{[]string{"--resync", "soon"}, false, 2, false, []string{`invalid argument "soon" for "--resync" flag`, "Usage of demo:"}},
		{[]string{"--resync"}, false, 2, false, []string{"flag needs an argument: --resync", "Usage of demo:"}},
		{[]string{"extra"}, false, 2, false, []string{`demo: unexpected argument "extra" (it takes flags only)`, "Usage of demo:"}},
		{[]string{"extra"}, true, 0, true, nil},
		{[]string{"--help"}, false, 0, false, []string{"Usage of demo:", "--resync duration"}},
		{[]string{"-h"}, false, 0, false, []string{"Usage of demo:"}},
	} {
		fs := pflag.NewFlagSet("demo", pflag.ContinueOnError)
		var out bytes.Buffer
		fs.SetOutput(&out)
		fs.Duration("resync", 0, "period")
		code, ok := cmdline.Parse(fs, c.args, c.positional)
		if code != c.code || ok != c.ok {
			t.Errorf("Parse(%q) = %d, %v; want %d, %v", c.args, code, ok, c.code, c.ok)
		}
		assertInOrder(t, c.args, out.String(), c.want)
		if strings.Count(out.String(), "Usage of") > 1 {
			t.Errorf("Parse(%q) printed the usage twice:\n%s", c.args, out.String())
		}
	}
	fs := pflag.NewFlagSet("demo", pflag.ContinueOnError)
	var out bytes.Buffer
	fs.SetOutput(&out)
	fs.Usage = func() { out.WriteString("custom usage\n") }
	if code := cmdline.Fail(fs, "--log-level %q: want debug", "loud"); code != cmdline.ExitUsage {
		t.Errorf("Fail = %d", code)
	}
	assertInOrder(t, []string{"Fail"}, out.String(), []string{`demo: --log-level "loud": want debug`, "custom usage"})
}

func TestPluginAndNoArgs(t *testing.T) {
	for _, c := range []struct {
		args             []string
		code             int
		ok               bool
		wantOut, wantErr []string
	}{
		{nil, 0, true, nil, nil},
		{[]string{"--version"}, 0, false, []string{"kube-x v1\n"}, nil},
		{[]string{"version"}, 0, false, []string{"kube-x v1\n"}, nil},
		{[]string{"--help"}, 0, false, []string{"kube-x v1 is a plugin.", "Usage:", "kube-x --version"}, nil},
		{[]string{"--verison"}, 2, false, nil, []string{`kube-x: unknown flag "--verison"`, "Usage:", "kube-x --help"}},
		{[]string{"add"}, 2, false, nil, []string{`kube-x: unknown argument "add"`, "Usage:"}},
	} {
		var out, errb bytes.Buffer
		code, ok := cmdline.Plugin(c.args, "kube-x", "v1", "a plugin.", &out, &errb)
		if code != c.code || ok != c.ok {
			t.Errorf("Plugin(%q) = %d, %v; want %d, %v", c.args, code, ok, c.code, c.ok)
		}
		assertInOrder(t, c.args, out.String(), c.wantOut)
		assertInOrder(t, c.args, errb.String(), c.wantErr)
	}
	var out, errb bytes.Buffer
	if code, ok := cmdline.NoArgs([]string{"--bogus"}, "pause", "it waits.", &out, &errb); code != 2 || ok {
		t.Errorf("NoArgs(--bogus) = %d, %v", code, ok)
	}
	assertInOrder(t, []string{"--bogus"}, errb.String(), []string{`pause: unexpected argument "--bogus"`, "Usage:", "takes no arguments: it waits."})
	if code, ok := cmdline.NoArgs(nil, "pause", "it waits.", &out, &errb); code != 0 || !ok {
		t.Errorf("NoArgs() = %d, %v", code, ok)
	}
}

func assertInOrder(t *testing.T, args []string, got string, want []string) {
	t.Helper()
	rest := got
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Errorf("%q: output lacks %q (in order):\n%s", args, w, got)
			return
		}
		rest = rest[i+len(w):]
	}
	if len(want) == 0 && got != "" {
		t.Errorf("%q: unexpected output %q", args, got)
	}
}
