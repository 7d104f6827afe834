package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"kubeipam/internal/version"
)

func (a *App) versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:               "version",
		Short:             "Print the version",
		Example:           `  kube-ipamctl version`,
		Args:              exactArgs(0),
		ValidArgsFunction: cobra.NoFileCompletions,
		// Reads no config: it answers on a machine without one.
		RunE: a.action(g, true, func(context.Context, []*Network, []string) error {
			_, err := fmt.Fprintln(a.Out, "kube-ipamctl", version.Version)
			return err
		}),
	}
}
