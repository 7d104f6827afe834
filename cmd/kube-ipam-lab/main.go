// Command kube-ipam-lab runs the seed's architecture on this machine with real
// kubelet nodes and replays the seed's verification (make lab); see
// docs/lab.md.
package main

import (
	"os"

	"kubeipam/internal/lab"
)

func main() { os.Exit(lab.Main(os.Args[1:], os.Stdout, os.Stderr)) }
