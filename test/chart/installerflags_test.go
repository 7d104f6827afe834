package chart

import (
	"github.com/spf13/pflag"

	"kubeipam/internal/install"
)

// installerFlags is kube-ipam-install's command line as cmd/kube-ipam-install
// builds it: package install's flags and the node agent's, which the
// command adds (their values are not checked here).
func installerFlags(o *install.Options) *pflag.FlagSet {
	fs := install.FlagSet(o)
	fs.String("agent-socket", "", "")
	fs.Bool("agent-only", false, "")
	fs.Int("agent-max-in-flight", 0, "")
	return fs
}
