package kubestore

import (
	"context"

	"kubeipam/internal/kubeapi"
	"kubeipam/internal/store/kubestore/crds"
)

// InstallCRDs creates (or updates to this version) the store's
// CustomResourceDefinitions and waits until the API server serves them
// (condition Established), or ctx ends.
func InstallCRDs(ctx context.Context, c *kubeapi.Client) error {
	return kubeapi.InstallCRDs(ctx, c, crds.FS, crds.Files...)
}
