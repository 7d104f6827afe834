package kubestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"kubeipam/internal/kubeapi"
	"kubeipam/internal/store"
)

// Snapshot lists the IPAllocations and IPStickies (consistent reads; the
// IPStickies at the IPAllocations' resourceVersion when the API server
// still has it, so both are one revision) and builds the network's view.
// It lists every IPAllocation, not only those labelled with the network,
// so that an object whose labels were edited away is still reported.
// Objects that do not parse or contradict themselves become Problems.
func (s *Store) Snapshot(ctx context.Context) (*store.Snapshot, error) {
	objs, rv, err := list[ipAllocation](ctx, s, allocations, listOpts{limit: pageSize})
	if err != nil {
		return nil, err
	}
	sts, _, err := list[ipSticky](ctx, s, stickies, listOpts{limit: pageSize, exactRV: rv})
	var ae *APIError
	if err != nil && !(errors.As(err, &ae) && (ae.Code == http.StatusForbidden || ae.Code == http.StatusUnauthorized)) {
		// The revision is gone (compacted) or cannot be served: a fresh
		// read instead; every release re-checks what it frees anyway.
		sts, _, err = list[ipSticky](ctx, s, stickies, listOpts{limit: pageSize})
	}
	if err != nil {
		return nil, err
	}
	snap := &store.Snapshot{Tombs: map[netip.Addr]*store.Tombstone{}, Notes: map[netip.Addr]string{}}
	bad := func(kind, ip, key, format string, a ...any) {
		snap.Problems = append(snap.Problems, store.Problem{Kind: kind, IP: ip, Key: key, Detail: fmt.Sprintf(format, a...)})
	}
	mine := func(m *objectMeta, network string) bool {
		return network == s.network || m.Labels[LabelNetwork] == s.netID || strings.HasSuffix(m.Name, "."+s.netID)
	}
	var held []*parsed
	var odd []*ipAllocation // non-canonical names of an address
	for i := range objs {
		o := &objs[i]
		if !mine(&o.Metadata, o.Spec.Network) {
			continue
		}
		key := allocations + "/" + o.Metadata.Name
		p, labelProblem, err := s.parse(o)
		if err != nil {
			if _, canon, ok := s.addrOfName(o.Metadata.Name); ok && !canon && o.Spec.Network == s.network {
				odd = append(odd, o)
				continue
			}
			ip := ""
			if a, _, ok := s.addrOfName(o.Metadata.Name); ok {
				ip = a.String()
			}
			bad(store.ProblemCorrupt, ip, key, "IPAllocation %s: %v", o.Metadata.Name, err)
			continue
		}
		if labelProblem != "" {
			bad(store.ProblemCorrupt, p.addr.String(), key, "IPAllocation %s: %s", o.Metadata.Name, labelProblem)
		}
		if p.rec != nil {
			held = append(held, p)
			snap.Records = append(snap.Records, store.RecordEntry{IP: p.addr, Record: p.rec, Version: p.rv, Key: key})
			if n := p.held().Note; n != "" {
				snap.Notes[p.addr] = n
			}
			continue
		}
		snap.Tombs[p.addr] = p.tomb
		if p.tomb.Log != "" {
			snap.Released = append(snap.Released, store.ReleasedRef{Key: p.tomb.Log, Set: o.Spec.RangeSet, IP: p.addr, At: p.tomb.Released})
		}
	}
	slices.SortFunc(snap.Records, func(x, y store.RecordEntry) int { return x.IP.Compare(y.IP) })
	for _, o := range odd {
		a, _, _ := s.addrOfName(o.Metadata.Name)
		key := allocations + "/" + o.Metadata.Name
		if snap.Record(a) != nil || snap.Tombs[a] != nil {
			bad(store.ProblemDuplicate, a.String(), key, "second IPAllocation for the address under a non-canonical name (the plugin reads %s)", s.allocName(a))
		} else {
			bad(store.ProblemCorrupt, a.String(), key, "IPAllocation under a non-canonical name: the plugin never reads it, so the address looks free")
		}
	}
	slices.SortFunc(snap.Released, func(x, y store.ReleasedRef) int {
		if c := x.At.Compare(y.At); c != 0 {
			return c
		}
		return x.IP.Compare(y.IP)
	})
	snap.Attachments = groupAttachments(held)
	for i := range sts {
		o := &sts[i]
		if !mine(&o.Metadata, o.Spec.Network) {
			continue
		}
		e, err := s.parseSticky(o)
		if err != nil {
			bad(store.ProblemCorrupt, "", stickies+"/"+o.Metadata.Name, "IPSticky %s: %v", o.Metadata.Name, err)
			continue
		}
		snap.Stickies = append(snap.Stickies, *e)
	}
	return snap, nil
}

// watchEvent is one event of a watch stream.
type watchEvent struct {
	Type   string          `json:"type"`
	Object json.RawMessage `json:"object"`
}

// Watch calls fn for every change of a held address until ctx ends:
// Created when an address becomes held (its object created held, or
// released then claimed), Updated when a held address is rewritten
// (takeover, or the same holder), Deleted when it is released or its
// object deleted. After an error or 410 Gone it lists again and resumes
// from there (changes in between are missed, as in the etcd store).
func (s *Store) Watch(ctx context.Context, fn func(store.RecordEvent)) {
	sel := selector(LabelNetwork, s.netID)
	var known map[string]*store.Record // held addresses, by object name
	rv := ""
	for ctx.Err() == nil {
		if rv == "" {
			objs, lrv, err := list[ipAllocation](ctx, s, allocations, listOpts{selector: sel, limit: pageSize})
			if err != nil {
				sleep(ctx, time.Second)
				continue
			}
			known = map[string]*store.Record{}
			for i := range objs {
				if p, _, err := s.parse(&objs[i]); err == nil && p.rec != nil {
					known[objs[i].Metadata.Name] = p.rec
				}
			}
			rv = lrv
		}
		rv = s.watchOnce(ctx, sel, rv, known, fn)
		sleep(ctx, 100*time.Millisecond)
	}
}

// watchOnce follows one watch stream from rv and returns the version to
// resume from ("" to list again).
func (s *Store) watchOnce(ctx context.Context, sel, rv string, known map[string]*store.Record, fn func(store.RecordEvent)) string {
	q := url.Values{"watch": {"true"}, "labelSelector": {sel}, "resourceVersion": {rv},
		"allowWatchBookmarks": {"true"}, "timeoutSeconds": {strconv.Itoa(240 + int(time.Now().UnixNano()%120))}}
	resp, err := s.c.Watch(ctx, kubeapi.Request{Path: path(allocations, ""), Query: q})
	if err != nil {
		var st *kubeapi.StatusError
		if errors.As(err, &st) && st.Code == http.StatusGone {
			return ""
		}
		sleep(ctx, time.Second)
		return rv
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev watchEvent
		if err := dec.Decode(&ev); err != nil {
			return rv
		}
		switch ev.Type {
		case "ERROR":
			var st struct {
				Code int `json:"code"`
			}
			_ = json.Unmarshal(ev.Object, &st)
			if st.Code == http.StatusGone {
				return ""
			}
			return rv
		case "BOOKMARK":
			var b struct {
				Metadata objectMeta `json:"metadata"`
			}
			if json.Unmarshal(ev.Object, &b) == nil && b.Metadata.ResourceVersion != "" {
				rv = b.Metadata.ResourceVersion
			}
			continue
		case "ADDED", "MODIFIED", "DELETED":
		default:
			continue
		}
		var o ipAllocation
		if json.Unmarshal(ev.Object, &o) != nil {
			continue
		}
		if o.Metadata.ResourceVersion != "" {
			rv = o.Metadata.ResourceVersion
		}
		name := o.Metadata.Name
		var cur *store.Record
		p, _, err := s.parse(&o)
		if err == nil && p.rec != nil {
			cur = p.rec
		}
		prev := known[name]
		if ev.Type == "DELETED" {
			if prev == nil {
				prev = cur
			}
			cur = nil
		}
		switch {
		case cur != nil && prev == nil:
			fn(store.RecordEvent{Type: store.EventCreated, Record: cur})
		case cur != nil:
			fn(store.RecordEvent{Type: store.EventUpdated, Record: cur, Prev: prev})
		case prev != nil:
			fn(store.RecordEvent{Type: store.EventDeleted, Record: prev})
		}
		if cur != nil {
			known[name] = cur
		} else {
			delete(known, name)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
