package store

import (
	"context"
	"encoding/json"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// StickyEntry is a sticky record as read from etcd, with its key and revision.
type StickyEntry struct {
	Key string
	Rev Version
	Sticky
}

// Stickies lists every sticky record of the network.
func (s *Store) Stickies(ctx context.Context) ([]StickyEntry, error) {
	resp, err := s.get(ctx, s.base+"sticky/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	var out []StickyEntry
	for _, kv := range resp.Kvs {
		var e StickyEntry
		if json.Unmarshal(kv.Value, &e.Sticky) != nil {
			continue
		}
		e.Key, e.Rev = string(kv.Key), ver(kv.ModRevision)
		out = append(out, e)
	}
	return out, nil
}

// ReleaseSticky forgets a StatefulSet ordinal's sticky addresses (GC of a
// deleted, re-created or scaled-down StatefulSet). It is one transaction
// guarded by the sticky key's revision as the caller read it and by every
// address's record and tombstone as read here: if an address is still held
// by the ordinal (an ADD in flight or a scale-up) nothing is done and ok is
// false. Addresses with no record lose their sticky tombstone and go to the
// release log, so they become reusable after the cooldown.
func (s *Store) ReleaseSticky(ctx context.Context, e StickyEntry, now time.Time, policy ReusePolicy) (freed []netip.Addr, ok bool, err error) {
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(e.Key), "=", rev(e.Rev))}
	ops := []clientv3.Op{clientv3.OpDelete(e.Key)}
	for _, ipStr := range e.IPs {
		a, perr := netip.ParseAddr(ipStr)
		if perr != nil {
			continue
		}
		st, err := s.State(ctx, a)
		if err != nil {
			return nil, false, err
		}
		k, tk := s.ipKey(a), s.tombKey(a)
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rev(st.RecRev)),
			clientv3.Compare(clientv3.ModRevision(tk), "=", rev(st.TombRev)))
		if st.Record != nil {
			if st.Record.StatefulSetUID == e.StatefulSetUID && st.Record.Ordinal == e.Ordinal {
				return nil, false, nil // still held by the ordinal
			}
			continue // someone else's now: leave it alone
		}
		if st.Tomb == nil || st.Tomb.Log != "" {
			continue // nothing reserved (or already reusable)
		}
		set, log, tomb := policy(a, KindDynamic)
		if !tomb {
			ops = append(ops, clientv3.OpDelete(tk))
		} else if log {
			t := Tombstone{Released: now, Kind: KindDynamic, Log: s.relKey(set, now, a)}
			b, _ := json.Marshal(t)
			ops = append(ops, clientv3.OpPut(t.Log, ""), clientv3.OpPut(tk, string(b)))
		}
		freed = append(freed, a)
	}
	resp, err := s.txn(ctx, cmps, ops)
	if err != nil || !resp.Succeeded {
		return nil, false, err
	}
	return freed, true, nil
}
