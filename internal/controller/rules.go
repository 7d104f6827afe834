package controller

// The GC rules as pure functions over data: what a pass read from etcd (the
// snapshot) and what the Kubernetes API said about the owners (Facts). The
// controller's passes, kube-ipamctl gc (RunOnce), kube-ipamctl check and
// kube-ipamctl release (Evaluate, DecideAttachment) all decide through
// Decide, so they cannot disagree about what is leaked.

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"kubeipam/internal/store"
)

// ObjectKey names a namespaced object (a pod or a StatefulSet).
type ObjectKey struct{ Namespace, Name string }

func (k ObjectKey) String() string { return k.Namespace + "/" + k.Name }

// PodFacts is what the rules need of a pod the API showed.
type PodFacts struct {
	UID  string
	Node string
	// Deleting is the deletion timestamp; nil when the pod is not being
	// deleted.
	Deleting *time.Time
}

// StatefulSetFacts is what the rules need of a StatefulSet the API showed.
type StatefulSetFacts struct {
	UID      string
	Replicas int // spec.replicas, 1 when unset (the API default)
}

// Facts is what a pass learned from the Kubernetes API. A nil value in
// Pods, StatefulSets or Nodes means the API (a fresh read, never only a
// cache) showed no such object; a key in one of the Errs maps means the
// lookup failed, so nothing may be concluded from it.
type Facts struct {
	Pods            map[ObjectKey]*PodFacts
	PodErrs         map[ObjectKey]error
	StatefulSets    map[ObjectKey]*StatefulSetFacts
	StatefulSetErrs map[ObjectKey]error
	// Nodes: Ready condition True, by node name (only looked up for the
	// Terminating-on-NotReady rule). A missing node is not ready.
	Nodes    map[string]bool
	NodeErrs map[string]error
}

func newFacts() *Facts {
	return &Facts{Pods: map[ObjectKey]*PodFacts{}, PodErrs: map[ObjectKey]error{},
		StatefulSets: map[ObjectKey]*StatefulSetFacts{}, StatefulSetErrs: map[ObjectKey]error{},
		Nodes: map[string]bool{}, NodeErrs: map[string]error{}}
}

// RuleOptions are the settings the rules depend on.
type RuleOptions struct {
	Now time.Time
	// TerminatingOnNotReady > 0: a pod with a deletion timestamp at least
	// this old whose node is NotReady (or missing) counts as gone.
	TerminatingOnNotReady time.Duration
	// Cluster is this cluster's identity (ipam.cluster): attachments and
	// sticky records of another cluster sharing the store are never
	// touched.
	Cluster string
}

// Foreign reports whether a record written with cluster identity c belongs
// to another cluster than own. Records without an identity (written before
// ipam.cluster existed, or by a cluster that sets none) count as ours, so
// naming a cluster later keeps its GC working on what it already holds.
func Foreign(c, own string) bool { return c != "" && c != own }

// ownerState is what the rules concluded about an owner.
type ownerState int

const (
	ownerAlive   ownerState = iota
	ownerGone               // confirmed gone by a fresh read
	ownerUnknown            // could not be decided: never free
)

// OwnerGone is the rule "is this allocation's pod gone": the pod p as a
// fresh read from the API showed it (nil: no such pod) is gone for an
// allocation made for pod UID uid when it does not exist, or exists with
// another UID (its name was reused by a new pod). An allocation without a
// UID is only gone with its pod name. why says which, for messages.
func OwnerGone(key ObjectKey, uid string, p *PodFacts) (gone bool, why string) {
	switch {
	case p == nil:
		return true, fmt.Sprintf("pod %s no longer exists", key)
	case uid != "" && p.UID != uid:
		return true, fmt.Sprintf("pod %s was re-created with UID %s (the allocation is for UID %s)", key, p.UID, uid)
	}
	return false, fmt.Sprintf("pod %s exists", key)
}

// OrdinalWanted is the rule "does this StatefulSet still want this
// ordinal": the StatefulSet s as the API showed it (nil: no such
// StatefulSet) wants ordinal of the StatefulSet of UID uid when it is that
// StatefulSet (same UID: not deleted and re-created) and the ordinal is
// below its replicas (not scaled down). A wanted ordinal keeps its address
// with its pod gone: the StatefulSet controller re-creates the pod, which
// takes the address over.
func OrdinalWanted(key ObjectKey, uid string, ordinal int, s *StatefulSetFacts) (wanted bool, why string) {
	switch {
	case s == nil:
		return false, fmt.Sprintf("StatefulSet %s no longer exists", key)
	case s.UID != uid:
		return false, fmt.Sprintf("StatefulSet %s was re-created with UID %s (the allocation is for UID %s)", key, s.UID, uid)
	case ordinal >= s.Replicas:
		return false, fmt.Sprintf("StatefulSet %s is scaled to %d replica(s), below ordinal %d", key, s.Replicas, ordinal)
	}
	return true, fmt.Sprintf("StatefulSet %s (%d replica(s)) still wants ordinal %d", key, s.Replicas, ordinal)
}

// podState applies OwnerGone (and, when enabled, the Terminating-on-
// NotReady rule) to the facts about one pod.
// For ownerUnknown, cause is the failed lookup's error alone (no object
// name), so that skipped allocations can be counted by cause.
func podState(key ObjectKey, uid string, f *Facts, o RuleOptions) (st ownerState, why, cause string) {
	if err, bad := f.PodErrs[key]; bad {
		return ownerUnknown, fmt.Sprintf("pod %s could not be read: %v", key, err), err.Error()
	}
	p, ok := f.Pods[key]
	if !ok {
		return ownerUnknown, fmt.Sprintf("pod %s was not looked up", key), "not looked up"
	}
	if gone, why := OwnerGone(key, uid, p); gone {
		return ownerGone, why, ""
	}
	if d, ok := terminatingFor(p, o); ok {
		if err, bad := f.NodeErrs[p.Node]; bad {
			return ownerUnknown, fmt.Sprintf("pod %s is Terminating; its node %s could not be read: %v", key, p.Node, err), err.Error()
		}
		ready, known := f.Nodes[p.Node]
		if !known {
			return ownerUnknown, fmt.Sprintf("pod %s is Terminating; its node %s was not looked up", key, p.Node), "not looked up"
		}
		if !ready {
			return ownerGone, fmt.Sprintf("pod %s has been Terminating for %v on NotReady node %s", key, d.Round(time.Second), p.Node), ""
		}
	}
	return ownerAlive, fmt.Sprintf("pod %s exists", key), ""
}

// terminatingFor reports how long p has been Terminating when that is at
// least the Terminating-on-NotReady threshold (so its node matters).
func terminatingFor(p *PodFacts, o RuleOptions) (time.Duration, bool) {
	if o.TerminatingOnNotReady <= 0 || p == nil || p.Deleting == nil || p.Node == "" {
		return 0, false
	}
	d := o.Now.Sub(*p.Deleting)
	return d, d >= o.TerminatingOnNotReady
}

func stsState(key ObjectKey, uid string, ordinal int, f *Facts) (st ownerState, why, cause string) {
	if err, bad := f.StatefulSetErrs[key]; bad {
		return ownerUnknown, fmt.Sprintf("StatefulSet %s could not be read: %v", key, err), err.Error()
	}
	s, ok := f.StatefulSets[key]
	if !ok {
		return ownerUnknown, fmt.Sprintf("StatefulSet %s was not looked up", key), "not looked up"
	}
	wanted, why := OrdinalWanted(key, uid, ordinal, s)
	if !wanted {
		return ownerGone, why, ""
	}
	return ownerAlive, why, ""
}

// Verdict is what the rules decided about one attachment or sticky record.
type Verdict string

// Verdicts.
const (
	// VerdictNoOwner: an attachment that names no pod (a kube-ipamctl
	// reservation). Never touched.
	VerdictNoOwner Verdict = "no-owner"
	// VerdictForeign: the attachment or sticky record belongs to another
	// cluster sharing the store (ipam.cluster). Never touched.
	VerdictForeign Verdict = "other-cluster"
	// VerdictAlive: the owner exists (attachment), or the StatefulSet still
	// wants the ordinal (sticky record).
	VerdictAlive Verdict = "alive"
	// VerdictWanted: the attachment's pod is gone, but it holds a
	// StatefulSet ordinal's address that the StatefulSet still wants: kept
	// on purpose for the re-created pod, which takes it over.
	VerdictWanted Verdict = "statefulset-wants"
	// VerdictLeaked: a GC candidate.
	VerdictLeaked Verdict = "leaked"
	// VerdictUndecided: a lookup failed (API error, rate limiter, deadline),
	// so the rules could not decide. Kept, and counted as skipped.
	VerdictUndecided Verdict = "undecided"
)

// Held is one address an attachment still holds: its record names the
// attachment's container and interface.
type Held struct {
	IP  netip.Addr
	Rec *store.Record
	Rev store.Version
}

// Decision is the verdict on one attachment (Kind KindAttachment) or sticky
// record (KindSticky), with the reason in words.
type Decision struct {
	Kind       string
	Attachment *store.Attachment  // KindAttachment
	Held       []Held             // KindAttachment: the records it still holds
	Sticky     *store.StickyEntry // KindSticky
	Verdict    Verdict
	Reason     string
	// Cause is, for VerdictUndecided, the error of the failed lookup alone
	// (without the object's name), to count skipped allocations by cause.
	Cause string
	// Pod is the owner pod as the API showed it, when it exists.
	Pod *PodFacts

	revs []string // attachment and record revisions: the grace clock's key
}

// Owner names the decision's owner: ns/pod, or ns/statefulset ordinal N.
func (d *Decision) Owner() string {
	if d.Kind == KindSticky {
		return fmt.Sprintf("%s/%s ordinal %d", d.Sticky.Namespace, d.Sticky.StatefulSet, d.Sticky.Ordinal)
	}
	return d.Attachment.PodNamespace + "/" + d.Attachment.PodName
}

// held returns the records att still holds and the revisions that key its
// grace clock (the attachment's, then each listed address's record).
func held(att *store.Attachment, records map[netip.Addr]recEntry) ([]Held, []string) {
	var out []Held
	revs := []string{fmt.Sprint(att.Rev)}
	for _, s := range att.IPs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		e, ok := records[a]
		if ok && e.Rec.ContainerID == att.ContainerID && e.Rec.IfName == att.IfName {
			out = append(out, Held{IP: a, Rec: e.Rec, Rev: e.Rev})
		}
		revs = append(revs, fmt.Sprint(e.Rev))
	}
	return out, revs
}

// Decide applies the GC rules to every attachment and sticky record of a
// snapshot, attachments first, in snapshot order:
//   - an attachment without a pod name is never touched (VerdictNoOwner);
//   - an attachment's pod is gone by OwnerGone (or, with
//     TerminatingOnNotReady, Terminating that long on a NotReady node);
//   - a gone pod's attachment that holds a StatefulSet ordinal's address is
//     kept while OrdinalWanted (VerdictWanted);
//   - a sticky record is leaked when !OrdinalWanted;
//   - a failed lookup decides nothing (VerdictUndecided); a wanted ordinal
//     wins over a failed lookup of another record of the same attachment.
func Decide(s *snapshot, f *Facts, o RuleOptions) []Decision {
	out := make([]Decision, 0, len(s.atts)+len(s.sticky))
	for _, att := range s.atts {
		h, revs := held(att, s.records)
		d := Decision{Kind: KindAttachment, Attachment: att, Held: h, revs: revs}
		out = append(out, decideAttachment(d, f, o))
	}
	for i := range s.sticky {
		e := &s.sticky[i]
		d := Decision{Kind: KindSticky, Sticky: e}
		if Foreign(e.Cluster, o.Cluster) {
			d.Verdict, d.Reason = VerdictForeign, "the sticky record belongs to cluster "+e.Cluster
			out = append(out, d)
			continue
		}
		st, why, cause := stsState(ObjectKey{e.Namespace, e.StatefulSet}, e.StatefulSetUID, e.Ordinal, f)
		d.Verdict, d.Reason, d.Cause = verdictOf(st), why, cause
		out = append(out, d)
	}
	return out
}

func verdictOf(st ownerState) Verdict {
	switch st {
	case ownerGone:
		return VerdictLeaked
	case ownerUnknown:
		return VerdictUndecided
	}
	return VerdictAlive
}

func decideAttachment(d Decision, f *Facts, o RuleOptions) Decision {
	att := d.Attachment
	if Foreign(att.Cluster, o.Cluster) {
		d.Verdict, d.Reason = VerdictForeign, "the attachment belongs to cluster "+att.Cluster
		return d
	}
	if att.PodName == "" {
		d.Verdict, d.Reason = VerdictNoOwner, "the attachment names no pod"
		return d
	}
	key := ObjectKey{att.PodNamespace, att.PodName}
	st, why, cause := podState(key, att.PodUID, f, o)
	d.Pod = f.Pods[key]
	if st != ownerGone {
		d.Verdict, d.Reason, d.Cause = verdictOf(st), why, cause
		return d
	}
	d.Verdict, d.Reason = VerdictLeaked, why
	var undecided, causes, unwanted []string
	for _, h := range d.Held {
		r := h.Rec
		if r.StatefulSetUID == "" {
			continue
		}
		switch sst, swhy, scause := stsState(ObjectKey{r.PodNamespace, r.StatefulSet}, r.StatefulSetUID, r.Ordinal, f); sst {
		case ownerAlive:
			d.Verdict, d.Reason = VerdictWanted, why+"; "+swhy
			return d
		case ownerUnknown:
			undecided, causes = append(undecided, swhy), append(causes, scause)
		default:
			if !slices.Contains(unwanted, swhy) {
				unwanted = append(unwanted, swhy)
			}
		}
	}
	switch {
	case len(undecided) > 0:
		d.Verdict, d.Reason, d.Cause = VerdictUndecided, why+"; "+strings.Join(undecided, "; "), causes[0]
	case len(unwanted) > 0:
		d.Reason = why + "; " + strings.Join(unwanted, "; ")
	}
	return d
}

// What the API must be asked for Decide to decide a snapshot: the pods of
// every attachment (podsToLook), then, given their facts, the nodes of pods
// Terminating long enough for the NotReady rule (nodesToLook) and the
// StatefulSets of the sticky records and of the gone pods' ordinals
// (statefulSetsToLook).

// podsToLook: the owner pod of every attachment that names one, with the
// UIDs the attachments were made for (several when a pod name was reused).
func podsToLook(s *snapshot, o RuleOptions) map[ObjectKey][]string {
	out := map[ObjectKey][]string{}
	for _, att := range s.atts {
		if att.PodName == "" || Foreign(att.Cluster, o.Cluster) {
			continue
		}
		k := ObjectKey{att.PodNamespace, att.PodName}
		if !slices.Contains(out[k], att.PodUID) {
			out[k] = append(out[k], att.PodUID)
		}
	}
	return out
}

// nodesToLook: the nodes of pods that exist (same UID) and have been
// Terminating at least TerminatingOnNotReady.
func nodesToLook(s *snapshot, f *Facts, o RuleOptions) map[string]bool {
	out := map[string]bool{}
	for _, att := range s.atts {
		if att.PodName == "" || Foreign(att.Cluster, o.Cluster) {
			continue
		}
		key := ObjectKey{att.PodNamespace, att.PodName}
		p, ok := f.Pods[key]
		if !ok {
			continue
		}
		if gone, _ := OwnerGone(key, att.PodUID, p); gone {
			continue
		}
		if _, ok := terminatingFor(p, o); ok {
			out[p.Node] = true
		}
	}
	return out
}

// statefulSetsToLook: the StatefulSets of the sticky records, and of the
// ordinals held by attachments whose pod is gone.
func statefulSetsToLook(s *snapshot, f *Facts, o RuleOptions) map[ObjectKey]bool {
	out := map[ObjectKey]bool{}
	for _, e := range s.sticky {
		if !Foreign(e.Cluster, o.Cluster) {
			out[ObjectKey{e.Namespace, e.StatefulSet}] = true
		}
	}
	for _, att := range s.atts {
		if att.PodName == "" || Foreign(att.Cluster, o.Cluster) {
			continue
		}
		if st, _, _ := podState(ObjectKey{att.PodNamespace, att.PodName}, att.PodUID, f, o); st != ownerGone {
			continue
		}
		h, _ := held(att, s.records)
		for _, r := range h {
			if r.Rec.StatefulSetUID != "" {
				out[ObjectKey{r.Rec.PodNamespace, r.Rec.StatefulSet}] = true
			}
		}
	}
	return out
}
