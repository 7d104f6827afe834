// Command kube-tier is the tier ingress policy as a chained CNI plugin: run
// after macvlan (+ kube-ipam) in a conflist, it installs an nftables table
// in the pod's network namespace that drops what the rules do not allow on
// CNI_IFNAME. Any meta plugin can run it: upstream multus with a
// NetworkAttachmentDefinition, kube-multus, or the runtime itself.
package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"kubeipam/internal/cmdline"
	"kubeipam/internal/tier"
	"kubeipam/internal/version"
)

func main() {
	if code, ok := cmdline.Plugin(os.Args[1:], "kube-tier", version.Version, "a chained CNI plugin: the container runtime runs it with CNI_COMMAND set and the network config on stdin. See docs/kube-tier.md.", os.Stdout, os.Stderr); !ok {
		os.Exit(code)
	}
	skel.PluginMainFuncs(tier.DefaultChained().Funcs(), tier.ChainedVersions(), "kube-tier "+version.Version)
}
