package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

// IPAMType is the ipam "type" of a kube-ipam network.
const IPAMType = "kube-ipam"

// LoadNetworks reads a CNI network config file — a single plugin config, a
// conflist, or a multus meta config whose delegates are either — and returns
// every kube-ipam network it describes, in file order. A network that
// appears twice (same etcd endpoints, prefix and name) is returned once.
//
// path may also be a directory (a mounted ConfigMap): every config file in
// it (.conf, .conflist, .json, in lexical order, as libcni lists them) is
// read, files without a kube-ipam network are skipped, and it is an error
// only if none has one. This is how the controller finds networks that
// nodes get from NetworkAttachmentDefinitions: their conflists sit in the
// ConfigMap beside (or instead of) the meta config.
func LoadNetworks(path string) ([]*Network, error) {
	files, dir, err := ConfigFiles(path)
	if err != nil {
		return nil, err
	}
	var out []*Network
	seen := map[string]bool{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		nets, err := ParseNetworks(data, f)
		if !dir {
			return nets, err
		}
		var none *NoNetworkError
		if errors.As(err, &none) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, n := range nets {
			if id := n.identity(); !seen[id] {
				seen[id] = true
				out = append(out, n)
			}
		}
	}
	if len(out) == 0 {
		return nil, &NoNetworkError{Where: path + " (" + strconv.Itoa(len(files)) + " config files)"}
	}
	return out, nil
}

// ConfigExtensions are the file extensions libcni's ConfFiles, and so
// container runtimes, load network configs from in a directory.
var ConfigExtensions = []string{".conf", ".conflist", ".json"}

// ConfigFiles lists the CNI config files at path: path itself when it is
// not a directory (dir false), else the directory's files with one of
// ConfigExtensions, in lexical order as libcni lists them (dir true). A
// caller reading a directory skips files that are not its kind of config;
// a single file is the config it was given.
func ConfigFiles(path string) (files []string, dir bool, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, false, err
	}
	if !fi.IsDir() {
		return []string{path}, false, nil
	}
	files, err = libcni.ConfFiles(path, ConfigExtensions)
	return files, true, err
}

// NoNetworkError: a config has no kube-ipam network.
type NoNetworkError struct{ Where string }

func (e *NoNetworkError) Error() string {
	return fmt.Sprintf("%s has no plugin with \"ipam\": {\"type\": %q} (looked at the config itself, \"plugins\" and multus \"delegates\")", e.Where, IPAMType)
}

// identity tells networks apart: the same name on the same store is one.
func (n *Network) identity() string {
	return strings.Join(n.Etcd.Endpoints, ",") + "|" + n.Etcd.Prefix + "|" + n.Name
}

// ParseNetworks is LoadNetworks on bytes; where names the source in errors.
// Each network is parsed by Parse with the name and cniVersion it inherits
// from its conflist or meta config, as libcni and multus hand them down.
func ParseNetworks(data []byte, where string) ([]*Network, error) {
	var root map[string]any
	if err := json.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s is not a JSON object: %v", where, err)
	}
	var found []map[string]any
	collect(root, "", "", &found)
	if len(found) == 0 {
		return nil, &NoNetworkError{Where: where}
	}
	var out []*Network
	seen := map[string]bool{}
	for _, obj := range found {
		b, _ := json.Marshal(obj)
		n, err := Parse(b)
		if err != nil {
			name, _ := obj["name"].(string)
			return nil, fmt.Errorf("%s: network %q: %v", where, name, err)
		}
		id := n.identity()
		if seen[id] {
			continue
		}
		seen[id] = true
		out = append(out, n)
	}
	return out, nil
}

// collect walks obj the way runtimes and multus hand configs down: a conflist
// gives each plugin its name and cniVersion, a multus delegate without a
// cniVersion inherits the meta config's.
func collect(obj map[string]any, name, version string, out *[]map[string]any) {
	if v, ok := obj["cniVersion"].(string); ok && v != "" {
		version = v
	}
	if n, ok := obj["name"].(string); ok && n != "" {
		name = n
	}
	if ipam, ok := obj["ipam"].(map[string]any); ok {
		if t, _ := ipam["type"].(string); t == IPAMType {
			c := make(map[string]any, len(obj)+2)
			for k, v := range obj {
				c[k] = v
			}
			if _, ok := c["name"].(string); !ok && name != "" {
				c["name"] = name
			}
			if _, ok := c["cniVersion"].(string); !ok && version != "" {
				c["cniVersion"] = version
			}
			*out = append(*out, c)
		}
	}
	for _, key := range []string{"plugins", "delegates"} {
		list, _ := obj[key].([]any)
		for _, item := range list {
			if m, ok := item.(map[string]any); ok {
				// A plugin of a conflist takes the list's name; a delegate
				// has its own name (multus requires one).
				inherit := name
				if key == "delegates" {
					inherit = ""
				}
				collect(m, inherit, version, out)
			}
		}
	}
}
