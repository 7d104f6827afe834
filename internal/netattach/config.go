package netattach

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
)

// NAD is a NetworkAttachmentDefinition as read from the API.
type NAD = nadv1.NetworkAttachmentDefinition

// ErrNotFound: no network of that name (no object, no file).
var ErrNotFound = errors.New("not found")

// ConfigOf returns the CNI config (single plugin or conflist) that nad
// stands for: spec.config, or when that is empty the file in confDir whose
// network name is the NAD's name. A config without a "name" gets the NAD's,
// as multus does.
func ConfigOf(nad *NAD, confDir string) ([]byte, error) {
	where := fmt.Sprintf("NetworkAttachmentDefinition %s/%s", nad.Namespace, nad.Name)
	if strings.TrimSpace(nad.Spec.Config) == "" {
		b, _, err := FileByName(confDir, nad.Name)
		if err != nil {
			return nil, fmt.Errorf("%s has no spec.config and %w", where, err)
		}
		return b, nil
	}
	b, err := withName([]byte(nad.Spec.Config), nad.Name)
	if err != nil {
		return nil, fmt.Errorf("%s: spec.config: %v", where, err)
	}
	return b, nil
}

// withName checks that b is a JSON object and gives it name when it has
// none, keeping the bytes as they are otherwise.
func withName(b []byte, name string) ([]byte, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(b, &keys); err != nil || keys == nil {
		return nil, fmt.Errorf("not a JSON object (a CNI config or conflist): %v", err)
	}
	if n, ok := keys["name"]; ok && string(n) != `""` {
		return b, nil
	}
	keys["name"], _ = json.Marshal(name)
	return json.Marshal(keys)
}

// FileByName finds the config in dir (files libcni reads: .conf, .conflist,
// .json, in lexical order) whose network name is name. It returns the
// bytes and the file.
func FileByName(dir, name string) ([]byte, string, error) {
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, "", fmt.Errorf("reading %s: %v", dir, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var head struct {
			Name string `json:"name"`
		}
		if json.Unmarshal(b, &head) == nil && head.Name == name {
			return b, f, nil
		}
	}
	return nil, "", fmt.Errorf("no config named %q in %s: %w", name, dir, ErrNotFound)
}

// File reads a config file named by path (clusterNetwork or
// defaultNetworks given as a path); a directory stands for its first
// config, as the runtime would pick it.
func File(path string) ([]byte, string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, "", fmt.Errorf("%s: %w", path, ErrNotFound)
		}
		return nil, "", err
	}
	if fi.IsDir() {
		files, err := libcni.ConfFiles(path, []string{".conf", ".conflist", ".json"})
		if err != nil {
			return nil, "", fmt.Errorf("reading %s: %v", path, err)
		}
		if len(files) == 0 {
			return nil, "", fmt.Errorf("no CNI config in directory %s: %w", path, ErrNotFound)
		}
		path = files[0]
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	b, err = withName(b, name)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %v", path, err)
	}
	return b, path, nil
}

// IsPath reports whether a clusterNetwork or defaultNetworks entry names a
// file or directory rather than a network (multus: it contains a '/').
func IsPath(s string) bool { return strings.Contains(s, "/") }
