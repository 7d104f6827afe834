package testenv

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// requireGone asserts that the process has been reaped, i.e. no etcd leaks.
func requireGone(t *testing.T, pid int) {
	t.Helper()
	if pid <= 0 { // never started (skipped); kill(0) would hit our group
		return
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("etcd pid %d still exists after cleanup (kill 0: %v)", pid, err)
	}
}

// Cleanup order is observable only from outside, hence the sub-tests: their
// cleanups have run when t.Run returns.
func TestEtcdStopRestart(t *testing.T) {
	var pid int
	var dir string
	t.Run("lifecycle", func(t *testing.T) {
		e := StartEtcd(t)
		dir = e.DataDir
		c := e.Client(t)
		if _, err := c.Put(ctxT(t, 5*time.Second), "k", "v"); err != nil {
			t.Fatal(err)
		}

		killed := e.cmd.Process.Pid
		e.Stop(t)
		e.Stop(t) // idempotent
		requireGone(t, killed)
		_, err := c.Get(ctxT(t, 500*time.Millisecond), "k")
		if !errors.Is(err, context.DeadlineExceeded) && status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("Get with etcd down: got %v, want deadline exceeded", err)
		}

		e.Restart(t)
		pid = e.cmd.Process.Pid
		// The old client must reconnect by itself, as the plugin's would.
		resp, err := c.Get(ctxT(t, 10*time.Second), "k")
		if err != nil {
			t.Fatalf("Get after restart: %v", err)
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
			t.Fatalf("data not persisted across restart: %v", resp.Kvs)
		}
	})
	requireGone(t, pid)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("data dir %s not removed: %v", dir, err)
	}
}

func TestEtcdTLS(t *testing.T) {
	var pid int
	t.Run("tls", func(t *testing.T) {
		e := StartEtcdTLS(t)
		pid = e.cmd.Process.Pid
		if !strings.HasPrefix(e.Endpoints[0], "https://") {
			t.Fatalf("endpoint %q is not https", e.Endpoints[0])
		}
		for _, f := range []string{e.KeyFile, filepath.Join(filepath.Dir(e.KeyFile), "server-key.pem")} {
			if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("key %s: %v %v; want mode 0600", f, fi, err)
			}
		}
		c := e.Client(t)
		if _, err := c.Put(ctxT(t, 5*time.Second), "k", "v"); err != nil {
			t.Fatal(err)
		}
		resp, err := c.Get(ctxT(t, 5*time.Second), "k")
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("Get over TLS: %v %v", resp, err)
		}

		// Trusts the server but presents no client certificate.
		cfg, err := e.clientConfig()
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLS.Certificates, cfg.TLS.GetClientCertificate = nil, nil
		anon, err := clientv3.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer anon.Close()
		if _, err := anon.Get(ctxT(t, time.Second), "k"); err == nil {
			t.Fatal("client without certificate was accepted")
		}
		// gRPC only reports a timeout; the TLS layer shows why.
		conn, err := tls.Dial("tcp", strings.TrimPrefix(e.ClientURL, "https://"), cfg.TLS)
		if err == nil {
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1))
		}
		// The alert depends on the server's Go version.
		if err == nil || !strings.Contains(err.Error(), "bad certificate") && !strings.Contains(err.Error(), "certificate required") {
			t.Fatalf("TLS without client certificate: got %v, want a certificate alert", err)
		}
	})
	requireGone(t, pid)
}

func TestNetNSVeth(t *testing.T) {
	RequireRoot(t)
	var paths []string
	t.Run("ns", func(t *testing.T) {
		a, b := NewNS(t), NewNS(t)
		paths = []string{a.Path(), b.Path()}
		nameA, nameB := UniqueName("tva"), UniqueName("tvb")
		t.Run("veth", func(t *testing.T) {
			VethPair(t, a, nameA, b, nameB)
			for _, c := range []struct {
				n    ns.NetNS
				name string
			}{{a, nameA}, {b, nameB}} {
				l := linkIn(t, c.n, c.name)
				if l == nil || l.Type() != "veth" || l.Attrs().Flags&net.FlagUp == 0 {
					t.Errorf("%s in %s: got %v, want an up veth", c.name, c.n.Path(), l)
				}
			}
			if _, err := netlink.LinkByName(nameA); err == nil {
				t.Errorf("%s leaked into the test's own namespace", nameA)
			}
		})
		// The sub-test's cleanup has run: both ends must be gone.
		if linkIn(t, a, nameA) != nil || linkIn(t, b, nameB) != nil {
			t.Error("veth pair survived cleanup")
		}
	})
	for _, p := range paths {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("netns %s not removed: %v", p, err)
		}
	}
}

func linkIn(t *testing.T, n ns.NetNS, name string) (l netlink.Link) {
	t.Helper()
	err := n.Do(func(ns.NetNS) error {
		var err error
		l, err = netlink.LinkByName(name)
		if errors.As(err, &netlink.LinkNotFoundError{}) {
			return nil
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestUniqueName(t *testing.T) {
	for _, p := range []string{"", "v", "kipam-", "elevenchars"} {
		a, b := UniqueName(p), UniqueName(p)
		if a == b || len(a) > 15 || !strings.HasPrefix(a, p) {
			t.Errorf("UniqueName(%q) = %q, %q", p, a, b)
		}
	}
}

func TestBinary(t *testing.T) {
	// A throwaway module, entered from a subdirectory, exercises both the
	// walk up to go.mod and the build.
	mod := t.TempDir()
	main := filepath.Join(mod, "cmd", "hello")
	if err := errors.Join(os.MkdirAll(main, 0o755),
		os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module hello\n"), 0o644),
		os.WriteFile(filepath.Join(main, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644)); err != nil {
		t.Fatal(err)
	}
	t.Chdir(main)
	if got := ModuleRoot(t); got != mod {
		t.Fatalf("ModuleRoot = %q, want %q", got, mod)
	}
	// The throwaway module's build dir goes with it; dropping the
	// process-wide cache makes -count=N really rebuild.
	t.Cleanup(func() {
		if dir, err := buildDir(mod); err == nil {
			os.RemoveAll(dir)
		}
		builds.Clear()
	})
	t.Setenv("KUBE_IPAM_BIN_DIR", "")
	p := Binary(t, "hello")
	if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("built binary %s: %v %v", p, fi, err)
	}
	if again := Binary(t, "hello"); again != p {
		t.Errorf("second Binary = %q, want cached %q", again, p)
	}

	t.Setenv("KUBE_IPAM_BIN_DIR", filepath.Dir(p))
	if got := Binary(t, "hello"); got != p {
		t.Errorf("Binary with KUBE_IPAM_BIN_DIR = %q, want %q", got, p)
	}
}

func TestCNIPluginDir(t *testing.T) {
	dir := CNIPluginDir(t)
	for _, p := range []string{"macvlan", "bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Error(err)
		}
	}
}
