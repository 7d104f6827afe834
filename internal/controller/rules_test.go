package controller

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"kubeipam/internal/store"
)

// The GC rules are pure functions over a snapshot and the API's facts:
// these tables need neither etcd nor an API server.

var t0 = time.Unix(1_800_000_000, 0)

func TestOwnerGone(t *testing.T) {
	k := ObjectKey{"ns", "p"}
	for _, c := range []struct {
		name string
		uid  string
		pod  *PodFacts
		gone bool
		why  string
	}{
		{"absent", "u1", nil, true, "pod ns/p no longer exists"},
		{"same UID", "u1", &PodFacts{UID: "u1"}, false, "pod ns/p exists"},
		{"other UID", "u1", &PodFacts{UID: "u2"}, true, "pod ns/p was re-created with UID u2 (the allocation is for UID u1)"},
		{"allocation without UID", "", &PodFacts{UID: "u2"}, false, "pod ns/p exists"},
		{"allocation without UID, absent", "", nil, true, "pod ns/p no longer exists"},
	} {
		gone, why := OwnerGone(k, c.uid, c.pod)
		if gone != c.gone || why != c.why {
			t.Errorf("%s: OwnerGone = %v %q, want %v %q", c.name, gone, why, c.gone, c.why)
		}
	}
}

func TestOrdinalWanted(t *testing.T) {
	k := ObjectKey{"ns", "db"}
	for _, c := range []struct {
		name    string
		ordinal int
		sts     *StatefulSetFacts
		wanted  bool
		why     string
	}{
		{"gone", 0, nil, false, "StatefulSet ns/db no longer exists"},
		{"re-created", 0, &StatefulSetFacts{UID: "s2", Replicas: 3}, false, "StatefulSet ns/db was re-created with UID s2 (the allocation is for UID s1)"},
		{"scaled below", 2, &StatefulSetFacts{UID: "s1", Replicas: 2}, false, "StatefulSet ns/db is scaled to 2 replica(s), below ordinal 2"},
		{"scaled to zero", 0, &StatefulSetFacts{UID: "s1", Replicas: 0}, false, "StatefulSet ns/db is scaled to 0 replica(s), below ordinal 0"},
		{"wanted", 1, &StatefulSetFacts{UID: "s1", Replicas: 2}, true, "StatefulSet ns/db (2 replica(s)) still wants ordinal 1"},
	} {
		wanted, why := OrdinalWanted(k, "s1", c.ordinal, c.sts)
		if wanted != c.wanted || why != c.why {
			t.Errorf("%s: OrdinalWanted = %v %q, want %v %q", c.name, wanted, why, c.wanted, c.why)
		}
	}
}

// snap builds a snapshot: one attachment per entry, each holding its own
// record (a StatefulSet ordinal's when sts is set), plus sticky records.
type attSpec struct {
	cid, ns, pod, uid string
	sts, stsUID       string
	ordinal           int
	notHeld           bool // the record now names another container
}

func snapOf(atts []attSpec, sticky ...store.StickyEntry) *snapshot {
	s := &snapshot{records: map[netip.Addr]recEntry{}, sticky: sticky}
	ip := netip.MustParseAddr("10.0.0.10")
	for i, a := range atts {
		att := &store.Attachment{ContainerID: a.cid, IfName: "net1", IPs: []string{ip.String()},
			PodNamespace: a.ns, PodName: a.pod, PodUID: a.uid, Rev: store.Version(fmt.Sprint(100 + i))}
		rec := &store.Record{IP: ip.String(), ContainerID: a.cid, IfName: "net1", PodNamespace: a.ns, PodName: a.pod, PodUID: a.uid,
			StatefulSet: a.sts, StatefulSetUID: a.stsUID, Ordinal: a.ordinal}
		if a.notHeld {
			rec.ContainerID = "someone-else"
		}
		s.records[ip] = recEntry{Rec: rec, Rev: store.Version(fmt.Sprint(200 + i))}
		s.atts = append(s.atts, att)
		ip = ip.Next()
	}
	return s
}

func TestDecide(t *testing.T) {
	apiDown := errors.New("the server is currently unable to handle the request")
	limited := errors.New("client rate limiter Wait returned an error: rate: Wait(n=1) would exceed context deadline")
	deleting := t0.Add(-10 * time.Minute)
	recent := t0.Add(-10 * time.Second)
	f := &Facts{
		Pods: map[ObjectKey]*PodFacts{
			{"ns", "alive"}:    {UID: "u-alive", Node: "n1"},
			{"ns", "gone"}:     nil,
			{"ns", "reused"}:   {UID: "u-new", Node: "n1"},
			{"db", "mysql-0"}:  nil,
			{"db", "mysql-2"}:  nil,
			{"db", "cache-0"}:  nil,
			{"db", "old-0"}:    nil,
			{"db", "flaky-0"}:  nil,
			{"ns", "stuck"}:    {UID: "u-stuck", Node: "down", Deleting: &deleting},
			{"ns", "draining"}: {UID: "u-draining", Node: "up", Deleting: &deleting},
			{"ns", "fresh"}:    {UID: "u-fresh", Node: "down", Deleting: &recent},
			{"ns", "nodeerr"}:  {UID: "u-nodeerr", Node: "unknown", Deleting: &deleting},
		},
		PodErrs: map[ObjectKey]error{{"ns", "err"}: apiDown},
		StatefulSets: map[ObjectKey]*StatefulSetFacts{
			{"db", "mysql"}: {UID: "s-mysql", Replicas: 2},
			{"db", "cache"}: nil,
			{"db", "old"}:   {UID: "s-old-recreated", Replicas: 1},
		},
		StatefulSetErrs: map[ObjectKey]error{{"db", "flaky"}: limited},
		Nodes:           map[string]bool{"down": false, "up": true},
		NodeErrs:        map[string]error{"unknown": apiDown},
	}
	s := snapOf([]attSpec{
		{cid: "c-reservation"},
		{cid: "c-alive", ns: "ns", pod: "alive", uid: "u-alive"},
		{cid: "c-gone", ns: "ns", pod: "gone", uid: "u-gone"},
		{cid: "c-reused", ns: "ns", pod: "reused", uid: "u-old"},
		{cid: "c-err", ns: "ns", pod: "err", uid: "u-err"},
		{cid: "c-unlooked", ns: "ns", pod: "unlooked", uid: "u-x"},
		{cid: "c-mysql-0", ns: "db", pod: "mysql-0", uid: "u-m0", sts: "mysql", stsUID: "s-mysql", ordinal: 0},
		{cid: "c-mysql-2", ns: "db", pod: "mysql-2", uid: "u-m2", sts: "mysql", stsUID: "s-mysql", ordinal: 2},
		{cid: "c-cache-0", ns: "db", pod: "cache-0", uid: "u-c0", sts: "cache", stsUID: "s-cache", ordinal: 0},
		{cid: "c-old-0", ns: "db", pod: "old-0", uid: "u-o0", sts: "old", stsUID: "s-old", ordinal: 0},
		{cid: "c-flaky-0", ns: "db", pod: "flaky-0", uid: "u-f0", sts: "flaky", stsUID: "s-flaky", ordinal: 0},
		// The StatefulSet record is not this attachment's any more: only
		// the pod counts.
		{cid: "c-takenover", ns: "db", pod: "mysql-0", uid: "u-m0", sts: "mysql", stsUID: "s-mysql", ordinal: 0, notHeld: true},
		{cid: "c-stuck", ns: "ns", pod: "stuck", uid: "u-stuck"},
		{cid: "c-draining", ns: "ns", pod: "draining", uid: "u-draining"},
		{cid: "c-fresh", ns: "ns", pod: "fresh", uid: "u-fresh"},
		{cid: "c-nodeerr", ns: "ns", pod: "nodeerr", uid: "u-nodeerr"},
	},
		store.StickyEntry{Key: "k/mysql/1", Sticky: store.Sticky{Namespace: "db", StatefulSet: "mysql", StatefulSetUID: "s-mysql", Ordinal: 1}},
		store.StickyEntry{Key: "k/mysql/5", Sticky: store.Sticky{Namespace: "db", StatefulSet: "mysql", StatefulSetUID: "s-mysql", Ordinal: 5}},
		store.StickyEntry{Key: "k/cache/0", Sticky: store.Sticky{Namespace: "db", StatefulSet: "cache", StatefulSetUID: "s-cache", Ordinal: 0}},
		store.StickyEntry{Key: "k/flaky/0", Sticky: store.Sticky{Namespace: "db", StatefulSet: "flaky", StatefulSetUID: "s-flaky", Ordinal: 0}},
	)
	type want struct {
		v      Verdict
		reason string // substring
		cause  string
	}
	wants := map[string]want{
		"c-reservation": {VerdictNoOwner, "names no pod", ""},
		"c-alive":       {VerdictAlive, "pod ns/alive exists", ""},
		"c-gone":        {VerdictLeaked, "pod ns/gone no longer exists", ""},
		"c-reused":      {VerdictLeaked, "was re-created with UID u-new", ""},
		"c-err":         {VerdictUndecided, "pod ns/err could not be read", apiDown.Error()},
		"c-unlooked":    {VerdictUndecided, "not looked up", "not looked up"},
		"c-mysql-0":     {VerdictWanted, "StatefulSet db/mysql (2 replica(s)) still wants ordinal 0", ""},
		"c-mysql-2":     {VerdictLeaked, "scaled to 2 replica(s), below ordinal 2", ""},
		"c-cache-0":     {VerdictLeaked, "StatefulSet db/cache no longer exists", ""},
		"c-old-0":       {VerdictLeaked, "StatefulSet db/old was re-created", ""},
		"c-flaky-0":     {VerdictUndecided, "StatefulSet db/flaky could not be read", limited.Error()},
		"c-takenover":   {VerdictLeaked, "pod db/mysql-0 no longer exists", ""},
		"c-stuck":       {VerdictAlive, "exists", ""}, // TerminatingOnNotReady off
		"c-draining":    {VerdictAlive, "exists", ""},
		"c-fresh":       {VerdictAlive, "exists", ""},
		"c-nodeerr":     {VerdictAlive, "exists", ""},
		"k/mysql/1":     {VerdictAlive, "still wants ordinal 1", ""},
		"k/mysql/5":     {VerdictLeaked, "below ordinal 5", ""},
		"k/cache/0":     {VerdictLeaked, "no longer exists", ""},
		"k/flaky/0":     {VerdictUndecided, "could not be read", limited.Error()},
	}
	check := func(o RuleOptions, wants map[string]want) {
		t.Helper()
		ds := Decide(s, f, o)
		if len(ds) != len(s.atts)+len(s.sticky) {
			t.Fatalf("%d decisions for %d attachments and %d sticky records", len(ds), len(s.atts), len(s.sticky))
		}
		for i, d := range ds {
			id := ""
			if d.Kind == KindSticky {
				id = d.Sticky.Key
				if d.Sticky != &s.sticky[i-len(s.atts)] {
					t.Errorf("decision %d is not about sticky record %d", i, i-len(s.atts))
				}
			} else {
				id = d.Attachment.ContainerID
				if d.Attachment != s.atts[i] {
					t.Errorf("decision %d is not about attachment %d", i, i)
				}
			}
			w, ok := wants[id]
			if !ok {
				t.Fatalf("no expectation for %s", id)
			}
			if d.Verdict != w.v || !strings.Contains(d.Reason, w.reason) || d.Cause != w.cause {
				t.Errorf("%s: %s %q (cause %q), want %s with %q (cause %q)", id, d.Verdict, d.Reason, d.Cause, w.v, w.reason, w.cause)
			}
		}
	}
	check(RuleOptions{Now: t0}, wants)

	// With the Terminating-on-NotReady rule: long enough on a NotReady node
	// is gone; on a Ready node, or not long enough, alive; a node that could
	// not be read decides nothing.
	wants["c-stuck"] = want{VerdictLeaked, "pod ns/stuck has been Terminating for 10m0s on NotReady node down", ""}
	wants["c-nodeerr"] = want{VerdictUndecided, "its node unknown could not be read", apiDown.Error()}
	check(RuleOptions{Now: t0, TerminatingOnNotReady: 5 * time.Minute}, wants)

	// Held records and grace keys: an attachment's key names its revision
	// and its records'.
	ds := Decide(s, f, RuleOptions{Now: t0})
	if d := ds[2]; len(d.Held) != 1 || d.Held[0].IP.String() != "10.0.0.12" || graceKey("n", &d) != "n|att|c-gone|net1|102,202" {
		t.Errorf("c-gone: held %+v, key %q", d.Held, graceKey("n", &d))
	}
	if d := ds[11]; len(d.Held) != 0 {
		t.Errorf("c-takenover holds %+v", d.Held)
	}
}

// What a pass asks the API for: every attachment's pod; StatefulSets only
// for sticky records and the ordinals of gone pods; nodes only for pods
// Terminating long enough under the NotReady rule.
func TestLookupsNeeded(t *testing.T) {
	deleting := t0.Add(-time.Hour)
	s := snapOf([]attSpec{
		{cid: "c1"},
		{cid: "c2", ns: "ns", pod: "alive", uid: "u2", sts: "web", stsUID: "s-web"},
		{cid: "c3", ns: "ns", pod: "gone", uid: "u3", sts: "db", stsUID: "s-db"},
		{cid: "c4", ns: "ns", pod: "stuck", uid: "u4"},
		{cid: "c5", ns: "ns", pod: "unknown", uid: "u5", sts: "cache", stsUID: "s-cache"},
	}, store.StickyEntry{Sticky: store.Sticky{Namespace: "other", StatefulSet: "kv", StatefulSetUID: "s-kv"}})
	pods := podsToLook(s, RuleOptions{})
	if len(pods) != 4 || !slices.Equal(pods[ObjectKey{"ns", "gone"}], []string{"u3"}) {
		t.Fatalf("pods to look up: %v", pods)
	}
	f := newFacts()
	f.Pods[ObjectKey{"ns", "alive"}] = &PodFacts{UID: "u2"}
	f.Pods[ObjectKey{"ns", "gone"}] = nil
	f.Pods[ObjectKey{"ns", "stuck"}] = &PodFacts{UID: "u4", Node: "n9", Deleting: &deleting}
	f.PodErrs[ObjectKey{"ns", "unknown"}] = errors.New("boom")
	o := RuleOptions{Now: t0}
	sts := statefulSetsToLook(s, f, o)
	if len(sts) != 2 || !sts[ObjectKey{"ns", "db"}] || !sts[ObjectKey{"other", "kv"}] {
		t.Errorf("StatefulSets to look up: %v", sts)
	}
	if n := nodesToLook(s, f, o); len(n) != 0 {
		t.Errorf("nodes looked up with the NotReady rule off: %v", n)
	}
	o.TerminatingOnNotReady = time.Minute
	if n := nodesToLook(s, f, o); len(n) != 1 || !n["n9"] {
		t.Errorf("nodes to look up: %v", n)
	}
}

func TestSkipSummary(t *testing.T) {
	var r Result
	for _, c := range []string{"b", "a", "b", "c", "b", "a"} {
		r.skip(c)
	}
	if got := strings.Join(r.SkipSummary(), "; "); r.Skipped != 6 || got != "3 × b; 2 × a; 1 × c" {
		t.Fatalf("skipped %d: %q", r.Skipped, got)
	}
}

// An attachment holding several records (one per range set) is decided on
// all of them: a wanted ordinal wins over a failed lookup of another of its
// records, a failed lookup wins over unwanted ordinals (nothing is freed on
// a guess), and unwanted reasons are not repeated.
func TestDecideSeveralRecords(t *testing.T) {
	limited := errors.New("client rate limiter Wait returned an error")
	f := newFacts()
	for _, p := range []string{"a-0", "b-0", "c-0", "d-0"} {
		f.Pods[ObjectKey{"db", p}] = nil
	}
	f.StatefulSets[ObjectKey{"db", "mysql"}] = &StatefulSetFacts{UID: "s-mysql", Replicas: 1}
	f.StatefulSets[ObjectKey{"db", "cache"}] = nil
	f.StatefulSetErrs[ObjectKey{"db", "flaky"}] = limited
	s := &snapshot{records: map[netip.Addr]recEntry{}}
	type rec struct{ sts, stsUID string }
	add := func(cid, pod string, recs ...rec) {
		att := &store.Attachment{ContainerID: cid, IfName: "net1", PodNamespace: "db", PodName: pod, PodUID: "u-" + pod, Rev: store.Version(fmt.Sprint(100 + len(s.atts)))}
		for i, r := range recs {
			ip := netip.AddrFrom4([4]byte{10, byte(i), byte(len(s.atts)), 10})
			att.IPs = append(att.IPs, ip.String())
			s.records[ip] = recEntry{Rev: store.Version(fmt.Sprint(200 + 10*len(s.atts) + i)), Rec: &store.Record{IP: ip.String(), ContainerID: cid, IfName: "net1",
				PodNamespace: "db", PodName: pod, PodUID: "u-" + pod, StatefulSet: r.sts, StatefulSetUID: r.stsUID}}
		}
		s.atts = append(s.atts, att)
	}
	add("c-a", "a-0", rec{"flaky", "s-flaky"}, rec{"mysql", "s-mysql"})
	add("c-b", "b-0", rec{"cache", "s-cache"}, rec{"flaky", "s-flaky"})
	add("c-c", "c-0", rec{"cache", "s-cache"}, rec{"cache", "s-cache"})
	add("c-d", "d-0", rec{}, rec{})
	for i, w := range []struct {
		v      Verdict
		reason string
		cause  string
	}{
		{VerdictWanted, "pod db/a-0 no longer exists; StatefulSet db/mysql (1 replica(s)) still wants ordinal 0", ""},
		{VerdictUndecided, "pod db/b-0 no longer exists; StatefulSet db/flaky could not be read: " + limited.Error(), limited.Error()},
		{VerdictLeaked, "pod db/c-0 no longer exists; StatefulSet db/cache no longer exists", ""},
		{VerdictLeaked, "pod db/d-0 no longer exists", ""},
	} {
		d := Decide(s, f, RuleOptions{Now: t0})[i]
		if d.Verdict != w.v || d.Reason != w.reason || d.Cause != w.cause {
			t.Errorf("%s: %s %q (cause %q), want %s %q (cause %q)", d.Attachment.ContainerID, d.Verdict, d.Reason, d.Cause, w.v, w.reason, w.cause)
		}
		if len(d.Held) != 2 {
			t.Errorf("%s holds %+v, want both records", d.Attachment.ContainerID, d.Held)
		}
	}
	if d := Decide(s, f, RuleOptions{Now: t0})[0]; graceKey("n", &d) != "n|att|c-a|net1|100,200,201" {
		t.Errorf("grace key %q: want the attachment's version and both records'", graceKey("n", &d))
	}
}
