package testenv

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

var builds sync.Map // binary name -> func() (string, error)

// buildDir is where Binary builds: one directory per checkout in the user
// cache, reused by every test process (go's build cache makes rebuilding
// cheap), so nothing accumulates in the temp directory.
func buildDir(root string) (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = filepath.Join(os.TempDir(), ".cache")
	}
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(cache, "kube-ipam", "test-binaries", hex.EncodeToString(sum[:6]))
	return dir, os.MkdirAll(dir, 0o755)
}

// Binary returns the path of the project binary ./cmd/<name>. With
// KUBE_IPAM_BIN_DIR set (e.g. to test release artefacts) it is the prebuilt
// $KUBE_IPAM_BIN_DIR/<name>; otherwise it is built once per test process,
// so tests share the build.
//
// kube-ipam comes with kube-ipam-direct beside it: the plugin process runs
// it when no node agent takes the call.
func Binary(t testing.TB, name string) string {
	t.Helper()
	if name == "kube-ipam" {
		Binary(t, "kube-ipam-direct")
	}
	if dir := os.Getenv("KUBE_IPAM_BIN_DIR"); dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("KUBE_IPAM_BIN_DIR is set but %v", err)
		}
		return p
	}
	root := ModuleRoot(t) // outside the once: t.Fatal must not poison it
	f, _ := builds.LoadOrStore(name, sync.OnceValues(func() (string, error) {
		dir, err := buildDir(root)
		if err != nil {
			return "", err
		}
		// Build beside and rename: test processes of other packages may be
		// running the previous build, or building the same binary now.
		out := filepath.Join(dir, name)
		tmp, err := os.CreateTemp(dir, "."+name+"-*")
		if err != nil {
			return "", err
		}
		tmp.Close()
		defer os.Remove(tmp.Name())
		cmd := exec.Command("go", "build", "-trimpath", "-o", tmp.Name(), "./cmd/"+name)
		cmd.Dir = root
		// Static, as make build does: binaries also run inside lab images.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build ./cmd/%s: %v\n%s", name, err, b)
		}
		return out, os.Rename(tmp.Name(), out)
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

// HackDir runs hack/<script>, one of the scripts that build a pinned tool
// from the Go module proxy into a cache outside the repository (in about
// 0.1 s when the cache has it already), and returns the directory the
// script prints. A failing script is Missing: skipped locally, a failure
// in CI.
func HackDir(t testing.TB, script string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(ModuleRoot(t), "hack", script))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		missing(t, "hack/%s failed (%v):\n%s", script, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}
