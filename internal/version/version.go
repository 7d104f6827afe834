// Package version carries the release version stamped into every binary.
package version

// Version is set with -ldflags "-X kubeipam/internal/version.Version=...".
var Version = "v0.1.0-dev"
