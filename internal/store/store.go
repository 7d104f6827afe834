// Package store keeps kube-ipam's allocations in etcd.
//
// Layout under <prefix>/v1/networks/<network>/:
//
//	ip/<4|6>/<hex>        allocation record of a claimed address (JSON Record)
//	ip/<4|6>/<hex>/r      tombstone of a released address (JSON Tombstone)
//	rel/<set>/<nanos>/<4|6>/<hex>   release log, oldest first (dynamic addresses only)
//	att/<containerID>/<ifname>      the addresses one attachment holds (JSON Attachment)
//	cursor/<set>          hint: the lowest never-used address seen last time
//	pod/<podUID>/<ifname>/<containerID>   index: the attachments of one pod
//	                      (written with the attachment, deleted with it)
//	sticky/<ns>/<statefulSetUID>/<ordinal>/<ifname>   a StatefulSet
//	                      ordinal's remembered addresses (JSON Sticky)
//	note/<containerID>    note of a kube-ipamctl reservation
//
// Addresses are fixed-width hex so that key order is address order and a
// window of claimed addresses is one range read. Every claim is one
// transaction guarded by CreateRevision == 0 (or the revision it replaces);
// every release is guarded by the revisions it read. There is no lock.
package store

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Kinds of allocation.
const (
	KindDynamic = "dynamic"
	KindFixed   = "fixed"
	// KindSticky is a dynamic address remembered for a StatefulSet ordinal.
	KindSticky = "sticky"
)

// Record is the owner record written with each claimed address.
type Record struct {
	Network      string `json:"network"`
	IP           string `json:"ip"`
	Kind         string `json:"kind"`
	Set          int    `json:"rangeSet"`
	IfName       string `json:"ifname"`
	ContainerID  string `json:"containerID"`
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	PodUID       string `json:"podUID,omitempty"`
	// StatefulSet identity: for StatefulSet pods the owner is (namespace,
	// StatefulSet UID, ordinal), not the pod name, so that a new StatefulSet
	// reusing the name does not inherit a stale address.
	StatefulSet    string `json:"statefulSet,omitempty"`
	StatefulSetUID string `json:"statefulSetUID,omitempty"`
	Ordinal        int    `json:"ordinal,omitempty"`
	Node           string `json:"node,omitempty"`
	// Cluster is the identity of the cluster the holder runs in
	// (ipam.cluster); GC leaves other clusters' records alone.
	Cluster string    `json:"cluster,omitempty"`
	Created time.Time `json:"created"`
	// AddMillis is how long the plugin's ADD had run when it committed this
	// claim, and LostRaces how many claim transactions it lost first; the
	// controller turns them into metrics (no extra write per ADD).
	AddMillis int64 `json:"addMillis,omitempty"`
	LostRaces int   `json:"lostRaces,omitempty"`
}

// Owner says who holds the record, for error messages.
func (r *Record) Owner() string {
	pod := "no pod"
	if r.PodName != "" {
		pod = "pod " + r.PodNamespace + "/" + r.PodName
	}
	return fmt.Sprintf("%s (container %s, interface %s, node %s)", pod, ShortID(r.ContainerID), r.IfName, r.Node)
}

// SamePod reports whether two records belong to the same pod identity and
// interface: same StatefulSet UID and ordinal for StatefulSet pods, same
// namespace/name otherwise.
func (r *Record) SamePod(o *Record) bool {
	if r.IfName != o.IfName || r.PodNamespace != o.PodNamespace {
		return false
	}
	if r.StatefulSetUID != "" || o.StatefulSetUID != "" {
		return r.StatefulSetUID == o.StatefulSetUID && r.Ordinal == o.Ordinal
	}
	return r.PodName != "" && r.PodName == o.PodName
}

// ShortID abbreviates a container ID for messages, as runtimes do.
func ShortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Tombstone marks an address that was used and released.
type Tombstone struct {
	Released time.Time `json:"released"`
	Kind     string    `json:"kind"`
	// Log is the release-log key, empty when the address must never be
	// reused dynamically (a fixed address inside the dynamic range).
	Log string `json:"log,omitempty"`
}

// Attachment lists what one (container, interface) holds on the network.
type Attachment struct {
	ContainerID  string    `json:"containerID"`
	IfName       string    `json:"ifname"`
	IPs          []string  `json:"ips"`
	PodNamespace string    `json:"podNamespace,omitempty"`
	PodName      string    `json:"podName,omitempty"`
	PodUID       string    `json:"podUID,omitempty"`
	Node         string    `json:"node,omitempty"`
	Cluster      string    `json:"cluster,omitempty"`
	Created      time.Time `json:"created"`
	Rev          Version   `json:"-"`
	// Key says where the attachment is stored (an etcd key, object names),
	// for messages; set by the backend that read it.
	Key string `json:"-"`
	// Partial: some addresses of the claim that made this attachment are
	// missing (a claim cut short between its writes). Only a backend whose
	// claims are not one transaction (the Kubernetes API store) reports it;
	// the allocator releases a partial attachment before claiming again.
	Partial bool `json:"-"`
}

// Sticky remembers the addresses a StatefulSet ordinal was first given.
type Sticky struct {
	Namespace      string    `json:"namespace"`
	StatefulSet    string    `json:"statefulSet"`
	StatefulSetUID string    `json:"statefulSetUID"`
	Ordinal        int       `json:"ordinal"`
	IfName         string    `json:"ifname"`
	IPs            []string  `json:"ips"`
	Cluster        string    `json:"cluster,omitempty"`
	Created        time.Time `json:"created"`
}

// IPState is what the store knows about one address.
type IPState struct {
	Record  *Record
	RecRev  Version
	Tomb    *Tombstone
	TombRev Version
}

// ReleasedRef is one release-log entry.
type ReleasedRef struct {
	// Key identifies the entry (a tombstone's Log names it).
	Key string
	Set int
	IP  netip.Addr
	At  time.Time
}

// Store is one network's view of etcd.
type Store struct {
	cli  *clientv3.Client
	base string
	wd   *Watchdog
	// beforeTxn, in tests, runs just before a transaction is sent.
	beforeTxn func()
}

// New returns the store of network under prefix.
func New(cli *clientv3.Client, prefix, network string) *Store {
	return &Store{cli: cli, base: strings.TrimRight(prefix, "/") + "/v1/networks/" + network + "/"}
}

func addrHex(a netip.Addr) string { return hex.EncodeToString(a.AsSlice()) }

func fam(a netip.Addr) string {
	if a.Is4() {
		return "4"
	}
	return "6"
}

func (s *Store) ipKey(a netip.Addr) string   { return s.base + "ip/" + fam(a) + "/" + addrHex(a) }
func (s *Store) tombKey(a netip.Addr) string { return s.ipKey(a) + "/r" }
func (s *Store) attKey(cid, ifname string) string {
	return s.base + "att/" + cid + "/" + ifname
}
func (s *Store) cursorKey(set int) string { return s.base + "cursor/" + strconv.Itoa(set) }
func (s *Store) stickyKey(ns, uid string, ordinal int, ifname string) string {
	return fmt.Sprintf("%ssticky/%s/%s/%d/%s", s.base, ns, uid, ordinal, ifname)
}
func (s *Store) podPrefix(uid, ifname string) string {
	return s.base + "pod/" + uid + "/" + ifname + "/"
}
func (s *Store) noteKey(a netip.Addr) string { return s.base + "note/" + addrHex(a) }
func (s *Store) relPrefix(set int) string    { return s.base + "rel/" + strconv.Itoa(set) + "/" }

func (s *Store) relKey(set int, at time.Time, a netip.Addr) string {
	return fmt.Sprintf("%s%016x/%s/%s", s.relPrefix(set), at.UnixNano(), fam(a), addrHex(a))
}

// parseIPKey reads the address out of ip/<f>/<hex>[/r].
func (s *Store) parseIPKey(k string) (netip.Addr, bool) {
	rest, ok := strings.CutPrefix(k, s.base+"ip/")
	if !ok || len(rest) < 3 {
		return netip.Addr{}, false
	}
	rest = strings.TrimSuffix(rest[2:], "/r")
	b, err := hex.DecodeString(rest)
	if err != nil {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(b)
	return a, ok
}

// Attachment returns what (cid, ifname) holds, or nil.
func (s *Store) Attachment(ctx context.Context, cid, ifname string) (*Attachment, error) {
	resp, err := s.get(ctx, s.attKey(cid, ifname))
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var a Attachment
	if err := json.Unmarshal(resp.Kvs[0].Value, &a); err != nil {
		return nil, fmt.Errorf("corrupt attachment record %s: %w", resp.Kvs[0].Key, err)
	}
	a.Rev, a.Key = ver(resp.Kvs[0].ModRevision), string(resp.Kvs[0].Key)
	return &a, nil
}

// Sticky returns the remembered addresses of a StatefulSet ordinal, or nil.
func (s *Store) Sticky(ctx context.Context, ns, uid string, ordinal int, ifname string) (*Sticky, error) {
	resp, err := s.get(ctx, s.stickyKey(ns, uid, ordinal, ifname))
	if err != nil || len(resp.Kvs) == 0 {
		return nil, err
	}
	var st Sticky
	if err := json.Unmarshal(resp.Kvs[0].Value, &st); err != nil {
		return nil, fmt.Errorf("corrupt sticky record %s: %w", resp.Kvs[0].Key, err)
	}
	return &st, nil
}

// Attachments lists every attachment on the network.
func (s *Store) Attachments(ctx context.Context) ([]*Attachment, error) {
	resp, err := s.get(ctx, s.base+"att/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := make([]*Attachment, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var a Attachment
		if err := json.Unmarshal(kv.Value, &a); err != nil {
			return nil, fmt.Errorf("corrupt attachment record %s: %w", kv.Key, err)
		}
		a.Rev, a.Key = ver(kv.ModRevision), string(kv.Key)
		out = append(out, &a)
	}
	return out, nil
}

// State reads an address's record and tombstone in one range read.
func (s *Store) State(ctx context.Context, a netip.Addr) (IPState, error) {
	var st IPState
	k := s.ipKey(a)
	resp, err := s.get(ctx, k, clientv3.WithRange(k+"/s"))
	if err != nil {
		return st, err
	}
	for _, kv := range resp.Kvs {
		switch string(kv.Key) {
		case k:
			st.Record, st.RecRev = new(Record), ver(kv.ModRevision)
			if err := json.Unmarshal(kv.Value, st.Record); err != nil {
				return st, fmt.Errorf("corrupt allocation record %s: %w", k, err)
			}
		case k + "/r":
			st.Tomb, st.TombRev = new(Tombstone), ver(kv.ModRevision)
			if err := json.Unmarshal(kv.Value, st.Tomb); err != nil {
				return st, fmt.Errorf("corrupt tombstone %s: %w", kv.Key, err)
			}
		}
	}
	return st, nil
}

// Used returns, ascending, up to limit addresses in [from, to] that are
// claimed or tombstoned (keys only: one read, small whatever the pool).
// full reports that the limit was hit, so addresses above the last one
// returned were not looked at.
func (s *Store) Used(ctx context.Context, from, to netip.Addr, limit int) (used []netip.Addr, full bool, err error) {
	end := s.ipKey(to) + "0" // after ip/<to> and ip/<to>/r
	resp, err := s.get(ctx, s.ipKey(from), clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return nil, false, err
	}
	for _, kv := range resp.Kvs {
		a, ok := s.parseIPKey(string(kv.Key))
		if ok && (len(used) == 0 || used[len(used)-1] != a) {
			used = append(used, a)
		}
	}
	return used, resp.More, nil
}

// Cursor returns the never-used hint of a range set (invalid if none).
func (s *Store) Cursor(ctx context.Context, set int) (netip.Addr, error) {
	resp, err := s.get(ctx, s.cursorKey(set))
	if err != nil || len(resp.Kvs) == 0 {
		return netip.Addr{}, err
	}
	a, _ := netip.ParseAddr(string(resp.Kvs[0].Value))
	return a, nil
}

// OldestReleased returns up to limit release-log entries, oldest first.
func (s *Store) OldestReleased(ctx context.Context, set, limit int) ([]ReleasedRef, error) {
	p := s.relPrefix(set)
	resp, err := s.get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return nil, err
	}
	var out []ReleasedRef
	for _, kv := range resp.Kvs {
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), p), "/")
		if len(parts) != 3 {
			continue
		}
		n, err1 := strconv.ParseUint(parts[0], 16, 64)
		b, err2 := hex.DecodeString(parts[2])
		a, ok := netip.AddrFromSlice(b)
		if err1 != nil || err2 != nil || !ok {
			continue
		}
		out = append(out, ReleasedRef{Key: string(kv.Key), Set: set, IP: a, At: time.Unix(0, int64(n))})
	}
	return out, nil
}

// DropReleased removes a release-log entry that no longer matches its
// address's tombstone (the address was claimed again or released later).
func (s *Store) DropReleased(ctx context.Context, ref ReleasedRef) error {
	return s.del(ctx, ref.Key)
}

// Note returns the note kept with the attachment holding a ("" if none).
func (s *Store) Note(ctx context.Context, a netip.Addr) (string, error) {
	resp, err := s.get(ctx, s.noteKey(a))
	if err != nil || len(resp.Kvs) == 0 {
		return "", err
	}
	return string(resp.Kvs[0].Value), nil
}

// Claim modes.
const (
	// ClaimFresh: the address has neither record nor tombstone.
	ClaimFresh = iota
	// ClaimTomb: the address has the tombstone read at TombRev (or none if empty).
	ClaimTomb
	// ClaimTakeover: the address has the record read at RecRev; the same pod
	// identity takes it over from its previous container.
	ClaimTakeover
)

// ClaimItem is one address of a claim with the state it was chosen from.
type ClaimItem struct {
	Record Record
	Mode   int
	State  IPState
}

// Retired is an earlier attachment of the same pod (same pod UID and
// interface, another container: the pod's previous sandbox) that a claim
// replaces. The claim's transaction deletes it; its addresses that the claim
// takes over (ClaimTakeover items) move to the new attachment, the others
// are released as a DEL of that container would release them.
type Retired struct {
	Attachment *Attachment
	// States holds what was read for each address of the attachment.
	States map[netip.Addr]IPState
}

// Claim is everything one ADD writes, committed as one transaction.
type Claim struct {
	Attachment Attachment
	Items      []ClaimItem
	Cursors    map[int]netip.Addr
	// NewSticky, when set, is created with the claim (it must not exist yet).
	NewSticky *Sticky
	// Retire lists the attachments the claim replaces; Now and Policy say how
	// their addresses that are not taken over are released.
	Retire []Retired
	Now    time.Time
	Policy ReusePolicy
	// Note, when set, is kept with each address of the claim (a
	// kube-ipamctl reservation's note) and goes when it is released.
	Note string
}

// Commit writes the claim if every precondition still holds. ok=false means
// another writer won a race; the caller re-reads and tries again. An
// *AmbiguousError means the transaction may or may not have been applied.
func (s *Store) Commit(ctx context.Context, c *Claim) (bool, error) {
	att := c.Attachment
	att.IPs = nil
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	ak := s.attKey(att.ContainerID, att.IfName)
	cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(ak), "=", 0))
	taken := map[netip.Addr]bool{}
	for _, it := range c.Items {
		a, err := netip.ParseAddr(it.Record.IP)
		if err != nil {
			return false, fmt.Errorf("bad address %q in claim", it.Record.IP)
		}
		att.IPs = append(att.IPs, a.String())
		k, tk := s.ipKey(a), s.tombKey(a)
		switch it.Mode {
		case ClaimFresh:
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(tk), "=", 0))
		case ClaimTomb:
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0),
				clientv3.Compare(clientv3.ModRevision(tk), "=", rev(it.State.TombRev)))
			if it.State.Tomb != nil {
				ops = append(ops, clientv3.OpDelete(tk))
				if it.State.Tomb.Log != "" {
					ops = append(ops, clientv3.OpDelete(it.State.Tomb.Log))
				}
			}
		case ClaimTakeover:
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rev(it.State.RecRev)))
			taken[a] = true
		default:
			return false, fmt.Errorf("unknown claim mode %d", it.Mode)
		}
		b, _ := json.Marshal(it.Record)
		ops = append(ops, clientv3.OpPut(k, string(b)))
	}
	b, _ := json.Marshal(att)
	ops = append(ops, clientv3.OpPut(ak, string(b)))
	if att.PodUID != "" {
		ops = append(ops, clientv3.OpPut(s.podPrefix(att.PodUID, att.IfName)+att.ContainerID, ""))
	}
	for set, a := range c.Cursors {
		ops = append(ops, clientv3.OpPut(s.cursorKey(set), a.String()))
	}
	if c.Note != "" {
		for _, it := range c.Items {
			if a, err := netip.ParseAddr(it.Record.IP); err == nil {
				ops = append(ops, clientv3.OpPut(s.noteKey(a), c.Note))
			}
		}
	}
	if st := c.NewSticky; st != nil {
		k := s.stickyKey(st.Namespace, st.StatefulSetUID, st.Ordinal, st.IfName)
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		b, _ := json.Marshal(st)
		ops = append(ops, clientv3.OpPut(k, string(b)))
	}
	for _, r := range c.Retire {
		if r.Attachment.ContainerID == att.ContainerID && r.Attachment.IfName == att.IfName {
			return false, fmt.Errorf("claim retires its own attachment %s/%s", ShortID(att.ContainerID), att.IfName)
		}
		rc, ro, _ := s.releaseOps(r.Attachment, r.States, taken, c.Now, c.Policy)
		cmps, ops = append(cmps, rc...), append(ops, ro...)
	}
	resp, err := s.txn(ctx, cmps, ops)
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

// PodAttachments lists the container IDs whose attachments on interface
// ifname belong to the pod with UID uid (normally none or one).
func (s *Store) PodAttachments(ctx context.Context, uid, ifname string) ([]string, error) {
	p := s.podPrefix(uid, ifname)
	resp, err := s.get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, strings.TrimPrefix(string(kv.Key), p))
	}
	return out, nil
}

// ReusePolicy says, for an address being released, whether it goes to the
// release log (dynamic reuse after the cooldown) and under which range set;
// tombstone=false means the address is outside every dynamic range and its
// key is simply deleted.
type ReusePolicy func(a netip.Addr, kind string) (set int, log bool, tombstone bool)

// Release frees what (cid, ifname) holds. Addresses whose record now belongs
// to another container (a pod that took its fixed address over) are left
// alone. It returns the addresses actually freed; a missing attachment frees
// nothing and is not an error (DEL is idempotent). An *AmbiguousError means
// the release may or may not have been applied; calling Release again
// settles it.
func (s *Store) Release(ctx context.Context, cid, ifname string, now time.Time, policy ReusePolicy) ([]netip.Addr, error) {
	var unknown error
	for attempt := 0; attempt < 16; attempt++ {
		att, err := s.Attachment(ctx, cid, ifname)
		if unknown != nil && err != nil {
			return nil, fmt.Errorf("%w; reading it back: %w", unknown, err)
		}
		if err != nil || att == nil {
			// After an unknown outcome, a missing attachment means the
			// release was applied (which addresses it freed is not known).
			return nil, err
		}
		freed, ok, err := s.releaseOnce(ctx, att, now, policy)
		var amb *AmbiguousError
		if errors.As(err, &amb) && s.wd != nil {
			unknown = err
			continue // read back: released, or to be released again
		}
		if err != nil || ok {
			return freed, err
		}
	}
	return nil, fmt.Errorf("release of %s/%s kept losing races with concurrent writers", ShortID(cid), ifname)
}

// ReleaseAttachment is Release for an attachment already read (GC): it is
// guarded by the attachment version read, and ok=false means it changed.
func (s *Store) ReleaseAttachment(ctx context.Context, att *Attachment, now time.Time, policy ReusePolicy) ([]netip.Addr, bool, error) {
	return s.releaseOnce(ctx, att, now, policy)
}

// AddressStates reads the state of every address att lists.
func (s *Store) AddressStates(ctx context.Context, att *Attachment) (map[netip.Addr]IPState, error) {
	return StatesOf(ctx, att, s.State)
}

// StatesOf reads, with state, the state of every address att lists (what
// Backend.AddressStates returns, for a backend that reads one address at a
// time).
func StatesOf(ctx context.Context, att *Attachment, state func(context.Context, netip.Addr) (IPState, error)) (map[netip.Addr]IPState, error) {
	out := map[netip.Addr]IPState{}
	for _, ipStr := range att.IPs {
		a, err := netip.ParseAddr(ipStr)
		if err != nil {
			continue
		}
		st, err := state(ctx, a)
		if err != nil {
			return nil, err
		}
		out[a] = st
	}
	return out, nil
}

func (s *Store) releaseOnce(ctx context.Context, att *Attachment, now time.Time, policy ReusePolicy) ([]netip.Addr, bool, error) {
	states, err := s.AddressStates(ctx, att)
	if err != nil {
		return nil, false, err
	}
	cmps, ops, freed := s.releaseOps(att, states, nil, now, policy)
	resp, err := s.txn(ctx, cmps, ops)
	if err != nil {
		return nil, false, err
	}
	if !resp.Succeeded {
		return nil, false, nil
	}
	return freed, true, nil
}

// releaseOps are the guards and writes that free att: the attachment and
// its pod index entry are deleted, and every address whose record still
// names att's container and interface is released by policy, except those
// in keep (taken over by the same transaction). Every address is guarded by
// the record revision in states, so a record taken over meanwhile makes the
// transaction fail rather than free someone else's address.
func (s *Store) releaseOps(att *Attachment, states map[netip.Addr]IPState, keep map[netip.Addr]bool, now time.Time, policy ReusePolicy) ([]clientv3.Cmp, []clientv3.Op, []netip.Addr) {
	ak := s.attKey(att.ContainerID, att.IfName)
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(ak), "=", rev(att.Rev))}
	ops := []clientv3.Op{clientv3.OpDelete(ak)}
	if att.PodUID != "" {
		ops = append(ops, clientv3.OpDelete(s.podPrefix(att.PodUID, att.IfName)+att.ContainerID))
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
		k := s.ipKey(a)
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rev(st.RecRev)))
		if st.Record == nil || st.Record.ContainerID != att.ContainerID || st.Record.IfName != att.IfName {
			continue // taken over by a re-created pod, or already gone: not ours to free
		}
		ops = append(ops, clientv3.OpDelete(k))
		if att.PodUID == "" {
			// Only attachments without a pod (reservations) have notes.
			ops = append(ops, clientv3.OpDelete(s.noteKey(a)))
		}
		set, log, tomb := policy(a, st.Record.Kind)
		if tomb {
			t := Tombstone{Released: now, Kind: st.Record.Kind}
			if log {
				t.Log = s.relKey(set, now, a)
				ops = append(ops, clientv3.OpPut(t.Log, ""))
			}
			b, _ := json.Marshal(t)
			ops = append(ops, clientv3.OpPut(s.tombKey(a), string(b)))
			if st.Tomb != nil && st.Tomb.Log != "" {
				ops = append(ops, clientv3.OpDelete(st.Tomb.Log))
			}
		}
		freed = append(freed, a)
	}
	return cmps, ops, freed
}

// Ping checks that etcd answers.
func (s *Store) Ping(ctx context.Context) error {
	_, err := s.get(ctx, s.base+"cursor/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	return err
}

// ver is the Version of an etcd revision (0, absent, is "").
func ver(r int64) Version {
	if r == 0 {
		return ""
	}
	return Version(strconv.FormatInt(r, 10))
}

// rev is the etcd revision of a Version this store made ("" is 0, absent).
// Anything else (a version from another backend) is a revision no key has,
// so a guard built from it fails rather than matching.
func rev(v Version) int64 {
	if v == "" {
		return 0
	}
	r, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil || r <= 0 {
		return -1
	}
	return r
}

// Describe names the store for messages.
func (s *Store) Describe() string { return "etcd " + s.base }

var _ Backend = (*Store)(nil)
