package controller

import (
	"context"
	"net/netip"
)

// Candidate kinds.
const (
	// KindAttachment is a container's interface whose pod is gone.
	KindAttachment = "attachment"
	// KindSticky is a StatefulSet ordinal's sticky record whose StatefulSet
	// is gone, re-created or scaled below the ordinal.
	KindSticky = "sticky"
)

// Candidate is one allocation a pass found leaked.
type Candidate struct {
	Network string
	Kind    string // KindAttachment or KindSticky
	// Namespace is the pod's (attachment) or StatefulSet's (sticky).
	Namespace   string
	Pod         string // attachment
	StatefulSet string // sticky
	Ordinal     int    // sticky
	ContainerID string // attachment
	IfName      string
	Node        string   // attachment
	IPs         []string // as held when read
	// Released: the guarded release went through (never in a dry run);
	// Freed are the addresses it freed. A candidate that changed between
	// the read and the release is left alone: Released false.
	Released bool
	Freed    []netip.Addr
}

// OnceOptions configure RunOnce.
type OnceOptions struct {
	// DryRun finds the candidates and releases nothing.
	DryRun bool
	// Progress, when set, is called after each attachment and sticky record
	// of a network is checked, with how many of its total have been.
	Progress func(network string, done, total int)
}

// OnceResult is what RunOnce did on one network.
type OnceResult struct {
	Network string
	Result
	// Leaked are the candidates in pass order (attachments, then sticky
	// records), each saying whether it was released.
	Leaked []Candidate
}

// RunOnce is a one-shot pass over every network, for kube-ipamctl gc: the
// rules of Pass, except that a candidate is released on this pass. A single
// run cannot see it leaked on two passes Grace apart, so Grace is not
// applied (and the seen-since clock of Pass is neither read nor changed);
// the owner checks and the revision-guarded release are the same. Metrics
// are not updated. Networks are done in order; on an error RunOnce stops and
// returns what was done so far, the failing network's partial result
// included, with an error naming the network.
func (r *Reconciler) RunOnce(ctx context.Context, o OnceOptions) ([]OnceResult, error) {
	out := make([]OnceResult, 0, len(r.Networks))
	for _, n := range r.Networks {
		or := OnceResult{Network: n.Cfg.Name}
		m := passMode{once: true, dryRun: o.DryRun, report: func(c Candidate) { or.Leaked = append(or.Leaked, c) }}
		if o.Progress != nil {
			m.progress = func(done, total int) { o.Progress(n.Cfg.Name, done, total) }
		}
		res, err := r.pass(ctx, n, m)
		or.Result = res
		out = append(out, or)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}
