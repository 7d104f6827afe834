package stores

import (
	"errors"
	"io/fs"
	"os"

	"k8s.io/client-go/rest"

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
// ipam.kubeConfig; with o.InCluster, a kubeconfig file that does not exist
// gives way to the pod's in-cluster configuration.
func (o *Opener) openKube(n *config.Network) (store.Backend, error) {
	path := n.KubeConfig
	if o.Kubeconfig != "" {
		path = o.Kubeconfig
	}
	rc := o.KubeREST
	if rc == nil && o.InCluster {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			if ic, err := rest.InClusterConfig(); err == nil {
				rc = ic
			}
		}
	}
	id := "file:" + path
	if rc != nil {
		id = "rest"
	}
	kc, ok := o.kube[id]
	if !ok {
		var c *kubeapi.Client
		var err error
		if rc != nil {
			c, err = kubeapi.NewClientForConfig(rc, "kube-ipam", n.Timeout)
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
