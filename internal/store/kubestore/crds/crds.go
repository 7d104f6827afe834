// Package crds holds the CustomResourceDefinitions of the Kubernetes API
// store (package kubestore): the only copy, embedded for tests and
// installers, listed by kustomization.yaml for kustomize.
package crds

import "embed"

// FS holds ipallocations.yaml and ipstickies.yaml.
//
//go:embed ipallocations.yaml ipstickies.yaml
var FS embed.FS

// Files are the CRD files in FS.
var Files = []string{"ipallocations.yaml", "ipstickies.yaml"}
