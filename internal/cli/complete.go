package cli

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"kubeipam/internal/config"
)

// Dynamic shell completion (cobra's __complete, which the scripts of
// 'kube-ipamctl completion SHELL' call): the candidates come from what the
// command would read, never from a store or the API, so a TAB answers at
// once even when etcd is down.

// completeFormats completes -o.
func completeFormats(_ *cobra.Command, _ []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
	var out []cobra.Completion
	for _, f := range []string{FormatTable, FormatJSON, FormatYAML} {
		if strings.HasPrefix(f, prefix) {
			out = append(out, f)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completeNetworkFlag makes cmd's --network complete the kube-ipam networks
// of the config the command would read (--config on the line so far, else
// $KUBE_IPAMCTL_CONFIG, else the one found in ConfDir), each with its
// subnets as the description.
func (a *App) completeNetworkFlag(cmd *cobra.Command, g *globals) {
	_ = cmd.RegisterFlagCompletionFunc("network", func(_ *cobra.Command, _ []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
		path, err := a.configPath(g)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		nets, err := config.LoadNetworks(path)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, n := range nets {
			if !strings.HasPrefix(n.Name, prefix) {
				continue
			}
			var subnets []string
			for _, rs := range n.RangeSets {
				for _, r := range rs {
					if s := r.Subnet.String(); !slices.Contains(subnets, s) {
						subnets = append(subnets, s)
					}
				}
			}
			c := n.Name
			if len(subnets) > 0 {
				c = cobra.CompletionWithDesc(n.Name, strings.Join(subnets, ","))
			}
			if !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	})
}

// strictCompletionCmd makes cobra's 'completion' command (whose
// subcommands bash, zsh, fish and powershell print the scripts) refuse a
// missing or unknown shell as a usage error: cobra would print its help
// and exit 0, and the user's rc file would source nothing in silence.
func strictCompletionCmd(root *cobra.Command) {
	c, _, err := root.Find([]string{"completion"})
	if err != nil || c == root {
		return
	}
	var shells []string
	for _, s := range c.Commands() {
		shells = append(shells, s.Name())
	}
	want := strings.Join(shells, ", ")
	c.Args = func(_ *cobra.Command, args []string) error {
		if len(args) == 0 {
			return &cmdLineError{fmt.Errorf("missing shell: want one of %s", want)}
		}
		return &cmdLineError{fmt.Errorf("unknown shell %q: want one of %s", args[0], want)}
	}
	c.RunE = func(*cobra.Command, []string) error { return nil } // Args refuses first
}
