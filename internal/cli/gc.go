package cli

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"time"

	"kubeipam/internal/controller"
	"kubeipam/internal/store"
)

// GCReport is gc's JSON/YAML document.
type GCReport struct {
	DryRun bool `json:"dryRun"`
	// Complete: every network's pass finished and decided every
	// allocation (nothing skipped). gc exits 3 otherwise.
	Complete bool `json:"complete"`
	// Error is why a pass stopped early (etcd error, --timeout).
	Error      string        `json:"error,omitempty"`
	Checked    int           `json:"checked"`
	Candidates []GCCandidate `json:"candidates"`
	Released   []GCCandidate `json:"released"`
	// Kept are attachments of deleted pods kept on purpose: their
	// StatefulSet still wants the ordinal.
	Kept []GCCandidate `json:"kept"`
	// Skipped are the allocations the pass could not decide (a failed API
	// lookup: API error, client rate limiter, --timeout) and the candidates
	// whose release it did not attempt or that failed; all are kept.
	Skipped []GCCandidate `json:"skipped"`
	// SkipReasons counts Skipped by reason, most frequent first.
	SkipReasons []GCSkipReason `json:"skipReasons"`
}

// GCSkipReason is how many allocations were skipped for one reason.
type GCSkipReason struct {
	Reason string `json:"reason"`
	Count  int    `json:"count"`
}

// GCCandidate is one allocation gc found leaked, kept or undecided.
type GCCandidate struct {
	Network string `json:"network"`
	// Kind is "attachment" (a container's interface whose pod is gone) or
	// "sticky" (a StatefulSet ordinal whose StatefulSet is gone or scaled down).
	Kind        string   `json:"kind"`
	Namespace   string   `json:"namespace,omitempty"`
	Pod         string   `json:"pod,omitempty"`
	StatefulSet string   `json:"statefulSet,omitempty"`
	Ordinal     *int     `json:"ordinal,omitempty"`
	ContainerID string   `json:"containerID,omitempty"`
	IfName      string   `json:"ifname"`
	Node        string   `json:"node,omitempty"`
	IPs         []string `json:"ips"`
	// Reason says why the allocation is leaked, kept, or undecided.
	Reason string `json:"reason,omitempty"`
	// Skipped is, for a skipped allocation, the reason it was skipped.
	Skipped string `json:"skipped,omitempty"`
}

func gcCandidate(c controller.Candidate) GCCandidate {
	g := GCCandidate{Network: c.Network, Kind: c.Kind, Namespace: c.Namespace, Pod: c.Pod, StatefulSet: c.StatefulSet,
		ContainerID: c.ContainerID, IfName: c.IfName, Node: c.Node, IPs: c.IPs, Reason: c.Reason, Skipped: c.Skipped}
	if c.Kind == controller.KindSticky {
		o := c.Ordinal
		g.Ordinal = &o
	}
	return g
}

// GC runs kube-ipam-controller's garbage collection once over every network
// (controller.Reconciler.RunOnce: the controller's rules, released on this
// pass); with dryRun it only lists what it would free. Owners are confirmed
// by fresh reads through the network's Kubernetes client. The report is
// printed even when a pass stops early; the error is an *ExitError with
// code 3 when anything was skipped or a pass did not finish.
func GC(ctx context.Context, w, errw io.Writer, nets []*Network, dryRun bool, now time.Time, format string) error {
	rep := GCReport{DryRun: dryRun, Candidates: []GCCandidate{}, Released: []GCCandidate{}, Kept: []GCCandidate{},
		Skipped: []GCCandidate{}, SkipReasons: []GCSkipReason{}}
	var rows []gcRow
	opts := controller.OnceOptions{DryRun: dryRun, Progress: func(_ string, done, total int) {
		if done%1000 == 0 {
			fmt.Fprintf(errw, "gc: %d/%d allocations checked\n", done, total)
		}
	}}
	for _, n := range nets {
		if n.Kube == nil {
			return &ExitError{Code: 3, Msg: fmt.Sprintf("network %s: %s", n.Cfg.Name, n.KubeNote)}
		}
	}
	var runErr error
	for _, n := range nets {
		r, _ := gcRules(n, now)
		results, err := r.RunOnce(ctx, opts)
		for _, res := range results {
			rep.Checked += res.Checked
			for _, c := range res.Leaked {
				g := gcCandidate(c)
				rep.Candidates = append(rep.Candidates, g)
				action := "would free"
				switch {
				case c.Skipped != "":
					action = "skipped: " + c.Skipped
					rep.Skipped = append(rep.Skipped, g)
				case c.Released:
					action = "freed"
					g.IPs = addrStrings(c.Freed)
					rep.Released = append(rep.Released, g)
				case !dryRun:
					action = "left alone (changed meanwhile)"
				}
				rows = append(rows, gcRow{g, action})
			}
			for _, c := range res.Undecided {
				g := gcCandidate(c)
				rep.Skipped = append(rep.Skipped, g)
				rows = append(rows, gcRow{g, "skipped: " + c.Skipped})
			}
			for _, c := range res.Kept {
				rep.Kept = append(rep.Kept, gcCandidate(c))
			}
		}
		if err != nil {
			runErr = err
			break
		}
	}
	var reasons []string
	for _, g := range rep.Skipped {
		reasons = append(reasons, g.Skipped)
	}
	rep.SkipReasons = countReasons(reasons)
	if runErr != nil {
		rep.Error = runErr.Error()
	}
	rep.Complete = runErr == nil && len(rep.Skipped) == 0

	if format != FormatTable {
		if err := emit(w, format, rep, nil, nil); err != nil {
			return err
		}
	} else if err := printGC(w, &rep, len(nets), rows); err != nil {
		return err
	}
	switch {
	case runErr != nil:
		return &ExitError{Code: 3, Msg: fmt.Sprintf("%v (released so far: %d; skipped: %d); run gc again", runErr, len(rep.Released), len(rep.Skipped))}
	case len(rep.Skipped) > 0:
		return &ExitError{Code: 3, Msg: fmt.Sprintf("%d allocation(s) could not be decided or released and were kept (%s); run gc again", len(rep.Skipped), reasonsText(rep.SkipReasons))}
	}
	return nil
}

// countReasons counts reasons, most frequent first.
func countReasons(reasons []string) []GCSkipReason {
	counts := map[string]int{}
	for _, r := range reasons {
		counts[r]++
	}
	out := []GCSkipReason{}
	for r, n := range counts {
		out = append(out, GCSkipReason{Reason: r, Count: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Reason < out[j].Reason
	})
	return out
}

func reasonsText(rs []GCSkipReason) string {
	var parts []string
	for _, r := range rs {
		parts = append(parts, fmt.Sprintf("%d × %s", r.Count, r.Reason))
	}
	return strings.Join(parts, "; ")
}

// gcRow is one line of gc's table.
type gcRow struct {
	c      GCCandidate
	action string
}

func printGC(w io.Writer, rep *GCReport, networks int, rows []gcRow) error {
	var tab [][]string
	for _, r := range rows {
		c := r.c
		owner := c.Namespace + "/" + c.Pod
		if c.Kind == controller.KindSticky {
			owner = fmt.Sprintf("%s/%s ordinal %d", c.Namespace, c.StatefulSet, *c.Ordinal)
		}
		tab = append(tab, []string{c.Network, c.Kind, owner, store.ShortID(c.ContainerID), c.IfName, c.Node, strings.Join(c.IPs, ","), r.action})
	}
	if len(tab) == 0 {
		fmt.Fprintf(w, "No leaked allocations in %d network(s), %d allocation(s) checked.\n", networks, rep.Checked)
	} else {
		if err := table(w, []string{"NETWORK", "KIND", "OWNER", "CONTAINER", "IFNAME", "NODE", "IPS", "ACTION"}, tab); err != nil {
			return err
		}
		switch {
		case len(rep.Candidates) == 0:
			fmt.Fprintf(w, "No leaked allocation found among the %d allocation(s) decided.\n", rep.Checked-len(rep.Skipped))
		case rep.DryRun:
			fmt.Fprintf(w, "Dry run: %d leaked allocation(s) would be freed; nothing was changed.\n", len(rep.Candidates))
		default:
			fmt.Fprintf(w, "Freed %d of %d leaked allocation(s).\n", len(rep.Released), len(rep.Candidates))
		}
	}
	if len(rep.Kept) > 0 {
		fmt.Fprintf(w, "Kept %d allocation(s) of deleted pods whose StatefulSet still wants the ordinal (the re-created pod takes the address over).\n", len(rep.Kept))
	}
	if len(rep.Skipped) > 0 {
		fmt.Fprintf(w, "Skipped %d allocation(s), kept for now:\n", len(rep.Skipped))
		for _, r := range rep.SkipReasons {
			fmt.Fprintf(w, "  %d × %s\n", r.Count, r.Reason)
		}
	}
	if rep.Error != "" {
		fmt.Fprintf(w, "The pass stopped early: %s\n", rep.Error)
	}
	return nil
}

func addrStrings(as []netip.Addr) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}
