package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"kubeipam/internal/allocator"
	"kubeipam/internal/controller"
	"kubeipam/internal/ipam"
	"kubeipam/internal/store"
)

// ExitError carries the exit status a command ends with. Code 1 is a
// negative answer (an inconsistency, a free address, a refused release), 2
// a usage error, 3 an operational failure (config, etcd, Kubernetes API).
type ExitError struct {
	Code int
	Msg  string
}

func (e *ExitError) Error() string { return e.Msg }

func usageErrorf(format string, a ...any) error {
	return &ExitError{Code: 2, Msg: fmt.Sprintf(format, a...)}
}

func negativef(format string, a ...any) error {
	return &ExitError{Code: 1, Msg: fmt.Sprintf(format, a...)}
}

// Allocation is one claimed address, as list, who-has and show print it.
type Allocation struct {
	IP             string    `json:"ip"`
	Network        string    `json:"network"`
	Kind           string    `json:"kind"`
	Namespace      string    `json:"namespace,omitempty"`
	Pod            string    `json:"pod,omitempty"`
	PodUID         string    `json:"podUID,omitempty"`
	StatefulSet    string    `json:"statefulSet,omitempty"`
	StatefulSetUID string    `json:"statefulSetUID,omitempty"`
	Ordinal        *int      `json:"ordinal,omitempty"`
	ContainerID    string    `json:"containerID"`
	IfName         string    `json:"ifname"`
	Node           string    `json:"node,omitempty"`
	Created        time.Time `json:"created"`
	Age            string    `json:"age"`
	// Note is a reservation's note (kind "reserved").
	Note string `json:"note,omitempty"`

	addr netip.Addr
}

func allocationOf(network string, e recEntry, now time.Time) Allocation {
	r := e.Rec
	a := Allocation{IP: e.IP.String(), Network: network, Kind: r.Kind, Namespace: r.PodNamespace, Pod: r.PodName,
		PodUID: r.PodUID, StatefulSet: r.StatefulSet, StatefulSetUID: r.StatefulSetUID, ContainerID: r.ContainerID,
		IfName: r.IfName, Node: r.Node, Created: r.Created, Age: age(now.Sub(r.Created)), addr: e.IP}
	if isReservation(r) {
		a.Kind = KindReserved
	}
	if r.StatefulSetUID != "" {
		o := r.Ordinal
		a.Ordinal = &o
	}
	return a
}

func sortAllocations(as []Allocation) {
	sort.SliceStable(as, func(i, j int) bool {
		if as[i].Network != as[j].Network {
			return as[i].Network < as[j].Network
		}
		return as[i].addr.Less(as[j].addr)
	})
}

func printAllocations(w io.Writer, format string, as []Allocation) error {
	if as == nil {
		as = []Allocation{}
	}
	rows := make([][]string, 0, len(as))
	for _, a := range as {
		p := ""
		if a.Pod != "" {
			p = a.Namespace + "/" + a.Pod
		} else if a.Note != "" {
			p = "(" + a.Note + ")"
		}
		rows = append(rows, []string{a.IP, a.Network, a.Kind, p, store.ShortID(a.ContainerID), a.IfName, a.Node, a.Age})
	}
	return emit(w, format, as, []string{"IP", "NETWORK", "KIND", "POD", "CONTAINER", "IFNAME", "NODE", "AGE"}, rows)
}

// NetworkRow is one line of `networks`.
type NetworkRow struct {
	Name    string   `json:"name"`
	Subnets []string `json:"subnets"`
	// Pool counts the dynamic addresses (ranges minus gateways minus the
	// fixed block); it saturates at 2^63-1 for huge IPv6 pools.
	Pool    int64 `json:"pool"`
	Used    int64 `json:"used"`
	Free    int64 `json:"free"`
	Fixed   int64 `json:"fixed"`
	Sticky  int64 `json:"sticky"`
	Cooling int64 `json:"cooling"`
}

// Networks prints one row per network with its pool usage.
func Networks(ctx context.Context, w io.Writer, nets []*Network, now time.Time, format string) error {
	out := []NetworkRow{}
	var rows [][]string
	for _, n := range nets {
		s, err := read(ctx, n)
		if err != nil {
			return err
		}
		st := s.stats(now)
		row := NetworkRow{Name: n.Cfg.Name, Subnets: []string{}, Pool: st.Pool, Used: st.Used, Free: st.Free, Fixed: st.Fixed, Sticky: st.Sticky, Cooling: st.Cooling}
		for _, set := range n.Cfg.RangeSets {
			for _, r := range set {
				if sn := r.Subnet.String(); !slices.Contains(row.Subnets, sn) {
					row.Subnets = append(row.Subnets, sn)
				}
			}
		}
		out = append(out, row)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	for _, r := range out {
		rows = append(rows, []string{r.Name, strings.Join(r.Subnets, ","), fmt.Sprint(r.Pool), fmt.Sprint(r.Used), fmt.Sprint(r.Free),
			fmt.Sprint(r.Fixed), fmt.Sprint(r.Sticky), fmt.Sprint(r.Cooling)})
	}
	return emit(w, format, out, []string{"NAME", "SUBNETS", "POOL", "USED", "FREE", "FIXED", "STICKY", "COOLING"}, rows)
}

// ListFilter narrows `list`; empty fields match everything.
type ListFilter struct {
	Network, Node, Namespace string
}

// List prints the allocations that match f.
func List(ctx context.Context, w io.Writer, nets []*Network, f ListFilter, now time.Time, format string) error {
	nets, err := pick(nets, f.Network)
	if err != nil {
		return err
	}
	as, err := allocations(ctx, nets, now, func(r *store.Record) bool {
		return (f.Node == "" || r.Node == f.Node) && (f.Namespace == "" || r.PodNamespace == f.Namespace)
	})
	if err != nil {
		return err
	}
	return printAllocations(w, format, as)
}

// allocations reads every network's records and returns those keep accepts,
// sorted, with the note of each reservation.
func allocations(ctx context.Context, nets []*Network, now time.Time, keep func(*store.Record) bool) ([]Allocation, error) {
	var as []Allocation
	for _, n := range nets {
		s, err := read(ctx, n)
		if err != nil {
			return nil, err
		}
		for _, e := range s.records {
			if !keep(e.Rec) {
				continue
			}
			a := allocationOf(n.Cfg.Name, e, now)
			if a.Kind == KindReserved {
				a.Note = readNote(ctx, n, e.IP)
			}
			as = append(as, a)
		}
	}
	sortAllocations(as)
	return as, nil
}

func pick(nets []*Network, name string) ([]*Network, error) {
	if name == "" {
		return nets, nil
	}
	var names []string
	for _, n := range nets {
		if n.Cfg.Name == name {
			return []*Network{n}, nil
		}
		names = append(names, n.Cfg.Name)
	}
	return nil, usageErrorf("no network %q in the config (it has: %s)", name, strings.Join(names, ", "))
}

// WhoHas prints the record of ip on every network that holds it. A free
// address is an *ExitError with code 1 saying what the store knows of it.
func WhoHas(ctx context.Context, w io.Writer, nets []*Network, ip netip.Addr, now time.Time, format string) error {
	var as []Allocation
	var notes []string
	for _, n := range nets {
		st, err := n.Store.State(ctx, ip)
		if err != nil {
			return &ExitError{Code: 3, Msg: fmt.Sprintf("network %s: %v", n.Cfg.Name, err)}
		}
		if st.Record != nil {
			a := allocationOf(n.Cfg.Name, recEntry{IP: ip, Rec: st.Record}, now)
			if a.Kind == KindReserved {
				a.Note = readNote(ctx, n, ip)
			}
			as = append(as, a)
			continue
		}
		if _, _, ok := n.Cfg.SetFor(ip); !ok {
			continue
		}
		switch {
		case st.Tomb == nil:
			notes = append(notes, n.Cfg.Name+": never allocated")
		case st.Tomb.Log == "" && st.Tomb.Kind == store.KindFixed:
			notes = append(notes, fmt.Sprintf("%s: fixed address released %s ago", n.Cfg.Name, age(now.Sub(st.Tomb.Released))))
		case now.Sub(st.Tomb.Released) < n.Cfg.ReleaseCooldown:
			notes = append(notes, fmt.Sprintf("%s: released %s ago, cooling down for %s more", n.Cfg.Name, age(now.Sub(st.Tomb.Released)),
				age(n.Cfg.ReleaseCooldown-now.Sub(st.Tomb.Released))))
		default:
			notes = append(notes, fmt.Sprintf("%s: released %s ago", n.Cfg.Name, age(now.Sub(st.Tomb.Released))))
		}
	}
	if len(as) == 0 {
		msg := fmt.Sprintf("%s is not allocated on any configured network", ip)
		if len(notes) == 0 {
			msg += " (it is outside every configured subnet)"
		} else {
			msg += " (" + strings.Join(notes, "; ") + ")"
		}
		return negativef("%s", msg)
	}
	sortAllocations(as)
	return printAllocations(w, format, as)
}

// Show prints every allocation of pod namespace/name.
func Show(ctx context.Context, w io.Writer, nets []*Network, namespace, name string, now time.Time, format string) error {
	as, err := allocations(ctx, nets, now, func(r *store.Record) bool {
		return r.PodNamespace == namespace && r.PodName == name
	})
	if err != nil {
		return err
	}
	if len(as) == 0 {
		return negativef("pod %s/%s holds no address on any configured network", namespace, name)
	}
	return printAllocations(w, format, as)
}

// Problem is one inconsistency reported by check.
type Problem struct {
	Kind    string `json:"kind"`
	Network string `json:"network"`
	IP      string `json:"ip,omitempty"`
	Key     string `json:"key,omitempty"`
	Detail  string `json:"detail"`
}

// CheckReport is check's JSON/YAML document.
type CheckReport struct {
	Networks    int       `json:"networks"`
	Allocations int       `json:"allocations"`
	Problems    []Problem `json:"problems"`
	// Kept are allocations of deleted pods that GC keeps on purpose: not
	// problems, nothing to do.
	Kept  []Kept   `json:"kept,omitempty"`
	Notes []string `json:"notes,omitempty"`
}

// Kept is an allocation whose pod is gone but which the GC rules keep on
// purpose, as check reports it.
type Kept struct {
	// Kind is KeptStatefulSetOrdinal.
	Kind    string `json:"kind"`
	Network string `json:"network"`
	IP      string `json:"ip"`
	Key     string `json:"key,omitempty"`
	Detail  string `json:"detail"`
}

// KeptStatefulSetOrdinal: the address of a StatefulSet ordinal whose pod is
// gone while the StatefulSet (same UID, ordinal below its replicas) still
// wants the ordinal. The re-created pod takes it over; the controller frees
// it once the StatefulSet is deleted or scaled below the ordinal.
const KeptStatefulSetOrdinal = "statefulset-ordinal"

// gcRules is the controller's GC rules, run against n's store and API
// client (kube-ipamctl never uses an informer: every owner is a fresh read).
func gcRules(n *Network, now time.Time) (*controller.Reconciler, *controller.Network) {
	cn := controller.NewNetwork(n.Cfg, n.Store)
	r := controller.NewReconciler([]*controller.Network{cn}, n.Kube, nil, nil,
		controller.Options{Now: func() time.Time { return now }, Log: slog.New(slog.DiscardHandler)})
	return r, cn
}

// Check looks for inconsistencies in every network. It returns an
// *ExitError with code 1 when it finds any.
func Check(ctx context.Context, w io.Writer, nets []*Network, now time.Time, format string) error {
	rep := CheckReport{Networks: len(nets), Problems: []Problem{}}
	for _, n := range nets {
		s, err := read(ctx, n)
		if err != nil {
			return err
		}
		rep.Allocations += len(s.records)
		var ps []problem
		ps = append(ps, s.corrupt...)
		add := func(kind string, ip netip.Addr, key, format string, a ...any) {
			ps = append(ps, problem{Kind: kind, Network: n.Cfg.Name, IP: ip.String(), Key: key, Detail: fmt.Sprintf(format, a...)})
		}
		type attID struct{ cid, ifname string }
		atts := map[attID]attEntry{}
		for _, ae := range s.atts {
			atts[attID{ae.Att.ContainerID, ae.Att.IfName}] = ae
			for _, ipStr := range ae.Att.IPs {
				a, err := netip.ParseAddr(ipStr)
				if err != nil {
					ps = append(ps, problem{Kind: ProblemCorrupt, Network: n.Cfg.Name, Key: ae.Key, Detail: fmt.Sprintf("attachment lists %q, not an address", ipStr)})
					continue
				}
				rec, ok := s.byIP[a]
				switch {
				case !ok:
					add(ProblemStale, a, ae.Key, "attachment of container %s interface %s lists the address but no record holds it", store.ShortID(ae.Att.ContainerID), ae.Att.IfName)
				case rec.Rec.ContainerID != ae.Att.ContainerID || rec.Rec.IfName != ae.Att.IfName:
					add(ProblemStale, a, ae.Key, "attachment of container %s interface %s lists the address but its record names %s", store.ShortID(ae.Att.ContainerID), ae.Att.IfName, rec.Rec.Owner())
				}
			}
		}
		var dyn [][]ipam.Interval
		for i := range n.Cfg.RangeSets {
			dyn = append(dyn, ipam.DynamicIntervals(n.Cfg, i))
		}
		for _, e := range s.records {
			r := e.Rec
			ae, ok := atts[attID{r.ContainerID, r.IfName}]
			switch {
			case !ok:
				add(ProblemOrphan, e.IP, e.Key, "record of %s has no attachment (container %s, interface %s)", r.Owner(), r.ContainerID, r.IfName)
			case !slices.Contains(ae.Att.IPs, e.IP.String()):
				add(ProblemOrphan, e.IP, e.Key, "record of %s: its attachment %s does not list the address", r.Owner(), ae.Key)
			}
			set, _, ok := n.Cfg.SetFor(e.IP)
			x, excluded := n.Cfg.Excluded(e.IP)
			switch {
			case !ok:
				add(ProblemOutOfRange, e.IP, e.Key, "%s address of %s is outside every configured subnet", r.Kind, r.Owner())
			case excluded && isReservation(r):
				add(ProblemExcluded, e.IP, e.Key, "reservation (kube-ipamctl reserve) is excluded by ipam.exclude entry %q: the exclusion keeps the address out already; release the reservation", x.Entry)
			case excluded:
				add(ProblemExcluded, e.IP, e.Key, "%s address of %s is excluded by ipam.exclude entry %q: its holder keeps it until released, then it is never handed out again", r.Kind, r.Owner(), x.Entry)
			case r.Kind != store.KindFixed && !ipam.InAny(dyn[set], e.IP):
				add(ProblemOutOfRange, e.IP, e.Key, "%s address of %s is outside the dynamic ranges of range set %d", r.Kind, r.Owner(), set)
			}
		}
		if n.Kube == nil {
			rep.Notes = append(rep.Notes, fmt.Sprintf("network %s: leaked allocations not checked: %s", n.Cfg.Name, n.KubeNote))
		} else {
			// The leaked allocations are exactly those gc (and the
			// controller, after its grace) would free: the same rules, run
			// by the same code.
			r, cn := gcRules(n, now)
			ds, err := r.Evaluate(ctx, cn)
			if err != nil {
				return &ExitError{Code: 3, Msg: err.Error()}
			}
			var undecided []string
			for _, d := range ds {
				switch d.Verdict {
				case controller.VerdictLeaked:
					ps = append(ps, leakedProblems(n, s, &d)...)
				case controller.VerdictWanted:
					for _, h := range d.Held {
						rep.Kept = append(rep.Kept, Kept{Kind: KeptStatefulSetOrdinal, Network: n.Cfg.Name, IP: h.IP.String(), Key: s.byIP[h.IP].Key,
							Detail: d.Reason + ": its re-created pod takes the address over"})
					}
				case controller.VerdictUndecided:
					undecided = append(undecided, d.Cause)
				}
			}
			for _, c := range countReasons(undecided) {
				rep.Notes = append(rep.Notes, fmt.Sprintf("network %s: %d allocation(s) not checked for leaks, the Kubernetes API could not tell: %s", n.Cfg.Name, c.Count, c.Reason))
			}
		}
		for _, p := range ps {
			rep.Problems = append(rep.Problems, Problem(p))
		}
	}
	sortProblems(rep.Problems)
	sort.SliceStable(rep.Kept, func(i, j int) bool {
		a, b := rep.Kept[i], rep.Kept[j]
		if a.Network != b.Network {
			return a.Network < b.Network
		}
		return netip.MustParseAddr(a.IP).Less(netip.MustParseAddr(b.IP))
	})
	if format != FormatTable {
		if err := emit(w, format, rep, nil, nil); err != nil {
			return err
		}
	} else {
		if len(rep.Problems) > 0 {
			var rows [][]string
			for _, p := range rep.Problems {
				rows = append(rows, []string{p.Kind, p.Network, p.IP, p.Key, p.Detail})
			}
			if err := table(w, []string{"PROBLEM", "NETWORK", "IP", "KEY", "DETAIL"}, rows); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(w, "No inconsistencies in %d network(s), %d allocation(s).\n", rep.Networks, rep.Allocations)
		}
		if len(rep.Kept) > 0 {
			fmt.Fprintln(w, "Kept on purpose (not problems, nothing to do):")
			var rows [][]string
			for _, k := range rep.Kept {
				rows = append(rows, []string{k.Kind, k.Network, k.IP, k.Key, k.Detail})
			}
			if err := table(w, []string{"KEPT", "NETWORK", "IP", "KEY", "DETAIL"}, rows); err != nil {
				return err
			}
		}
		for _, n := range rep.Notes {
			fmt.Fprintf(w, "Note: %s\n", n)
		}
	}
	if len(rep.Problems) > 0 {
		return negativef("check found %d inconsistenc%s", len(rep.Problems), map[bool]string{true: "y", false: "ies"}[len(rep.Problems) == 1])
	}
	return nil
}

func sortProblems(ps []Problem) {
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if a.Network != b.Network {
			return a.Network < b.Network
		}
		ai, _ := netip.ParseAddr(a.IP)
		bi, _ := netip.ParseAddr(b.IP)
		if ai != bi {
			return ai.Less(bi)
		}
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.Key < b.Key
	})
}

// Release frees the allocation of ip through the store's guarded release of
// the attachment that owns it (so every address of that attachment is
// freed, as a CNI DEL would). Without force it refuses while the owner pod
// exists or when that cannot be checked.
func Release(ctx context.Context, w io.Writer, nets []*Network, ip netip.Addr, network string, force bool, now time.Time) error {
	nets, err := pick(nets, network)
	if err != nil {
		return err
	}
	type hit struct {
		n  *Network
		st store.IPState
	}
	var hits []hit
	for _, n := range nets {
		st, err := n.Store.State(ctx, ip)
		if err != nil {
			return &ExitError{Code: 3, Msg: fmt.Sprintf("network %s: %v", n.Cfg.Name, err)}
		}
		if st.Record != nil {
			hits = append(hits, hit{n, st})
		}
	}
	switch len(hits) {
	case 0:
		return negativef("%s is not allocated on %s: nothing to release", ip, describeNets(nets))
	case 1:
	default:
		var names []string
		for _, h := range hits {
			names = append(names, h.n.Cfg.Name)
		}
		return usageErrorf("%s is allocated on several networks (%s): choose one with --network", ip, strings.Join(names, ", "))
	}
	n, rec := hits[0].n, hits[0].st.Record
	// A reservation (kube-ipamctl reserve) has no owner pod to check.
	reservation := isReservation(rec)
	if !force && !reservation {
		if err := ownerGone(ctx, n, rec, now); err != nil {
			return err
		}
	}
	att, err := n.Store.Attachment(ctx, rec.ContainerID, rec.IfName)
	if err != nil {
		return &ExitError{Code: 3, Msg: fmt.Sprintf("network %s: %v", n.Cfg.Name, err)}
	}
	orphan := att == nil
	if orphan {
		// The record lost its attachment: release a stand-in attachment
		// holding just this address. The store's guards still apply (the
		// attachment key must be absent, the record unchanged).
		att = &store.Attachment{ContainerID: rec.ContainerID, IfName: rec.IfName, IPs: []string{ip.String()}}
	} else if !slices.Contains(att.IPs, ip.String()) {
		// The attachment lost track of this address: release it together
		// with the rest of the attachment, under the same guards.
		att.IPs = append(slices.Clone(att.IPs), ip.String())
	}
	freed, ok, err := n.Store.ReleaseAttachment(ctx, att, now, allocator.ReusePolicy(n.Cfg))
	if err != nil {
		return &ExitError{Code: 3, Msg: fmt.Sprintf("network %s: releasing %s: %v", n.Cfg.Name, ip, err)}
	}
	if !ok {
		return negativef("%s on network %s changed while it was being released; nothing was freed (look again with who-has)", ip, n.Cfg.Name)
	}
	if !slices.Contains(freed, ip) {
		return negativef("%s on network %s changed hands before it could be released; its attachment freed %v (look again with who-has)", ip, n.Cfg.Name, freed)
	}
	if reservation {
		fmt.Fprintf(w, "released reservation %s on network %s\n", ip, n.Cfg.Name)
		return nil
	}
	var others []string
	for _, a := range freed {
		if a != ip {
			others = append(others, a.String())
		}
	}
	fmt.Fprintf(w, "released %s on network %s, held by %s", ip, n.Cfg.Name, rec.Owner())
	if len(others) > 0 {
		fmt.Fprintf(w, "; the same attachment also freed %s", strings.Join(others, ", "))
	}
	if orphan {
		fmt.Fprint(w, " (the record had no attachment)")
	}
	fmt.Fprintln(w)
	return nil
}

func describeNets(nets []*Network) string {
	var names []string
	for _, n := range nets {
		names = append(names, n.Cfg.Name)
	}
	if len(names) == 1 {
		return "network " + names[0]
	}
	return "any configured network (" + strings.Join(names, ", ") + ")"
}

// ownerGone returns nil when the GC rules find the record's allocation
// leaked (its pod deleted, or re-created with another UID, and no
// StatefulSet wanting its ordinal), else a refusal that --force overrides.
func ownerGone(ctx context.Context, n *Network, rec *store.Record, now time.Time) error {
	if rec.PodName == "" {
		return negativef("refusing to release %s: its record names no pod, so it cannot be checked (use --force)", rec.IP)
	}
	if n.Kube == nil {
		return negativef("refusing to release %s: cannot check whether pod %s/%s still exists: %s (use --force)", rec.IP, rec.PodNamespace, rec.PodName, n.KubeNote)
	}
	r, cn := gcRules(n, now)
	// The allocation as its record describes it: its pod, and the record
	// itself (a StatefulSet ordinal's address names its StatefulSet).
	att := &store.Attachment{ContainerID: rec.ContainerID, IfName: rec.IfName, IPs: []string{rec.IP},
		PodNamespace: rec.PodNamespace, PodName: rec.PodName, PodUID: rec.PodUID, Node: rec.Node}
	d := r.DecideAttachment(ctx, cn, att, []*store.Record{rec})
	switch d.Verdict {
	case controller.VerdictLeaked:
		return nil
	case controller.VerdictAlive:
		node := rec.Node
		if d.Pod != nil && d.Pod.Node != "" {
			node = d.Pod.Node
		}
		return negativef("refusing to release %s: pod %s/%s still exists (node %s); delete the pod to free its addresses, or use --force", rec.IP, rec.PodNamespace, rec.PodName, node)
	case controller.VerdictWanted:
		return negativef("refusing to release %s: %s, so its re-created pod takes the address over; scale the StatefulSet below the ordinal or delete it and the controller frees the address, or use --force", rec.IP, d.Reason)
	}
	return negativef("refusing to release %s: cannot check whether pod %s/%s still exists: %s (use --force)", rec.IP, rec.PodNamespace, rec.PodName, d.Reason)
}

// leakedProblems are check's rows for a candidate of the GC rules: one per
// address the attachment still holds (the attachment itself when it holds
// none), one per address of a sticky record.
func leakedProblems(n *Network, s *snapshot, d *controller.Decision) []problem {
	var ps []problem
	if d.Kind == controller.KindSticky {
		e := d.Sticky
		for _, ip := range e.IPs {
			ps = append(ps, problem{Kind: ProblemLeaked, Network: n.Cfg.Name, IP: ip, Key: e.Key,
				Detail: fmt.Sprintf("sticky address of StatefulSet %s/%s ordinal %d, interface %s: %s", e.Namespace, e.StatefulSet, e.Ordinal, e.IfName, d.Reason)})
		}
		return ps
	}
	att := d.Attachment
	for _, h := range d.Held {
		ps = append(ps, problem{Kind: ProblemLeaked, Network: n.Cfg.Name, IP: h.IP.String(), Key: s.byIP[h.IP].Key,
			Detail: fmt.Sprintf("%s (record of container %s interface %s, node %s)", d.Reason, store.ShortID(att.ContainerID), att.IfName, h.Rec.Node)})
	}
	if len(d.Held) == 0 {
		ps = append(ps, problem{Kind: ProblemLeaked, Network: n.Cfg.Name, Key: att.Key,
			Detail: fmt.Sprintf("%s (attachment of container %s interface %s, node %s, holding no address)", d.Reason, store.ShortID(att.ContainerID), att.IfName, att.Node)})
	}
	return ps
}
