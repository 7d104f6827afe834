// Command kube-ipam-release builds a release into dist/ (make release):
// static binaries for linux/amd64 and linux/arm64, their tar.gz archives,
// the multi-arch OCI image archive (no Docker daemon) and SHA256SUMS. See
// docs/release.md and package internal/release.
package main

import (
	"os"

	"kubeipam/internal/release"
)

func main() { os.Exit(release.Main(os.Args[1:], os.Stdout, os.Stderr)) }
