package store_test

import (
	"testing"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/store/storetest"
	"kubeipam/internal/testenv"
)

// The behavioural suite every backend passes, against a real etcd: one
// server for every case, each case on a network of its own.
func TestBackendSuite(t *testing.T) {
	cli := testenv.StartEtcd(t).Client(t)
	storetest.Run(t, func(t *testing.T, n *config.Network) store.Backend {
		return store.New(cli, "/storetest", n.Name)
	})
}
