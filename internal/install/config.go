package install

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"

	"kubeipam/internal/config"
	"kubeipam/internal/meta"
)

// ConfigExtensions are the file extensions container runtimes (libcni's
// ConfFiles) load from the CNI conf dir.
var ConfigExtensions = []string{".conf", ".conflist", ".json"}

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
// under: its extension decides how the runtime reads it.
func CheckConfig(data []byte, name string) (*CheckedConfig, error) {
	ext := filepath.Ext(name)
	if !slices.Contains(ConfigExtensions, ext) {
		return nil, fmt.Errorf("config file name %q: the container runtime only loads %s files", name, strings.Join(ConfigExtensions, ", "))
	}
	var head struct {
		Type      string          `json:"type"`
		Plugins   json.RawMessage `json:"plugins"`
		Delegates json.RawMessage `json:"delegates"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("%s is not a JSON object: %v", name, err)
	}
	c := &CheckedConfig{}
	switch {
	case head.Plugins != nil:
		if ext != ".conflist" {
			return nil, fmt.Errorf("%s has \"plugins\" (a conflist): name it *.conflist, or the runtime reads it as a single plugin config", name)
		}
		if _, err := libcni.ConfListFromBytes(data); err != nil {
			return nil, fmt.Errorf("%s: the container runtime would refuse it: %v", name, err)
		}
	default:
		if ext == ".conflist" {
			return nil, fmt.Errorf("%s has no \"plugins\" list: a single plugin config must be named *.conf or *.json", name)
		}
		pc, err := libcni.NetworkPluginConfFromBytes(data)
		if err == nil {
			//nolint:staticcheck // the single-plugin form is what runtimes convert .conf files with
			_, err = libcni.ConfListFromConf(pc)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: the container runtime would refuse it: %v", name, err)
		}
	}
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
	nets, err := config.ParseNetworks(data, name)
	if err != nil {
		return nil, fmt.Errorf("kube-ipam would refuse it: %v", err)
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
