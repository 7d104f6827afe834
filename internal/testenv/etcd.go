// Package testenv is the real-component test harness for kube-ipam: a
// throwaway etcd server (plain or mutual TLS), network namespaces and veth
// pairs, and the project's own binaries, so integration tests exercise the
// same processes and kernel objects as production rather than fakes.
//
// Every helper ties what it creates to t.Cleanup. A missing prerequisite
// (binary, root) skips the test locally but fails it when CI is set, so a
// misconfigured CI machine cannot go green by skipping everything.
package testenv

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"kubeipam/internal/pki"
)

// Etcd is a single-member etcd server owned by one test.
type Etcd struct {
	Endpoints []string
	ClientURL string
	// CAFile, CertFile and KeyFile are the client's TLS material; they are
	// empty unless the server came from StartEtcdTLS.
	CAFile, CertFile, KeyFile string
	DataDir, LogFile          string

	bin    string
	name   string
	args   []string
	cmd    *exec.Cmd
	exited <-chan struct{}
}

// StartEtcd starts a plain-HTTP etcd on loopback and waits until it serves.
func StartEtcd(t testing.TB) *Etcd { t.Helper(); return startEtcd(t, false) }

// StartEtcdTLS starts an HTTPS etcd that requires client certificates
// signed by a freshly generated CA.
func StartEtcdTLS(t testing.TB) *Etcd { t.Helper(); return startEtcd(t, true) }

func startEtcd(t testing.TB, secure bool) *Etcd {
	t.Helper()
	bin := os.Getenv("KUBE_IPAM_TEST_ETCD")
	if bin == "" {
		bin = "/usr/bin/etcd"
	}
	if _, err := os.Stat(bin); err != nil {
		missing(t, "etcd not available (%v): run `apt-get install etcd-server` or set KUBE_IPAM_TEST_ETCD", err)
	}
	// TempDir before Cleanup: cleanups run LIFO, so etcd is dead before its
	// data dir is removed.
	dir := t.TempDir()
	// A unique member name lets the health probe tell our server from
	// another test's that holds the same port.
	e := &Etcd{bin: bin, DataDir: filepath.Join(dir, "data"), LogFile: filepath.Join(dir, "etcd.log"), name: fmt.Sprintf("t%08x", mrand.Uint32())}
	scheme, tlsArgs := "http", []string(nil)
	if secure {
		scheme, tlsArgs = "https", e.writeCerts(t, dir)
	}
	t.Cleanup(func() {
		e.stop(syscall.SIGTERM)
		if t.Failed() { // including a failed start or restart
			e.dumpLog(t)
		}
	})
	for attempt := 1; ; attempt++ {
		// Ports are free only until we close our listeners, so another
		// process may grab one before etcd binds: retry on a clash.
		ports := freePorts(t, 2)
		e.ClientURL = fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[0])
		e.Endpoints = []string{e.ClientURL}
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
		// A single member cannot lose an election, so short raft timers only
		// cut the ~1s wait for leadership at every (re)start.
		e.args = append([]string{"--name", e.name, "--data-dir", e.DataDir,
			"--heartbeat-interval", "10", "--election-timeout", "100",
			"--listen-client-urls", e.ClientURL, "--advertise-client-urls", e.ClientURL,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", e.name + "=" + peer, "--logger", "zap", "--log-outputs", "stderr",
		}, tlsArgs...)
		err := e.start()
		if err == nil {
			return e
		}
		if log, _ := os.ReadFile(e.LogFile); attempt == 3 || !strings.Contains(string(log), "address already in use") {
			t.Fatalf("starting etcd: %v", err)
		}
		// The data dir records the peer URL; the next attempt uses new ports.
		_ = os.RemoveAll(e.DataDir)
	}
}

// Stop kills etcd at once (SIGKILL), as a crash would. It is idempotent.
func (e *Etcd) Stop(t testing.TB) { e.stop(syscall.SIGKILL) }

// Restart starts etcd again on the same ports and data dir (stopping it
// first if it is running) and waits until it serves.
func (e *Etcd) Restart(t testing.TB) {
	t.Helper()
	e.stop(syscall.SIGTERM)
	if err := e.start(); err != nil {
		t.Fatalf("restarting etcd: %v", err)
	}
}

// Client returns a client for e, closed when the test ends.
func (e *Etcd) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cfg, err := e.clientConfig()
	if err != nil {
		t.Fatal(err)
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (e *Etcd) clientConfig() (clientv3.Config, error) {
	cfg := clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if e.CAFile != "" {
		info := transport.TLSInfo{CertFile: e.CertFile, KeyFile: e.KeyFile, TrustedCAFile: e.CAFile}
		var err error
		if cfg.TLS, err = info.ClientConfig(); err != nil {
			return cfg, fmt.Errorf("etcd client TLS: %w", err)
		}
	}
	return cfg, nil
}

func (e *Etcd) start() error {
	logf, err := os.OpenFile(e.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(e.bin, e.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Inherited ETCD_* variables would silently reconfigure the server.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	exited, err := startPinned(cmd)
	if err != nil {
		return err
	}
	e.cmd, e.exited = cmd, exited
	if err := e.waitHealthy(); err != nil {
		e.stop(syscall.SIGKILL)
		return err
	}
	return nil
}

func (e *Etcd) waitHealthy() error {
	cfg, err := e.clientConfig()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err = probe(cfg, e.name); err == nil {
			select {
			case <-e.exited:
				return fmt.Errorf("etcd exited during startup: %v", e.cmd.ProcessState)
			default:
				return nil
			}
		} else if time.Now().After(deadline) {
			return fmt.Errorf("etcd not healthy after 30s: %w", err)
		}
		select {
		case <-e.exited:
			return fmt.Errorf("etcd exited during startup: %v", e.cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// probe checks TCP first because a gRPC dial to a closed port backs off for
// about a second, which would dominate start-up time.
func probe(cfg clientv3.Config, name string) error {
	u := cfg.Endpoints[0]
	conn, err := net.DialTimeout("tcp", u[strings.Index(u, "//")+2:], time.Second)
	if err != nil {
		return err
	}
	_ = conn.Close()
	c, err := clientv3.New(cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err = c.Get(ctx, "kube-ipam-testenv-health"); err != nil {
		return err
	}
	members, err := c.MemberList(ctx)
	if err != nil {
		return err
	}
	for _, m := range members.Members {
		if m.Name == name {
			return nil
		}
	}
	return fmt.Errorf("%s is another etcd, not member %s", cfg.Endpoints[0], name)
}

// stop signals the process by PID, escalating to SIGKILL after 5s.
func (e *Etcd) stop(sig syscall.Signal) {
	if e.cmd == nil {
		return
	}
	_ = e.cmd.Process.Signal(sig)
	select {
	case <-e.exited:
	case <-time.After(5 * time.Second):
		_ = e.cmd.Process.Kill()
		<-e.exited
	}
	e.cmd = nil
}

func (e *Etcd) dumpLog(t testing.TB) {
	t.Helper()
	b, err := os.ReadFile(e.LogFile)
	b = b[max(0, len(b)-4<<10):]
	t.Logf("etcd log %s (last %d bytes, err=%v):\n%s", e.LogFile, len(b), err, b)
}

// freePorts holds all listeners open together so the ports are distinct.
// Ports come from below Linux's ephemeral range (32768-60999): a port picked
// there can be taken as the source port of any outgoing connection before
// the server binds it, and servers of parallel test packages would compete
// for the few ports the kernel hands out for ":0".
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			t.Fatalf("no free port in 20000-32767")
		}
		port := 20000 + mrand.IntN(12768)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		defer l.Close()
		ports = append(ports, port)
	}
	return ports
}

// writeCerts creates a CA plus server and client certificates in dir, fills
// in e's client-side file fields and returns etcd's server TLS flags.
func (e *Etcd) writeCerts(t testing.TB, dir string) []string {
	t.Helper()
	p := func(name string) string { return filepath.Join(dir, name) }
	ca, err := pki.NewCA("kube-ipam test ca", 24*time.Hour)
	if err == nil {
		err = ca.Write(p("ca.pem"), p("ca-key.pem"))
	}
	for _, c := range []struct {
		name string
		leaf pki.Leaf
	}{
		// etcd's gRPC gateway dials the server presenting the server
		// certificate, so it needs client-auth usage too.
		{"server", pki.Leaf{IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, DNS: []string{"localhost"}, Server: true, Client: true}},
		{"client", pki.Leaf{Client: true}},
	} {
		if err != nil {
			break
		}
		c.leaf.CN = "kube-ipam test " + c.name
		var pair *pki.Pair
		if pair, err = ca.Issue(c.leaf); err == nil {
			err = pair.Write(p(c.name+".pem"), p(c.name+"-key.pem"))
		}
	}
	if err != nil {
		t.Fatalf("generating etcd certificates: %v", err)
	}
	e.CAFile, e.CertFile, e.KeyFile = p("ca.pem"), p("client.pem"), p("client-key.pem")
	return []string{"--cert-file", p("server.pem"), "--key-file", p("server-key.pem"),
		"--trusted-ca-file", e.CAFile, "--client-cert-auth"}
}

// Missing is missing for tests outside this package.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	missing(t, format, args...)
}

// missing reports an absent prerequisite: CI must have everything, so there
// it is a failure; elsewhere the test is skipped.
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format+" (failing because CI is set)", args...)
	}
	t.Skipf(format, args...)
}
