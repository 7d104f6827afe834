package store

import (
	"context"
	"encoding/json"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Importer is a Backend that takes state copied from another store
// (kube-ipamctl migrate). Attachments and their records are copied with
// Commit; these write what Commit cannot: the tombstones of released
// addresses (so cooldowns and released StatefulSet addresses carry over) and
// sticky records without a holder. Both only create: ok=false means the
// address (or the sticky record) already has state here, which is left
// alone.
type Importer interface {
	ImportTombstone(ctx context.Context, a netip.Addr, t Tombstone, set int) (ok bool, err error)
	ImportSticky(ctx context.Context, st Sticky) (ok bool, err error)
}

var _ Importer = (*Store)(nil)

// ImportTombstone writes a's tombstone if a has neither record nor
// tombstone; a tombstone in the release log (t.Log set) gets a log entry of
// this store at the same release time.
func (s *Store) ImportTombstone(ctx context.Context, a netip.Addr, t Tombstone, set int) (bool, error) {
	k, tk := s.ipKey(a), s.tombKey(a)
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k), "=", 0), clientv3.Compare(clientv3.CreateRevision(tk), "=", 0)}
	var ops []clientv3.Op
	if t.Log != "" {
		t.Log = s.relKey(set, t.Released, a)
		ops = append(ops, clientv3.OpPut(t.Log, ""))
	}
	b, _ := json.Marshal(t)
	ops = append(ops, clientv3.OpPut(tk, string(b)))
	resp, err := s.txn(ctx, cmps, ops)
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

// ImportSticky creates a StatefulSet ordinal's sticky record if it does not
// exist.
func (s *Store) ImportSticky(ctx context.Context, st Sticky) (bool, error) {
	k := s.stickyKey(st.Namespace, st.StatefulSetUID, st.Ordinal, st.IfName)
	b, _ := json.Marshal(st)
	resp, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k), "=", 0)}, []clientv3.Op{clientv3.OpPut(k, string(b))})
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}
