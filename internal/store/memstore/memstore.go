// Package memstore is an in-memory store.Backend for tests of pure logic
// (the allocator's strategy, GC rules, the behavioural suite in package
// storetest). It is not for production: nothing survives the process.
//
// It follows the etcd store's semantics (package store) exactly: every
// claim is one atomic Commit under the same preconditions (attachment
// absent; a fresh address without record or tombstone; a ClaimTomb address
// without record and with the tombstone version read; a takeover address
// with the record version read; a new sticky record absent; every retired
// attachment and its addresses at the versions read), releases are guarded
// the same way, and values are stored as the same JSON the etcd store
// writes, so what is read back (times, copies) is what etcd gives. Versions
// come from one counter bumped by every write, like etcd's revision; ""
// means absent. It also implements store.Importer, as the etcd store does.
//
// Test hooks: FailNextCommit (an *store.AmbiguousError with the claim applied
// or not), BeforeNextCommit (a concurrent writer that runs just before a
// claim), MarkPartial (an attachment cut short, as only a non-transactional
// backend reports it), Commits and Watching.
//
// A Store is safe for concurrent use.
package memstore

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"kubeipam/internal/store"
)

// ErrInjected is the cause of an *store.AmbiguousError made by
// FailNextCommit.
var ErrInjected = errors.New("memstore: injected ambiguous commit outcome")

type kv struct {
	val []byte
	ver store.Version
}

type attKey struct{ cid, ifname string }

type podKey struct{ uid, ifname, cid string }

// Store is one network's allocation state in memory.
type Store struct {
	network string

	mu       sync.Mutex
	rev      int64
	recs     map[netip.Addr]kv
	tombs    map[netip.Addr]kv
	rel      map[string]store.ReleasedRef
	atts     map[attKey]kv
	partial  map[attKey]bool
	pods     map[podKey]bool
	cursors  map[int]netip.Addr
	stickies map[string]kv
	notes    map[netip.Addr]string

	watchers map[*watcher]bool
	watching chan struct{}

	commits   int
	before    func(*store.Claim)
	failNext  bool
	failApply bool
}

// New returns an empty store for network.
func New(network string) *Store {
	return &Store{
		network: network,
		recs:    map[netip.Addr]kv{}, tombs: map[netip.Addr]kv{}, rel: map[string]store.ReleasedRef{},
		atts: map[attKey]kv{}, partial: map[attKey]bool{}, pods: map[podKey]bool{},
		cursors: map[int]netip.Addr{}, stickies: map[string]kv{}, notes: map[netip.Addr]string{},
		watchers: map[*watcher]bool{}, watching: make(chan struct{}),
	}
}

var _ store.Backend = (*Store)(nil)

// Keys, in the etcd store's layout (without its prefix), so that key order
// is the etcd store's order.

func fam(a netip.Addr) string {
	if a.Is4() {
		return "4"
	}
	return "6"
}

func ipKey(a netip.Addr) string { return "ip/" + fam(a) + "/" + hex.EncodeToString(a.AsSlice()) }

func attKeyString(k attKey) string { return "att/" + k.cid + "/" + k.ifname }

func stickyKey(ns, uid string, ordinal int, ifname string) string {
	return fmt.Sprintf("sticky/%s/%s/%d/%s", ns, uid, ordinal, ifname)
}

func relKey(set int, at time.Time, a netip.Addr) string {
	return fmt.Sprintf("rel/%d/%016x/%s/%s", set, at.UnixNano(), fam(a), hex.EncodeToString(a.AsSlice()))
}

func enc(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // the store's own types always marshal
	}
	return b
}

func dec[T any](b []byte) *T {
	v := new(T)
	if err := json.Unmarshal(b, v); err != nil {
		panic(err) // written by enc
	}
	return v
}

// next starts a write: every object it writes gets the returned version.
func (s *Store) next() store.Version {
	s.rev++
	return store.Version(strconv.FormatInt(s.rev, 10))
}

// FailNextCommit makes the next Commit return an *store.AmbiguousError
// (wrapping ErrInjected). With applied, the claim is applied first (if its
// preconditions hold), as when etcd applied a transaction whose answer was
// lost; otherwise nothing is written.
func (s *Store) FailNextCommit(applied bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext, s.failApply = true, applied
}

// BeforeNextCommit runs f once, when the next Commit is called, with its
// claim and before the claim is looked at. f runs without the store's lock,
// so it may use the store: a concurrent writer that wins the race.
func (s *Store) BeforeNextCommit(f func(c *store.Claim)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.before = f
}

// MarkPartial flags the attachment of (cid, ifname) as Partial (some
// addresses of its claim missing), as the Kubernetes API store reports a
// claim cut short. It reports whether the attachment exists. The flag goes
// with the attachment.
func (s *Store) MarkPartial(cid, ifname string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := attKey{cid, ifname}
	if _, ok := s.atts[k]; !ok {
		return false
	}
	s.partial[k] = true
	return true
}

// Commits counts the calls to Commit so far.
func (s *Store) Commits() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commits
}

// Watching returns a channel closed once a Watch has started: record
// changes after that are delivered to it.
func (s *Store) Watching() <-chan struct{} { return s.watching }

// Attachment returns what (cid, ifname) holds, or nil.
func (s *Store) Attachment(ctx context.Context, cid, ifname string) (*store.Attachment, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attachment(attKey{cid, ifname}), nil
}

func (s *Store) attachment(k attKey) *store.Attachment {
	e, ok := s.atts[k]
	if !ok {
		return nil
	}
	a := dec[store.Attachment](e.val)
	a.Rev, a.Key, a.Partial = e.ver, attKeyString(k), s.partial[k]
	return a
}

// Attachments lists every attachment, in key order.
func (s *Store) Attachments(ctx context.Context) ([]*store.Attachment, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attachments(), nil
}

func (s *Store) attachments() []*store.Attachment {
	keys := make([]attKey, 0, len(s.atts))
	for k := range s.atts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(x, y attKey) int { return strings.Compare(attKeyString(x), attKeyString(y)) })
	out := make([]*store.Attachment, 0, len(keys))
	for _, k := range keys {
		out = append(out, s.attachment(k))
	}
	return out
}

// PodAttachments lists the container IDs of pod uid's attachments on ifname.
func (s *Store) PodAttachments(ctx context.Context, uid, ifname string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []string{}
	for k := range s.pods {
		if k.uid == uid && k.ifname == ifname {
			out = append(out, k.cid)
		}
	}
	slices.Sort(out)
	return out, nil
}

// State reads an address's record and tombstone.
func (s *Store) State(ctx context.Context, a netip.Addr) (store.IPState, error) {
	if err := ctx.Err(); err != nil {
		return store.IPState{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state(a), nil
}

func (s *Store) state(a netip.Addr) store.IPState {
	var st store.IPState
	if e, ok := s.recs[a]; ok {
		st.Record, st.RecRev = dec[store.Record](e.val), e.ver
	}
	if e, ok := s.tombs[a]; ok {
		st.Tomb, st.TombRev = dec[store.Tombstone](e.val), e.ver
	}
	return st
}

// AddressStates reads the state of every address att lists.
func (s *Store) AddressStates(ctx context.Context, att *store.Attachment) (map[netip.Addr]store.IPState, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addressStates(att), nil
}

func (s *Store) addressStates(att *store.Attachment) map[netip.Addr]store.IPState {
	out := map[netip.Addr]store.IPState{}
	for _, ipStr := range att.IPs {
		if a, err := netip.ParseAddr(ipStr); err == nil {
			out[a] = s.state(a)
		}
	}
	return out
}

// Sticky returns the remembered addresses of a StatefulSet ordinal, or nil.
func (s *Store) Sticky(ctx context.Context, ns, uid string, ordinal int, ifname string) (*store.Sticky, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.stickies[stickyKey(ns, uid, ordinal, ifname)]
	if !ok {
		return nil, nil
	}
	return dec[store.Sticky](e.val), nil
}

// Used returns, ascending, the addresses in [from, to] that have a record or
// a tombstone. Like the etcd store's key read, limit (<= 0: none) counts
// keys, a record and a tombstone being two, and full reports that keys were
// left out.
func (s *Store) Used(ctx context.Context, from, to netip.Addr, limit int) ([]netip.Addr, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	type key struct {
		a    netip.Addr
		tomb bool
	}
	var keys []key
	in := func(a netip.Addr) bool {
		return a.BitLen() == from.BitLen() && a.Compare(from) >= 0 && a.Compare(to) <= 0
	}
	for a := range s.recs {
		if in(a) {
			keys = append(keys, key{a, false})
		}
	}
	for a := range s.tombs {
		if in(a) {
			keys = append(keys, key{a, true})
		}
	}
	slices.SortFunc(keys, func(x, y key) int {
		if c := x.a.Compare(y.a); c != 0 {
			return c
		}
		if x.tomb == y.tomb {
			return 0
		}
		if x.tomb {
			return 1
		}
		return -1
	})
	full := limit > 0 && len(keys) > limit
	if full {
		keys = keys[:limit]
	}
	var used []netip.Addr
	for _, k := range keys {
		if len(used) == 0 || used[len(used)-1] != k.a {
			used = append(used, k.a)
		}
	}
	return used, full, nil
}

// Cursor returns the never-used hint of a range set (invalid if none).
func (s *Store) Cursor(ctx context.Context, set int) (netip.Addr, error) {
	if err := ctx.Err(); err != nil {
		return netip.Addr{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cursors[set], nil
}

// OldestReleased returns up to limit (<= 0: all) release-log entries of a
// range set, oldest first.
func (s *Store) OldestReleased(ctx context.Context, set, limit int) ([]store.ReleasedRef, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store.ReleasedRef
	for _, r := range s.released() {
		if r.Set == set && (limit <= 0 || len(out) < limit) {
			out = append(out, r)
		}
	}
	return out, nil
}

// released is the release log in key order: by set, then time, then address.
func (s *Store) released() []store.ReleasedRef {
	out := make([]store.ReleasedRef, 0, len(s.rel))
	for _, r := range s.rel {
		out = append(out, r)
	}
	slices.SortFunc(out, func(x, y store.ReleasedRef) int { return strings.Compare(x.Key, y.Key) })
	return out
}

// DropReleased removes a release-log entry.
func (s *Store) DropReleased(ctx context.Context, ref store.ReleasedRef) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.rel[ref.Key]; ok {
		s.next()
		delete(s.rel, ref.Key)
	}
	return nil
}

// Note returns the note kept with the attachment holding a ("" if none).
func (s *Store) Note(ctx context.Context, a netip.Addr) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notes[a], nil
}

// Commit writes the claim if every precondition holds (see the package
// comment); ok=false means one did not and nothing was written.
func (s *Store) Commit(ctx context.Context, c *store.Claim) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	s.mu.Lock()
	s.commits++
	before := s.before
	s.before = nil
	s.mu.Unlock()
	if before != nil {
		before(c)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fail, apply := s.failNext, s.failApply
	s.failNext = false
	if fail && !apply {
		return false, &store.AmbiguousError{Err: ErrInjected}
	}
	ok, err := s.commit(c)
	if fail && err == nil {
		return false, &store.AmbiguousError{Err: ErrInjected}
	}
	return ok, err
}

func (s *Store) commit(c *store.Claim) (bool, error) {
	// Checks the etcd store makes before sending anything.
	att := c.Attachment
	att.IPs, att.Rev, att.Partial = nil, "", false
	ak := attKey{att.ContainerID, att.IfName}
	addrs := make([]netip.Addr, len(c.Items))
	taken := map[netip.Addr]bool{}
	for i, it := range c.Items {
		a, err := netip.ParseAddr(it.Record.IP)
		if err != nil {
			return false, fmt.Errorf("bad address %q in claim", it.Record.IP)
		}
		if slices.Contains(addrs[:i], a) {
			return false, fmt.Errorf("address %s listed twice in claim", a) // etcd: duplicate key in txn
		}
		switch it.Mode {
		case store.ClaimFresh, store.ClaimTomb:
		case store.ClaimTakeover:
			taken[a] = true
		default:
			return false, fmt.Errorf("unknown claim mode %d", it.Mode)
		}
		addrs[i] = a
		att.IPs = append(att.IPs, a.String())
	}
	for _, r := range c.Retire {
		if r.Attachment.ContainerID == att.ContainerID && r.Attachment.IfName == att.IfName {
			return false, fmt.Errorf("claim retires its own attachment %s/%s", store.ShortID(att.ContainerID), att.IfName)
		}
	}

	// Preconditions.
	if _, ok := s.atts[ak]; ok {
		return false, nil
	}
	for i, it := range c.Items {
		a := addrs[i]
		rec, tomb := s.recs[a].ver, s.tombs[a].ver
		switch it.Mode {
		case store.ClaimFresh:
			if rec != "" || tomb != "" {
				return false, nil
			}
		case store.ClaimTomb:
			if rec != "" || tomb != it.State.TombRev {
				return false, nil
			}
		case store.ClaimTakeover:
			if rec != it.State.RecRev {
				return false, nil
			}
		}
	}
	if st := c.NewSticky; st != nil {
		if _, ok := s.stickies[stickyKey(st.Namespace, st.StatefulSetUID, st.Ordinal, st.IfName)]; ok {
			return false, nil
		}
	}
	for _, r := range c.Retire {
		if !s.releaseHolds(r.Attachment, r.States, taken) {
			return false, nil
		}
	}

	// Writes, in the etcd store's order.
	v := s.next()
	for i, it := range c.Items {
		a := addrs[i]
		if it.Mode == store.ClaimTomb && it.State.Tomb != nil {
			delete(s.tombs, a)
			if it.State.Tomb.Log != "" {
				delete(s.rel, it.State.Tomb.Log)
			}
		}
		prev, had := s.recs[a]
		rec := it.Record
		s.recs[a] = kv{enc(rec), v}
		if had {
			s.emit(store.EventUpdated, s.recs[a].val, prev.val)
		} else {
			s.emit(store.EventCreated, s.recs[a].val, nil)
		}
	}
	s.atts[ak] = kv{enc(att), v}
	delete(s.partial, ak)
	if att.PodUID != "" {
		s.pods[podKey{att.PodUID, att.IfName, att.ContainerID}] = true
	}
	for set, a := range c.Cursors {
		s.cursors[set] = a
	}
	if c.Note != "" {
		for _, a := range addrs {
			s.notes[a] = c.Note
		}
	}
	if st := c.NewSticky; st != nil {
		s.stickies[stickyKey(st.Namespace, st.StatefulSetUID, st.Ordinal, st.IfName)] = kv{enc(st), v}
	}
	for _, r := range c.Retire {
		s.release(r.Attachment, r.States, taken, c.Now, c.Policy, v)
	}
	return true, nil
}

// releaseHolds checks the guards of releasing att: the attachment at the
// version read, and every address it lists (but those in keep) with the
// record version in states.
func (s *Store) releaseHolds(att *store.Attachment, states map[netip.Addr]store.IPState, keep map[netip.Addr]bool) bool {
	if s.atts[attKey{att.ContainerID, att.IfName}].ver != att.Rev {
		return false
	}
	for _, ipStr := range att.IPs {
		a, err := netip.ParseAddr(ipStr)
		if err != nil || keep[a] {
			continue
		}
		if s.recs[a].ver != states[a].RecRev {
			return false
		}
	}
	return true
}

// release frees att as the etcd store's releaseOps do, once releaseHolds
// passed: the attachment and its pod index entry go; every address whose
// record names att's container and interface, but those in keep, is
// released by policy (with its note, for an attachment without a pod).
func (s *Store) release(att *store.Attachment, states map[netip.Addr]store.IPState, keep map[netip.Addr]bool, now time.Time, policy store.ReusePolicy, v store.Version) []netip.Addr {
	ak := attKey{att.ContainerID, att.IfName}
	delete(s.atts, ak)
	delete(s.partial, ak)
	if att.PodUID != "" {
		delete(s.pods, podKey{att.PodUID, att.IfName, att.ContainerID})
	}
	var freed []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, ipStr := range att.IPs {
		a, err := netip.ParseAddr(ipStr)
		if err != nil || keep[a] || seen[a] {
			continue
		}
		seen[a] = true
		st := states[a]
		if st.Record == nil || st.Record.ContainerID != att.ContainerID || st.Record.IfName != att.IfName {
			continue // taken over, or already gone: not ours to free
		}
		if prev, ok := s.recs[a]; ok {
			s.emit(store.EventDeleted, nil, prev.val)
		}
		delete(s.recs, a)
		if att.PodUID == "" {
			delete(s.notes, a) // only reservations (no pod) have notes
		}
		set, log, tomb := policy(a, st.Record.Kind)
		if tomb {
			t := store.Tombstone{Released: now, Kind: st.Record.Kind}
			if log {
				t.Log = relKey(set, now, a)
				s.rel[t.Log] = store.ReleasedRef{Key: t.Log, Set: set, IP: a, At: time.Unix(0, now.UnixNano())}
			}
			s.tombs[a] = kv{enc(t), v}
			if st.Tomb != nil && st.Tomb.Log != "" && st.Tomb.Log != t.Log {
				delete(s.rel, st.Tomb.Log)
			}
		}
		freed = append(freed, a)
	}
	return freed
}

// Release frees what (cid, ifname) holds and returns the addresses freed;
// nothing held is not an error.
func (s *Store) Release(ctx context.Context, cid, ifname string, now time.Time, policy store.ReusePolicy) ([]netip.Addr, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	att := s.attachment(attKey{cid, ifname})
	if att == nil {
		return nil, nil
	}
	return s.release(att, s.addressStates(att), nil, now, policy, s.next()), nil
}

// ReleaseAttachment frees att as it was read; ok=false means it changed.
func (s *Store) ReleaseAttachment(ctx context.Context, att *store.Attachment, now time.Time, policy store.ReusePolicy) ([]netip.Addr, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	states := s.addressStates(att)
	if !s.releaseHolds(att, states, nil) {
		return nil, false, nil
	}
	return s.release(att, states, nil, now, policy, s.next()), true, nil
}

// ReleaseSticky forgets a StatefulSet ordinal's sticky addresses as read
// (e.Key at e.Rev). If an address is still held by the ordinal nothing is
// done and ok is false; addresses with no record lose their sticky
// tombstone and go to the release log (or, outside the dynamic ranges,
// leave no trace).
func (s *Store) ReleaseSticky(ctx context.Context, e store.StickyEntry, now time.Time, policy store.ReusePolicy) ([]netip.Addr, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stickies[e.Key].ver != e.Rev {
		return nil, false, nil
	}
	type op struct {
		a   netip.Addr
		set int
		log bool
	}
	var ops []op
	var freed []netip.Addr
	for _, ipStr := range e.IPs {
		a, err := netip.ParseAddr(ipStr)
		if err != nil {
			continue
		}
		st := s.state(a)
		if st.Record != nil {
			if st.Record.StatefulSetUID == e.StatefulSetUID && st.Record.Ordinal == e.Ordinal {
				return nil, false, nil // still held by the ordinal
			}
			continue // someone else's now
		}
		if st.Tomb == nil || st.Tomb.Log != "" {
			continue // nothing reserved (or already reusable)
		}
		set, log, tomb := policy(a, store.KindDynamic)
		if tomb && !log {
			freed = append(freed, a)
			continue // the etcd store leaves such a tombstone as it is
		}
		ops = append(ops, op{a, set, log})
		freed = append(freed, a)
	}
	v := s.next()
	delete(s.stickies, e.Key)
	for _, o := range ops {
		if !o.log {
			delete(s.tombs, o.a)
			continue
		}
		t := store.Tombstone{Released: now, Kind: store.KindDynamic, Log: relKey(o.set, now, o.a)}
		s.rel[t.Log] = store.ReleasedRef{Key: t.Log, Set: o.set, IP: o.a, At: time.Unix(0, now.UnixNano())}
		s.tombs[o.a] = kv{enc(t), v}
	}
	return freed, true, nil
}

var _ store.Importer = (*Store)(nil)

// ImportTombstone writes a's tombstone if a has neither record nor
// tombstone; one in the release log (t.Log set) gets a log entry of this
// store at the same release time.
func (s *Store) ImportTombstone(ctx context.Context, a netip.Addr, t store.Tombstone, set int) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.recs[a]; ok {
		return false, nil
	}
	if _, ok := s.tombs[a]; ok {
		return false, nil
	}
	v := s.next()
	if t.Log != "" {
		t.Log = relKey(set, t.Released, a)
		s.rel[t.Log] = store.ReleasedRef{Key: t.Log, Set: set, IP: a, At: time.Unix(0, t.Released.UnixNano())}
	}
	s.tombs[a] = kv{enc(t), v}
	return true, nil
}

// ImportSticky creates a StatefulSet ordinal's sticky record if it does not
// exist.
func (s *Store) ImportSticky(ctx context.Context, st store.Sticky) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := stickyKey(st.Namespace, st.StatefulSetUID, st.Ordinal, st.IfName)
	if _, ok := s.stickies[k]; ok {
		return false, nil
	}
	s.stickies[k] = kv{enc(st), s.next()}
	return true, nil
}

// Snapshot reads everything stored for the network at once.
func (s *Store) Snapshot(ctx context.Context) (*store.Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := &store.Snapshot{Tombs: map[netip.Addr]*store.Tombstone{}, Notes: map[netip.Addr]string{}}
	for a, e := range s.recs {
		snap.Records = append(snap.Records, store.RecordEntry{IP: a, Record: dec[store.Record](e.val), Version: e.ver, Key: ipKey(a)})
	}
	slices.SortFunc(snap.Records, func(x, y store.RecordEntry) int { return x.IP.Compare(y.IP) })
	for a, e := range s.tombs {
		snap.Tombs[a] = dec[store.Tombstone](e.val)
	}
	snap.Released = s.released()
	snap.Attachments = s.attachments()
	keys := make([]string, 0, len(s.stickies))
	for k := range s.stickies {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		e := s.stickies[k]
		snap.Stickies = append(snap.Stickies, store.StickyEntry{Key: k, Rev: e.ver, Sticky: *dec[store.Sticky](e.val)})
	}
	for a, n := range s.notes {
		snap.Notes[a] = n
	}
	return snap, nil
}

type watcher struct {
	queue []store.RecordEvent // guarded by Store.mu
	wake  chan struct{}
}

// emit queues a record event for every watcher (s.mu held).
func (s *Store) emit(typ string, rec, prev []byte) {
	for w := range s.watchers {
		e := store.RecordEvent{Type: typ}
		switch typ {
		case store.EventDeleted:
			e.Record = dec[store.Record](prev)
		case store.EventUpdated:
			e.Record, e.Prev = dec[store.Record](rec), dec[store.Record](prev)
		default:
			e.Record = dec[store.Record](rec)
		}
		w.queue = append(w.queue, e)
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// Watch calls fn, in order, for every change of an allocation record made
// after it started, until ctx ends.
func (s *Store) Watch(ctx context.Context, fn func(store.RecordEvent)) {
	w := &watcher{wake: make(chan struct{}, 1)}
	s.mu.Lock()
	s.watchers[w] = true
	select {
	case <-s.watching:
	default:
		close(s.watching)
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.watchers, w)
		s.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		}
		s.mu.Lock()
		q := w.queue
		w.queue = nil
		s.mu.Unlock()
		for _, e := range q {
			if ctx.Err() != nil {
				return
			}
			fn(e)
		}
	}
}

// Ping answers unless ctx has ended.
func (s *Store) Ping(ctx context.Context) error { return ctx.Err() }

// Describe names the store for messages.
func (s *Store) Describe() string { return "memory store of network " + s.network }
