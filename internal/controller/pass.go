package controller

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"kubeipam/internal/store"
)

// Pass reconciles one network once.
func (r *Reconciler) Pass(ctx context.Context, n *Network) (Result, error) {
	return r.pass(ctx, n, passMode{})
}

// passMode is how a pass treats the candidates it finds. The zero value is
// the controller's: release a candidate only once it has been seen leaked,
// with unchanged revisions, at least Grace ago.
type passMode struct {
	// once releases on first sight (RunOnce): one run cannot observe a
	// candidate twice. The seen-since clock is neither read nor kept.
	once bool
	// dryRun decides and reports but releases nothing.
	dryRun bool
	// progress is called after each attachment and sticky record checked.
	progress func(done, total int)
	// report is called once per decision other than alive and no-owner,
	// in snapshot order, after the releases.
	report func(Candidate)
}

// job is one candidate to release.
type job struct {
	d     *Decision
	c     *Candidate
	freed []netip.Addr
	ok    bool
	err   error
	done  bool // the release was attempted
}

// pass is the GC rules (Decide), applied once to one network:
//  1. read the network's key space in one etcd range read;
//  2. ask the API about the owners (observe: fresh reads only);
//  3. decide every attachment and sticky record (Decide, pure);
//  4. release the candidates that are due (seen leaked on two passes at
//     least Grace apart with unchanged revisions; m.once: on this pass),
//     attachments first, then sticky records, on at most Workers
//     goroutines; each release is store.ReleaseAttachment /
//     ReleaseSticky, one etcd transaction guarded by the revisions read.
//
// A candidate that cannot be decided, or whose release is not attempted
// because the pass stops (context done, etcd error), is counted as
// skipped with its cause. The error is non-nil when the pass did not
// finish; the result then says what was done.
func (r *Reconciler) pass(ctx context.Context, n *Network, m passMode) (res Result, err error) {
	start := time.Now()
	defer func() { res.Duration = time.Since(start) }()
	// Metrics describe the controller's passes, not one-shot runs.
	metrics := r.Metrics
	if m.once {
		metrics = nil
	}
	sctx, cancel := storeCall(ctx, n)
	snap, err := readSnapshot(sctx, n)
	cancel()
	if err != nil {
		if metrics != nil {
			metrics.observePass(n.Cfg.Name, res, time.Since(start), err)
		}
		return res, err
	}
	now := r.Opts.Now()
	if metrics != nil {
		metrics.observeSnapshot(n, snap, now)
	}
	name := n.Cfg.Name
	ro := RuleOptions{Now: now, TerminatingOnNotReady: r.Opts.ReleaseTerminatingOnNotReady, Cluster: n.Cfg.Cluster}
	decisions := Decide(snap, r.observe(ctx, snap, ro), ro)
	res.Attachments, res.StickyRecords = len(snap.atts), len(snap.sticky)

	live := map[string]bool{}
	var reported []*Candidate
	var jobs []*job
	for i := range decisions {
		d := &decisions[i]
		res.Checked++
		if m.progress != nil {
			m.progress(res.Checked, len(decisions))
		}
		var c *Candidate
		if d.Verdict != VerdictAlive && d.Verdict != VerdictNoOwner && d.Verdict != VerdictForeign {
			cc := candidateOf(name, d)
			c = &cc
			reported = append(reported, c)
		}
		switch d.Verdict {
		case VerdictAlive:
			res.Alive++
		case VerdictWanted:
			res.KeptStatefulSet++
			r.Opts.Log.Debug("kept: its StatefulSet still wants the ordinal", "network", name, "owner", d.Owner(), "reason", d.Reason)
		case VerdictUndecided:
			c.Skipped = d.Cause
			res.skip(d.Cause)
			// A leak first seen earlier keeps its clock: an undecided pass
			// neither confirms nor clears it.
			live[graceKey(name, d)] = true
			r.Opts.Log.Debug("skipped: could not decide", "network", name, "owner", d.Owner(), "reason", d.Reason)
		case VerdictLeaked:
			res.Candidates++
			if !m.once && !r.candidate(graceKey(name, d), now, live) {
				res.KeptGrace++
				r.Opts.Log.Debug("leaked; within its grace period", "network", name, "owner", d.Owner(), "reason", d.Reason)
				continue
			}
			if m.dryRun {
				continue
			}
			jobs = append(jobs, &job{d: d, c: c})
		}
	}

	err = r.release(ctx, n, now, jobs)
	for _, j := range jobs {
		c, d := j.c, j.d
		switch {
		case !j.done:
			c.Skipped = "not attempted: " + stopCause(ctx, err)
			res.skip(c.Skipped)
		case j.err != nil:
			c.Skipped = "release failed: " + j.err.Error()
			res.skip(c.Skipped)
		case !j.ok:
			res.KeptChanged++
			r.Opts.Log.Info("release lost a race; will re-check", "network", name, "owner", d.Owner(), "container", store.ShortID(c.ContainerID))
		case d.Kind == KindAttachment:
			c.Released, c.Freed = true, j.freed
			res.Released++
			res.FreedIPs += len(j.freed)
			att := d.Attachment
			r.Opts.Log.Info("released leaked allocation", "network", name, "pod", att.PodNamespace+"/"+att.PodName,
				"container", store.ShortID(att.ContainerID), "ifname", att.IfName, "ips", j.freed, "reason", d.Reason)
		default:
			c.Released, c.Freed = true, j.freed
			res.Stickies++
			res.FreedIPs += len(j.freed)
			e := d.Sticky
			r.Opts.Log.Info("released sticky addresses", "network", name, "statefulSet", e.Namespace+"/"+e.StatefulSet,
				"ordinal", e.Ordinal, "ips", j.freed, "reason", d.Reason)
		}
	}
	if err == nil && ctx.Err() != nil {
		// The lookups ran out of time: what they could not read was
		// skipped, and the pass did not finish.
		err = fmt.Errorf("network %s: %w", name, ctx.Err())
	}
	for _, c := range reported {
		m.emit(*c)
	}

	if !m.once && err == nil {
		// Forget candidates of this network not seen this pass.
		r.mu.Lock()
		for k := range r.seen {
			if strings.HasPrefix(k, name+"|") && !live[k] {
				delete(r.seen, k)
			}
		}
		r.mu.Unlock()
	}
	if metrics != nil {
		metrics.observePass(name, res, time.Since(start), err)
	}
	return res, err
}

// storeCall bounds one store call of a pass by the network's ipam.timeout,
// as the plugin's calls are: the store clients wait for an unreachable
// etcd rather than fail, and a pass stuck there would neither finish nor
// count as failed until the store came back.
func storeCall(ctx context.Context, n *Network) (context.Context, context.CancelFunc) {
	if n.Cfg.Timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, n.Cfg.Timeout)
}

// graceKey identifies a candidate for the grace clock: any write to the
// attachment, its records or the sticky record restarts the clock.
func graceKey(network string, d *Decision) string {
	if d.Kind == KindSticky {
		return fmt.Sprintf("%s|sticky|%s|%s", network, d.Sticky.Key, d.Sticky.Rev)
	}
	return network + "|att|" + d.Attachment.ContainerID + "|" + d.Attachment.IfName + "|" + strings.Join(d.revs, ",")
}

func stopCause(ctx context.Context, err error) string {
	if err != nil {
		return err.Error()
	}
	if ctx.Err() != nil {
		return ctx.Err().Error()
	}
	return "the pass stopped"
}

// release runs the jobs' releases, attachments first, then sticky
// records (a sticky record is only released once its ordinal holds none of
// its addresses, which the attachments' releases may just have done), on
// at most Workers goroutines. The first etcd error, or the context ending,
// stops it: jobs not started stay !done. It returns that error.
func (r *Reconciler) release(ctx context.Context, n *Network, now time.Time, jobs []*job) error {
	name := n.Cfg.Name
	var mu sync.Mutex
	var first error
	stopped := func() bool {
		mu.Lock()
		defer mu.Unlock()
		if first == nil && ctx.Err() != nil {
			first = fmt.Errorf("network %s: %w", name, ctx.Err())
		}
		return first != nil
	}
	for _, kind := range []string{KindAttachment, KindSticky} {
		var batch []*job
		for _, j := range jobs {
			if j.d.Kind == kind {
				batch = append(batch, j)
			}
		}
		if r.beforeRelease != nil && kind == KindAttachment {
			for _, j := range batch {
				r.beforeRelease(j.d.Attachment)
			}
		}
		r.parallel(len(batch), func(i int) {
			j := batch[i]
			if stopped() {
				return
			}
			j.done = true
			sctx, cancel := storeCall(ctx, n)
			defer cancel()
			if kind == KindAttachment {
				j.freed, j.ok, j.err = n.Store.ReleaseAttachment(sctx, j.d.Attachment, now, n.Policy)
			} else {
				j.freed, j.ok, j.err = n.Store.ReleaseSticky(sctx, *j.d.Sticky, now, n.Policy)
			}
			if j.err != nil {
				mu.Lock()
				if first == nil {
					if kind == KindAttachment {
						first = fmt.Errorf("network %s: releasing container %s interface %s: %w", name, store.ShortID(j.d.Attachment.ContainerID), j.d.Attachment.IfName, j.err)
					} else {
						e := j.d.Sticky
						first = fmt.Errorf("network %s: releasing sticky %s/%s ordinal %d: %w", name, e.Namespace, e.StatefulSet, e.Ordinal, j.err)
					}
				}
				mu.Unlock()
			}
		})
	}
	return first
}

func (m passMode) emit(c Candidate) {
	if m.report != nil {
		m.report(c)
	}
}

func candidateOf(network string, d *Decision) Candidate {
	c := Candidate{Network: network, Kind: d.Kind, Verdict: d.Verdict, Reason: d.Reason}
	if d.Kind == KindSticky {
		e := d.Sticky
		c.Namespace, c.StatefulSet, c.Ordinal, c.IfName, c.IPs = e.Namespace, e.StatefulSet, e.Ordinal, e.IfName, append([]string{}, e.IPs...)
		return c
	}
	att := d.Attachment
	c.Namespace, c.Pod, c.ContainerID, c.IfName, c.Node, c.IPs = att.PodNamespace, att.PodName, att.ContainerID, att.IfName, att.Node, append([]string{}, att.IPs...)
	return c
}
