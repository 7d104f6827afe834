package store_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

func claim(cid, ip string, mode int, st store.IPState) *store.Claim {
	return &store.Claim{
		Attachment: store.Attachment{ContainerID: cid, IfName: "net1"},
		Items: []store.ClaimItem{{
			Record: store.Record{Network: "n", IP: ip, Kind: store.KindDynamic, ContainerID: cid, IfName: "net1"},
			Mode:   mode, State: st,
		}},
	}
}

func dynamicPolicy(netip.Addr, string) (int, bool, bool) { return 0, true, true }

// Many writers claiming one address at once: exactly one transaction wins,
// and the record names it.
func TestCommitIsAtomic(t *testing.T) {
	e := testenv.StartEtcd(t)
	s := store.New(e.Client(t), "/t", "n")
	ctx := context.Background()
	var wg sync.WaitGroup
	wins := make(chan string, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cid := fmt.Sprintf("c%02d", i)
			ok, err := s.Commit(ctx, claim(cid, "10.0.0.5", store.ClaimFresh, store.IPState{}))
			if err != nil {
				t.Error(err)
			}
			if ok {
				wins <- cid
			}
		}()
	}
	wg.Wait()
	close(wins)
	var winners []string
	for w := range wins {
		winners = append(winners, w)
	}
	if len(winners) != 1 {
		t.Fatalf("%d winners: %v", len(winners), winners)
	}
	st, err := s.State(ctx, netip.MustParseAddr("10.0.0.5"))
	if err != nil || st.Record == nil || st.Record.ContainerID != winners[0] {
		t.Fatalf("record %+v (%v), want owner %s", st.Record, err, winners[0])
	}
	// The same container cannot claim a second time either (attachment key).
	if ok, _ := s.Commit(ctx, claim(winners[0], "10.0.0.6", store.ClaimFresh, store.IPState{})); ok {
		t.Fatal("a second claim for one attachment succeeded")
	}
}

// Release is guarded by the revisions it read, leaves taken-over addresses
// alone, tombstones and logs what it frees, and a claim from a stale
// tombstone revision fails.
func TestReleaseGuardsAndTombstones(t *testing.T) {
	e := testenv.StartEtcd(t)
	s := store.New(e.Client(t), "/t", "n")
	ctx := context.Background()
	ip := netip.MustParseAddr("10.0.0.7")
	if ok, err := s.Commit(ctx, claim("old", ip.String(), store.ClaimFresh, store.IPState{})); !ok || err != nil {
		t.Fatal(ok, err)
	}
	st, _ := s.State(ctx, ip)
	// Takeover by another container of the same pod identity.
	if ok, err := s.Commit(ctx, claim("new", ip.String(), store.ClaimTakeover, st)); !ok || err != nil {
		t.Fatal("takeover", ok, err)
	}
	// A takeover from the stale revision loses.
	if ok, _ := s.Commit(ctx, claim("third", ip.String(), store.ClaimTakeover, st)); ok {
		t.Fatal("takeover from a stale revision succeeded")
	}
	freed, err := s.Release(ctx, "old", "net1", time.Now(), dynamicPolicy)
	if err != nil || len(freed) != 0 {
		t.Fatalf("late release of the old container freed %v (%v)", freed, err)
	}
	if a, _ := s.Attachment(ctx, "old", "net1"); a != nil {
		t.Fatal("old attachment left behind")
	}
	freed, err = s.Release(ctx, "new", "net1", time.Now(), dynamicPolicy)
	if err != nil || len(freed) != 1 || freed[0] != ip {
		t.Fatalf("release freed %v (%v)", freed, err)
	}
	st, _ = s.State(ctx, ip)
	if st.Record != nil || st.Tomb == nil || st.Tomb.Log == "" {
		t.Fatalf("after release: %+v", st)
	}
	refs, err := s.OldestReleased(ctx, 0, 10)
	if err != nil || len(refs) != 1 || refs[0].IP != ip || refs[0].Key != st.Tomb.Log {
		t.Fatalf("release log %+v (%v)", refs, err)
	}
	used, full, err := s.Used(ctx, netip.MustParseAddr("10.0.0.0"), netip.MustParseAddr("10.0.0.255"), 10)
	if err != nil || full || len(used) != 1 || used[0] != ip {
		t.Fatalf("Used = %v full=%v (%v): a tombstoned address counts as used", used, full, err)
	}
	// Claim from the tombstone consumes it and its log entry.
	if ok, err := s.Commit(ctx, claim("again", ip.String(), store.ClaimTomb, st)); !ok || err != nil {
		t.Fatal("claim from tombstone", ok, err)
	}
	if refs, _ := s.OldestReleased(ctx, 0, 10); len(refs) != 0 {
		t.Fatalf("release log still lists %v", refs)
	}
	// A second claim from the same (now stale) tombstone revision loses.
	if ok, _ := s.Commit(ctx, claim("late", ip.String(), store.ClaimTomb, st)); ok {
		t.Fatal("claim from a consumed tombstone succeeded")
	}
}
