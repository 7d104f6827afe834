// Package cmdline_test runs every binary of cmd/ with a command line it
// cannot use: each must say why (naming the flag or argument) and how it
// is used, on stderr, and exit 2 (package internal/cmdline). A daemon that
// exits 2 in silence is a CrashLoopBackOff with empty logs.
package cmdline_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kubeipam/internal/testenv"
)

// TestEveryBinaryExplainsABadFlag: cmd/<name> with an unknown flag (and the
// CLIs' commands with one too) exits 2, names the flag and prints a usage
// on stderr, nothing on stdout. The binaries are listed from cmd/, so a new
// one is covered as soon as it exists.
func TestEveryBinaryExplainsABadFlag(t *testing.T) {
	entries, err := os.ReadDir(filepath.Join(testenv.ModuleRoot(t), "cmd"))
	if err != nil {
		t.Fatal(err)
	}
	var lines [][]string
	for _, e := range entries {
		if e.IsDir() {
			lines = append(lines, []string{e.Name(), "--no-such-flag"})
		}
	}
	if len(lines) < 8 {
		t.Fatalf("only %d binaries under cmd/", len(lines))
	}
	// The commands of the binaries that have some.
	lines = append(lines, []string{"kube-ipamctl", "list", "--no-such-flag"}, []string{"kube-ipam-lab", "up", "--no-such-flag"},
		[]string{"kube-ipam-lab", "down", "--no-such-flag"})
	for _, l := range lines {
		t.Run(strings.Join(l, " "), func(t *testing.T) {
			if dir := os.Getenv("KUBE_IPAM_BIN_DIR"); dir != "" {
				if _, err := os.Stat(filepath.Join(dir, l[0])); err != nil {
					// make build leaves out the release tool: build it here.
					t.Setenv("KUBE_IPAM_BIN_DIR", "")
				}
			}
			bin := testenv.Binary(t, l[0])
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, l[1:]...)
			// No CNI_COMMAND: a plugin run by hand, as an operator would.
			cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("%q: %v, want exit status 2; stderr:\n%s", l, err, stderr.String())
			}
			msg := stderr.String()
			// The reason comes first, naming the flag (Go's flag package
			// writes it with one dash).
			first, _, _ := strings.Cut(msg, "\n")
			if !strings.Contains(first, "-no-such-flag") {
				t.Errorf("%q: the first line of stderr does not name the flag: %q", l, first)
			}
			if !strings.Contains(msg, "Usage") {
				t.Errorf("%q: no usage on stderr:\n%s", l, msg)
			}
			if strings.Contains(msg, "panic") || strings.Contains(msg, "goroutine ") {
				t.Errorf("%q: panicked:\n%s", l, msg)
			}
			if stdout.Len() > 0 {
				t.Errorf("%q: wrote on stdout: %q", l, stdout.String())
			}
		})
	}
}
