package store

import (
	"context"
	"net/netip"
	"time"
)

// Version is the version of a stored object as its backend reports it (an
// etcd revision, a Kubernetes resourceVersion), opaque to every other
// package: it is only handed back to the backend as a write precondition.
// The empty Version means "absent".
type Version string

// Backend is one network's allocation state. The etcd store (*Store, this
// package) and the Kubernetes API store (package kubestore) implement it;
// the allocator, the plugin, the controller, the webhook and kube-ipamctl
// use nothing else, so only a backend knows how the state is laid out.
//
// Every write is guarded by the versions its caller read (or by the
// object's absence): a backend never writes over a state its caller did not
// see, and there is no lock.
type Backend interface {
	// Attachment returns what (cid, ifname) holds, or nil.
	Attachment(ctx context.Context, cid, ifname string) (*Attachment, error)
	// Attachments lists every attachment on the network.
	Attachments(ctx context.Context) ([]*Attachment, error)
	// PodAttachments lists the container IDs whose attachments on ifname
	// belong to the pod with UID uid (normally none or one).
	PodAttachments(ctx context.Context, uid, ifname string) ([]string, error)
	// State reads an address's record and tombstone.
	State(ctx context.Context, a netip.Addr) (IPState, error)
	// AddressStates reads the state of every address att lists.
	AddressStates(ctx context.Context, att *Attachment) (map[netip.Addr]IPState, error)
	// Sticky returns the remembered addresses of a StatefulSet ordinal, or nil.
	Sticky(ctx context.Context, ns, uid string, ordinal int, ifname string) (*Sticky, error)
	// Used returns, ascending, up to limit addresses in [from, to] that are
	// claimed or tombstoned; full reports that the limit was hit.
	Used(ctx context.Context, from, to netip.Addr, limit int) (used []netip.Addr, full bool, err error)
	// Cursor returns the never-used hint of a range set (invalid if none).
	Cursor(ctx context.Context, set int) (netip.Addr, error)
	// OldestReleased returns up to limit release-log entries of a range
	// set, oldest first.
	OldestReleased(ctx context.Context, set, limit int) ([]ReleasedRef, error)
	// DropReleased removes a release-log entry that no longer matches its
	// address's tombstone.
	DropReleased(ctx context.Context, ref ReleasedRef) error

	// Commit writes the claim if every precondition still holds. ok=false
	// means another writer won a race and nothing of the claim remains; an
	// *AmbiguousError means the claim may or may not have been applied.
	Commit(ctx context.Context, c *Claim) (ok bool, err error)
	// Release frees what (cid, ifname) holds (idempotent: nothing held is
	// not an error) and returns the addresses freed.
	Release(ctx context.Context, cid, ifname string, now time.Time, policy ReusePolicy) ([]netip.Addr, error)
	// ReleaseAttachment frees an attachment as it was read (GC); ok=false
	// means it changed since and nothing was done.
	ReleaseAttachment(ctx context.Context, att *Attachment, now time.Time, policy ReusePolicy) (freed []netip.Addr, ok bool, err error)
	// ReleaseSticky forgets a StatefulSet ordinal's sticky addresses as they
	// were read; ok=false means they changed (or are held) and nothing was
	// done.
	ReleaseSticky(ctx context.Context, e StickyEntry, now time.Time, policy ReusePolicy) (freed []netip.Addr, ok bool, err error)

	// Snapshot reads everything stored for the network in one consistent
	// read.
	Snapshot(ctx context.Context) (*Snapshot, error)
	// Watch calls fn for every change of an allocation record until ctx
	// ends, resuming by itself after errors.
	Watch(ctx context.Context, fn func(RecordEvent))
	// Note returns the note kept with the attachment holding a ("" if
	// none): a kube-ipamctl reservation's.
	Note(ctx context.Context, a netip.Addr) (string, error)
	// Ping checks that the backend answers.
	Ping(ctx context.Context) error
	// Describe names the backend and where its state lives, for messages.
	Describe() string
}

// RecordEvent is one change of an allocation record seen by Watch.
type RecordEvent struct {
	// Type is Created (a new claim), Deleted (a release) or Updated (a
	// record rewritten: a takeover, or the same holder's rewrite).
	Type   string
	Record *Record // the new record (the old one for Deleted)
	Prev   *Record // the previous record of Updated, when known
}

// Record event types.
const (
	EventCreated = "created"
	EventUpdated = "updated"
	EventDeleted = "deleted"
)

// Snapshot is everything stored for one network, from one consistent read.
// Entries that do not parse are kept as Problems; they never stop the read.
type Snapshot struct {
	// Records are the claimed addresses, in address order.
	Records []RecordEntry
	// Tombs are the released addresses' tombstones.
	Tombs map[netip.Addr]*Tombstone
	// Released is the release log, oldest first.
	Released []ReleasedRef
	// Attachments, in key order.
	Attachments []*Attachment
	// Stickies are the StatefulSet ordinals' remembered addresses.
	Stickies []StickyEntry
	// Notes are the notes of kube-ipamctl reservations, by address.
	Notes map[netip.Addr]string
	// Problems are stored entries that are corrupt or inconsistent.
	Problems []Problem
}

// RecordEntry is one allocation record as read.
type RecordEntry struct {
	IP      netip.Addr
	Record  *Record
	Version Version
	// Key says where the record is stored (an etcd key, an object name).
	Key string
}

// Problem is a stored entry that is corrupt or inconsistent.
type Problem struct {
	Kind   string
	IP     string
	Key    string
	Detail string
}

// Problem kinds.
const (
	ProblemCorrupt   = "corrupt"
	ProblemDuplicate = "duplicate"
)

// Record returns the record entry of address a (nil if none). Records must
// be in address order.
func (s *Snapshot) Record(a netip.Addr) *RecordEntry {
	lo, hi := 0, len(s.Records)
	for lo < hi {
		m := (lo + hi) / 2
		if s.Records[m].IP.Less(a) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(s.Records) && s.Records[lo].IP == a {
		return &s.Records[lo]
	}
	return nil
}
