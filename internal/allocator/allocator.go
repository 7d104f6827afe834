// Package allocator turns a request (who the attachment is, which fixed
// addresses it wants) into claimed addresses: it reads the smallest view of
// the store that the choice needs, chooses with the pure rules of package
// ipam, commits one transaction, and on a lost race reads again.
package allocator

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"

	"kubeipam/internal/config"
	"kubeipam/internal/ipam"
	"kubeipam/internal/store"
)

// Tunables of the dynamic search; see docs/architecture.md.
const (
	window        = 512  // keys per range read
	span          = 1024 // addresses covered by one range read at most
	candidates    = 64   // free addresses collected per window
	spread        = 32   // random pick among the first candidates
	freshWindows  = 4    // windows read above the cursor before trying the release log
	releasedPeek  = 32   // release-log entries read per attempt
	maxAttempts   = 200  // commits lost to concurrent writers before giving up
	backoffBaseMs = 2
)

// Request is one ADD.
type Request struct {
	ContainerID  string
	IfName       string
	PodNamespace string
	PodName      string
	PodUID       string
	Node         string
	// StatefulSet identity (StatefulSetUID empty for other pods).
	StatefulSet    string
	StatefulSetUID string
	Ordinal        int
	// Sticky: remember the dynamic addresses of this StatefulSet ordinal and
	// give them back on every later ADD of the same ordinal.
	Sticky bool
	// Fixed addresses asked for by annotation or CNI args.
	Fixed []netip.Addr
}

// Allocated is one claimed address.
type Allocated struct {
	IP   netip.Addr
	Set  int
	Kind string
}

// ConflictError: a fixed address is held by another pod.
type ConflictError struct {
	IP     netip.Addr
	Holder string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("IP %s is already allocated to %s; it is released when that pod's interface is deleted (or by kube-ipamctl release)", e.IP, e.Holder)
}

// OutOfRangeError: a fixed address the network cannot give.
type OutOfRangeError struct {
	IP     netip.Addr
	Reason string
}

func (e *OutOfRangeError) Error() string {
	return fmt.Sprintf("requested IP %s %s", e.IP, e.Reason)
}

// ExhaustedError: no address left in a range set.
type ExhaustedError struct {
	Network string
	Set     int
	Ranges  string
}

func (e *ExhaustedError) Error() string {
	return fmt.Sprintf("network %q: no free address left in range set %d (%s)", e.Network, e.Set, e.Ranges)
}

// CoolingError: every free address was released too recently to be reused.
type CoolingError struct {
	Network string
	Set     int
	Ready   time.Time
}

func (e *CoolingError) Error() string {
	return fmt.Sprintf("network %q: range set %d has no free address until released ones finish their cooldown (next at %s)", e.Network, e.Set, e.Ready.UTC().Format(time.RFC3339))
}

// ContentionError: too many lost races.
type ContentionError struct{ Attempts int }

func (e *ContentionError) Error() string {
	return fmt.Sprintf("lost %d claim races to concurrent allocations; try again", e.Attempts)
}

// Allocator allocates on one network.
type Allocator struct {
	Net   *config.Network
	Store store.Backend
	Now   func() time.Time
	// Started is when the call began (for the record's AddMillis).
	Started time.Time
	// Conflicts counts lost claim races (for metrics and the benchmark).
	Conflicts int
	dyn       [][]ipam.Interval
	policy    store.ReusePolicy
	// Unknown counts claims whose outcome was unknown and had to be read
	// back; Committed says that this call's own claim was applied (not a
	// repeated ADD returning what the attachment already held), and Retired
	// how many earlier attachments of the pod it replaced.
	Unknown   int
	Committed bool
	Retired   int
	// spread is how many candidates a pick chooses among: 1 (the lowest
	// free address, predictable) until a race is lost, then wider.
	spread   int
	lastLost bool
	// InFlight, when set, steers fresh picks away from the addresses
	// other calls of this process are claiming (see InFlight); Pool names
	// this network's address pool in it (the same network in the same
	// store).
	InFlight *InFlight
	Pool     string
	// reserved is this call's entry in InFlight.
	reserved netip.Addr
	// beforeCommit, in tests, runs just before a claim transaction is sent.
	beforeCommit func()
}

// New returns an allocator for n backed by s.
func New(n *config.Network, s store.Backend) *Allocator {
	a := &Allocator{Net: n, Store: s, Now: time.Now, Started: time.Now()}
	for i := range n.RangeSets {
		a.dyn = append(a.dyn, ipam.DynamicIntervals(n, i))
	}
	a.policy = reusePolicy(n, a.dyn)
	return a
}

// Dynamic returns the dynamic intervals of range set i.
func (a *Allocator) Dynamic(i int) []ipam.Interval { return a.dyn[i] }

// ValidateFixed checks that a fixed address is one this network can give,
// returning its range set.
func (a *Allocator) ValidateFixed(ip netip.Addr) (int, error) {
	set, r, ok := a.Net.SetFor(ip)
	if !ok {
		return -1, &OutOfRangeError{ip, fmt.Sprintf("is outside every subnet of network %q", a.Net.Name)}
	}
	switch {
	case ip == r.Subnet.Addr():
		return -1, &OutOfRangeError{ip, "is the network address of " + r.Subnet.String()}
	case ip.Is4() && ip == config.LastAddr(r.Subnet):
		return -1, &OutOfRangeError{ip, "is the broadcast address of " + r.Subnet.String()}
	case ip == r.Gateway:
		return -1, &OutOfRangeError{ip, "is the gateway of " + r.Subnet.String()}
	}
	// Excluded means never handed out: a fixed request for it is refused
	// like any address the network cannot give, even inside the fixed block.
	if x, ok := a.Net.Excluded(ip); ok {
		return -1, &OutOfRangeError{ip, excludedReason(x, a.Net.Name)}
	}
	switch {
	case a.Net.HasFixedBlock() && !a.Net.InFixedBlock(ip):
		return -1, &OutOfRangeError{ip, fmt.Sprintf("is outside the fixed block %s-%s of network %q", a.Net.FixedStart, a.Net.FixedEnd, a.Net.Name)}
	}
	return set, nil
}

func excludedReason(x config.Exclusion, network string) string {
	return fmt.Sprintf("is excluded by ipam.exclude entry %q of network %q", x.Entry, network)
}

// Allocate claims the request's fixed addresses and one dynamic address for
// every range set that no fixed address covers. A repeated ADD for the same
// (container, interface) returns what it already holds. An earlier
// attachment of the same pod on the same interface (the pod's previous
// sandbox: same pod UID, another container) is replaced in the same
// transaction: its addresses that this ADD asks for or that still fit
// (dynamic ones) move to the new container, the rest are released, so a pod
// never holds two attachments on one interface.
//
// A claim whose outcome is unknown (connection lost, etcd timed out, a
// member lost) is never reported as failed while it might have been
// applied: Allocate reads the attachment back, returns it if the claim is
// there, and claims again if it is not. Only when etcd does not answer
// before ctx ends does Allocate fail with the claim's fate unknown (the
// error wraps a *store.AmbiguousError); the runtime's DEL, the pod's next
// ADD or GC then frees what it may hold.
func (a *Allocator) Allocate(ctx context.Context, req Request) ([]Allocated, error) {
	seen := map[netip.Addr]bool{}
	for _, ip := range req.Fixed {
		if seen[ip] {
			return nil, &OutOfRangeError{ip, "is listed twice"}
		}
		seen[ip] = true
		if _, err := a.ValidateFixed(ip); err != nil {
			return nil, err
		}
	}
	// Claims stop short of ctx's deadline, so that the outcome of the last
	// one can still be read back before the caller gives up.
	claimCtx := ctx
	if dl, ok := ctx.Deadline(); ok {
		reserve := min(3*time.Second, time.Until(dl)/4)
		var cancel context.CancelFunc
		claimCtx, cancel = context.WithDeadline(ctx, dl.Add(-reserve))
		defer cancel()
	}
	defer a.unreserve()
	var unknown error // the last claim whose outcome is unknown
	for attempt := 0; ; attempt++ {
		rctx := claimCtx
		if unknown != nil {
			rctx = ctx // settling an unknown outcome may use the reserve
		}
		if held, err := a.held(rctx, req); held != nil || err != nil {
			if err != nil {
				err = fmt.Errorf("reading attachment %s/%s: %w", req.ContainerID, req.IfName, err)
				if unknown != nil {
					err = fmt.Errorf("%w; %w", unknown, err)
				}
			}
			a.Committed = held != nil && unknown != nil
			return held, err
		}
		if unknown != nil && claimCtx.Err() != nil {
			// Read back: the claim is not there, and no time is left to
			// claim again.
			return nil, fmt.Errorf("%w; it was not applied, and no time is left to claim again: %w", unknown, claimCtx.Err())
		}
		unknown = nil
		fixed, kind, newSticky, err := a.wanted(claimCtx, req)
		if err != nil {
			return nil, err
		}
		prev, err := a.previous(claimCtx, req)
		if err != nil {
			return nil, fmt.Errorf("reading the pod's earlier attachments: %w", err)
		}
		if attempt >= maxAttempts {
			return nil, &ContentionError{attempt}
		}
		if attempt > 0 && a.lastLost {
			a.Conflicts++
			d := time.Duration(rand.IntN(backoffBaseMs*min(a.Conflicts, 10))+1) * time.Millisecond
			select {
			case <-claimCtx.Done():
				return nil, fmt.Errorf("gave up after %d lost claim races: %w", a.Conflicts, claimCtx.Err())
			case <-time.After(d):
			}
		}
		a.spread = 1
		if a.Conflicts > 0 {
			a.spread = spread
		}
		claim, out, err := a.plan(claimCtx, req, fixed, kind, newSticky, prev)
		if errors.Is(err, errRetry) {
			a.lastLost = false
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("choosing addresses: %w", err)
		}
		if a.beforeCommit != nil {
			a.beforeCommit()
		}
		ok, err := a.Store.Commit(claimCtx, claim)
		var amb *store.AmbiguousError
		switch {
		case errors.As(err, &amb):
			a.Unknown++
			unknown = fmt.Errorf("claim transaction (attempt %d): %w", attempt+1, err)
			a.lastLost = false
			continue
		case err != nil:
			return nil, fmt.Errorf("claim transaction (attempt %d): %w", attempt+1, err)
		case ok:
			a.Committed = true
			a.Retired = len(claim.Retire)
			a.settle()
			return out, nil
		}
		a.lastLost = true
	}
}

// previous reads the attachments of the same pod (pod UID) on the same
// interface held by other containers, with the state of their addresses.
func (a *Allocator) previous(ctx context.Context, req Request) ([]store.Retired, error) {
	if req.PodUID == "" {
		return nil, nil
	}
	cids, err := a.Store.PodAttachments(ctx, req.PodUID, req.IfName)
	if err != nil {
		return nil, err
	}
	var out []store.Retired
	for _, cid := range cids {
		if cid == req.ContainerID {
			continue
		}
		att, err := a.Store.Attachment(ctx, cid, req.IfName)
		if err != nil {
			return nil, err
		}
		if att == nil || att.PodUID != req.PodUID {
			continue // a stale index entry; it goes with its container's DEL
		}
		states, err := a.Store.AddressStates(ctx, att)
		if err != nil {
			return nil, err
		}
		out = append(out, store.Retired{Attachment: att, States: states})
	}
	return out, nil
}

// wanted returns the addresses to claim as owned ones (the request's fixed
// addresses, or a StatefulSet ordinal's remembered sticky ones) and whether
// the dynamic addresses about to be chosen must be remembered.
func (a *Allocator) wanted(ctx context.Context, req Request) (fixed []netip.Addr, kind string, newSticky bool, err error) {
	if len(req.Fixed) > 0 || !req.Sticky || req.StatefulSetUID == "" {
		return req.Fixed, store.KindFixed, false, nil
	}
	st, err := a.Store.Sticky(ctx, req.PodNamespace, req.StatefulSetUID, req.Ordinal, req.IfName)
	if err != nil || st == nil {
		return nil, store.KindSticky, st == nil, err
	}
	for _, s := range st.IPs {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, "", false, fmt.Errorf("corrupt sticky record of %s ordinal %d: bad address %q", req.StatefulSet, req.Ordinal, s)
		}
		if _, _, ok := a.Net.SetFor(ip); !ok {
			return nil, "", false, &OutOfRangeError{ip, fmt.Sprintf("(remembered for StatefulSet %s/%s ordinal %d) is no longer inside network %q; release it with kube-ipamctl", req.PodNamespace, req.StatefulSet, req.Ordinal, a.Net.Name)}
		}
		if x, ok := a.Net.Excluded(ip); ok {
			// The address was remembered before the exclusion; giving it
			// back would hand an excluded address out again.
			return nil, "", false, &OutOfRangeError{ip, fmt.Sprintf("(remembered for StatefulSet %s/%s ordinal %d) %s; scale the StatefulSet below the ordinal so that gc forgets it, or remove the entry", req.PodNamespace, req.StatefulSet, req.Ordinal, excludedReason(x, a.Net.Name))}
		}
		fixed = append(fixed, ip)
	}
	return fixed, store.KindSticky, false, nil
}

// held returns the addresses (cid, ifname) already holds, if any.
func (a *Allocator) held(ctx context.Context, req Request) ([]Allocated, error) {
	att, err := a.Store.Attachment(ctx, req.ContainerID, req.IfName)
	if err != nil || att == nil {
		return nil, err
	}
	if att.Partial {
		// A claim of this container cut short: free what it got, then
		// claim afresh.
		if _, err := a.Store.Release(ctx, req.ContainerID, req.IfName, a.Now(), a.policy); err != nil {
			return nil, fmt.Errorf("releasing an incomplete earlier claim: %w", err)
		}
		return nil, nil
	}
	var out []Allocated
	for _, s := range att.IPs {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("corrupt attachment of %s/%s: bad address %q", req.ContainerID, req.IfName, s)
		}
		set, _, _ := a.Net.SetFor(ip)
		st, err := a.Store.State(ctx, ip)
		if err != nil {
			return nil, err
		}
		if st.Record == nil || st.Record.ContainerID != req.ContainerID || st.Record.IfName != req.IfName {
			holder := "nobody"
			if st.Record != nil {
				holder = st.Record.Owner()
			}
			return nil, &ConflictError{ip, holder + " (it was taken over after this container's first ADD)"}
		}
		out = append(out, Allocated{IP: ip, Set: set, Kind: st.Record.Kind})
	}
	slices.SortStableFunc(out, func(x, y Allocated) int { return x.Set - y.Set })
	return out, nil
}

func (a *Allocator) record(req Request, ip netip.Addr, set int, kind string) store.Record {
	return store.Record{
		Network: a.Net.Name, IP: ip.String(), Kind: kind, Set: set,
		IfName: req.IfName, ContainerID: req.ContainerID,
		PodNamespace: req.PodNamespace, PodName: req.PodName, PodUID: req.PodUID,
		StatefulSet: req.StatefulSet, StatefulSetUID: req.StatefulSetUID, Ordinal: req.Ordinal,
		Node: req.Node, Cluster: a.Net.Cluster, Created: a.Now().UTC(), LostRaces: a.Conflicts,
		AddMillis: max(a.Now().Sub(a.Started).Milliseconds(), 0),
	}
}

// plan reads what it needs and builds one claim: the fixed (or remembered
// sticky) addresses, plus a dynamic address for every other range set.
func (a *Allocator) plan(ctx context.Context, req Request, fixed []netip.Addr, kind string, newSticky bool, prev []store.Retired) (*store.Claim, []Allocated, error) {
	fixedSets := map[int]bool{}
	c := &store.Claim{
		Attachment: store.Attachment{
			ContainerID: req.ContainerID, IfName: req.IfName,
			PodNamespace: req.PodNamespace, PodName: req.PodName, PodUID: req.PodUID,
			Node: req.Node, Cluster: a.Net.Cluster, Created: a.Now().UTC(),
		},
		Cursors: map[int]netip.Addr{},
		Retire:  prev,
		Now:     a.Now(),
		Policy:  a.policy,
	}
	var out []Allocated
	for _, ip := range fixed {
		set, _, _ := a.Net.SetFor(ip)
		fixedSets[set] = true
		st, err := a.Store.State(ctx, ip)
		if err != nil {
			return nil, nil, err
		}
		rec := a.record(req, ip, set, kind)
		item := store.ClaimItem{Record: rec, State: st, Mode: store.ClaimTomb}
		if st.Record != nil {
			if !st.Record.SamePod(&rec) {
				return nil, nil, &ConflictError{ip, st.Record.Owner()}
			}
			item.Mode = store.ClaimTakeover
		}
		c.Items = append(c.Items, item)
		out = append(out, Allocated{IP: ip, Set: set, Kind: kind})
	}
	dynKind := store.KindDynamic
	if newSticky {
		dynKind = store.KindSticky
		c.NewSticky = &store.Sticky{
			Namespace: req.PodNamespace, StatefulSet: req.StatefulSet, StatefulSetUID: req.StatefulSetUID,
			Ordinal: req.Ordinal, IfName: req.IfName, Cluster: a.Net.Cluster, Created: a.Now().UTC(),
		}
	}
	for set := range a.Net.RangeSets {
		if fixedSets[set] {
			continue
		}
		if !newSticky {
			if ip, st, ok := a.reusable(prev, set); ok {
				c.Items = append(c.Items, store.ClaimItem{Record: a.record(req, ip, set, store.KindDynamic), Mode: store.ClaimTakeover, State: st})
				out = append(out, Allocated{IP: ip, Set: set, Kind: store.KindDynamic})
				continue
			}
		}
		item, cursor, err := a.chooseDynamic(ctx, set)
		if err != nil {
			return nil, nil, err
		}
		ip := netip.MustParseAddr(item.Record.IP)
		item.Record = a.record(req, ip, set, dynKind)
		c.Items = append(c.Items, item)
		if cursor.IsValid() {
			c.Cursors[set] = cursor
		}
		if c.NewSticky != nil {
			c.NewSticky.IPs = append(c.NewSticky.IPs, ip.String())
		}
		out = append(out, Allocated{IP: ip, Set: set, Kind: dynKind})
	}
	// Results list addresses in range-set order, as host-local does.
	slices.SortStableFunc(out, func(x, y Allocated) int { return x.Set - y.Set })
	return c, out, nil
}

// reusable finds, among the earlier attachments of the pod, a dynamic
// address of range set set that they still hold and that is still inside
// the set's dynamic ranges: the new sandbox keeps it.
func (a *Allocator) reusable(prev []store.Retired, set int) (netip.Addr, store.IPState, bool) {
	for _, r := range prev {
		for _, s := range r.Attachment.IPs {
			ip, err := netip.ParseAddr(s)
			if err != nil {
				continue
			}
			st := r.States[ip]
			rec := st.Record
			if rec == nil || rec.ContainerID != r.Attachment.ContainerID || rec.IfName != r.Attachment.IfName || rec.Kind != store.KindDynamic {
				continue
			}
			if s, _, ok := a.Net.SetFor(ip); ok && s == set && ipam.InAny(a.dyn[set], ip) {
				return ip, st, true
			}
		}
	}
	return netip.Addr{}, store.IPState{}, false
}

// chooseDynamic prefers never-used addresses above the cursor, then the
// least recently released address whose cooldown is over, then never-used
// addresses anywhere (a sweep, only when the pool is nearly full).
func (a *Allocator) chooseDynamic(ctx context.Context, set int) (store.ClaimItem, netip.Addr, error) {
	ivs := a.dyn[set]
	if len(ivs) == 0 {
		return store.ClaimItem{}, netip.Addr{}, a.exhausted(set)
	}
	first, last := ivs[0].Lo, ivs[len(ivs)-1].Hi
	from, err := a.Store.Cursor(ctx, set)
	if err != nil {
		return store.ClaimItem{}, netip.Addr{}, err
	}
	if !from.IsValid() || from.BitLen() != first.BitLen() || from.Compare(first) < 0 {
		from = first
	}
	item, resume, ok, err := a.scanFresh(ctx, set, from, last, freshWindows)
	if ok || err != nil {
		return item, resume, err
	}
	refs, err := a.Store.OldestReleased(ctx, set, releasedPeek)
	if err != nil {
		return store.ClaimItem{}, netip.Addr{}, err
	}
	ready, next := ipam.Cooled(toReleased(refs), a.Now(), a.Net.ReleaseCooldown)
	if len(ready) > 0 {
		if item, ok, err := a.fromReleased(ctx, refs, ready); ok || err != nil {
			return item, resume, err
		}
	}
	if item, cur, ok, err := a.scanFresh(ctx, set, first, last, -1); ok || err != nil {
		return item, cur, err
	}
	if !next.IsZero() {
		return store.ClaimItem{}, netip.Addr{}, &CoolingError{a.Net.Name, set, next}
	}
	if len(ready) > 0 {
		// Ready entries were all stale and dropped; the next attempt re-reads.
		return store.ClaimItem{}, netip.Addr{}, errRetry
	}
	return store.ClaimItem{}, netip.Addr{}, a.exhausted(set)
}

var errRetry = fmt.Errorf("release log changed while reading it; try again")

func (a *Allocator) exhausted(set int) error {
	var s string
	for i, r := range a.Net.RangeSets[set] {
		if i > 0 {
			s += ", "
		}
		s += r.Start.String() + "-" + r.End.String()
	}
	return &ExhaustedError{a.Net.Name, set, s}
}

// scanFresh reads windows of used keys from `from` and returns a never-used
// candidate and the cursor to store with it. maxWindows < 0 scans to the end.
// When it finds nothing, the cursor returned is where a later scan may
// resume (everything below it is used), so full windows are not re-read by
// every ADD.
func (a *Allocator) scanFresh(ctx context.Context, set int, from, last netip.Addr, maxWindows int) (store.ClaimItem, netip.Addr, bool, error) {
	ivs := a.dyn[set]
	for w := 0; maxWindows < 0 || w < maxWindows; w++ {
		if from.Compare(last) > 0 {
			return store.ClaimItem{}, from, false, nil
		}
		// Jump over a gap (an excluded block, the fixed block) instead of
		// reading it window by window: a /8 excluded would cost thousands
		// of empty reads.
		next, ok := ipam.NextIn(ivs, from)
		if !ok {
			return store.ClaimItem{}, last.Next(), false, nil
		}
		from = next
		// A bounded key range, not just a limit: etcd 3.4 walks its whole
		// index range to count it, so an open-ended read costs O(pool).
		to := ipam.Advance(from, span-1)
		if to.Compare(last) > 0 {
			to = last
		}
		used, full, err := a.Store.Used(ctx, from, to, window)
		if err != nil {
			return store.ClaimItem{}, netip.Addr{}, false, err
		}
		limit := to
		if full {
			limit = used[len(used)-1]
		}
		cands := ipam.Free(ivs, from, used, limit, candidates)
		if len(cands) > 0 {
			ip := a.pick(cands)
			return store.ClaimItem{Record: store.Record{IP: ip.String()}, Mode: store.ClaimFresh}, cands[0], true, nil
		}
		if limit == last {
			return store.ClaimItem{}, last.Next(), false, nil
		}
		from = limit.Next()
	}
	return store.ClaimItem{}, from, false, nil
}

func toReleased(refs []store.ReleasedRef) []ipam.Released {
	out := make([]ipam.Released, len(refs))
	for i, r := range refs {
		out[i] = ipam.Released{IP: r.IP, At: r.At}
	}
	return out
}

// fromReleased picks among the cooled entries (oldest first, lightly spread
// so that concurrent ADDs do not all race for the oldest) and checks that the
// entry still matches its tombstone; stale entries are dropped.
func (a *Allocator) fromReleased(ctx context.Context, refs []store.ReleasedRef, ready []netip.Addr) (store.ClaimItem, bool, error) {
	byIP := map[netip.Addr]store.ReleasedRef{}
	for _, r := range refs {
		if _, dup := byIP[r.IP]; !dup {
			byIP[r.IP] = r
		}
	}
	order := append([]netip.Addr(nil), ready...)
	if n := min(len(order), 4, a.spread); n > 1 {
		i := rand.IntN(n)
		order[0], order[i] = order[i], order[0]
	}
	for _, ip := range order {
		ref := byIP[ip]
		st, err := a.Store.State(ctx, ip)
		if err != nil {
			return store.ClaimItem{}, false, err
		}
		set, _, _ := a.Net.SetFor(ip)
		if st.Record != nil || st.Tomb == nil || st.Tomb.Log != ref.Key || set < 0 || !ipam.InAny(a.dyn[set], ip) {
			if err := a.Store.DropReleased(ctx, ref); err != nil {
				return store.ClaimItem{}, false, err
			}
			continue
		}
		return store.ClaimItem{Record: store.Record{IP: ip.String()}, Mode: store.ClaimTomb, State: st}, true, nil
	}
	return store.ClaimItem{}, false, nil
}

// CanAllocate reports whether an ADD could get an address in every range set
// that has a dynamic range (STATUS). It claims nothing.
func (a *Allocator) CanAllocate(ctx context.Context) error {
	for set := range a.Net.RangeSets {
		if len(a.dyn[set]) == 0 {
			continue // fixed-only range set
		}
		for try := 0; ; try++ {
			_, _, err := a.chooseDynamic(ctx, set)
			if errors.Is(err, errRetry) && try < 3 {
				continue
			}
			if err != nil {
				return err
			}
			break
		}
	}
	return nil
}

// ReusePolicy is the release rule every component shares: dynamic addresses
// go to the release log for reuse after the cooldown; fixed and sticky
// addresses inside a dynamic range are tombstoned but never reused
// dynamically; addresses outside every dynamic range leave no trace.
func ReusePolicy(n *config.Network) store.ReusePolicy {
	var dyn [][]ipam.Interval
	for i := range n.RangeSets {
		dyn = append(dyn, ipam.DynamicIntervals(n, i))
	}
	return reusePolicy(n, dyn)
}

// reusePolicy is ReusePolicy over dynamic intervals already computed.
func reusePolicy(n *config.Network, dyn [][]ipam.Interval) store.ReusePolicy {
	return func(a netip.Addr, kind string) (int, bool, bool) {
		set, _, ok := n.SetFor(a)
		if !ok || !ipam.InAny(dyn[set], a) {
			return set, false, false
		}
		return set, kind == store.KindDynamic, true
	}
}

// pick chooses among free candidates: the lowest one no other call of this
// process is claiming (after a lost race, a random one of the first
// spread), and reserves it for this call.
func (a *Allocator) pick(cands []netip.Addr) netip.Addr {
	a.unreserve()
	if a.spread <= 1 {
		if ip, ok := a.InFlight.reserveFirst(a.Pool, cands); ok {
			a.reserved = ip
			return ip
		}
	}
	ip := ipam.Pick(cands, max(a.spread, 1))
	if a.InFlight.reserve(a.Pool, ip) {
		a.reserved = ip
	}
	return ip
}

// settle keeps this call's InFlight entry for a while after its claim
// committed (see InFlight).
func (a *Allocator) settle() {
	if a.reserved.IsValid() {
		a.InFlight.settle(a.Pool, a.reserved)
		a.reserved = netip.Addr{}
	}
}

// unreserve drops this call's InFlight entry.
func (a *Allocator) unreserve() {
	if a.reserved.IsValid() {
		a.InFlight.release(a.Pool, a.reserved)
		a.reserved = netip.Addr{}
	}
}
