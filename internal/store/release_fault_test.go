package store_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

// A DEL whose release transaction is applied but whose answer is lost
// reads the attachment back: gone means released, and the DEL succeeds.
func TestUnknownReleaseOutcomeIsReadBack(t *testing.T) {
	e := testenv.StartEtcd(t)
	p := testenv.StartProxy(t, strings.TrimPrefix(e.ClientURL, "http://"))
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + p.Addr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	s := store.New(cli, "/kube-ipam", "faults")
	s.SetWatchdog(store.DefaultWatchdog())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ip := netip.MustParseAddr("10.61.0.10")
	claim := &store.Claim{
		Attachment: store.Attachment{ContainerID: "del-lost", IfName: "net1"},
		Items:      []store.ClaimItem{{Record: store.Record{IP: ip.String(), Kind: store.KindDynamic, ContainerID: "del-lost", IfName: "net1"}, Mode: store.ClaimFresh}},
	}
	if ok, err := s.Commit(ctx, claim); !ok || err != nil {
		t.Fatalf("Commit = %v, %v", ok, err)
	}
	dropped := 0
	store.SetBeforeTxn(s, func() {
		if dropped == 0 {
			p.SetMode(testenv.ProxyDropResponse)
		}
		dropped++
	})
	policy := func(netip.Addr, string) (int, bool, bool) { return 0, true, true }
	if _, err := s.Release(ctx, "del-lost", "net1", time.Now(), policy); err != nil {
		t.Fatalf("DEL with its answer lost = %v, want success after reading back", err)
	}
	if dropped != 1 || p.Mode() != testenv.ProxyPass {
		t.Fatalf("%d release transactions sent, proxy mode %v: want exactly one, its answer lost", dropped, p.Mode())
	}
	if att, err := s.Attachment(ctx, "del-lost", "net1"); err != nil || att != nil {
		t.Fatalf("attachment after DEL = %+v, %v", att, err)
	}
	if st, err := s.State(ctx, ip); err != nil || st.Record != nil || st.Tomb == nil {
		t.Fatalf("address after DEL = %+v, %v; want released (tombstone, no record)", st, err)
	}
}
