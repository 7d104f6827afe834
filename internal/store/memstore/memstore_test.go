package memstore_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/store/memstore"
	"kubeipam/internal/store/storetest"
)

// The behavioural suite every backend passes.
func TestBackendSuite(t *testing.T) {
	storetest.Run(t, func(t *testing.T, n *config.Network) store.Backend { return memstore.New(n.Name) })
}

func claim(cid, ip string) *store.Claim {
	return &store.Claim{
		Attachment: store.Attachment{ContainerID: cid, IfName: "net1"},
		Items: []store.ClaimItem{{
			Record: store.Record{Network: "n", IP: ip, Kind: store.KindDynamic, ContainerID: cid, IfName: "net1"},
			Mode:   store.ClaimFresh,
		}},
	}
}

// FailNextCommit fails exactly one Commit, with or without applying it;
// BeforeNextCommit runs its writer once, before the claim is looked at.
func TestHooks(t *testing.T) {
	ctx := context.Background()
	s := memstore.New("n")
	a := netip.MustParseAddr("10.0.0.1")

	s.FailNextCommit(false)
	ok, err := s.Commit(ctx, claim("c1", a.String()))
	var amb *store.AmbiguousError
	if ok || !errors.As(err, &amb) || !errors.Is(err, memstore.ErrInjected) {
		t.Fatalf("failed commit = %v, %v", ok, err)
	}
	if st, _ := s.State(ctx, a); st.Record != nil {
		t.Fatal("an unapplied commit wrote a record")
	}

	s.FailNextCommit(true)
	if ok, err := s.Commit(ctx, claim("c1", a.String())); ok || !errors.As(err, &amb) {
		t.Fatalf("applied but failed commit = %v, %v", ok, err)
	}
	if st, _ := s.State(ctx, a); st.Record == nil || st.Record.ContainerID != "c1" {
		t.Fatalf("an applied commit left %+v", st.Record)
	}

	b := netip.MustParseAddr("10.0.0.2")
	s.BeforeNextCommit(func(c *store.Claim) {
		if c.Attachment.ContainerID != "loser" {
			t.Errorf("hook saw the claim of %s", c.Attachment.ContainerID)
		}
		if ok, err := s.Commit(ctx, claim("winner", b.String())); !ok || err != nil {
			t.Errorf("concurrent writer: %v, %v", ok, err)
		}
	})
	if ok, err := s.Commit(ctx, claim("loser", b.String())); ok || err != nil {
		t.Fatalf("commit after a concurrent writer took the address = %v, %v; want a lost race", ok, err)
	}
	if ok, err := s.Commit(ctx, claim("later", "10.0.0.3")); !ok || err != nil {
		t.Fatalf("the hooks are one-shot: %v, %v", ok, err)
	}
	if n := s.Commits(); n != 5 {
		t.Fatalf("Commits = %d, want 5", n)
	}

	if s.MarkPartial("nobody", "net1") {
		t.Fatal("MarkPartial of a missing attachment")
	}
	if !s.MarkPartial("c1", "net1") {
		t.Fatal("MarkPartial of c1")
	}
	if att, _ := s.Attachment(ctx, "c1", "net1"); att == nil || !att.Partial {
		t.Fatalf("attachment %+v, want Partial", att)
	}
	if _, err := s.Release(ctx, "c1", "net1", time.Now(), func(netip.Addr, string) (int, bool, bool) { return 0, true, true }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx, claim("c1", "10.0.0.9")); err != nil {
		t.Fatal(err)
	}
	if att, _ := s.Attachment(ctx, "c1", "net1"); att == nil || att.Partial {
		t.Fatalf("new attachment %+v inherited Partial", att)
	}
}

// Watch delivers, in order, every record change after it started:
// creation, takeover (with the previous record) and release.
func TestWatch(t *testing.T) {
	s := memstore.New("n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan store.RecordEvent, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Watch(ctx, func(e store.RecordEvent) { events <- e })
	}()
	<-s.Watching()
	a := netip.MustParseAddr("10.0.0.1")
	if ok, err := s.Commit(ctx, claim("c1", a.String())); !ok || err != nil {
		t.Fatal(ok, err)
	}
	st, _ := s.State(ctx, a)
	c := claim("c2", a.String())
	c.Items[0].Mode, c.Items[0].State = store.ClaimTakeover, st
	if ok, err := s.Commit(ctx, c); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if _, err := s.Release(ctx, "c2", "net1", time.Now(), func(netip.Addr, string) (int, bool, bool) { return 0, true, true }); err != nil {
		t.Fatal(err)
	}
	want := []string{"created c1 -", "updated c2 c1", "deleted c2 -"}
	for i, w := range want {
		e := <-events
		prev := "-"
		if e.Prev != nil {
			prev = e.Prev.ContainerID
		}
		if got := e.Type + " " + e.Record.ContainerID + " " + prev; got != w {
			t.Errorf("event %d: %s, want %s", i, got, w)
		}
	}
	cancel()
	<-done
}

// As in the etcd store, a claim retiring an attachment that changed since
// it was read fails as a whole (the suite also lets a backend commit it
// while leaving the changed addresses alone).
func TestRetireOfAChangedAttachmentFails(t *testing.T) {
	ctx := context.Background()
	s := memstore.New("n")
	policy := func(netip.Addr, string) (int, bool, bool) { return 0, true, true }
	c := claim("old", "10.0.0.1")
	c.Attachment.PodUID = "pod-u"
	if ok, err := s.Commit(ctx, c); !ok || err != nil {
		t.Fatal(ok, err)
	}
	att, _ := s.Attachment(ctx, "old", "net1")
	states, _ := s.AddressStates(ctx, att)
	if _, err := s.Release(ctx, "old", "net1", time.Now(), policy); err != nil {
		t.Fatal(err)
	}
	n := claim("new", "10.0.0.2")
	n.Attachment.PodUID = "pod-u"
	n.Retire, n.Policy = []store.Retired{{Attachment: att, States: states}}, policy
	if ok, err := s.Commit(ctx, n); ok || err != nil {
		t.Fatalf("claim retiring a released attachment = %v, %v; want a lost race", ok, err)
	}
	if got, _ := s.Attachment(ctx, "new", "net1"); got != nil {
		t.Fatalf("the failed claim left %+v", got)
	}
}
