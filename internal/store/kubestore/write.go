package kubestore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"kubeipam/internal/kubeapi"
	"kubeipam/internal/store"
)

// validRV: a resourceVersion this store could have read (decimal). A
// Version from another backend makes the guard fail, as in the etcd store.
func validRV(v store.Version) bool {
	if v == "" || len(v) > 20 {
		return false
	}
	for _, c := range []byte(v) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func decode[T any](r *req, resp *kubeapi.Response) (*T, error) {
	var o T
	if err := json.Unmarshal(resp.Body, &o); err != nil {
		return nil, fmt.Errorf("%s: undecodable answer: %w", r.op(), err)
	}
	return &o, nil
}

// post creates object o of resource: errLost if one of that name exists.
func (s *Store) post(ctx context.Context, resource, name string, o any) (*req, *kubeapi.Response, error) {
	body, err := json.Marshal(o)
	if err != nil {
		return nil, nil, err
	}
	r := &req{verb: "create", resource: resource, name: name,
		Request: kubeapi.Request{Method: http.MethodPost, Path: path(resource, ""), Body: body}}
	resp, err := s.write(ctx, r)
	if err != nil {
		return nil, nil, err
	}
	switch resp.Code {
	case http.StatusCreated, http.StatusOK, http.StatusAccepted:
		return r, resp, nil
	case http.StatusConflict:
		return nil, nil, errLost
	default:
		return nil, nil, s.fail(r, resp)
	}
}

// create writes a new IPAllocation: errLost if the address has one.
func (s *Store) create(ctx context.Context, o *ipAllocation) (*ipAllocation, error) {
	r, resp, err := s.post(ctx, allocations, o.Metadata.Name, o)
	if err != nil {
		return nil, err
	}
	return s.wrote(r, resp)
}

// update replaces an IPAllocation guarded by version rv: errLost if it is
// no longer at rv (or gone).
func (s *Store) update(ctx context.Context, o *ipAllocation, rv store.Version) (*ipAllocation, error) {
	if !validRV(rv) {
		return nil, errLost
	}
	o.Metadata.ResourceVersion = string(rv)
	body, err := json.Marshal(o)
	if err != nil {
		return nil, err
	}
	r := &req{verb: "update", resource: allocations, name: o.Metadata.Name,
		Request: kubeapi.Request{Method: http.MethodPut, Path: path(allocations, o.Metadata.Name), Body: body}}
	resp, err := s.write(ctx, r)
	if err != nil {
		return nil, err
	}
	switch {
	case resp.Code == http.StatusOK || resp.Code == http.StatusCreated:
	case resp.Code == http.StatusConflict || objectNotFound(resp):
		return nil, errLost
	default:
		return nil, s.fail(r, resp)
	}
	return s.wrote(r, resp)
}

// wrote reads the object a create or update returned and records it.
func (s *Store) wrote(r *req, resp *kubeapi.Response) (*ipAllocation, error) {
	got, err := decode[ipAllocation](r, resp)
	if err != nil {
		return nil, err
	}
	if a, _, ok := s.addrOfName(got.Metadata.Name); ok {
		e := entryOf(got)
		s.applied(got.Metadata.ResourceVersion, a, &e)
	}
	s.remember(got)
	return got, nil
}

// remove deletes an object of resource guarded by version rv: errLost if
// it is no longer at rv (or gone).
func (s *Store) remove(ctx context.Context, resource, name string, rv store.Version) error {
	if !validRV(rv) {
		return errLost
	}
	body, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "DeleteOptions",
		"preconditions": map[string]string{"resourceVersion": string(rv)}})
	r := &req{verb: "delete", resource: resource, name: name,
		Request: kubeapi.Request{Method: http.MethodDelete, Path: path(resource, name), Body: body}}
	resp, err := s.write(ctx, r)
	if err != nil {
		return err
	}
	switch {
	case resp.Code == http.StatusOK || resp.Code == http.StatusAccepted:
	case resp.Code == http.StatusConflict || objectNotFound(resp):
		return errLost
	default:
		return s.fail(r, resp)
	}
	if resource == allocations {
		// The answer's version is the object's before the delete, not the
		// delete's: let the next search list again.
		s.lost(netip.Addr{}, false)
	}
	return nil
}

// createSticky writes a new IPSticky: errLost if the ordinal has one.
func (s *Store) createSticky(ctx context.Context, o *ipSticky) (*ipSticky, error) {
	r, resp, err := s.post(ctx, stickies, o.Metadata.Name, o)
	if err != nil {
		return nil, err
	}
	return decode[ipSticky](r, resp)
}

// undo is one write of a claim, to be reverted if the claim loses.
type undo struct {
	resource string
	name     string
	rv       store.Version // what the write returned
	// prev is the IPAllocation the write replaced (nil: it created one).
	prev *ipAllocation
}

// revert undoes a claim's writes, newest first, each guarded by the
// version its write returned: an object changed since is someone else's
// now and is left alone. What cannot be undone makes the outcome unknown.
func (s *Store) revert(ctx context.Context, done []undo) error {
	var errs []error
	for _, u := range slices.Backward(done) {
		var err error
		if u.prev == nil {
			err = s.remove(ctx, u.resource, u.name, u.rv)
		} else {
			back := &ipAllocation{APIVersion: u.prev.APIVersion, Kind: u.prev.Kind, Spec: u.prev.Spec,
				Metadata: objectMeta{Name: u.prev.Metadata.Name, Labels: u.prev.Metadata.Labels}}
			_, err = s.update(ctx, back, u.rv)
		}
		if err != nil && !errors.Is(err, errLost) {
			errs = append(errs, fmt.Errorf("undoing the write of %s %s: %w", u.resource, u.name, err))
		}
	}
	if len(errs) > 0 {
		return &store.AmbiguousError{Err: fmt.Errorf("a claim cut short could not be undone (what is left names its container, and reads back as a partial attachment): %w", errors.Join(errs...))}
	}
	return nil
}

// Commit writes the claim as a sequence of guarded writes: the new IPSticky
// (create), each address (create when it has no object, else an update
// guarded by the version read; fresh and tombstoned addresses before those
// taken over), a check that no other claim holds addresses for the same
// container and interface, then the release of the retired attachments'
// addresses not taken over. A lost race undoes what was written and
// returns false. A write whose outcome is unknown returns an
// *store.AmbiguousError at once: the allocator reads back, and a claim cut
// short shows as a Partial attachment.
//
// The sticky comes first so that a claim cut short after it converges: the
// ordinal's next ADD claims the remembered addresses. (Cut short after the
// addresses but before the sticky, it would leave sticky addresses that no
// IPSticky names: tombstones never reused once released.)
func (s *Store) Commit(ctx context.Context, c *store.Claim) (bool, error) {
	att := c.Attachment
	type item struct {
		it *store.ClaimItem
		a  netip.Addr
	}
	var items []item
	var claimIPs []string
	taken := map[netip.Addr]bool{}
	for i := range c.Items {
		it := &c.Items[i]
		a, err := netip.ParseAddr(it.Record.IP)
		if err != nil {
			return false, fmt.Errorf("bad address %q in claim", it.Record.IP)
		}
		a = a.Unmap()
		switch it.Mode {
		case store.ClaimFresh, store.ClaimTomb:
		case store.ClaimTakeover:
			taken[a] = true
		default:
			return false, fmt.Errorf("unknown claim mode %d", it.Mode)
		}
		if slices.Contains(claimIPs, a.String()) {
			return false, fmt.Errorf("address %s claimed twice", a)
		}
		items = append(items, item{it, a})
		claimIPs = append(claimIPs, a.String())
	}
	for _, r := range c.Retire {
		if r.Attachment.ContainerID == att.ContainerID && r.Attachment.IfName == att.IfName {
			return false, fmt.Errorf("claim retires its own attachment %s/%s", store.ShortID(att.ContainerID), att.IfName)
		}
	}
	slices.SortStableFunc(items, func(x, y item) int {
		return cmp.Compare(boolInt(x.it.Mode == store.ClaimTakeover), boolInt(y.it.Mode == store.ClaimTakeover))
	})

	var done []undo
	lose := func(a netip.Addr, mark bool) (bool, error) {
		s.lost(a, mark)
		return false, s.revert(ctx, done)
	}
	fail := func(err error) (bool, error) {
		var amb *store.AmbiguousError
		if errors.As(err, &amb) {
			return false, err // read back by the caller
		}
		if uerr := s.revert(ctx, done); uerr != nil {
			return false, fmt.Errorf("%w; %w", err, uerr)
		}
		return false, err
	}

	if c.NewSticky != nil {
		o, err := s.createSticky(ctx, s.stickyObject(c.NewSticky))
		if errors.Is(err, errLost) {
			return lose(netip.Addr{}, false)
		}
		if err != nil {
			return fail(err)
		}
		done = append(done, undo{resource: stickies, name: o.Metadata.Name, rv: store.Version(o.Metadata.ResourceVersion)})
	}
	for _, x := range items {
		rec := x.it.Record
		rec.IP = x.a.String()
		o := s.heldObject(&rec, claimIPs, att.Created, c.Note)
		var got *ipAllocation
		var prev *ipAllocation
		var err error
		st := &x.it.State
		switch {
		case x.it.Mode == store.ClaimFresh, x.it.Mode == store.ClaimTomb && st.Tomb == nil:
			got, err = s.create(ctx, o)
		case x.it.Mode == store.ClaimTomb:
			prev = s.recalled(o.Metadata.Name, st.TombRev)
			if prev == nil {
				prev = s.releasedObject(x.a, st.Tomb.Kind, rec.Set, st.Tomb.Released, st.Tomb.Log != "")
			}
			got, err = s.update(ctx, o, st.TombRev)
		default: // takeover
			prev = s.recalled(o.Metadata.Name, st.RecRev)
			if prev == nil && st.Record != nil {
				// Not read by this Store: the holder's attachment fields
				// are not known, so its claim is taken to be this address.
				prev = s.heldObject(st.Record, []string{x.a.String()}, st.Record.Created, "")
			}
			got, err = s.update(ctx, o, st.RecRev)
		}
		if errors.Is(err, errLost) {
			return lose(x.a, x.it.Mode != store.ClaimTakeover)
		}
		if err != nil {
			return fail(err)
		}
		done = append(done, undo{resource: allocations, name: got.Metadata.Name, rv: store.Version(got.Metadata.ResourceVersion), prev: prev})
	}
	// One claim per container and interface: of two claims racing for one
	// attachment, the one whose writes came last sees the other's (the LIST
	// is at least as new as its own writes) and undoes its own.
	ps, err := s.heldBy(ctx, att.ContainerID, att.IfName, true)
	if err != nil {
		return false, &store.AmbiguousError{Err: fmt.Errorf("claim written, but not checked against another claim of %s/%s: %w", store.ShortID(att.ContainerID), att.IfName, err)}
	}
	for _, p := range ps {
		if !slices.Contains(claimIPs, p.addr.String()) {
			return lose(netip.Addr{}, false)
		}
	}
	s.mu.Lock()
	for set, a := range c.Cursors {
		s.cursors[set] = a
	}
	s.mu.Unlock()
	for _, r := range c.Retire {
		s.retire(ctx, r, taken, c.Now, c.Policy)
	}
	return true, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// retire releases the addresses of an attachment a claim replaces that it
// did not take over, each guarded by the version read. One changed since
// is someone else's business now and is left alone; one that cannot be
// released now (API trouble) stays with the old container, whose DEL or
// GC frees it: the claim itself is complete.
func (s *Store) retire(ctx context.Context, r store.Retired, keep map[netip.Addr]bool, now time.Time, policy store.ReusePolicy) {
	for _, ipStr := range r.Attachment.IPs {
		a, err := netip.ParseAddr(ipStr)
		if err != nil || keep[a.Unmap()] {
			continue
		}
		a = a.Unmap()
		st := r.States[a]
		if st.Record == nil || st.Record.ContainerID != r.Attachment.ContainerID || st.Record.IfName != r.Attachment.IfName {
			continue
		}
		_ = s.releaseAddr(ctx, a, st.RecRev, st.Record.Kind, now, policy)
	}
}

// releaseAddr frees one held address guarded by its version rv, by
// policy: a tombstone (in the release log or not), or no trace.
func (s *Store) releaseAddr(ctx context.Context, a netip.Addr, rv store.Version, kind string, now time.Time, policy store.ReusePolicy) error {
	set, log, tomb := policy(a, kind)
	if !tomb {
		return s.remove(ctx, allocations, s.allocName(a), rv)
	}
	_, err := s.update(ctx, s.releasedObject(a, kind, set, now, log), rv)
	return err
}

// Release frees what (cid, ifname) holds: every IPAllocation it holds is
// released (or deleted) guarded by the version listed; one changed
// meanwhile is listed again. Addresses taken over by another container
// are not listed, so a late DEL frees nothing it does not hold. An
// unknown outcome is settled by listing again.
//
// The LISTs come from the watch cache, at least as new as this call's
// writes, so once it has written, a LIST showing nothing proves that
// nothing is left (every earlier write is older than its own). A first
// LIST showing nothing is confirmed by a consistent LIST, and after a lost
// race or an unknown outcome the next LIST is a consistent one.
func (s *Store) Release(ctx context.Context, cid, ifname string, now time.Time, policy store.ReusePolicy) ([]netip.Addr, error) {
	var freed []netip.Addr
	var unknown error
	wrote, stale := false, false
	for attempt := 0; attempt < releaseAttempts; attempt++ {
		ps, err := s.heldBy(ctx, cid, ifname, !stale)
		if err == nil && len(ps) == 0 && !wrote && !stale {
			ps, err = s.heldBy(ctx, cid, ifname, false)
		}
		stale = false
		if err != nil {
			if unknown != nil {
				return freed, fmt.Errorf("%w; reading it back: %w", unknown, err)
			}
			return freed, err
		}
		if len(ps) == 0 {
			return freed, nil
		}
		attachmentOf(ps) // claim order
		for _, p := range ps {
			err := s.releaseAddr(ctx, p.addr, p.rv, p.rec.Kind, now, policy)
			var amb *store.AmbiguousError
			switch {
			case err == nil:
				freed, wrote = append(freed, p.addr), true
			case errors.Is(err, errLost):
				stale = true // the cache was behind: read etcd next
			case errors.As(err, &amb):
				unknown, stale = err, true
			default:
				return freed, err
			}
		}
	}
	if unknown != nil {
		return freed, unknown
	}
	return freed, fmt.Errorf("release of %s/%s kept losing races with concurrent writers", store.ShortID(cid), ifname)
}

// ReleaseAttachment frees an attachment as it was read (GC): every address
// its version lists must still be held by it at that version, else nothing
// is done and ok is false. Each address is then released guarded by that
// version; if one changes in between (a narrow race: the others were
// checked unchanged, and are still the dead container's), the others are
// freed and ok is false.
func (s *Store) ReleaseAttachment(ctx context.Context, att *store.Attachment, now time.Time, policy store.ReusePolicy) ([]netip.Addr, bool, error) {
	revs, order, ok := parseRev(att.Rev)
	if !ok {
		return nil, false, nil
	}
	var ps []*parsed
	for _, a := range order {
		o, err := s.get(ctx, s.allocName(a))
		if err != nil {
			return nil, false, err
		}
		if o == nil {
			return nil, false, nil
		}
		p, _, err := s.parse(o)
		if err != nil || p.rec == nil || p.rv != revs[a] || p.rec.ContainerID != att.ContainerID || p.rec.IfName != att.IfName {
			return nil, false, nil
		}
		ps = append(ps, p)
	}
	var freed []netip.Addr
	all := true
	for _, p := range ps {
		err := s.releaseAddr(ctx, p.addr, p.rv, p.rec.Kind, now, policy)
		switch {
		case err == nil:
			freed = append(freed, p.addr)
		case errors.Is(err, errLost):
			all = false
		default:
			return freed, false, err
		}
	}
	return freed, all, nil
}

// ReleaseSticky forgets a StatefulSet ordinal's sticky addresses as read:
// refused (ok=false) while the ordinal holds one of them or when the
// IPSticky is no longer at the version read. The IPSticky is deleted
// (guarded), then every address still reserved for it (released, outside
// the release log) goes to the release log, each guarded by its version.
// An ADD of the ordinal that read the IPSticky before the delete may claim
// an address meanwhile: then the IPSticky is created again as it was and
// ok is false, as if GC had lost the race.
func (s *Store) ReleaseSticky(ctx context.Context, e store.StickyEntry, now time.Time, policy store.ReusePolicy) ([]netip.Addr, bool, error) {
	var addrs []netip.Addr
	for _, ipStr := range e.IPs {
		if a, err := netip.ParseAddr(ipStr); err == nil {
			addrs = append(addrs, a.Unmap())
		}
	}
	ordinal := func(st store.IPState) bool {
		return st.Record != nil && st.Record.StatefulSetUID == e.StatefulSetUID && st.Record.Ordinal == e.Ordinal
	}
	for _, a := range addrs {
		st, err := s.State(ctx, a)
		if err != nil {
			return nil, false, err
		}
		if ordinal(st) {
			return nil, false, nil
		}
	}
	if err := s.remove(ctx, stickies, e.Key, e.Rev); err != nil {
		if errors.Is(err, errLost) {
			return nil, false, nil
		}
		return nil, false, err
	}
	restore := func() error {
		_, err := s.createSticky(ctx, s.stickyObject(&e.Sticky))
		if errors.Is(err, errLost) {
			return nil // the ordinal's ADD made a new one
		}
		return err
	}
	var freed []netip.Addr
	raced := false
	for _, a := range addrs {
		for try := 0; try < 4; try++ {
			st, err := s.State(ctx, a)
			if err != nil {
				return freed, false, errors.Join(err, restore())
			}
			if ordinal(st) {
				raced = true
				break
			}
			if st.Record != nil || st.Tomb == nil || st.Tomb.Log != "" {
				break // someone else's, or nothing reserved
			}
			set, log, tomb := policy(a, store.KindDynamic)
			switch {
			case !tomb:
				err = s.remove(ctx, allocations, s.allocName(a), st.TombRev)
			case log:
				_, err = s.update(ctx, s.releasedObject(a, store.KindDynamic, set, now, true), st.TombRev)
			}
			if errors.Is(err, errLost) {
				continue // changed since it was read: look again
			}
			if err != nil {
				return freed, false, errors.Join(err, restore())
			}
			freed = append(freed, a)
			break
		}
	}
	if !raced {
		for _, a := range addrs {
			st, err := s.State(ctx, a)
			if err != nil {
				return freed, false, errors.Join(err, restore())
			}
			raced = raced || ordinal(st)
		}
	}
	if raced {
		return freed, false, restore()
	}
	return freed, true, nil
}

var _ store.Importer = (*Store)(nil)

// ImportTombstone creates a's IPAllocation as released (kube-ipamctl
// migrate) unless a has one: in the release log of range set set at the
// same release time when t.Log is set.
func (s *Store) ImportTombstone(ctx context.Context, a netip.Addr, t store.Tombstone, set int) (bool, error) {
	_, err := s.create(ctx, s.releasedObject(a.Unmap(), t.Kind, set, t.Released, t.Log != ""))
	if errors.Is(err, errLost) {
		return false, nil
	}
	return err == nil, err
}

// ImportSticky creates a StatefulSet ordinal's IPSticky unless it has one.
func (s *Store) ImportSticky(ctx context.Context, st store.Sticky) (bool, error) {
	_, err := s.createSticky(ctx, s.stickyObject(&st))
	if errors.Is(err, errLost) {
		return false, nil
	}
	return err == nil, err
}
