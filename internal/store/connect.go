package store

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"kubeipam/internal/config"
)

// ConfigError is a TLS or endpoint setting that cannot work.
type ConfigError struct{ Msg string }

func (e *ConfigError) Error() string { return e.Msg }

// Connect opens an etcd client for the network's etcdConfig. It does not
// wait for a connection: etcd client v3.7 creates its connection with
// grpc.NewClient, which never blocks, so neither grpc.WithBlock nor
// DialTimeout bounds connection establishment (etcd-io/etcd#21832). A
// request to an unreachable etcd then waits until its own context ends,
// which is why callers that must fail fast (the CNI plugin) follow Connect
// with WaitReady. dialTimeout still bounds what clientv3 uses it for
// (authentication, version checks).
func Connect(e config.Etcd, dialTimeout time.Duration) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   e.Endpoints,
		DialTimeout: dialTimeout,
		Logger:      zap.NewNop(),
	}
	if e.TLS() {
		for _, f := range []struct{ key, path string }{
			{"etcdCertFile", e.CertFile}, {"etcdKeyFile", e.KeyFile}, {"etcdTrustedCAFileFile", e.CAFile},
		} {
			if f.path == "" {
				continue
			}
			if _, err := os.Stat(f.path); err != nil {
				return nil, &ConfigError{fmt.Sprintf("ipam.etcdConfig.%s %s: %v", f.key, f.path, err)}
			}
		}
		info := transport.TLSInfo{CertFile: e.CertFile, KeyFile: e.KeyFile, TrustedCAFile: e.CAFile}
		tlsCfg, err := info.ClientConfig()
		if err != nil {
			return nil, &ConfigError{fmt.Sprintf("ipam.etcdConfig TLS files (cert %s, key %s, CA %s) are unusable: %v", e.CertFile, e.KeyFile, e.CAFile, err)}
		}
		cfg.TLS = tlsCfg
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", e.Endpoints, err)
	}
	return cli, nil
}

// UnreachableError says that no endpoint of an etcd cluster could be
// connected to within the dial timeout.
type UnreachableError struct {
	Endpoints []string
	Wait      time.Duration
	// Reasons holds, per endpoint, why a direct connection attempt made
	// after the wait failed (best effort, for the log and the CNI message).
	Reasons []string
}

func (e *UnreachableError) Error() string {
	msg := fmt.Sprintf("etcd %s unreachable: no connection within %v", strings.Join(e.Endpoints, ","), e.Wait)
	if len(e.Reasons) > 0 {
		msg += " (" + strings.Join(e.Reasons, "; ") + ")"
	}
	return msg
}

// WaitReady waits until cli has a connection to one of its endpoints: at
// most dialTimeout, and when ctx has a deadline, short of it by the time the
// probe below needs (up to a second, at most a quarter of what is left). A
// client that is already connected returns at once, and on a healthy etcd
// the wait is the connection set-up that the first request would wait for
// anyway: no request is sent. When nothing connects in time it returns an
// *UnreachableError naming the endpoints and, after a short direct probe of
// each, why they failed (without the probe if ctx's deadline has passed);
// when ctx is canceled it returns ctx's error.
func WaitReady(ctx context.Context, cli *clientv3.Client, e config.Etcd, dialTimeout time.Duration) error {
	conn := cli.ActiveConnection()
	if conn.GetState() == connectivity.Ready {
		return nil
	}
	// Keep time for the probe within ctx's deadline: up to a second, at
	// most a quarter of what is left.
	wait, probeTime := dialTimeout, time.Second
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		probeTime = min(probeTime, left/4)
		wait = min(wait, left-probeTime)
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for wctx.Err() == nil {
		st := conn.GetState()
		switch st {
		case connectivity.Ready:
			return nil
		case connectivity.Idle:
			conn.Connect()
		case connectivity.TransientFailure:
			// gRPC waits out a growing backoff (1 s, 1.6 s, 2.6 s, ...)
			// between attempts; an etcd that restarts meanwhile would be
			// noticed late. An attempt costs one refused TCP connect.
			conn.ResetConnectBackoff()
		case connectivity.Shutdown:
			return fmt.Errorf("etcd client for %v is closed", e.Endpoints)
		}
		sctx, cancel := context.WithTimeout(wctx, 250*time.Millisecond)
		conn.WaitForStateChange(sctx, st)
		cancel()
	}
	if conn.GetState() == connectivity.Ready {
		return nil
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("waiting for a connection to etcd %v: %w", e.Endpoints, ctx.Err())
	}
	ue := &UnreachableError{Endpoints: e.Endpoints, Wait: wait.Round(100 * time.Millisecond)}
	if ctx.Err() == nil && probeTime > 0 {
		// A short direct probe of each endpoint says why (refused, timed
		// out, TLS).
		ue.Reasons = probe(e, probeTime)
	}
	return ue
}

// probe tries a TCP (and for https a TLS) connection to every endpoint in
// parallel, each bounded by timeout, and describes the outcome.
func probe(e config.Etcd, timeout time.Duration) []string {
	out := make([]string, len(e.Endpoints))
	var wg sync.WaitGroup
	for i, ep := range e.Endpoints {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = probeOne(e, ep, timeout)
		}()
	}
	wg.Wait()
	return out
}

func probeOne(e config.Etcd, ep string, timeout time.Duration) string {
	u, err := url.Parse(ep)
	if err != nil || u.Host == "" {
		return fmt.Sprintf("%s: not a URL", ep)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Sprintf("%s: TCP connect timed out", u.Host)
		}
		return fmt.Sprintf("%s: %v", u.Host, unwrapOp(err))
	}
	defer c.Close()
	silent := fmt.Sprintf("%s: accepts TCP connections but sent no answer within %v (etcd stopped, frozen or overloaded?)", u.Host, timeout)
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if strings.EqualFold(u.Scheme, "https") {
		cfg, err := transport.TLSInfo{CertFile: e.CertFile, KeyFile: e.KeyFile, TrustedCAFile: e.CAFile}.ClientConfig()
		if err != nil {
			return fmt.Sprintf("%s: TLS files unusable: %v", u.Host, err)
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			if isTimeout(err) {
				return silent + "; no TLS handshake"
			}
			return fmt.Sprintf("%s: TLS handshake failed: %v", u.Host, err)
		}
		c = tc
	}
	// etcd serves HTTP/1.1 on its client port beside gRPC: /health tells an
	// etcd that answers from a process that is not etcd at all.
	if _, err := fmt.Fprintf(c, "GET /health HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", u.Host); err != nil {
		return fmt.Sprintf("%s: connected, but writing a request failed: %v", u.Host, unwrapOp(err))
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		if isTimeout(err) {
			return silent
		}
		return fmt.Sprintf("%s: connected, but the answer to GET /health is not HTTP (%v): is this an etcd client URL?", u.Host, unwrapOp(err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	if resp.StatusCode == http.StatusOK && strings.Contains(string(body), `"health"`) {
		return fmt.Sprintf("%s: answers GET /health (%s) but no gRPC connection was established within the wait", u.Host, strings.TrimSpace(string(body)))
	}
	if strings.Contains(string(body), `"health"`) {
		return fmt.Sprintf("%s: etcd reports itself unhealthy: HTTP %d %s", u.Host, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return fmt.Sprintf("%s: answers HTTP %d to GET /health, not as etcd does (is this an etcd client URL?)", u.Host, resp.StatusCode)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// unwrapOp drops net.OpError's "dial tcp host:port:" prefix, which the
// caller already prints.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// Unavailable is implemented by the errors of a backend other than etcd
// (the Kubernetes API store) that mean the same as the etcd cases of
// IsUnavailable: the backend could not answer in time, try again later.
type Unavailable interface {
	error
	Unavailable() bool
}

// IsUnavailable reports whether err means etcd could not answer in time:
// unreachable, stopped, frozen, without a leader, too slow, a lost member, a
// broken connection, or the call's own deadline. These are worth retrying
// later (CNI code 11), unlike a refusal (bad request, permissions). Another
// backend's errors say so themselves with an Unavailable method (see
// Unavailable).
func IsUnavailable(err error) bool {
	var (
		ue *UnreachableError
		ae *AmbiguousError
		se *StallError
		nl *NoLeaderError
		un Unavailable
	)
	if errors.As(err, &un) && un.Unavailable() {
		return true
	}
	if errors.As(err, &ue) || errors.As(err, &ae) || errors.As(err, &se) || errors.As(err, &nl) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	code := grpcCode(err)
	switch code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.ResourceExhausted, codes.Aborted:
		return true
	case codes.Unknown, codes.Internal:
		// etcd 3.4 reports its own expired deadline as gRPC Unknown with the
		// context's text, and a connection torn down mid-call surfaces as
		// Unknown/Internal with the transport's text.
		msg := status.Convert(err).Message()
		if msg == "" {
			msg = err.Error()
		}
		for _, s := range []string{"context deadline exceeded", "context canceled", "EOF", "connection reset", "broken pipe", "transport is closing", "connection refused", "request timed out", "leader changed"} {
			if strings.Contains(msg, s) {
				return true
			}
		}
	}
	return false
}
