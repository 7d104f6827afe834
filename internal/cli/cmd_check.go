package cli

import (
	"context"

	"github.com/spf13/cobra"
)

func (a *App) checkCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Look for inconsistencies in the store",
		Long: `Report, and exit 1 when there is any:
  stale-attachment  an attachment lists an address whose record names another
                    container (or that no record holds)
  orphan            a record whose attachment is missing or does not list it
  out-of-range      a fixed address outside every subnet, or a dynamic/sticky
                    address outside the dynamic ranges of the config
  leaked            what 'kube-ipamctl gc' would free, by the same rules: an
                    address whose pod no longer exists in the Kubernetes API
                    (or was re-created with another UID) and whose
                    StatefulSet, if any, no longer wants its ordinal; or a
                    StatefulSet's sticky address once the StatefulSet is
                    deleted or scaled below the ordinal. Skipped, with a
                    note, when the Kubernetes API is not configured
                    (--kubeconfig, ipam.kubeConfig or in-cluster) or cannot
                    tell
  corrupt           keys or values that do not parse
  duplicate         a second record of one address under another spelling
                    of its key
Addresses of deleted StatefulSet pods whose StatefulSet still wants the
ordinal are not problems: they are listed under "Kept on purpose"
(statefulset-ordinal), for the re-created pod to take over.
check only reads; free leaked addresses with gc (or release IP), orphaned
ones with release IP.`,
		Example: `  kube-ipamctl check
  kube-ipamctl check --kubeconfig ~/.kube/config -o json`,
		Args:              exactArgs(0),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: a.action(g, false, func(ctx context.Context, nets []*Network, _ []string) error {
			return Check(ctx, a.Out, nets, a.Now(), g.output)
		}),
	}
}
