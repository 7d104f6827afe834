package controller

import (
	"testing"
	"time"

	"kubeipam/internal/store"
)

// Two clusters sharing one store: GC decides only its own cluster's
// attachments and sticky records (and does not even look their owners up);
// records without an identity count as its own.
func TestDecideLeavesOtherClustersAlone(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	s := snapOf([]attSpec{
		{cid: "c-ours", ns: "ns", pod: "gone-a", uid: "u1"},
		{cid: "c-theirs", ns: "ns", pod: "gone-b", uid: "u2"},
		{cid: "c-unnamed", ns: "ns", pod: "gone-c", uid: "u3"},
	},
		store.StickyEntry{Key: "s-theirs", Rev: "7", Sticky: store.Sticky{Namespace: "ns", StatefulSet: "db", StatefulSetUID: "s1", Ordinal: 0, Cluster: "b"}},
		store.StickyEntry{Key: "s-ours", Rev: "8", Sticky: store.Sticky{Namespace: "ns", StatefulSet: "db", StatefulSetUID: "s1", Ordinal: 1, Cluster: "a"}},
	)
	s.atts[0].Cluster, s.atts[1].Cluster = "a", "b"
	o := RuleOptions{Now: t0, Cluster: "a"}
	// Every owner is gone (the API knows nothing).
	f := newFacts()
	for _, pod := range []string{"gone-a", "gone-c"} {
		f.Pods[ObjectKey{"ns", pod}] = nil // looked up: absent
	}
	f.StatefulSets[ObjectKey{"ns", "db"}] = nil
	want := []Verdict{VerdictLeaked, VerdictForeign, VerdictLeaked, VerdictForeign, VerdictLeaked}
	ds := Decide(s, f, o)
	if len(ds) != len(want) {
		t.Fatalf("%d decisions, want %d", len(ds), len(want))
	}
	for i, d := range ds {
		if d.Verdict != want[i] {
			t.Errorf("decision %d (%s): %s %q, want %s", i, d.Owner(), d.Verdict, d.Reason, want[i])
		}
	}
	if _, asked := podsToLook(s, o)[ObjectKey{"ns", "gone-b"}]; asked {
		t.Error("the other cluster's pod is looked up")
	}
	if sts := statefulSetsToLook(s, f, o); len(sts) != 1 {
		t.Errorf("StatefulSets looked up: %v (only ours, ns/db, for ordinal 1)", sts)
	}
	for _, c := range []struct {
		rec, own string
		foreign  bool
	}{{"", "a", false}, {"a", "a", false}, {"b", "a", true}, {"", "", false}, {"b", "", true}} {
		if got := Foreign(c.rec, c.own); got != c.foreign {
			t.Errorf("Foreign(%q, %q) = %v", c.rec, c.own, got)
		}
	}
}
