// Command kube-ipam-direct is the whole kube-ipam CNI IPAM plugin: fixed
// and dynamic addresses for pods on a secondary network, claimed atomically
// in etcd or the Kubernetes API. The runtime runs kube-ipam (the shim),
// which hands the call to the node agent and execs this binary only when no
// agent takes it (see docs/performance.md).
package main

import (
	"os"
	"runtime/debug"

	"github.com/containernetworking/cni/pkg/skel"
	cniversion "github.com/containernetworking/cni/pkg/version"

	"kubeipam/internal/cmdline"
	"kubeipam/internal/plugin"
	"kubeipam/internal/version"
)

func main() {
	// A call lives for milliseconds and allocates a few MiB: collecting
	// garbage would only burn CPU that 50 concurrent ADDs on a node need.
	// The memory limit still bounds a runaway call.
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(256 << 20)
	if code, ok := cmdline.Plugin(os.Args[1:], "kube-ipam", version.Version, "a CNI IPAM plugin: the container runtime runs it with CNI_COMMAND set and the network config on stdin. See docs/configuration.md.", os.Stdout, os.Stderr); !ok {
		os.Exit(code)
	}
	skel.PluginMainFuncs(plugin.Default().Funcs(), cniversion.All, "kube-ipam "+version.Version)
}
