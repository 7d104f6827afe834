package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// completeConf writes the fixture's multus config (confTmpl): completion
// reads it and never the store, so the etcd it names need not exist.
func completeConf(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "00-multus.conf")
	if err := os.WriteFile(p, fmt.Appendf(nil, confTmpl, "http://127.0.0.1:1", prefix), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// complete runs cobra's hidden __complete command, as the shell scripts of
// 'kube-ipamctl completion SHELL' do, and returns the candidates and the
// directive (the last line, ":<n>").
func complete(t *testing.T, app *App, args ...string) ([]string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	app.Out, app.Err = &out, &errb
	if code := app.Run(context.Background(), append([]string{"__complete"}, args...)); code != 0 {
		t.Fatalf("__complete %q: exit %d, stderr %s", args, code, errb.String())
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	return lines[:len(lines)-1], lines[len(lines)-1]
}

func TestCompletion(t *testing.T) {
	dir := t.TempDir()
	conf := completeConf(t, dir)
	const noFile = ":4" // cobra.ShellCompDirectiveNoFileComp
	networks := []string{"k8snet2\t10.188.0.0/24", "k8snet3\t10.189.0.0/28,fd00:189::/120"}
	for _, c := range []struct {
		name string
		app  *App
		env  string // $KUBE_IPAMCTL_CONFIG
		args []string
		want []string
		dir  string
	}{
		{"--network of list, --config before the command", &App{}, "", []string{"--config", conf, "list", "--network", ""}, networks, noFile},
		{"--network of release, --config after", &App{}, "", []string{"release", "10.188.0.12", "--config=" + conf, "--network", "k8snet3"}, networks[1:], noFile},
		{"--network= of reserve, prefix", &App{}, "", []string{"reserve", "--config", conf, "--network=k8snet2"}, []string{"k8snet2\t10.188.0.0/24"}, noFile},
		{"$KUBE_IPAMCTL_CONFIG", &App{}, conf, []string{"list", "--network", "k"}, networks, noFile},
		{"the config found in the conf dir", &App{ConfDir: dir}, "", []string{"list", "--network", ""}, networks, noFile},
		{"no config anywhere", &App{ConfDir: t.TempDir()}, "", []string{"list", "--network", ""}, nil, noFile},
		{"-o", &App{}, "", []string{"list", "-o", ""}, []string{"table", "json", "yaml"}, noFile},
		{"--output prefix", &App{}, "", []string{"networks", "--output", "j"}, []string{"json"}, noFile},
		{"an IP argument", &App{}, "", []string{"who-has", ""}, nil, noFile},
		// --config completes files with these extensions (cobra's
		// directive 8, FilterFileExt).
		{"--config", &App{}, "", []string{"list", "--config", ""}, []string{"conf", "conflist", "json"}, ":8"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("KUBE_IPAMCTL_CONFIG", c.env)
			got, dir := complete(t, c.app, c.args...)
			if !slices.Equal(got, c.want) || dir != c.dir {
				t.Errorf("__complete %q = %q %s, want %q %s", c.args, got, dir, c.want, c.dir)
			}
		})
	}

	// The commands, completion among them.
	got, _ := complete(t, &App{}, "")
	for _, want := range []string{"check", "completion", "gc", "list", "migrate", "networks", "release", "reserve", "show", "version", "who-has"} {
		if !slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, want+"\t") }) {
			t.Errorf("__complete \"\": no command %s in %q", want, got)
		}
	}
}

// completion SHELL prints cobra's script for each shell; the bash one
// parses; an unknown shell is a usage error.
func TestCompletionScripts(t *testing.T) {
	for shell, marker := range map[string]string{
		"bash": "__start_kube-ipamctl", "zsh": "#compdef kube-ipamctl", "fish": "complete -c kube-ipamctl",
		"powershell": "Register-ArgumentCompleter",
	} {
		var out, errb bytes.Buffer
		app := &App{Out: &out, Err: &errb}
		if code := app.Run(context.Background(), []string{"completion", shell}); code != 0 || !strings.Contains(out.String(), marker) ||
			!strings.Contains(out.String(), "__complete") {
			t.Errorf("completion %s: exit %d, stderr %q; script lacks %q or __complete", shell, code, errb.String(), marker)
		}
		if shell == "bash" {
			if bash, err := exec.LookPath("bash"); err == nil {
				cmd := exec.Command(bash, "-n")
				cmd.Stdin = &out
				if msg, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("bash -n on the bash completion script: %v\n%s", err, msg)
				}
			}
		}
	}
	var out, errb bytes.Buffer
	app := &App{Out: &out, Err: &errb}
	if code := app.Run(context.Background(), []string{"completion", "tcsh"}); code != 2 || !strings.Contains(errb.String(), `"tcsh"`) ||
		!strings.Contains(errb.String(), "Usage:") || out.Len() != 0 {
		t.Errorf("completion tcsh: exit %d, stdout %q, stderr %q; want 2, the shell named and the usage", code, out.String(), errb.String())
	}
}
