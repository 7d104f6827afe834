package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Watchdog keeps one short-lived caller (a CNI call) moving when an etcd
// member is lost while a request is in flight to it.
//
// The gRPC balancer keeps sending to a member whose packets are black-holed
// until TCP gives up (minutes), and client keepalives cannot be set below
// 10 s. So every request runs under a watchdog: when it has not returned
// after StallAfter, each endpoint is asked for its status (a separate
// connection, ProbeTimeout). Members that do not answer, or are not fit to
// serve while others are (no leader, an old term, far behind: see judge),
// are dropped from the client and the request is abandoned: a read is sent again (to the members left), a write
// is reported as an *AmbiguousError for the caller to resolve. When no
// member has a leader for NoLeaderLimit the request fails with a
// *NoLeaderError. A request unanswered for Patience while every member
// looks fit is abandoned too (it was lost in a leader change). When no
// member answers at all (etcd stopped or frozen) the request keeps waiting:
// it may still be answered before the caller's deadline.
//
// A watchdog drops endpoints for good, so it suits a client that lives for
// one call; long-lived clients (controller, CLI) run without one.
type Watchdog struct {
	StallAfter    time.Duration
	ProbeTimeout  time.Duration
	NoLeaderLimit time.Duration
	// Patience bounds how long a request may go unanswered while the
	// members answer their status and look fit: a proposal can be dropped
	// by a member that has just rejoined (raft drops proposals while a
	// follower does not know the leader), and etcd would only time it out
	// after about 7 s. The request is then abandoned and sent again (a read)
	// or read back (a write).
	Patience time.Duration
	// Log, when set, is told about every probe that changed something.
	Log func(msg string, args ...any)
}

// DefaultWatchdog is what the CNI plugin uses: an in-flight request to a
// lost member is abandoned after at most about 1.75 s (StallAfter +
// ProbeTimeout), leaving time inside the 5 s the docs promise for the
// election that may follow.
func DefaultWatchdog() *Watchdog {
	return &Watchdog{StallAfter: time.Second, ProbeTimeout: 750 * time.Millisecond, NoLeaderLimit: 3 * time.Second, Patience: 2500 * time.Millisecond}
}

// SetWatchdog runs every later request of s under w (nil: none).
func (s *Store) SetWatchdog(w *Watchdog) { s.wd = w }

// StallError: a request was abandoned because the member serving it stopped
// answering (the members that did not answer were dropped), or because it
// went unanswered past the watchdog's Patience while every member looked fit.
type StallError struct {
	Dropped []string
	After   time.Duration
}

func (e *StallError) Error() string {
	if len(e.Dropped) == 0 {
		return fmt.Sprintf("no answer from etcd within %v although its members answer their status (a request lost in a leader change?)", e.After.Round(100*time.Millisecond))
	}
	return fmt.Sprintf("no answer from etcd within %v; dropped unresponsive member(s) %s", e.After.Round(100*time.Millisecond), strings.Join(e.Dropped, ","))
}

// NoLeaderError: every member that answered had no leader for too long
// (quorum lost).
type NoLeaderError struct {
	Answered []string
	For      time.Duration
}

func (e *NoLeaderError) Error() string {
	return fmt.Sprintf("etcd has no leader: member(s) %s answer but none has had a leader for %v (quorum lost?)", strings.Join(e.Answered, ","), e.For.Round(100*time.Millisecond))
}

// AmbiguousError: a write may or may not have been applied (the connection
// broke, etcd timed out, the member was lost). The caller must read back
// before it reports success or failure.
type AmbiguousError struct{ Err error }

func (e *AmbiguousError) Error() string {
	// Another backend's write (the Kubernetes API store's) is not an etcd
	// transaction; its error names the API and the request itself.
	var un Unavailable
	if errors.As(e.Err, &un) {
		return "outcome of the write unknown: " + e.Err.Error()
	}
	return "outcome of the etcd transaction unknown: " + e.Err.Error()
}

func (e *AmbiguousError) Unwrap() error { return e.Err }

// errAbandoned is the cancel cause of a request the watchdog gave up on.
var errAbandoned = errors.New("request abandoned by the watchdog")

// guard runs op under the watchdog (directly when there is none).
func (s *Store) guard(ctx context.Context, op func(context.Context) error) error {
	w := s.wd
	if w == nil {
		return op(ctx)
	}
	octx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan error, 1)
	go func() { done <- op(octx) }()
	start := time.Now()
	t := time.NewTimer(w.StallAfter)
	defer t.Stop()
	var leaderless time.Time
	for {
		select {
		case err := <-done:
			return err
		case <-t.C:
		}
		v := w.probe(ctx, s.cli)
		if len(v.answered) > 0 {
			// etcd answers on a new connection: the client's own may be
			// waiting out a reconnect backoff (etcd restarted) — try now.
			s.cli.ActiveConnection().ResetConnectBackoff()
		}
		var verdict error
		switch {
		case len(v.leader) > 0 && len(v.leader) < len(v.all):
			s.cli.SetEndpoints(v.leader...)
			verdict = &StallError{Dropped: v.without(v.leader), After: time.Since(start)}
		case len(v.leader) > 0:
			leaderless = time.Time{} // healthy, only slow: keep waiting, with patience
			if w.Patience > 0 && time.Since(start) >= w.Patience {
				verdict = &StallError{After: time.Since(start)}
			}
		case len(v.answered) > 0:
			if leaderless.IsZero() {
				leaderless = time.Now()
			} else if d := time.Since(leaderless); d >= w.NoLeaderLimit {
				verdict = &NoLeaderError{Answered: v.answered, For: d}
			}
		}
		if verdict != nil {
			if w.Log != nil {
				w.Log("etcd request abandoned", "reason", verdict.Error())
			}
			cancel(errAbandoned)
			<-done
			return verdict
		}
		next := w.StallAfter
		if !leaderless.IsZero() {
			next = min(next, time.Second)
		}
		t.Reset(next)
	}
}

type probeResult struct {
	// all: the endpoints asked; answered: those that answered; leader:
	// those fit to serve (a current leader, not lagging).
	all, answered, leader []string
}

func (p probeResult) without(keep []string) []string {
	var out []string
	for _, e := range p.all {
		if !slices.Contains(keep, e) {
			out = append(out, e)
		}
	}
	return out
}

// memberStatus is what one endpoint said of itself.
type memberStatus struct {
	Endpoint string
	Leader   uint64 // member ID of the leader it follows; 0: none
	Term     uint64
	Index    uint64 // last raft index it has
	Applied  uint64 // raft index it has applied
}

// MaxLag is how many raft entries a member may have left to apply, behind
// the most advanced member, and still be asked: a member that has just
// come back from a partition answers its status at once but serves
// linearizable reads only after it has caught up (seconds).
const MaxLag = 500

// judge decides which answering members are fit to serve: those that know
// a leader, are on the highest term any member reports, follow the leader
// the members on that term follow, and have applied all but MaxLag of the
// highest index reported. A member back from a partition still on an old
// term, or far behind, is not. Pure, so that it is tested by table.
func judge(all []string, sts []memberStatus) probeResult {
	res := probeResult{all: all}
	var term, index uint64
	for _, m := range sts {
		res.answered = append(res.answered, m.Endpoint)
		if m.Leader != 0 {
			term = max(term, m.Term)
		}
		index = max(index, m.Index)
	}
	// The leader of the highest term, as most members on it report.
	votes := map[uint64]int{}
	for _, m := range sts {
		if m.Leader != 0 && m.Term == term {
			votes[m.Leader]++
		}
	}
	var lead uint64
	for id, n := range votes {
		if n > votes[lead] || (n == votes[lead] && id < lead) {
			lead = id
		}
	}
	for _, m := range sts {
		if m.Leader != 0 && m.Leader == lead && m.Term == term && m.Applied+MaxLag >= index {
			res.leader = append(res.leader, m.Endpoint)
		}
	}
	order := func(s []string) {
		slices.SortFunc(s, func(a, b string) int { return slices.Index(all, a) - slices.Index(all, b) })
	}
	order(res.answered)
	order(res.leader)
	return res
}

// probe asks every endpoint of cli for its status in parallel.
func (w *Watchdog) probe(ctx context.Context, cli *clientv3.Client) probeResult {
	eps := cli.Endpoints()
	var mu sync.Mutex
	var sts []memberStatus
	var wg sync.WaitGroup
	for _, ep := range eps {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, w.ProbeTimeout)
			defer cancel()
			st, err := cli.Status(pctx, ep)
			if err != nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			sts = append(sts, memberStatus{Endpoint: ep, Leader: st.Leader, Term: st.RaftTerm, Index: st.RaftIndex, Applied: st.RaftAppliedIndex})
		})
	}
	wg.Wait()
	return judge(eps, sts)
}

// get is a guarded range read. With a watchdog, a read that failed for a
// transient reason is sent again (reads are idempotent) until ctx ends.
func (s *Store) get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	for attempt := 0; ; attempt++ {
		var resp *clientv3.GetResponse
		err := s.guard(ctx, func(ctx context.Context) error {
			var err error
			resp, err = s.cli.Get(ctx, key, opts...)
			return err
		})
		if err == nil || s.wd == nil || !retryable(err) || ctx.Err() != nil {
			return resp, err
		}
		if err := pause(ctx, attempt); err != nil {
			return nil, err
		}
	}
}

// del is a guarded delete (idempotent, so retried like a read).
func (s *Store) del(ctx context.Context, key string) error {
	for attempt := 0; ; attempt++ {
		err := s.guard(ctx, func(ctx context.Context) error {
			_, err := s.cli.Delete(ctx, key)
			return err
		})
		if err == nil || s.wd == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
		if err := pause(ctx, attempt); err != nil {
			return err
		}
	}
}

// txn commits one guarded transaction. It is never sent twice: an error
// that does not prove the transaction was refused before it could apply is
// returned as an *AmbiguousError.
func (s *Store) txn(ctx context.Context, cmps []clientv3.Cmp, ops []clientv3.Op) (*clientv3.TxnResponse, error) {
	var resp *clientv3.TxnResponse
	if s.beforeTxn != nil {
		s.beforeTxn()
	}
	err := s.guard(ctx, func(ctx context.Context) error {
		var err error
		resp, err = s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		return err
	})
	if err != nil && !refused(err) {
		return nil, &AmbiguousError{Err: err}
	}
	return resp, err
}

// retryable: worth sending a read again (the member was lost, etcd was
// briefly unavailable); not when etcd has no leader, which the watchdog
// already waited out.
func retryable(err error) bool {
	var nl *NoLeaderError
	if errors.As(err, &nl) {
		return false
	}
	return IsUnavailable(err)
}

func pause(ctx context.Context, attempt int) error {
	d := time.Duration(25<<min(attempt, 4))*time.Millisecond + rand.N(25*time.Millisecond)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// refused reports whether err proves that etcd refused a request before it
// could be applied (bad request, permissions, size limits), as opposed to
// an outcome the client cannot know (connection lost, timeouts).
func refused(err error) bool {
	switch grpcCode(err) {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.PermissionDenied, codes.Unauthenticated,
		codes.OutOfRange, codes.Unimplemented, codes.NotFound, codes.AlreadyExists:
		return true
	}
	return false
}

// grpcCode is err's gRPC code, also for clientv3's rpctypes.EtcdError, which
// carries its code in a Code method but is not a gRPC status.
func grpcCode(err error) codes.Code {
	code := status.Code(err)
	var coded interface{ Code() codes.Code }
	if code == codes.Unknown && errors.As(err, &coded) {
		code = coded.Code()
	}
	return code
}
