package release

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"kubeipam/internal/cmdline"
	"kubeipam/internal/oci"
)

// Main is kube-ipam-release (make release): it parses args, builds the
// release and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	var o Options
	var platforms string
	fs := pflag.NewFlagSet("kube-ipam-release", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Version, "version", "", "version of the release, e.g. v0.1.0 (required; make release passes git describe)")
	fs.StringVar(&o.Revision, "revision", "", "git commit, for the image's org.opencontainers.image.revision label")
	fs.StringVar(&o.Dist, "dist", "dist", "output directory")
	fs.StringVar(&o.Image, "image", DefaultImage, "image repository, without tag (the tag is --version)")
	fs.StringVar(&platforms, "platforms", "linux/amd64,linux/arm64", "comma-separated os/arch list")
	if code, ok := cmdline.Parse(fs, args, false); !ok {
		return code
	}
	if o.Version == "" {
		return cmdline.Fail(fs, "--version is required, e.g. --version v0.1.0")
	}
	for _, s := range strings.Split(platforms, ",") {
		os_, arch, ok := strings.Cut(strings.TrimSpace(s), "/")
		if !ok || os_ == "" || arch == "" {
			return cmdline.Fail(fs, "--platforms: %q is not os/arch", s)
		}
		o.Platforms = append(o.Platforms, oci.Platform{OS: os_, Architecture: arch})
	}
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(stderr, "kube-ipam-release:", err)
		return 1
	}
	o.ModuleRoot = root
	if o.Dist, err = filepath.Abs(o.Dist); err != nil {
		fmt.Fprintln(stderr, "kube-ipam-release:", err)
		return 1
	}
	o.Log = stdout
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := Build(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, "kube-ipam-release:", err)
		return 1
	}
	fmt.Fprintf(stdout, "release %s in %s: %s, %s, %s, %s\n", o.Version, o.Dist, strings.Join(r.Archives, ", "), r.Image, r.Chart, r.Sums)
	return 0
}

// moduleRoot is the directory above the working directory that holds
// kube-ipam's go.mod (make release runs from the repository's root).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), "module kubeipam") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no kube-ipam go.mod (module kubeipam) in the working directory or above it: run from the repository")
		}
		dir = parent
	}
}
