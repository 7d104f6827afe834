package cli

import (
	"fmt"
	"path/filepath"
	"sort"

	"kubeipam/internal/config"
)

// DefaultConfDir is where the runtime (and so this tool, by default) looks
// for network configs.
const DefaultConfDir = "/etc/cni/net.d"

// FindConfig returns the first file of dir, in the runtime's (alphabetical)
// order, that describes at least one kube-ipam network.
func FindConfig(dir string) (string, error) {
	var files []string
	for _, pat := range []string{"*.conf", "*.conflist", "*.json"} {
		m, _ := filepath.Glob(filepath.Join(dir, pat))
		files = append(files, m...)
	}
	sort.Strings(files)
	for _, f := range files {
		if _, err := config.LoadNetworks(f); err == nil {
			return f, nil
		}
	}
	return "", fmt.Errorf("no config with a kube-ipam network in %s: pass --config /etc/cni/net.d/<file>", dir)
}
