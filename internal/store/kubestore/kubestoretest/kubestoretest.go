// Package kubestoretest gives tests of the Kubernetes API store's users
// (plugin, controller, webhook, kube-ipamctl) a real kube-apiserver with
// the store's CRDs installed, and an API client for it.
package kubestoretest

import (
	"context"
	"testing"
	"time"

	"kubeipam/internal/kubeapi"
	"kubeipam/internal/store/kubestore"
	"kubeipam/internal/testenv"
)

// Start starts a kube-apiserver (stopped when the test ends), installs the
// store's CRDs and returns it with a client that says userAgent.
func Start(t testing.TB, userAgent string) (*testenv.Kube, *kubeapi.Client) {
	t.Helper()
	k := testenv.StartKube(t, testenv.KubeOptions{})
	api := Client(t, k, userAgent)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := kubestore.InstallCRDs(ctx, api); err != nil {
		t.Fatalf("installing the CRDs: %v", err)
	}
	return k, api
}

// Client is an API client of k's admin kubeconfig that says userAgent.
func Client(t testing.TB, k *testenv.Kube, userAgent string) *kubeapi.Client {
	t.Helper()
	api, err := kubeapi.NewClient(k.Kubeconfig, userAgent, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return api
}
