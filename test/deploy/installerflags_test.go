package deploy

import (
	"github.com/spf13/pflag"

	"kubeipam/internal/agent"
	"kubeipam/internal/install"
)

// installerFlags is kube-ipam-install's command line as cmd/kube-ipam-install
// builds it: package install's flags and the node agent's (their values
// are not checked here).
func installerFlags(o *install.Options) *pflag.FlagSet {
	fs := install.FlagSet(o)
	new(agent.Server).AddFlags(fs)
	return fs
}
