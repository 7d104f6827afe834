// Command kube-ipam is the CNI IPAM plugin as the container runtime runs
// it: a small process that hands the call to the kube-ipam node agent and
// runs kube-ipam-direct, the whole plugin, when no agent takes it. See
// package shim and docs/performance.md.
package main

import (
	"os"

	"kubeipam/internal/agent/shim"
)

func main() {
	os.Exit(shim.Main(os.Args, os.Stdin, os.Stdout, os.Stderr))
}
