package stores

import (
	"kubeipam/internal/config"
	"kubeipam/internal/kubeapi"
	"kubeipam/internal/store"
	"kubeipam/internal/store/kubestore"
)

// kubeConn is one API client, shared by the networks whose kubeconfig is
// the same file.
type kubeConn struct{ c *kubeapi.Client }

// openKube opens the Kubernetes API store of n, on the API server of
// o.Kubeconfig when set, else of the network's ipam.kubeConfig.
func (o *Opener) openKube(n *config.Network) (store.Backend, error) {
	path := n.KubeConfig
	if o.Kubeconfig != "" {
		path = o.Kubeconfig
	}
	kc, ok := o.kube[path]
	if !ok {
		c, err := kubestore.Client(path, n.Timeout)
		if err != nil {
			return nil, err
		}
		kc = kubeConn{c}
		o.kube[path] = kc
	}
	return kubestore.New(kc.c, n.Name, n.Cluster), nil
}
