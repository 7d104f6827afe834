package plugin

import (
	"time"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/store/kubestore"
)

// openKube opens the Kubernetes API store of n on the API server of its
// ipam.kubeConfig (the file the pod lookups use). Each request is bounded
// by timeout; the call's own deadline bounds the whole call.
func openKube(n *config.Network, timeout time.Duration) (store.Backend, error) {
	c, err := kubestore.Client(n.KubeConfig, timeout)
	if err != nil {
		return nil, err
	}
	return kubestore.New(c, n.Name, n.Cluster), nil
}
