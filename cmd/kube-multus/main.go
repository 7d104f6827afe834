// Command kube-multus is a multus-compatible CNI meta plugin (delegates
// mode) with tier security: per-network pod selection and an nftables
// ingress policy inside the pod's network namespace. Install it as both
// /opt/cni/bin/kube-multus and /opt/cni/bin/multus-cni, so that configs
// written for multus v3.8 ("type": "multus-cni") run unchanged.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/skel"
	cniversion "github.com/containernetworking/cni/pkg/version"

	"kubeipam/internal/meta"
	"kubeipam/internal/version"
)

func main() {
	name := filepath.Base(os.Args[0])
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "-version", "--version", "version":
			fmt.Println("kube-multus", version.Version)
			return
		default:
			fmt.Fprintf(os.Stderr, "%s (kube-multus %s) is a CNI meta plugin: the container runtime runs it with CNI_COMMAND set and the network config on stdin.\nSee docs/kube-multus.md.\n", name, version.Version)
			if os.Args[1] == "-help" || os.Args[1] == "--help" || os.Args[1] == "-h" {
				return
			}
			os.Exit(2)
		}
	}
	skel.PluginMainFuncs(meta.Default().Funcs(), cniversion.All, "kube-multus "+version.Version)
}
