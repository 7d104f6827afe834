// Package image builds the lab's container images without a registry:
// one-layer OCI image-layout tars (written by package oci) that containerd
// imports with `ctr -n k8s.io images import`, from a static busybox or
// single static binaries. Every lab image is linux/amd64, the lab's
// platform.
package image

import (
	"io"

	"kubeipam/internal/oci"
)

// File is one entry of an image's single layer.
type File = oci.File

// Config is the image config's runtime part.
type Config = oci.Config

// Platform is the platform of every lab image.
var Platform = oci.Platform{OS: "linux", Architecture: "amd64"}

// Write writes the one-layer lab image ref (a full reference such as
// "docker.io/local/busybox:1") of files and cfg to w; see oci.Write.
func Write(w io.Writer, ref string, files []File, cfg Config) error {
	return oci.Write(w, ref, oci.Image{Platform: Platform, Files: files, Config: cfg})
}

// WriteFile is Write into path (atomic: temp file + rename).
func WriteFile(path, ref string, files []File, cfg Config) error {
	return oci.WriteFile(path, ref, oci.Image{Platform: Platform, Files: files, Config: cfg})
}
