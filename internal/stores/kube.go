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

// openKube opens the Kubernetes API store of n with o.KubeREST when set,
// else on the API server of o.Kubeconfig when set, else of the network's
// ipam.kubeConfig.
func (o *Opener) openKube(n *config.Network) (store.Backend, error) {
	path := n.KubeConfig
	if o.Kubeconfig != "" {
		path = o.Kubeconfig
	}
	id := "file:" + path
	if o.KubeREST != nil {
		id = "rest"
	}
	kc, ok := o.kube[id]
	if !ok {
		var c *kubeapi.Client
		var err error
		if o.KubeREST != nil {
			c, err = kubeapi.NewClientForConfig(o.KubeREST, "kube-ipam", n.Timeout)
		} else {
			c, err = kubestore.Client(path, n.Timeout)
		}
		if err != nil {
			return nil, err
		}
		kc = kubeConn{c}
		o.kube[id] = kc
	}
	return kubestore.New(kc.c, n.Name, n.Cluster), nil
}
