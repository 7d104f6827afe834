package store_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

// WaitReady on a reachable etcd returns once connected; on an unreachable
// one it gives up after the dial timeout with an UnreachableError naming the
// endpoints and why, even though the caller's context allows much longer.
// The caller's 60s context is the regression guard: without the dial
// timeout the test fails by its own 20s deadline, not by a timing check.
func TestWaitReady(t *testing.T) {
	e := testenv.StartEtcd(t)
	// A port that refuses connections, and one that accepts TCP but never
	// speaks HTTP/2 (a hung or wrong server).
	refused := closedPort(t)
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	// An HTTP server that is not etcd (a wrong port in the config).
	notEtcd := httptest.NewServer(http.NotFoundHandler())
	defer notEtcd.Close()
	et := testenv.StartEtcdTLS(t)
	tlsEtcd := config.Etcd{Endpoints: et.Endpoints, CertFile: et.CertFile, KeyFile: et.KeyFile, CAFile: et.CAFile}
	wrongCA := tlsEtcd
	wrongCA.CAFile = et.CertFile // a leaf, not the CA that signed the server
	plain := func(eps ...string) config.Etcd { return config.Etcd{Endpoints: eps} }
	cases := []struct {
		name string
		etcd config.Etcd
		want []string // parts of the error; nil: success
	}{
		{"reachable", plain(e.Endpoints...), nil},
		{"one of two reachable", plain(append([]string{"http://" + refused}, e.Endpoints...)...), nil},
		{"reachable TLS", tlsEtcd, nil},
		{"refused", plain("http://" + refused), []string{"http://" + refused, "unreachable", "no connection within 2s", "connection refused"}},
		{"silent", plain("http://" + silent.Addr().String()), []string{"unreachable", "accepts TCP connections but sent no answer within"}},
		{"both", plain("http://"+refused, "http://"+silent.Addr().String()), []string{"http://" + refused + ",http://" + silent.Addr().String(), "connection refused", "accepts TCP connections but sent no answer"}},
		{"not etcd", plain(notEtcd.URL), []string{"unreachable", "answers HTTP 404 to GET /health, not as etcd does (is this an etcd client URL?)"}},
		{"wrong CA", wrongCA, []string{et.Endpoints[0], "unreachable", "TLS handshake failed"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ec := c.etcd
			cli, err := store.Connect(ec, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- store.WaitReady(ctx, cli, ec, 2*time.Second) }()
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("WaitReady still waiting after 20s with a 2s dial timeout")
			}
			if c.want == nil {
				if err != nil {
					t.Fatalf("WaitReady: %v", err)
				}
				if _, err := store.New(cli, "/t", "n").Attachments(ctx); err != nil {
					t.Fatalf("request after WaitReady: %v", err)
				}
				return
			}
			var ue *store.UnreachableError
			if !errors.As(err, &ue) || !store.IsUnavailable(err) {
				t.Fatalf("got %T %v, want an UnreachableError", err, err)
			}
			t.Log(err)
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
