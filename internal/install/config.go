package install

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"

	"kubeipam/internal/config"
	"kubeipam/internal/meta"
)

// ConfigExtensions are the file extensions container runtimes (libcni's
// ConfFiles) load from the CNI conf dir: config.ConfigExtensions.
var ConfigExtensions = config.ConfigExtensions

// metaTypes are the plugin types this installer installs kube-multus as.
var metaTypes = []string{"kube-multus", "multus-cni"}

// CheckedConfig is a network config that passed CheckConfig.
type CheckedConfig struct {
	// Meta is the kube-multus meta config, nil for a plain config or
	// conflist.
	Meta *meta.Conf
	// Networks are the kube-ipam networks, as the plugin parses them.
	Networks []*config.Network
	// Files are the files the config makes the plugins read on the node
	// (kubeconfigs, etcd TLS files), as node paths, each with the key that
	// names it.
	Files []ReferencedFile
	// Warnings are the parsers' warnings (risky but valid settings).
	Warnings []string
}

// ReferencedFile is a file named by a config key.
type ReferencedFile struct{ Key, Path string }

// CheckConfig validates a network config with the parsers the node will use:
// libcni (what the container runtime does with the file), kube-multus's
// meta config parser (internal/meta.Parse, with the kubeMultus tier
// policy), and kube-ipam's own parser for every kube-ipam network
// (internal/config.Parse, through config.ParseNetworks, which hands each
// delegate and conflist plugin its inherited name and cniVersion as
// kube-multus and libcni do). name is the file name the config is installed
// under: its extension decides how the runtime reads it. The config must
// have a kube-ipam network, unless it is a kube-multus config in Kubernetes
// mode, whose networks may all come from NetworkAttachmentDefinitions (a
// warning then).
func CheckConfig(data []byte, name string) (*CheckedConfig, error) {
	var head struct {
		Type      string          `json:"type"`
		Delegates json.RawMessage `json:"delegates"`
	}
	if err := checkCNIFile(data, name); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("%s is not a JSON object: %v", name, err)
	}
	c := &CheckedConfig{}
	if head.Delegates != nil || slices.Contains(metaTypes, head.Type) {
		m, err := meta.Parse(data)
		if err != nil {
			return nil, fmt.Errorf("%s: kube-multus would refuse it: %v", name, err)
		}
		for _, d := range m.Delegates {
			if err := checkDelegate(d); err != nil {
				return nil, fmt.Errorf("%s: kube-multus could not run delegates[%d] (%s): %v", name, d.Index, d.Name, err)
			}
		}
		c.Meta = m
		if m.Kubeconfig != "" {
			c.Files = append(c.Files, ReferencedFile{"kubeconfig", m.Kubeconfig})
		}
	}
	err := c.addNetworks(data, name)
	var none *config.NoNetworkError
	if errors.As(err, &none) && c.Meta != nil && c.Meta.KubernetesMode() {
		// In Kubernetes mode the networks may all come from
		// NetworkAttachmentDefinitions: none in the file is fine.
		c.Warnings = append(c.Warnings, fmt.Sprintf("%s names no kube-ipam network itself: kube-ipam runs only for the NetworkAttachmentDefinitions that name it", name))
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kube-ipam would refuse it: %v", err)
	}
	return c, nil
}

// checkCNIFile checks data the way a container runtime loads a file named
// name from its conf dir (libcni, as containerd and CRI-O use it): the
// extension decides between a conflist and a single plugin config.
func checkCNIFile(data []byte, name string) error {
	ext := filepath.Ext(name)
	if !slices.Contains(ConfigExtensions, ext) {
		return fmt.Errorf("config file name %q: the container runtime only loads %s files", name, strings.Join(ConfigExtensions, ", "))
	}
	var head struct {
		Plugins json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return fmt.Errorf("%s is not a JSON object: %v", name, err)
	}
	if head.Plugins != nil {
		if ext != ".conflist" {
			return fmt.Errorf("%s has \"plugins\" (a conflist): name it *.conflist, or the runtime reads it as a single plugin config", name)
		}
		if _, err := libcni.ConfListFromBytes(data); err != nil {
			return fmt.Errorf("%s: the container runtime would refuse it: %v", name, err)
		}
		return nil
	}
	if ext == ".conflist" {
		return fmt.Errorf("%s has no \"plugins\" list: a single plugin config must be named *.conf or *.json", name)
	}
	if err := checkSingle(data); err != nil {
		return fmt.Errorf("%s: the container runtime would refuse it: %v", name, err)
	}
	return nil
}

// checkSingle parses a single plugin config as runtimes convert it.
func checkSingle(data []byte) error {
	pc, err := libcni.NetworkPluginConfFromBytes(data)
	if err != nil {
		return err
	}
	//nolint:staticcheck // the single-plugin form is what runtimes convert .conf files with
	_, err = libcni.ConfListFromConf(pc)
	return err
}

// addNetworks parses every kube-ipam network of data and the files they
// name.
func (c *CheckedConfig) addNetworks(data []byte, where string) error {
	nets, err := config.ParseNetworks(data, where)
	if err != nil {
		return err
	}
	c.Networks = nets
	for _, n := range nets {
		where := fmt.Sprintf("network %q ipam.", n.Name)
		if n.PodLookup {
			c.Files = append(c.Files, ReferencedFile{where + "kubeConfig", n.KubeConfig})
		}
		for _, f := range []ReferencedFile{
			{where + "etcdConfig.etcdCertFile", n.Etcd.CertFile},
			{where + "etcdConfig.etcdKeyFile", n.Etcd.KeyFile},
			{where + "etcdConfig.etcdTrustedCAFileFile", n.Etcd.CAFile},
		} {
			if f.Path != "" {
				c.Files = append(c.Files, f)
			}
		}
		for _, w := range n.Warnings {
			c.Warnings = append(c.Warnings, fmt.Sprintf("network %q: %s", n.Name, w))
		}
	}
	return nil
}

// CheckNetworks validates a networks file of an IPAM-only install: kube-ipam
// networks the controller (--config) reads, which the nodes get from
// NetworkAttachmentDefinitions, not from this file. It is one NAD's config
// (a conflist or a single plugin config, as in spec.config), or a JSON
// object whose "delegates" list holds several (a form in which the
// controller's loader, config.LoadNetworks, reads many networks from one
// file). Each config must be one the runtime's libcni accepts, with a
// "name" (the network name kube-ipam keeps its allocations under, which the
// NAD's config must share), and every kube-ipam network must parse.
func CheckNetworks(data []byte, where string) (*CheckedConfig, error) {
	var root struct {
		Delegates []json.RawMessage `json:"delegates"`
	}
	if err := json.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s is not a JSON object: %v", where, err)
	}
	entries := root.Delegates
	if entries == nil {
		entries = []json.RawMessage{data}
	}
	for i, e := range entries {
		what := where
		if root.Delegates != nil {
			what = fmt.Sprintf("%s delegates[%d]", where, i)
		}
		var head struct {
			Name    string          `json:"name"`
			Plugins json.RawMessage `json:"plugins"`
		}
		if err := json.Unmarshal(e, &head); err != nil {
			return nil, fmt.Errorf("%s is not a JSON object: %v", what, err)
		}
		if head.Name == "" {
			return nil, fmt.Errorf("%s has no \"name\": kube-ipam keeps a network's allocations under its name, which the NetworkAttachmentDefinition's config must share", what)
		}
		var err error
		if head.Plugins != nil {
			_, err = libcni.ConfListFromBytes(e)
		} else {
			err = checkSingle(e)
		}
		if err != nil {
			return nil, fmt.Errorf("%s (%s): the container runtime would refuse it: %v", what, head.Name, err)
		}
	}
	c := &CheckedConfig{}
	if err := c.addNetworks(data, where); err != nil {
		return nil, err
	}
	return c, nil
}

// checkDelegate parses a delegate the way kube-multus hands it to libcni.
func checkDelegate(d *meta.Delegate) error {
	if d.IsList {
		_, err := libcni.ConfListFromBytes(d.Bytes)
		return err
	}
	pc, err := libcni.NetworkPluginConfFromBytes(d.Bytes)
	if err != nil {
		return err
	}
	//nolint:staticcheck // the single-plugin form is what delegates use
	_, err = libcni.ConfListFromConf(pc)
	return err
}

// CheckNetworksAt is CheckNetworks on the file at path, or, when path is a
// directory (a mounted ConfigMap), on each of its config files (*.conf,
// *.conflist, *.json), the way the controller's config.LoadNetworks reads
// one: files without a kube-ipam network are skipped, and it is an error if
// none has one.
func CheckNetworksAt(path string) (*CheckedConfig, error) {
	files, dir, err := config.ConfigFiles(path)
	if err != nil {
		return nil, err
	}
	all := &CheckedConfig{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		c, err := CheckNetworks(data, filepath.Base(f))
		if !dir {
			return c, err
		}
		var none *config.NoNetworkError
		if errors.As(err, &none) {
			continue
		}
		if err != nil {
			return nil, err
		}
		all.Networks = append(all.Networks, c.Networks...)
		all.Files = append(all.Files, c.Files...)
		all.Warnings = append(all.Warnings, c.Warnings...)
	}
	if len(all.Networks) == 0 {
		return nil, fmt.Errorf("%s holds no config file (%s) with a kube-ipam network", path, strings.Join(ConfigExtensions, ", "))
	}
	return all, nil
}
