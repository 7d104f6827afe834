package controller

import (
	"context"
	"net/netip"

	"kubeipam/internal/store"
)

// Candidate kinds.
const (
	// KindAttachment is a container's interface whose pod is gone.
	KindAttachment = "attachment"
	// KindSticky is a StatefulSet ordinal's sticky record whose StatefulSet
	// is gone, re-created or scaled below the ordinal.
	KindSticky = "sticky"
)

// Candidate is one allocation a pass did not find alive: leaked (a GC
// candidate), kept for its StatefulSet, or undecided.
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
	// Verdict is VerdictLeaked, VerdictWanted (pod gone, the StatefulSet
	// still wants the ordinal: kept on purpose) or VerdictUndecided.
	Verdict Verdict
	// Reason says why, in words: why the owner is gone, why it is kept, or
	// why it could not be decided.
	Reason string
	// Skipped is set when the candidate was counted as skipped: the cause
	// of the failed lookup (VerdictUndecided), or why a leaked candidate's
	// release was not attempted or failed.
	Skipped string
	// Released: the guarded release went through (never in a dry run);
	// Freed are the addresses it freed. A candidate that changed between
	// the read and the release is left alone: Released false, Skipped "".
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
	// records), each saying whether it was released (or why it was
	// skipped).
	Leaked []Candidate
	// Kept are the attachments of gone pods kept for their StatefulSet.
	Kept []Candidate
	// Undecided are the allocations whose owner lookup failed.
	Undecided []Candidate
}

// RunOnce is a one-shot pass over every network, for kube-ipamctl gc: the
// rules of Pass, except that a candidate is released on this pass. A single
// run cannot see it leaked on two passes Grace apart, so Grace is not
// applied (and the seen-since clock of Pass is neither read nor changed);
// the owner checks and the revision-guarded release are the same. Metrics
// are not updated. Networks are done in order; on an error RunOnce stops and
// returns what was done so far, the failing network's partial result
// included, with an error naming the network. A run that returns no error
// may still have skipped allocations it could not decide (Result.Skipped).
func (r *Reconciler) RunOnce(ctx context.Context, o OnceOptions) ([]OnceResult, error) {
	out := make([]OnceResult, 0, len(r.Networks))
	for _, n := range r.Networks {
		or := OnceResult{Network: n.Cfg.Name}
		m := passMode{once: true, dryRun: o.DryRun, report: func(c Candidate) {
			switch c.Verdict {
			case VerdictLeaked:
				or.Leaked = append(or.Leaked, c)
			case VerdictWanted:
				or.Kept = append(or.Kept, c)
			default:
				or.Undecided = append(or.Undecided, c)
			}
		}}
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

// Evaluate reads one network and decides every attachment and sticky
// record by the GC rules, releasing nothing (kube-ipamctl check). The owners
// are looked up as a pass looks them up.
func (r *Reconciler) Evaluate(ctx context.Context, n *Network) ([]Decision, error) {
	snap, err := readSnapshot(ctx, n)
	if err != nil {
		return nil, err
	}
	ro := RuleOptions{Now: r.Opts.Now(), TerminatingOnNotReady: r.Opts.ReleaseTerminatingOnNotReady, Cluster: n.Cfg.Cluster}
	return Decide(snap, r.observe(ctx, snap, ro), ro), nil
}

// DecideAttachment decides one attachment, holding the given records, by
// the GC rules (kube-ipamctl release): its owner is looked up as a pass
// looks it up.
func (r *Reconciler) DecideAttachment(ctx context.Context, n *Network, att *store.Attachment, recs []*store.Record) Decision {
	snap := &snapshot{records: map[netip.Addr]recEntry{}, atts: []*store.Attachment{att}}
	for _, rec := range recs {
		if a, err := netip.ParseAddr(rec.IP); err == nil {
			snap.records[a.Unmap()] = recEntry{Rec: rec}
		}
	}
	ro := RuleOptions{Now: r.Opts.Now(), TerminatingOnNotReady: r.Opts.ReleaseTerminatingOnNotReady, Cluster: n.Cfg.Cluster}
	return Decide(snap, r.observe(ctx, snap, ro), ro)[0]
}
