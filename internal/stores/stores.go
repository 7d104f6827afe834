// Package stores opens the store.Backend a network's config names (etcd, the
// default, or the Kubernetes API) for the long-running and command-line
// components (controller, webhook, kube-ipamctl), sharing one client per
// distinct connection among their networks.
package stores

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/rest"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
)

// Opener opens and caches backends. The zero value is not usable: use New.
type Opener struct {
	// DialTimeout bounds a connection's set-up.
	DialTimeout time.Duration
	// WaitReady makes the first use of an etcd connection wait (at most
	// DialTimeout) until etcd answers, so that an unreachable etcd fails
	// in seconds with the reason rather than on the first read.
	WaitReady bool
	// Kubeconfig, when set, replaces the networks' ipam.kubeConfig for the
	// Kubernetes API store.
	Kubeconfig string
	// KubeREST, when set, is the API identity of every Kubernetes API store
	// opened (a long-running component's own: its --kubeconfig or its
	// pod's in-cluster configuration), instead of a kubeconfig file. The
	// networks' ipam.kubeConfig is a node path, absent from such a pod.
	KubeREST *rest.Config
	// InCluster: when the kubeconfig file to use does not exist and this
	// runs in a pod, the Kubernetes API store is opened with the pod's
	// in-cluster configuration (kube-ipamctl run in the controller's pod,
	// where the network's ipam.kubeConfig, a node path, is absent).
	InCluster bool
	// ConnectEtcd makes an etcd client (store.Connect unless replaced).
	ConnectEtcd func(e config.Etcd, dialTimeout time.Duration) (*clientv3.Client, error)

	mu   sync.Mutex
	etcd map[string]*clientv3.Client
	kube map[string]kubeConn
}

// New returns an Opener.
func New(dialTimeout time.Duration) *Opener {
	return &Opener{DialTimeout: dialTimeout, ConnectEtcd: store.Connect, etcd: map[string]*clientv3.Client{}, kube: map[string]kubeConn{}}
}

// Error is a store that cannot be opened; Network names the network.
type Error struct {
	Network string
	Store   string
	Err     error
}

func (e *Error) Error() string {
	return fmt.Sprintf("network %s: %s: %v", e.Network, e.Store, e.Err)
}
func (e *Error) Unwrap() error { return e.Err }

// Open returns network n's backend.
func (o *Opener) Open(ctx context.Context, n *config.Network) (store.Backend, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch n.Store {
	case config.StoreKubernetes:
		b, err := o.openKube(n)
		if err != nil {
			return nil, &Error{n.Name, "kubernetes API store", err}
		}
		return b, nil
	default:
		cli, err := o.etcdClient(ctx, n.Etcd)
		if err != nil {
			return nil, &Error{n.Name, "etcd " + strings.Join(n.Etcd.Endpoints, ","), err}
		}
		return store.New(cli, n.Etcd.Prefix, n.Name), nil
	}
}

func (o *Opener) etcdClient(ctx context.Context, e config.Etcd) (*clientv3.Client, error) {
	id := fmt.Sprintf("%q", []string{strings.Join(e.Endpoints, ","), e.CertFile, e.KeyFile, e.CAFile})
	if c := o.etcd[id]; c != nil {
		return c, nil
	}
	c, err := o.ConnectEtcd(e, o.DialTimeout)
	if err != nil {
		return nil, err
	}
	if o.WaitReady {
		if err := store.WaitReady(ctx, c, e, o.DialTimeout); err != nil {
			_ = c.Close()
			return nil, err
		}
	}
	o.etcd[id] = c
	return c, nil
}

// Close closes every client opened.
func (o *Opener) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	for id, c := range o.etcd {
		_ = c.Close()
		delete(o.etcd, id)
	}
	o.kube = map[string]kubeConn{}
	return nil
}
