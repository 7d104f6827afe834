package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"kubeipam/internal/lab/image"
)

// The images the lab builds. There is no registry: each is an OCI archive
// imported into every node's containerd under the reference the manifests
// use. The nginx and busybox references are stand-ins built from Debian's
// static busybox, so deploy/examples apply unchanged; the web stand-in runs
// busybox httpd on port 80 and serves IndexPage.
const (
	BusyboxImage = "docker.io/library/busybox:1.36"
	WebImage     = "docker.io/library/nginx:1.27"
)

// IndexPage is what the web pods serve.
const IndexPage = `<!DOCTYPE html>
<html>
<head><title>Welcome to the kube-ipam lab!</title></head>
<body>
<h1>Welcome to the kube-ipam lab!</h1>
<p>busybox httpd standing in for nginx in the web tier.</p>
</body>
</html>
`

var imageRef = regexp.MustCompile(`(?m)^\s*-?\s*image:\s*["']?([^\s"']+)`)

func (l *Lab) images(ctx context.Context) error {
	// Every image the examples use must be one the lab builds, or pods
	// would sit in ErrImageNeverPull with nothing to say why.
	for _, f := range []string{"db.yaml", "web.yaml"} {
		b, err := os.ReadFile(filepath.Join(l.opts.Examples, f))
		if err != nil {
			return err
		}
		for _, m := range imageRef.FindAllStringSubmatch(string(b), -1) {
			if !slices.Contains([]string{BusyboxImage, WebImage}, normalize(m[1])) {
				return fmt.Errorf("%s uses image %s; the lab builds only %s and %s (no registry)", f, m[1], BusyboxImage, WebImage)
			}
		}
	}
	dir := filepath.Join(l.opts.Dir, "images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pause, err := image.Static(filepath.Join(l.opts.RepoBin, "kube-ipam-lab-pause"), "pause")
	if err != nil {
		return err
	}
	if err := image.WriteFile(filepath.Join(dir, "pause.tar"), SandboxImage, pause, image.Config{Entrypoint: []string{"/pause"}}); err != nil {
		return err
	}
	bb, err := image.Busybox("/bin/busybox")
	if err != nil {
		return err
	}
	bb = append(bb, image.File{Path: "/www/index.html", Mode: 0o644, Data: []byte(IndexPage)})
	if err := image.WriteFile(filepath.Join(dir, "busybox.tar"), BusyboxImage, bb, image.Config{Cmd: []string{"sh"}}); err != nil {
		return err
	}
	web := image.Config{Entrypoint: []string{"httpd", "-f", "-v", "-p", "80", "-h", "/www"}}
	if err := image.WriteFile(filepath.Join(dir, "web.tar"), WebImage, bb, web); err != nil {
		return err
	}
	// The Dockerfile's image: every binary in /kube-ipam/bin, on PATH.
	var files []image.File
	for _, b := range ImageBinaries {
		f, err := image.Static(filepath.Join(l.opts.RepoBin, b), b)
		if err != nil {
			return err
		}
		f[0].Path = "/kube-ipam/bin/" + b
		files = append(files, f...)
	}
	return image.WriteFile(filepath.Join(dir, "kube-ipam.tar"), ImageRef, files, image.Config{
		Entrypoint: []string{"/kube-ipam/bin/kube-ipam-install"},
		Env:        []string{"PATH=/kube-ipam/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	})
}

// normalize expands a short reference the way the CRI does.
func normalize(ref string) string {
	first, _, found := strings.Cut(ref, "/")
	if !found {
		return "docker.io/library/" + ref
	}
	if !strings.ContainsAny(first, ".:") && first != "localhost" {
		return "docker.io/" + ref
	}
	return ref
}
