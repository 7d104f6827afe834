// Package oci writes container images without a registry or a Docker
// daemon: one-layer OCI image layouts, as a tar that containerd imports
// with `ctr images import`, skopeo reads as oci-archive: and crane pushes
// once unpacked. One image gives index.json -> manifest; several (one per
// platform) give index.json -> image index -> one manifest per platform,
// the shape of a multi-arch image in a registry. The lab's images and the
// release image (make release) are written here.
//
// The output is reproducible: the same files and config give the same bytes
// (every timestamp is the epoch, every owner root, entries sorted), so the
// same image always has the same digest and re-importing it is a no-op.
package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// File is one entry of an image's single layer.
type File struct {
	Path string      // absolute path inside the image, e.g. "/bin/busybox"
	Mode fs.FileMode // permission bits plus fs.ModeDir / fs.ModeSymlink
	Data []byte      // regular files
	Link string      // symlink target
}

// Config is the image config's runtime part.
type Config struct {
	Entrypoint, Cmd, Env []string
	WorkingDir           string
	User                 string            // "uid:gid" or a name in the image's /etc/passwd; empty = root
	Labels               map[string]string // e.g. org.opencontainers.image.version
}

// Platform is an image's OS and CPU architecture, as Go names them
// (GOOS, GOARCH), which are the OCI names for linux/amd64 and linux/arm64.
type Platform struct {
	OS, Architecture string
}

func (p Platform) String() string { return p.OS + "/" + p.Architecture }

// Image is one platform's image: its single layer and its config.
type Image struct {
	Platform Platform
	Files    []File
	Config   Config
	// Gzip compresses the layer: a third of the size for Go binaries, at
	// the cost of a second or so per 100 MB. The lab's images, imported
	// locally, stay uncompressed.
	Gzip bool
}

// defaultEnv is the environment of an image whose Config.Env is empty.
var defaultEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// Media types of the OCI image specification.
const (
	MediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	MediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar"
	MediaTypeLayerGz  = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// Annotations of an index entry: containerd names the imported image after
// the first, other OCI tools use the second (the tag alone).
const (
	AnnotationImageName = "io.containerd.image.name"
	AnnotationRefName   = "org.opencontainers.image.ref.name"
)

// epoch is every timestamp in the archives. time.Time{} (year 1) would not
// fit a ustar header and force PAX records.
var epoch = time.Unix(0, 0).UTC()

// The JSON documents of an image layout (a subset of the OCI image spec's
// fields: those this package writes).
type (
	ociDescriptor struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int64             `json:"size"`
		Platform    *ociPlatform      `json:"platform,omitempty"`
		Annotations map[string]string `json:"annotations,omitempty"`
	}
	ociPlatform struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
	}
	ociIndex struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     string          `json:"mediaType"`
		Manifests     []ociDescriptor `json:"manifests"`
	}
	ociManifest struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     string          `json:"mediaType"`
		Config        ociDescriptor   `json:"config"`
		Layers        []ociDescriptor `json:"layers"`
	}
	ociConfig struct {
		Created      string       `json:"created"`
		Architecture string       `json:"architecture"`
		OS           string       `json:"os"`
		Config       ociRuntime   `json:"config"`
		RootFS       ociRootFS    `json:"rootfs"`
		History      []ociHistory `json:"history"`
	}
	ociRuntime struct {
		User       string            `json:"User,omitempty"`
		Entrypoint []string          `json:"Entrypoint,omitempty"`
		Cmd        []string          `json:"Cmd,omitempty"`
		Env        []string          `json:"Env,omitempty"`
		WorkingDir string            `json:"WorkingDir,omitempty"`
		Labels     map[string]string `json:"Labels,omitempty"`
	}
	ociRootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	}
	ociHistory struct {
		Created   string `json:"created"`
		CreatedBy string `json:"created_by"`
	}
)

// Write writes an OCI image-layout tar (oci-layout, index.json,
// blobs/sha256/...) for ref (a full reference such as
// "docker.io/local/busybox:1" or "registry.k8s.io/pause:3.10") to w.
// One image: index.json names its manifest. Several: index.json names an
// image index of their manifests, one per platform (platforms distinct).
// Reproducible: same input, same bytes.
func Write(w io.Writer, ref string, images ...Image) error {
	tag, err := parseRef(ref)
	if err != nil {
		return err
	}
	if len(images) == 0 {
		return fmt.Errorf("oci: %s: no image", ref)
	}
	blobs := map[string][]byte{}
	var manifests []ociDescriptor
	seen := map[Platform]bool{}
	for _, img := range images {
		if img.Platform.OS == "" || img.Platform.Architecture == "" {
			return fmt.Errorf("oci: %s: an image without a platform (OS and architecture)", ref)
		}
		if seen[img.Platform] {
			return fmt.Errorf("oci: %s: platform %s given twice", ref, img.Platform)
		}
		seen[img.Platform] = true
		d, err := writeImage(blobs, img)
		if err != nil {
			return fmt.Errorf("%w (platform %s)", err, img.Platform)
		}
		manifests = append(manifests, d)
	}
	top := manifests[0]
	if len(manifests) > 1 {
		index, err := json.Marshal(ociIndex{SchemaVersion: 2, MediaType: MediaTypeIndex, Manifests: manifests})
		if err != nil {
			return err
		}
		top = describe(MediaTypeIndex, index)
		blobs[top.Digest] = index
	}
	// containerd names the imported image after the annotation of
	// index.json's entry, whatever it points to (a manifest or an index).
	top.Annotations = map[string]string{AnnotationImageName: ref, AnnotationRefName: tag}
	index, err := json.Marshal(ociIndex{SchemaVersion: 2, MediaType: MediaTypeIndex, Manifests: []ociDescriptor{top}})
	if err != nil {
		return err
	}

	digests := make([]string, 0, len(blobs))
	for d := range blobs {
		digests = append(digests, d)
	}
	sort.Strings(digests)

	tw := tar.NewWriter(w)
	put := func(name string, data []byte) error {
		if err := tw.WriteHeader(header(name, tar.TypeReg, 0o644, int64(len(data)))); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := put("index.json", index); err != nil {
		return err
	}
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(header(dir, tar.TypeDir, 0o755, 0)); err != nil {
			return err
		}
	}
	for _, d := range digests {
		if err := put("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), blobs[d]); err != nil {
			return err
		}
	}
	return tw.Close()
}

// writeImage adds img's layer, config and manifest to blobs and returns
// the manifest's descriptor, with its platform.
func writeImage(blobs map[string][]byte, img Image) (ociDescriptor, error) {
	layer, err := buildLayer(img.Files)
	if err != nil {
		return ociDescriptor{}, err
	}
	// The diff_id is the digest of the uncompressed layer, compressed or not.
	diffID := describe(MediaTypeLayer, layer).Digest
	if img.Gzip {
		if layer, err = gzipped(layer); err != nil {
			return ociDescriptor{}, err
		}
	}
	layerDesc := describe(MediaTypeLayer, layer)
	if img.Gzip {
		layerDesc.MediaType = MediaTypeLayerGz
	}
	cfg := img.Config
	env := cfg.Env
	if len(env) == 0 {
		env = defaultEnv
	}
	created := epoch.Format(time.RFC3339)
	config, err := json.Marshal(ociConfig{
		Created:      created,
		Architecture: img.Platform.Architecture,
		OS:           img.Platform.OS,
		Config: ociRuntime{
			User:       cfg.User,
			Entrypoint: cfg.Entrypoint,
			Cmd:        cfg.Cmd,
			Env:        env,
			WorkingDir: cfg.WorkingDir,
			Labels:     cfg.Labels,
		},
		RootFS:  ociRootFS{Type: "layers", DiffIDs: []string{diffID}},
		History: []ociHistory{{Created: created, CreatedBy: "kubeipam internal/oci"}},
	})
	if err != nil {
		return ociDescriptor{}, err
	}
	configDesc := describe(MediaTypeConfig, config)
	manifest, err := json.Marshal(ociManifest{
		SchemaVersion: 2,
		MediaType:     MediaTypeManifest,
		Config:        configDesc,
		Layers:        []ociDescriptor{layerDesc},
	})
	if err != nil {
		return ociDescriptor{}, err
	}
	manifestDesc := describe(MediaTypeManifest, manifest)
	manifestDesc.Platform = &ociPlatform{Architecture: img.Platform.Architecture, OS: img.Platform.OS}
	blobs[layerDesc.Digest] = layer
	blobs[configDesc.Digest] = config
	blobs[manifestDesc.Digest] = manifest
	return manifestDesc, nil
}

// WriteFile is Write into path (atomic: temp file + rename).
func WriteFile(path, ref string, images ...Image) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err = Write(f, ref, images...); err != nil {
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// gzipped compresses a layer reproducibly: no name or time in the gzip
// header, and the same Go version compresses the same bytes the same way.
func gzipped(layer []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(layer); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func describe(mediaType string, blob []byte) ociDescriptor {
	sum := sha256.Sum256(blob)
	return ociDescriptor{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(blob))}
}

func header(name string, typ byte, mode int64, size int64) *tar.Header {
	return &tar.Header{Typeflag: typ, Name: name, Mode: mode, Size: size, ModTime: epoch}
}

// buildLayer returns the uncompressed layer tar of files (its sha256 is the
// image's diff_id): names relative to the root, sorted component by
// component, so that every directory comes just before its contents;
// directories that files imply but do not list are added with mode 0755;
// owner root, mtime the epoch.
func buildLayer(files []File) ([]byte, error) {
	entries := make(map[string]File, len(files))
	for _, f := range files {
		p := f.Path
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/" {
			return nil, fmt.Errorf("oci: file path %q is not a clean absolute path below /", p)
		}
		if _, dup := entries[p]; dup {
			return nil, fmt.Errorf("oci: %s listed twice", p)
		}
		switch f.Mode.Type() {
		case 0:
			if f.Link != "" {
				return nil, fmt.Errorf("oci: %s: Link set on a regular file", p)
			}
		case fs.ModeDir:
			if f.Data != nil || f.Link != "" {
				return nil, fmt.Errorf("oci: %s: Data or Link set on a directory", p)
			}
		case fs.ModeSymlink:
			if f.Link == "" || f.Data != nil {
				return nil, fmt.Errorf("oci: %s: a symlink needs Link and no Data", p)
			}
		default:
			return nil, fmt.Errorf("oci: %s: unsupported file type %v (regular files, directories and symlinks only)", p, f.Mode.Type())
		}
		entries[p] = f
	}
	for _, f := range files {
		for dir := path.Dir(f.Path); dir != "/"; dir = path.Dir(dir) {
			e, ok := entries[dir]
			if !ok {
				entries[dir] = File{Path: dir, Mode: fs.ModeDir | 0o755}
			} else if !e.Mode.IsDir() {
				return nil, fmt.Errorf("oci: %s needs %s to be a directory", f.Path, dir)
			}
		}
	}
	names := make([]string, 0, len(entries))
	for p := range entries {
		names = append(names, p)
	}
	// Walk order: compared component by component, a directory comes just
	// before its contents ("/a", "/a/x", "/a-b", not "/a", "/a-b", "/a/x").
	sort.Slice(names, func(i, j int) bool { return pathLess(names[i], names[j]) })

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range names {
		f := entries[p]
		name := p[1:]
		mode := int64(f.Mode.Perm())
		if f.Mode&fs.ModeSetuid != 0 {
			mode |= 0o4000
		}
		if f.Mode&fs.ModeSetgid != 0 {
			mode |= 0o2000
		}
		if f.Mode&fs.ModeSticky != 0 {
			mode |= 0o1000
		}
		var h *tar.Header
		switch {
		case f.Mode.IsDir():
			h = header(name+"/", tar.TypeDir, mode, 0)
		case f.Mode&fs.ModeSymlink != 0:
			h = header(name, tar.TypeSymlink, 0o777, 0)
			h.Linkname = f.Link
		default:
			h = header(name, tar.TypeReg, mode, int64(len(f.Data)))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("oci: %s: %w", p, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// pathLess orders clean absolute paths component by component.
func pathLess(a, b string) bool {
	as, bs := strings.Split(a[1:], "/"), strings.Split(b[1:], "/")
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] != bs[i] {
			return as[i] < bs[i]
		}
	}
	return len(as) < len(bs)
}

var (
	domainRe = regexp.MustCompile(`^(localhost|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)(:[0-9]+)?$|^[A-Za-z0-9-]+:[0-9]+$`)
	compRe   = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$`)
	tagRe    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// parseRef checks that ref is fully qualified (domain/path:tag), as the
// kubelet asks containerd for normalized names only, and returns its tag.
func parseRef(ref string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("oci: reference %q: %s", ref, why)
	}
	if strings.Contains(ref, "@") {
		return bad("digest references are not supported; give a tag")
	}
	slash, colon := strings.Index(ref, "/"), strings.LastIndex(ref, ":")
	if slash <= 0 || !domainRe.MatchString(ref[:slash]) {
		return bad(`not fully qualified: start with a registry domain, e.g. "docker.io/local/name:tag"`)
	}
	if colon < strings.LastIndex(ref, "/") {
		return bad("no tag")
	}
	domain, repo, tag := ref[:slash], ref[slash+1:colon], ref[colon+1:]
	if !tagRe.MatchString(tag) {
		return bad("invalid tag")
	}
	comps := strings.Split(repo, "/")
	for _, c := range comps {
		if !compRe.MatchString(c) {
			return bad(fmt.Sprintf("invalid path component %q", c))
		}
	}
	if domain == "docker.io" && len(comps) == 1 {
		// Docker Hub's official images live under library/: the kubelet
		// asks for "docker.io/library/x:t" and would never find "docker.io/x:t".
		return bad(`use "docker.io/library/` + repo + `:` + tag + `"`)
	}
	return tag, nil
}
