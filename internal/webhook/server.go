package webhook

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"k8s.io/client-go/rest"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/stores"
)

// Path is where the API server posts AdmissionReviews.
const Path = "/validate"

// Server serves a Handler over TLS at Path, with /healthz for probes.
type Server struct {
	srv *http.Server
}

// NewServer returns a server for addr (such as ":8443").
func NewServer(addr string, h http.Handler) *Server {
	mux := http.NewServeMux()
	mux.Handle(Path, h)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	return &Server{srv: &http.Server{
		Addr: addr, Handler: mux,
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
	}}
}

// ListenAndServeTLS serves until Shutdown. The certificate and key files are
// re-read when they change (a Secret rotated by cert-manager), so rotation
// needs no restart.
func (s *Server) ListenAndServeTLS(certFile, keyFile string) error {
	if err := s.tls(certFile, keyFile); err != nil {
		return err
	}
	return s.srv.ListenAndServeTLS("", "")
}

// ServeTLS is ListenAndServeTLS on an existing listener.
func (s *Server) ServeTLS(l net.Listener, certFile, keyFile string) error {
	if err := s.tls(certFile, keyFile); err != nil {
		return err
	}
	return s.srv.ServeTLS(l, "", "")
}

// GetCertificate is tls.Config.GetCertificate.
type GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error)

// ListenAndServeTLSWith serves until Shutdown with the certificate get
// returns on each handshake (a servingcert.Manager that rotates it).
func (s *Server) ListenAndServeTLSWith(get GetCertificate) error {
	s.srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: get}
	return s.srv.ListenAndServeTLS("", "")
}

// ServeTLSWith is ListenAndServeTLSWith on an existing listener.
func (s *Server) ServeTLSWith(l net.Listener, get GetCertificate) error {
	s.srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: get}
	return s.srv.ServeTLS(l, "", "")
}

func (s *Server) tls(certFile, keyFile string) error {
	kp := &keyPair{cert: certFile, key: keyFile}
	if _, err := kp.get(nil); err != nil {
		return err
	}
	s.srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: kp.get}
	return nil
}

// Shutdown stops the server gracefully.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

type keyPair struct {
	cert, key string
	mu        sync.Mutex
	stamp     string
	loaded    *tls.Certificate
}

func (k *keyPair) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	stamp := ""
	for _, f := range []string{k.cert, k.key} {
		st, err := os.Stat(f)
		if err != nil {
			if k.loaded != nil {
				return k.loaded, nil
			}
			return nil, fmt.Errorf("webhook serving certificate: %w", err)
		}
		stamp += fmt.Sprint(st.ModTime().UnixNano(), st.Size(), ";")
	}
	if k.loaded != nil && stamp == k.stamp {
		return k.loaded, nil
	}
	c, err := tls.LoadX509KeyPair(k.cert, k.key)
	if err != nil {
		if k.loaded != nil { // mid-rotation: keep serving the old pair
			return k.loaded, nil
		}
		return nil, fmt.Errorf("webhook serving certificate %s / key %s: %w", k.cert, k.key, err)
	}
	k.loaded, k.stamp = &c, stamp
	return k.loaded, nil
}

// BackendLookup is a StoreLookup over the networks' own stores (etcd or
// the Kubernetes API). It connects on first use (so that the webhook starts
// while a store is down) and keeps one client per distinct connection.
type BackendLookup struct {
	opener *stores.Opener
}

// NewBackendLookup returns a BackendLookup; Close it when done.
func NewBackendLookup(dialTimeout time.Duration) *BackendLookup {
	return &BackendLookup{opener: stores.New(dialTimeout)}
}

// UseKubeREST makes the Kubernetes API stores open with rc (the
// component's own identity) instead of the networks' ipam.kubeConfig.
func (l *BackendLookup) UseKubeREST(rc *rest.Config) { l.opener.KubeREST = rc }

// Lookup is the StoreLookup.
func (l *BackendLookup) Lookup(ctx context.Context, n *config.Network, ip netip.Addr) (*store.Record, error) {
	b, err := l.opener.Open(ctx, n)
	if err != nil {
		return nil, err
	}
	st, err := b.State(ctx, ip)
	if err != nil {
		return nil, err
	}
	return st.Record, nil
}

// Close closes the clients.
func (l *BackendLookup) Close() error { return l.opener.Close() }
