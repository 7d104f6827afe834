package lab

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// EtcdKeys lists the keys under prefix in the lab's kube-ipam etcd, read
// with the client certificate the installer gives the nodes (on the
// Kubernetes store nothing should be there).
func (l *Lab) EtcdKeys(ctx context.Context, prefix string) ([]string, error) {
	tc, err := l.tlsConfig("etcd-ca.crt", "etcd-client")
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{l.opts.EtcdURL()}, TLS: tc,
		DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys, nil
}
