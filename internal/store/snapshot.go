package store

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Snapshot reads the network's whole key space in one range read (one
// revision). Keys that do not parse become Problems.
func (s *Store) Snapshot(ctx context.Context) (*Snapshot, error) {
	resp, err := s.get(ctx, s.base, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	snap := &Snapshot{Tombs: map[netip.Addr]*Tombstone{}, Notes: map[netip.Addr]string{}}
	bad := func(k, ip, format string, a ...any) {
		snap.Problems = append(snap.Problems, Problem{Kind: ProblemCorrupt, IP: ip, Key: k, Detail: fmt.Sprintf(format, a...)})
	}
	canonKey := map[netip.Addr]string{}
	keysOf := map[netip.Addr][]string{}
	var podIndex [][4]string // key, pod UID, ifname, container ID
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		parts := strings.Split(strings.TrimPrefix(k, s.base), "/")
		switch parts[0] {
		case "ip":
			if len(parts) < 3 || len(parts) > 4 || (len(parts) == 4 && parts[3] != "r") {
				bad(k, "", "unexpected key under ip/")
				continue
			}
			a, canon, ok := parseAddrKey(parts[1], parts[2])
			if !ok {
				bad(k, "", "address part %q is not a hex address of family IPv%s", parts[2], parts[1])
				continue
			}
			if len(parts) == 4 {
				if !canon {
					bad(k, a.String(), "tombstone key is not in the store's canonical form")
					continue
				}
				var t Tombstone
				if err := json.Unmarshal(kv.Value, &t); err != nil {
					bad(k, a.String(), "tombstone is not valid JSON: %v", err)
					continue
				}
				snap.Tombs[a] = &t
				continue
			}
			var r Record
			if err := json.Unmarshal(kv.Value, &r); err != nil {
				bad(k, a.String(), "allocation record is not valid JSON: %v", err)
				continue
			}
			if ra, err := netip.ParseAddr(r.IP); err != nil || ra.Unmap() != a {
				bad(k, a.String(), "record says ip %q but its key is for %s", r.IP, a)
				continue
			}
			keysOf[a] = append(keysOf[a], k)
			if !canon {
				continue // the plugin never reads it: reported below
			}
			canonKey[a] = k
			snap.Records = append(snap.Records, RecordEntry{IP: a, Record: &r, Version: ver(kv.ModRevision), Key: k})
		case "rel":
			if len(parts) != 5 {
				bad(k, "", "unexpected key under rel/")
				continue
			}
			set, err1 := strconv.Atoi(parts[1])
			nanos, err2 := strconv.ParseUint(parts[2], 16, 64)
			a, _, ok := parseAddrKey(parts[3], parts[4])
			if err1 != nil || err2 != nil || !ok {
				bad(k, "", "release-log key does not parse")
				continue
			}
			snap.Released = append(snap.Released, ReleasedRef{Key: k, Set: set, At: time.Unix(0, int64(nanos)), IP: a})
		case "att":
			if len(parts) != 3 {
				bad(k, "", "unexpected key under att/")
				continue
			}
			var a Attachment
			if err := json.Unmarshal(kv.Value, &a); err != nil {
				bad(k, "", "attachment is not valid JSON: %v", err)
				continue
			}
			if a.ContainerID != parts[1] || a.IfName != parts[2] {
				bad(k, "", "attachment names container %s interface %s but its key says %s/%s", ShortID(a.ContainerID), a.IfName, ShortID(parts[1]), parts[2])
				continue
			}
			a.Rev, a.Key = ver(kv.ModRevision), k
			snap.Attachments = append(snap.Attachments, &a)
		case "sticky":
			var e StickyEntry
			if len(parts) != 5 {
				bad(k, "", "unexpected key under sticky/")
			} else if err := json.Unmarshal(kv.Value, &e.Sticky); err != nil {
				bad(k, "", "sticky record is not valid JSON: %v", err)
			} else {
				e.Key, e.Rev = k, ver(kv.ModRevision)
				snap.Stickies = append(snap.Stickies, e)
			}
		case "cursor":
			if _, err := netip.ParseAddr(string(kv.Value)); len(parts) != 2 || err != nil {
				bad(k, "", "cursor hint %q is not an address", kv.Value)
			}
		case "pod":
			if len(parts) != 4 || parts[1] == "" || parts[2] == "" || parts[3] == "" {
				bad(k, "", "unexpected key under pod/")
				continue
			}
			podIndex = append(podIndex, [4]string{k, parts[1], parts[2], parts[3]})
		case "note":
			b, err := hex.DecodeString(parts[len(parts)-1])
			a, ok := netip.AddrFromSlice(b)
			if len(parts) != 2 || err != nil || !ok {
				bad(k, "", "unknown key")
				continue
			}
			snap.Notes[a.Unmap()] = string(kv.Value)
		default:
			bad(k, "", "unknown key")
		}
	}
	if len(podIndex) > 0 {
		atts := map[string]*Attachment{}
		for _, a := range snap.Attachments {
			atts[a.ContainerID+"/"+a.IfName] = a
		}
		for _, e := range podIndex {
			if a := atts[e[3]+"/"+e[2]]; a == nil || a.PodUID != e[1] {
				bad(e[0], "", "pod index entry without its attachment %satt/%s/%s of pod UID %s (the allocator ignores it; delete the key)", s.base, e[3], e[2], e[1])
			}
		}
	}
	for a, keys := range keysOf {
		canon := canonKey[a]
		var odd []string
		for _, k := range keys {
			if k != canon {
				odd = append(odd, k)
			}
		}
		sort.Strings(odd)
		for _, k := range odd {
			if canon != "" {
				snap.Problems = append(snap.Problems, Problem{Kind: ProblemDuplicate, IP: a.String(), Key: k,
					Detail: "second allocation record for the address under a non-canonical key (the plugin reads " + canon + ")"})
			} else {
				bad(k, a.String(), "allocation record under a non-canonical key: the plugin never sees it, so the address looks free")
			}
		}
	}
	sort.Slice(snap.Records, func(i, j int) bool { return snap.Records[i].IP.Less(snap.Records[j].IP) })
	return snap, nil
}

// parseAddrKey reads <4|6>/<hex>. canonical reports the exact form the store
// writes (lower-case, fixed width, matching family); other spellings of an
// address (upper-case hex, IPv4-mapped IPv6) still decode, so that a
// duplicate can be told from garbage.
func parseAddrKey(fam, h string) (a netip.Addr, canonical, ok bool) {
	b, err := hex.DecodeString(h)
	if err != nil || (fam != "4" && fam != "6") {
		return netip.Addr{}, false, false
	}
	a, ok = netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}, false, false
	}
	canonical = hex.EncodeToString(b) == h && (fam == "4") == a.Is4()
	return a.Unmap(), canonical, true
}

// Watch calls fn for every change of an allocation record (ip/ keys, not
// tombstones) until ctx ends. After an error or a compaction it resumes from
// the current revision (events in between are missed, as metrics allow).
func (s *Store) Watch(ctx context.Context, fn func(RecordEvent)) {
	var from int64
	for ctx.Err() == nil {
		if from == 0 {
			resp, err := s.cli.Get(ctx, s.cursorKey(0), clientv3.WithCountOnly())
			if err != nil {
				sleep(ctx, time.Second)
				continue
			}
			from = resp.Header.Revision + 1
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range s.cli.Watch(wctx, s.base+"ip/", clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithPrevKV()) {
			if wr.CompactRevision != 0 {
				from = 0 // missed events: restart from now
				break
			}
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				from = ev.Kv.ModRevision + 1
				if e, ok := s.recordEvent(ev); ok {
					fn(e)
				}
			}
		}
		cancel()
		sleep(ctx, 100*time.Millisecond)
	}
}

func (s *Store) recordEvent(ev *clientv3.Event) (RecordEvent, bool) {
	k := string(ev.Kv.Key)
	if strings.HasSuffix(k, "/r") {
		return RecordEvent{}, false
	}
	if _, ok := s.parseIPKey(k); !ok {
		return RecordEvent{}, false
	}
	decode := func(b []byte) *Record {
		var r Record
		if len(b) == 0 || json.Unmarshal(b, &r) != nil {
			return nil
		}
		return &r
	}
	var prev *Record
	if ev.PrevKv != nil {
		prev = decode(ev.PrevKv.Value)
	}
	switch {
	case ev.Type == clientv3.EventTypeDelete:
		return RecordEvent{Type: EventDeleted, Record: prev}, true
	case ev.IsCreate():
		r := decode(ev.Kv.Value)
		return RecordEvent{Type: EventCreated, Record: r}, r != nil
	default:
		r := decode(ev.Kv.Value)
		return RecordEvent{Type: EventUpdated, Record: r, Prev: prev}, r != nil
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
