// Command kube-tier is the tier ingress policy as a chained CNI plugin: run
// after macvlan (+ kube-ipam) in a conflist, it installs an nftables table
// in the pod's network namespace that drops what the rules do not allow on
// CNI_IFNAME. Any meta plugin can run it: upstream multus with a
// NetworkAttachmentDefinition, kube-multus, or the runtime itself.
package main

import (
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"kubeipam/internal/tier"
	"kubeipam/internal/version"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "-version", "--version", "version":
			fmt.Println("kube-tier", version.Version)
			return
		default:
			fmt.Fprintf(os.Stderr, "kube-tier %s is a chained CNI plugin: the container runtime runs it with CNI_COMMAND set and the network config on stdin.\nSee docs/kube-tier.md.\n", version.Version)
			if os.Args[1] == "-help" || os.Args[1] == "--help" || os.Args[1] == "-h" {
				return
			}
			os.Exit(2)
		}
	}
	skel.PluginMainFuncs(tier.DefaultChained().Funcs(), tier.ChainedVersions(), "kube-tier "+version.Version)
}
