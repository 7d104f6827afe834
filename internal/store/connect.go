package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"kubeipam/internal/config"
)

// ConfigError is a TLS or endpoint setting that cannot work.
type ConfigError struct{ Msg string }

func (e *ConfigError) Error() string { return e.Msg }

// Connect opens an etcd client for the network's etcdConfig and waits up to
// dialTimeout for a connection to one endpoint, so that an unreachable etcd
// fails a call in seconds (code 11) rather than after its whole timeout.
func Connect(e config.Etcd, dialTimeout time.Duration) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   e.Endpoints,
		DialTimeout: dialTimeout,
		DialOptions: []grpc.DialOption{grpc.WithBlock()},
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

// IsUnavailable reports whether err means etcd could not be reached in time
// (worth retrying later) rather than a refusal.
func IsUnavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return true
	}
	code := status.Code(err)
	// clientv3 turns server errors ("etcdserver: no leader", "request timed
	// out", ...) into rpctypes.EtcdError, which carries its gRPC code in a
	// Code method but is not a gRPC status: status.Code reports Unknown.
	var coded interface{ Code() codes.Code }
	if code == codes.Unknown && errors.As(err, &coded) {
		code = coded.Code()
	}
	switch code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.ResourceExhausted, codes.Aborted:
		return true
	}
	return false
}
