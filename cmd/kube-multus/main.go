// Command kube-multus is a multus-compatible CNI meta plugin (delegates
// mode) with tier security: per-network pod selection and an nftables
// ingress policy inside the pod's network namespace. Install it as both
// /opt/cni/bin/kube-multus and /opt/cni/bin/multus-cni, so that configs
// written for multus v3.8 ("type": "multus-cni") run unchanged.
package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	cniversion "github.com/containernetworking/cni/pkg/version"

	"kubeipam/internal/cmdline"
	"kubeipam/internal/meta"
	"kubeipam/internal/version"
)

func main() {
	if code, ok := cmdline.Plugin(os.Args[1:], "kube-multus", version.Version, "a CNI meta plugin: the container runtime runs it with CNI_COMMAND set and the network config on stdin. See docs/kube-multus.md.", os.Stdout, os.Stderr); !ok {
		os.Exit(code)
	}
	skel.PluginMainFuncs(meta.Default().Funcs(), cniversion.All, "kube-multus "+version.Version)
}
