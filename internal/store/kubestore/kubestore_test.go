package kubestore

import (
	"context"
	"testing"
	"time"

	"kubeipam/internal/config"
	"kubeipam/internal/kubeapi"
	"kubeipam/internal/store"
	"kubeipam/internal/store/storetest"
	"kubeipam/internal/testenv"
)

// kube is one API server with the CRDs, shared by the subtests of a test.
type kube struct {
	*testenv.Kube
	api *kubeapi.Client
}

func startKube(t *testing.T) *kube {
	t.Helper()
	k := testenv.StartKube(t, testenv.KubeOptions{})
	api, err := kubeapi.NewClient(k.Kubeconfig, "kubestore-test", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := InstallCRDs(ctx, api); err != nil {
		t.Fatal(err)
	}
	return &kube{Kube: k, api: api}
}

func TestKubeStore(t *testing.T) {
	k := startKube(t)
	t.Run("suite", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T, n *config.Network) store.Backend {
			return New(k.api, n.Name, n.Cluster)
		})
	})
}
