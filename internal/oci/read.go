package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"
	"time"
)

// Archive is an image-layout tar read back by Read.
type Archive struct {
	Ref    string  // the reference Write was given (index.json's io.containerd.image.name)
	Digest string  // digest of what index.json names: the manifest of one image, else the image index; `ctr images ls` shows it
	Images []Image // in the order Write was given them; Files as the layer holds them, implied directories included
}

// Read reads an archive that Write wrote and checks everything that ties
// its parts together: each blob is named by its sha256, each descriptor's
// size, digest and media type match its blob, each config's diff_id is its
// layer's digest and its platform the manifest's, every entry (archive and
// layer) is owned by root with the epoch as mtime, and each layer lists a
// directory just before its contents. It is the check of release archives
// and of this package's tests; it refuses what Write does not write
// (several layers, layers compressed other than by gzip, other files in
// the layout).
func Read(data []byte) (*Archive, error) {
	files := map[string][]byte{}
	var names []string
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("oci: archive: %w", err)
		}
		if err := ownedByRootAtEpoch(h); err != nil {
			return nil, fmt.Errorf("oci: archive: %w", err)
		}
		names = append(names, h.Name)
		switch {
		case h.Typeflag == tar.TypeDir && (h.Name == "blobs/" || h.Name == "blobs/sha256/"):
		case h.Typeflag == tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, fmt.Errorf("oci: archive: %s: %w", h.Name, err)
			}
			files[h.Name] = b
		default:
			return nil, fmt.Errorf("oci: archive: unexpected entry %s (type %c)", h.Name, h.Typeflag)
		}
	}
	head := []string{"oci-layout", "index.json", "blobs/", "blobs/sha256/"}
	if len(names) < len(head) || strings.Join(names[:len(head)], " ") != strings.Join(head, " ") {
		return nil, fmt.Errorf("oci: archive entries %v: want %v first", names, head)
	}
	if got := string(files["oci-layout"]); got != `{"imageLayoutVersion":"1.0.0"}` {
		return nil, fmt.Errorf("oci: oci-layout is %q", got)
	}
	for _, name := range names[len(head):] {
		hexd, ok := strings.CutPrefix(name, "blobs/sha256/")
		if !ok {
			return nil, fmt.Errorf("oci: archive: unexpected entry %s", name)
		}
		if sum := sha256.Sum256(files[name]); hex.EncodeToString(sum[:]) != hexd {
			return nil, fmt.Errorf("oci: blob %s has sha256 %x", name, sum)
		}
	}
	blob := func(d ociDescriptor, mediaType string) ([]byte, error) {
		if d.MediaType != mediaType {
			return nil, fmt.Errorf("oci: descriptor %s: media type %s, want %s", d.Digest, d.MediaType, mediaType)
		}
		hexd, ok := strings.CutPrefix(d.Digest, "sha256:")
		b, found := files["blobs/sha256/"+hexd]
		if !ok || !found {
			return nil, fmt.Errorf("oci: descriptor digest %q has no blob", d.Digest)
		}
		if int64(len(b)) != d.Size {
			return nil, fmt.Errorf("oci: descriptor %s: size %d, blob has %d", d.Digest, d.Size, len(b))
		}
		return b, nil
	}

	var top ociIndex
	if err := decode("index.json", files["index.json"], &top); err != nil {
		return nil, err
	}
	if top.SchemaVersion != 2 || top.MediaType != MediaTypeIndex || len(top.Manifests) != 1 {
		return nil, fmt.Errorf("oci: index.json is not an index of one entry: %s", files["index.json"])
	}
	entry := top.Manifests[0]
	a := &Archive{Ref: entry.Annotations[AnnotationImageName], Digest: entry.Digest}
	if tag, err := parseRef(a.Ref); err != nil || entry.Annotations[AnnotationRefName] != tag || len(entry.Annotations) != 2 {
		return nil, fmt.Errorf("oci: index.json annotations %v: want %s (a full reference) and %s (its tag)", entry.Annotations, AnnotationImageName, AnnotationRefName)
	}
	manifests := []ociDescriptor{entry}
	if entry.MediaType == MediaTypeIndex {
		b, err := blob(entry, MediaTypeIndex)
		if err != nil {
			return nil, err
		}
		var idx ociIndex
		if err := decode(entry.Digest, b, &idx); err != nil {
			return nil, err
		}
		if idx.SchemaVersion != 2 || idx.MediaType != MediaTypeIndex || len(idx.Manifests) < 2 {
			return nil, fmt.Errorf("oci: image index %s: want schema 2 and several manifests", entry.Digest)
		}
		manifests = idx.Manifests
	}
	for _, md := range manifests {
		img, err := readImage(md, blob)
		if err != nil {
			return nil, err
		}
		a.Images = append(a.Images, img)
	}
	return a, nil
}

func readImage(md ociDescriptor, blob func(ociDescriptor, string) ([]byte, error)) (Image, error) {
	b, err := blob(md, MediaTypeManifest)
	if err != nil {
		return Image{}, err
	}
	var m ociManifest
	if err := decode(md.Digest, b, &m); err != nil {
		return Image{}, err
	}
	if m.SchemaVersion != 2 || m.MediaType != MediaTypeManifest || len(m.Layers) != 1 {
		return Image{}, fmt.Errorf("oci: manifest %s: want schema 2 and one layer", md.Digest)
	}
	if b, err = blob(m.Config, MediaTypeConfig); err != nil {
		return Image{}, err
	}
	var c ociConfig
	if err := decode(m.Config.Digest, b, &c); err != nil {
		return Image{}, err
	}
	compressed := m.Layers[0].MediaType == MediaTypeLayerGz
	mediaType := MediaTypeLayer
	if compressed {
		mediaType = MediaTypeLayerGz
	}
	layer, err := blob(m.Layers[0], mediaType)
	if err != nil {
		return Image{}, err
	}
	diffID := m.Layers[0].Digest
	if compressed {
		zr, err := gzip.NewReader(bytes.NewReader(layer))
		if err != nil {
			return Image{}, fmt.Errorf("oci: layer %s: %w", m.Layers[0].Digest, err)
		}
		if layer, err = io.ReadAll(zr); err != nil {
			return Image{}, fmt.Errorf("oci: layer %s: %w", m.Layers[0].Digest, err)
		}
		sum := sha256.Sum256(layer)
		diffID = "sha256:" + hex.EncodeToString(sum[:])
	}
	p := Platform{OS: c.OS, Architecture: c.Architecture}
	if md.Platform == nil || *md.Platform != (ociPlatform{Architecture: p.Architecture, OS: p.OS}) {
		return Image{}, fmt.Errorf("oci: manifest %s: descriptor platform %+v, config says %s", md.Digest, md.Platform, p)
	}
	if c.RootFS.Type != "layers" || len(c.RootFS.DiffIDs) != 1 || c.RootFS.DiffIDs[0] != diffID {
		return Image{}, fmt.Errorf("oci: config %s: rootfs %+v, want the uncompressed layer's digest %s", m.Config.Digest, c.RootFS, diffID)
	}
	files, err := readLayer(layer)
	if err != nil {
		return Image{}, fmt.Errorf("oci: layer of %s: %w", p, err)
	}
	r := c.Config
	return Image{Platform: p, Files: files, Gzip: compressed, Config: Config{
		Entrypoint: r.Entrypoint, Cmd: r.Cmd, Env: r.Env, WorkingDir: r.WorkingDir, User: r.User, Labels: r.Labels,
	}}, nil
}

// readLayer returns a layer's files in layer order.
func readLayer(layer []byte) ([]File, error) {
	var files []File
	isDir := map[string]bool{}
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if err := ownedByRootAtEpoch(h); err != nil {
			return nil, err
		}
		name := strings.TrimSuffix(h.Name, "/")
		if strings.HasPrefix(name, "/") || name == "" || (h.Typeflag == tar.TypeDir) != strings.HasSuffix(h.Name, "/") {
			return nil, fmt.Errorf("entry name %q (type %c)", h.Name, h.Typeflag)
		}
		if i := strings.LastIndex(name, "/"); i > 0 && !isDir[name[:i]] {
			return nil, fmt.Errorf("%s comes before its directory %s", name, name[:i])
		}
		f := File{Path: "/" + name, Mode: fs.FileMode(h.Mode).Perm()}
		if h.Mode&0o4000 != 0 {
			f.Mode |= fs.ModeSetuid
		}
		if h.Mode&0o2000 != 0 {
			f.Mode |= fs.ModeSetgid
		}
		if h.Mode&0o1000 != 0 {
			f.Mode |= fs.ModeSticky
		}
		switch h.Typeflag {
		case tar.TypeDir:
			f.Mode |= fs.ModeDir
			isDir[name] = true
		case tar.TypeSymlink:
			f.Mode |= fs.ModeSymlink
			f.Link = h.Linkname
		case tar.TypeReg:
			if f.Data, err = io.ReadAll(tr); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("%s: unexpected type %c", name, h.Typeflag)
		}
		if len(files) > 0 && !pathLess(files[len(files)-1].Path, f.Path) {
			return nil, fmt.Errorf("entries not sorted (or listed twice): %s after %s", f.Path, files[len(files)-1].Path)
		}
		files = append(files, f)
	}
	return files, nil
}

func ownedByRootAtEpoch(h *tar.Header) error {
	if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(time.Unix(0, 0)) {
		return fmt.Errorf("%s: uid %d gid %d mtime %v, want 0 0 and the epoch", h.Name, h.Uid, h.Gid, h.ModTime)
	}
	return nil
}

func decode(name string, b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("oci: %s: %w", name, err)
	}
	if dec.More() {
		return fmt.Errorf("oci: %s: %w", name, errors.New("data after the JSON document"))
	}
	return nil
}

// Paths returns the paths of files, sorted as a layer lists them.
func Paths(files []File) []string {
	out := make([]string, len(files))
	for i, f := range files {
		out[i] = f.Path
	}
	sort.Slice(out, func(i, j int) bool { return pathLess(out[i], out[j]) })
	return out
}
