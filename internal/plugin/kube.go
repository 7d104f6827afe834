package plugin

import (
	"errors"
	"time"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
)

// openKube opens the Kubernetes API store of n.
func openKube(n *config.Network, dial time.Duration) (store.Backend, error) {
	return nil, errors.New("the Kubernetes API store is not available in this build")
}
