// Command kube-ipam is the CNI IPAM plugin: fixed and dynamic addresses for
// pods on a secondary network, claimed atomically in etcd.
package main

import (
	"fmt"
	"os"
	"runtime/debug"

	"github.com/containernetworking/cni/pkg/skel"
	cniversion "github.com/containernetworking/cni/pkg/version"

	"kubeipam/internal/plugin"
	"kubeipam/internal/version"
)

func main() {
	// A call lives for milliseconds and allocates a few MiB: collecting
	// garbage would only burn CPU that 50 concurrent ADDs on a node need.
	// The memory limit still bounds a runaway call.
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(256 << 20)
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "-version", "--version", "version":
			fmt.Println("kube-ipam", version.Version)
			return
		default:
			fmt.Fprintf(os.Stderr, "kube-ipam %s is a CNI IPAM plugin: the container runtime runs it with CNI_COMMAND set and the network config on stdin.\nSee docs/configuration.md.\n", version.Version)
			if os.Args[1] == "-help" || os.Args[1] == "--help" || os.Args[1] == "-h" {
				return
			}
			os.Exit(2)
		}
	}
	skel.PluginMainFuncs(plugin.Default().Funcs(), cniversion.All, "kube-ipam "+version.Version)
}
