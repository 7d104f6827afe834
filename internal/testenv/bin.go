package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// ModuleRoot returns the directory holding go.mod, found by walking up from
// the working directory (go test runs in the package directory).
func ModuleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		if filepath.Dir(dir) == dir {
			t.Fatal("no go.mod above the working directory")
		}
		dir = filepath.Dir(dir)
	}
}

var (
	builds sync.Map // binary name -> func() (string, error)
	// buildDir is shared by the whole test process and left behind at exit
	// (no hook runs then); it lives under os.TempDir.
	buildDir = sync.OnceValues(func() (string, error) { return os.MkdirTemp("", "kube-ipam-bin-") })
)

// Binary returns the path of the project binary ./cmd/<name>. With
// KUBE_IPAM_BIN_DIR set (e.g. to test release artefacts) it is the prebuilt
// $KUBE_IPAM_BIN_DIR/<name>; otherwise it is built once per test process,
// so tests share the build.
func Binary(t testing.TB, name string) string {
	t.Helper()
	if dir := os.Getenv("KUBE_IPAM_BIN_DIR"); dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("KUBE_IPAM_BIN_DIR is set but %v", err)
		}
		return p
	}
	root := ModuleRoot(t) // outside the once: t.Fatal must not poison it
	f, _ := builds.LoadOrStore(name, sync.OnceValues(func() (string, error) {
		dir, err := buildDir()
		if err != nil {
			return "", err
		}
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./cmd/"+name)
		cmd.Dir = root
		// Static, as make build does: binaries also run inside lab images.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build ./cmd/%s: %v\n%s", name, err, b)
		}
		return out, nil
	}))
	p, err := f.(func() (string, error))()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// CNIPluginDir returns the directory of the reference CNI plugins (bridge,
// macvlan, host-local, ...): $KUBE_IPAM_CNI_PLUGINS or /usr/lib/cni.
func CNIPluginDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("KUBE_IPAM_CNI_PLUGINS")
	if dir == "" {
		dir = "/usr/lib/cni"
	}
	if _, err := os.Stat(filepath.Join(dir, "host-local")); err != nil {
		missing(t, "reference CNI plugins not found (%v): run `apt-get install containernetworking-plugins` or set KUBE_IPAM_CNI_PLUGINS", err)
	}
	return dir
}
