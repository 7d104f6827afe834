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
	"strconv"
	"strings"
	"time"

	"kubeipam/internal/kubeapi"
	"kubeipam/internal/store"
)

// view is a metadata-only LIST of the network's IPAllocations: which
// addresses are used, and the release log.
type view struct {
	rv     uint64
	at     time.Time
	objs   map[netip.Addr]entry
	sorted []netip.Addr // nil: rebuild from objs
}

// entry is what the view knows of one address (from its labels).
type entry struct {
	name  string
	state string
	set   int
	// releasedAt is the release time in Unix nanoseconds of an address in
	// the release log, else 0.
	releasedAt int64
}

// change is one of this Store's own writes, for the views it is newer than.
type change struct {
	rv uint64
	a  netip.Addr
	e  *entry // nil: deleted
}

func entryOf(p *ipAllocation) entry {
	e := entry{name: p.Metadata.Name, state: p.Spec.State, set: p.Spec.RangeSet}
	if r := p.Spec.Released; p.Spec.State == StateReleased && r != nil && r.Reusable {
		e.releasedAt = r.At.UnixNano()
	}
	return e
}

func (v *view) apply(c change) {
	if c.e == nil {
		delete(v.objs, c.a)
	} else {
		v.objs[c.a] = *c.e
	}
	v.sorted = nil
}

// currentView returns the cached LIST, reading it when there is none or it
// is older than ViewMaxAge. Its objs are read and written under s.mu.
func (s *Store) currentView(ctx context.Context) (*view, error) {
	s.viewMu.Lock()
	defer s.viewMu.Unlock()
	s.mu.Lock()
	v := s.view
	s.mu.Unlock()
	if v != nil && time.Since(v.at) < ViewMaxAge {
		return v, nil
	}
	v, err := s.listTable(ctx)
	if errors.Is(err, errNoTable) {
		v, err = s.listMetadata(ctx)
	}
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	slices.SortFunc(s.changes, func(x, y change) int { return cmp.Compare(x.rv, y.rv) })
	keep := s.changes[:0]
	for _, c := range s.changes {
		if c.rv > v.rv {
			v.apply(c)
			keep = append(keep, c)
		}
	}
	s.changes = keep
	s.view = v
	return v, nil
}

// errNoTable: the served CRD has not the Table columns listTable reads.
var errNoTable = errors.New("the IPAllocation CRD has no Set, Released and Reusable columns")

// listTable reads the view as a server-side Table without objects, from
// the watch cache: a row of a few cells per address, the cheapest LIST the
// API server serves (a PartialObjectMetadataList carries every object's
// managedFields, about 1 KiB each).
func (s *Store) listTable(ctx context.Context) (*view, error) {
	if s.noTable.Load() {
		return nil, errNoTable
	}
	r := &req{verb: "list", resource: allocations, Request: kubeapi.Request{Path: path(allocations, ""),
		Accept: "application/json;as=Table;g=meta.k8s.io;v=v1"}}
	r.Query = s.cachedQuery(selector(LabelNetwork, s.netID))
	r.Query.Set("includeObject", "None")
	resp, err := s.read(ctx, r)
	if err != nil {
		return nil, err
	}
	if resp.Code != http.StatusOK {
		return nil, s.fail(r, resp)
	}
	var t struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Columns []struct {
			Name string `json:"name"`
		} `json:"columnDefinitions"`
		Rows []struct {
			Cells []any `json:"cells"`
		} `json:"rows"`
	}
	if err := json.Unmarshal(resp.Body, &t); err != nil {
		return nil, fmt.Errorf("%s: undecodable answer: %w", r.op(), err)
	}
	col := map[string]int{}
	for i, c := range t.Columns {
		col[c.Name] = i
	}
	for _, name := range []string{"Name", "State", "Set", "Released", "Reusable"} {
		if _, ok := col[name]; !ok {
			s.noTable.Store(true)
			return nil, errNoTable
		}
	}
	v := &view{at: time.Now(), objs: make(map[netip.Addr]entry, len(t.Rows))}
	v.rv, _ = strconv.ParseUint(t.Metadata.ResourceVersion, 10, 64)
	for _, row := range t.Rows {
		cell := func(name string) any {
			if i := col[name]; i < len(row.Cells) {
				return row.Cells[i]
			}
			return nil
		}
		name, _ := cell("Name").(string)
		a, canon, ok := s.addrOfName(name)
		if !ok {
			continue
		}
		if _, dup := v.objs[a]; dup && !canon {
			continue
		}
		e := entry{name: name, set: -1}
		e.state, _ = cell("State").(string)
		if n, ok := cell("Set").(float64); ok {
			e.set = int(n)
		}
		if reusable, _ := cell("Reusable").(bool); reusable && e.state == StateReleased {
			at, _ := cell("Released").(string)
			if t, err := time.Parse(time.RFC3339Nano, at); err == nil {
				e.releasedAt = t.UnixNano()
			}
		}
		v.objs[a] = e
	}
	return v, nil
}

// listMetadata reads the view from the objects' metadata (their labels).
func (s *Store) listMetadata(ctx context.Context) (*view, error) {
	items, rv, err := list[partial](ctx, s, allocations, listOpts{selector: selector(LabelNetwork, s.netID), cached: true, metadata: true})
	if err != nil {
		return nil, err
	}
	v := &view{at: time.Now(), objs: make(map[netip.Addr]entry, len(items))}
	v.rv, _ = strconv.ParseUint(rv, 10, 64)
	for _, it := range items {
		a, canon, ok := s.addrOfName(it.Metadata.Name)
		if !ok {
			continue
		}
		if _, dup := v.objs[a]; dup && !canon {
			continue
		}
		e := entry{name: it.Metadata.Name, state: it.Metadata.Labels[LabelState], set: -1}
		if n, err := strconv.Atoi(it.Metadata.Labels[LabelRangeSet]); err == nil {
			e.set = n
		}
		if e.state == StateReleased {
			e.releasedAt, _ = strconv.ParseInt(it.Metadata.Labels[LabelReleasedAt], 10, 64)
		}
		v.objs[a] = e
	}
	return v, nil
}

// applied records one of this Store's writes (rv: the version it
// returned): the cached view shows it at once, and so does a LIST in
// flight once it lands.
func (s *Store) applied(rv string, a netip.Addr, e *entry) {
	n, err := strconv.ParseUint(rv, 10, 64)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.view = nil
		return
	}
	s.minRV = max(s.minRV, n)
	c := change{rv: n, a: a, e: e}
	if len(s.changes) >= 4096 {
		// Every LIST started from now on is at least as new as these.
		s.changes = append(s.changes[:0], s.changes[len(s.changes)-1024:]...)
	}
	s.changes = append(s.changes, c)
	if s.view != nil && s.view.rv < n {
		s.view.apply(c)
	}
}

// lost drops the cached view after a lost race (it missed another
// writer); mark remembers a as claimed meanwhile, in case the next LIST,
// served from the watch cache, does not show it yet.
func (s *Store) lost(a netip.Addr, mark bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.view = nil
	if mark && a.IsValid() {
		s.taken[a] = time.Now()
	}
}

// Used returns, ascending, up to limit addresses in [from, to] that have an
// IPAllocation (held or released), from the cached LIST.
func (s *Store) Used(ctx context.Context, from, to netip.Addr, limit int) ([]netip.Addr, bool, error) {
	v, err := s.currentView(ctx)
	if err != nil {
		return nil, false, err
	}
	s.mu.Lock()
	if v.sorted == nil {
		v.sorted = make([]netip.Addr, 0, len(v.objs))
		for a := range v.objs {
			v.sorted = append(v.sorted, a)
		}
		slices.SortFunc(v.sorted, netip.Addr.Compare)
	}
	lo, _ := slices.BinarySearchFunc(v.sorted, from, netip.Addr.Compare)
	var used []netip.Addr
	for i := lo; i < len(v.sorted) && v.sorted[i].Compare(to) <= 0 && len(used) <= limit; i++ {
		used = append(used, v.sorted[i])
	}
	extra := false
	for a, at := range s.taken {
		switch {
		case time.Since(at) > takenFor:
			delete(s.taken, a)
		case a.Compare(from) >= 0 && a.Compare(to) <= 0:
			if _, known := v.objs[a]; !known {
				used, extra = append(used, a), true
			}
		}
	}
	s.mu.Unlock()
	if extra {
		slices.SortFunc(used, netip.Addr.Compare)
	}
	if len(used) > limit {
		return used[:limit], true, nil
	}
	return used, false, nil
}

// Cursor returns the never-used hint of a range set that this Store's last
// claim set (invalid if none: a scan then starts at the range's start,
// cheap over the cached LIST).
func (s *Store) Cursor(ctx context.Context, set int) (netip.Addr, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cursors[set], nil
}

// OldestReleased returns up to limit release-log entries of a range set,
// oldest first, from the cached LIST.
func (s *Store) OldestReleased(ctx context.Context, set, limit int) ([]store.ReleasedRef, error) {
	v, err := s.currentView(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	var out []store.ReleasedRef
	for a, e := range v.objs {
		if e.state == StateReleased && e.releasedAt != 0 && e.set == set {
			at := time.Unix(0, e.releasedAt)
			out = append(out, store.ReleasedRef{Key: logKey(e.name, at), Set: set, IP: a, At: at})
		}
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(x, y store.ReleasedRef) int {
		if c := x.At.Compare(y.At); c != 0 {
			return c
		}
		return x.IP.Compare(y.IP)
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// DropReleased is called for a release-log entry that does not match its
// address's state. The log is not separate from the addresses, so an
// entry is stale only because the cached LIST is (the address was claimed
// or released again since): the view is dropped and the next read lists
// again. An address whose labels were edited away from its spec (so that
// the LIST keeps showing a wrong entry) has them set from the spec again,
// guarded by its version.
func (s *Store) DropReleased(ctx context.Context, ref store.ReleasedRef) error {
	s.lost(netip.Addr{}, false)
	o, err := s.get(ctx, s.allocName(ref.IP))
	if err != nil || o == nil {
		return err
	}
	p, labelProblem, err := s.parse(o)
	if err != nil || labelProblem == "" {
		return nil // corrupt objects are Snapshot's Problems; nothing to fix here
	}
	fixed := *o
	fixed.Metadata.Labels = s.labels(&o.Spec)
	_, err = s.update(ctx, &fixed, p.rv)
	if err == errLost {
		return nil
	}
	return err
}

// State reads an address's IPAllocation: its record if held, its
// tombstone if released.
func (s *Store) State(ctx context.Context, a netip.Addr) (store.IPState, error) {
	var st store.IPState
	o, err := s.get(ctx, s.allocName(a))
	if err != nil || o == nil {
		return st, err
	}
	p, _, err := s.parse(o)
	if err != nil {
		return st, fmt.Errorf("corrupt IPAllocation %s: %v", o.Metadata.Name, err)
	}
	if p.rec != nil {
		st.Record, st.RecRev = p.rec, p.rv
	} else {
		st.Tomb, st.TombRev = p.tomb, p.rv
	}
	return st, nil
}

// AddressStates reads the state of every address att lists.
func (s *Store) AddressStates(ctx context.Context, att *store.Attachment) (map[netip.Addr]store.IPState, error) {
	return store.StatesOf(ctx, att, s.State)
}

// listHeld lists the held IPAllocations matching the labels kv (besides
// network and state), parsed; objects that do not parse are left out
// (Snapshot reports them). Not paginated: a consistent LIST without a
// limit is served from the API server's watch cache (after it caught up
// with etcd's current revision); with a limit it is read from etcd, every
// IPAllocation of every network, for each call.
func (s *Store) listHeld(ctx context.Context, cached bool, kv ...string) ([]*parsed, error) {
	items, _, err := list[ipAllocation](ctx, s, allocations, listOpts{
		selector: selector(append([]string{LabelNetwork, s.netID, LabelState, StateHeld}, kv...)...), cached: cached})
	if err != nil {
		return nil, err
	}
	out := make([]*parsed, 0, len(items))
	for i := range items {
		p, _, err := s.parse(&items[i])
		if err == nil && p.rec != nil {
			s.remember(p.obj)
			out = append(out, p)
		}
	}
	return out, nil
}

// heldBy lists the addresses container cid holds on interface ifname.
func (s *Store) heldBy(ctx context.Context, cid, ifname string, cached bool) ([]*parsed, error) {
	ps, err := s.listHeld(ctx, cached, LabelContainer, labelValue(cid), LabelIfName, labelValue(ifname))
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(ps, func(p *parsed) bool { return p.rec.ContainerID != cid || p.rec.IfName != ifname }), nil
}

// Attachment returns what (cid, ifname) holds, or nil. It reads the API
// server's watch cache, at least as new as everything this Store wrote or
// read, not a quorum read: a claim another process made in the last
// moments may not show yet. The allocator does not need more: a claim that
// missed an earlier claim of the same attachment sees it in its own check
// after its writes (that LIST is newer than all of them) and is undone.
// (A consistent LIST costs the API server one etcd read of every
// IPAllocation when etcd predates progress notification, 3.4.31/3.5.13.)
func (s *Store) Attachment(ctx context.Context, cid, ifname string) (*store.Attachment, error) {
	ps, err := s.memoized(ctx, "att", cid, ifname, func() ([]*parsed, error) { return s.heldBy(ctx, cid, ifname, true) })
	if err != nil || len(ps) == 0 {
		return nil, err
	}
	return attachmentOf(ps), nil
}

// memoized answers a watch-cache LIST of held addresses (Attachment,
// PodAttachments) again without a request while this Store has written
// nothing since but writes the API refused as conflicts, for at most
// ViewMaxAge like the cached view: the allocator asks
// again after each lost race, and a race lost at the create of a fresh
// address changed nothing this LIST shows that this process could know
// better by asking (the LIST is from the watch cache, no newer than what
// it already saw). Any other write, or an unknown outcome, forgets it.
func (s *Store) memoized(ctx context.Context, kind, a, b string, f func() ([]*parsed, error)) ([]*parsed, error) {
	key := kind + "\x00" + a + "\x00" + b
	s.mu.Lock()
	m, ok := s.memo[key]
	s.mu.Unlock()
	if ok && time.Since(m.at) < ViewMaxAge {
		return slices.Clone(m.ps), nil
	}
	ps, err := f()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.memo == nil {
		s.memo = map[string]memoEntry{}
	}
	s.memo[key] = memoEntry{time.Now(), slices.Clone(ps)}
	s.mu.Unlock()
	return ps, nil
}

type memoEntry struct {
	at time.Time
	ps []*parsed
}

// forget drops the memoized LISTs (a write may have changed them).
func (s *Store) forget() {
	s.mu.Lock()
	clear(s.memo)
	s.mu.Unlock()
}

// Attachments lists every attachment on the network, by container and
// interface.
func (s *Store) Attachments(ctx context.Context) ([]*store.Attachment, error) {
	ps, err := s.listHeld(ctx, false)
	if err != nil {
		return nil, err
	}
	return groupAttachments(ps), nil
}

// groupAttachments makes the attachments of held addresses.
func groupAttachments(ps []*parsed) []*store.Attachment {
	by := map[[2]string][]*parsed{}
	var keys [][2]string
	for _, p := range ps {
		k := [2]string{p.rec.ContainerID, p.rec.IfName}
		if by[k] == nil {
			keys = append(keys, k)
		}
		by[k] = append(by[k], p)
	}
	slices.SortFunc(keys, func(x, y [2]string) int {
		if c := strings.Compare(x[0], y[0]); c != 0 {
			return c
		}
		return strings.Compare(x[1], y[1])
	})
	out := make([]*store.Attachment, 0, len(keys))
	for _, k := range keys {
		out = append(out, attachmentOf(by[k]))
	}
	return out
}

// attachmentOf builds the attachment of one container and interface from
// the addresses it holds, in the order of its claim. Partial: the claim
// listed an address it does not hold, or the addresses come from claims
// that disagree.
func attachmentOf(ps []*parsed) *store.Attachment {
	claim := ps[0].held().ClaimIPs
	order := func(p *parsed) int {
		if i := slices.Index(claim, p.addr.String()); i >= 0 {
			return i
		}
		return len(claim)
	}
	slices.SortStableFunc(ps, func(x, y *parsed) int {
		if c := order(x) - order(y); c != 0 {
			return c
		}
		return x.addr.Compare(y.addr)
	})
	h := ps[0].held()
	att := &store.Attachment{
		ContainerID: ps[0].rec.ContainerID, IfName: ps[0].rec.IfName,
		PodNamespace: h.PodNamespace, PodName: h.PodName, PodUID: h.PodUID,
		Node: h.Node, Cluster: h.Cluster, Created: h.AttachmentCreated,
	}
	held := map[string]bool{}
	var revs, names []string
	for _, p := range ps {
		att.IPs = append(att.IPs, p.addr.String())
		held[p.addr.String()] = true
		revs = append(revs, p.addr.String()+"="+string(p.rv))
		names = append(names, p.obj.Metadata.Name)
		if !slices.Equal(normalize(p.held().ClaimIPs), normalize(claim)) {
			att.Partial = true
		}
	}
	for _, ip := range normalize(claim) {
		if !held[ip] {
			att.Partial = true
		}
	}
	if len(normalize(claim)) != len(ps) {
		att.Partial = true
	}
	att.Rev = store.Version(strings.Join(revs, ","))
	att.Key = strings.Join(names, ",")
	return att
}

// normalize is a claim's address list in canonical form, sorted.
func normalize(ips []string) []string {
	out := make([]string, 0, len(ips))
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap().String())
		} else {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// parseRev reads an attachment version made by attachmentOf.
func parseRev(v store.Version) (map[netip.Addr]store.Version, []netip.Addr, bool) {
	if v == "" {
		return nil, nil, false
	}
	out := map[netip.Addr]store.Version{}
	var order []netip.Addr
	for _, part := range strings.Split(string(v), ",") {
		ipStr, rv, ok := strings.Cut(part, "=")
		a, err := netip.ParseAddr(ipStr)
		if !ok || err != nil || rv == "" {
			return nil, nil, false
		}
		if _, dup := out[a]; !dup {
			order = append(order, a)
		}
		out[a] = store.Version(rv)
	}
	return out, order, true
}

// PodAttachments lists the container IDs whose attachments on ifname
// belong to the pod with UID uid, from the watch cache like Attachment (a
// pod's earlier sandbox finished its ADD long before the next one starts).
func (s *Store) PodAttachments(ctx context.Context, uid, ifname string) ([]string, error) {
	ps, err := s.memoized(ctx, "pod", uid, ifname, func() ([]*parsed, error) {
		return s.listHeld(ctx, true, LabelPodUID, labelValue(uid), LabelIfName, labelValue(ifname))
	})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range ps {
		if p.rec.PodUID == uid && p.rec.IfName == ifname {
			out = append(out, p.rec.ContainerID)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// getSticky reads one IPSticky (nil if there is none).
func (s *Store) getSticky(ctx context.Context, name string) (*ipSticky, error) {
	return getObject[ipSticky](ctx, s, stickies, name)
}

// Sticky returns the remembered addresses of a StatefulSet ordinal, or nil.
func (s *Store) Sticky(ctx context.Context, ns, uid string, ordinal int, ifname string) (*store.Sticky, error) {
	o, err := s.getSticky(ctx, s.stickyName(ns, uid, ordinal, ifname))
	if err != nil || o == nil {
		return nil, err
	}
	e, err := s.parseSticky(o)
	if err == nil && (e.Namespace != ns || e.StatefulSetUID != uid || e.Ordinal != ordinal || e.IfName != ifname) {
		err = fmt.Errorf("its spec names another ordinal")
	}
	if err != nil {
		return nil, fmt.Errorf("corrupt IPSticky %s: %v", o.Metadata.Name, err)
	}
	return &e.Sticky, nil
}

// Note returns the note kept with the claim holding a ("" if none).
func (s *Store) Note(ctx context.Context, a netip.Addr) (string, error) {
	o, err := s.get(ctx, s.allocName(a))
	if err != nil || o == nil || o.Spec.State != StateHeld || o.Spec.Held == nil {
		return "", err
	}
	return o.Spec.Held.Note, nil
}
