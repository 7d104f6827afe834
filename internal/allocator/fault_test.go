package allocator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

// faultEnv is a real etcd behind a proxy that loses requests and responses
// on demand, and an allocator whose client goes through the proxy.
type faultEnv struct {
	t      *testing.T
	etcd   *testenv.Etcd
	proxy  *testenv.Proxy
	direct *clientv3.Client // to etcd, bypassing the proxy
	net    *config.Network
}

func newFaultEnv(t *testing.T) *faultEnv {
	e := testenv.StartEtcd(t)
	p := testenv.StartProxy(t, strings.TrimPrefix(e.ClientURL, "http://"))
	n, err := config.Parse([]byte(`{"cniVersion":"1.0.0","name":"faults","ipam":{"type":"kube-ipam",
		"etcdConfig":{"etcdURL":"http://` + p.Addr + `"},"subnet":"10.60.0.0/24","rangeStart":"10.60.0.10","rangeEnd":"10.60.0.200"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return &faultEnv{t: t, etcd: e, proxy: p, direct: e.Client(t), net: n}
}

// allocator returns an allocator on a fresh client (one per call, as the
// plugin has) that goes through the proxy, with the plugin's watchdog.
func (f *faultEnv) allocator() *Allocator {
	cli, err := clientv3.New(clientv3.Config{Endpoints: f.net.Etcd.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { cli.Close() })
	st := store.New(cli, f.net.Etcd.Prefix, f.net.Name)
	st.SetWatchdog(store.DefaultWatchdog())
	return New(f.net, st)
}

// held lists what etcd holds for a container: its attachment's addresses and
// the records that name it.
func (f *faultEnv) held(cid string) (att []string, recs []string) {
	f.t.Helper()
	base := f.net.Etcd.Prefix + "/v1/networks/" + f.net.Name + "/"
	resp, err := f.direct.Get(context.Background(), base, clientv3.WithPrefix())
	if err != nil {
		f.t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		k := strings.TrimPrefix(string(kv.Key), base)
		switch {
		case strings.HasPrefix(k, "att/"+cid+"/"):
			var a store.Attachment
			if err := json.Unmarshal(kv.Value, &a); err != nil {
				f.t.Fatal(err)
			}
			att = append(att, a.IPs...)
		case strings.HasPrefix(k, "ip/") && !strings.HasSuffix(k, "/r"):
			var r store.Record
			if err := json.Unmarshal(kv.Value, &r); err != nil {
				f.t.Fatal(err)
			}
			if r.ContainerID == cid {
				recs = append(recs, r.IP)
			}
		}
	}
	return att, recs
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// A claim whose response is lost was applied: the ADD reads it back and
// succeeds with it. A claim whose request is lost was not: the ADD claims
// again. Either way it ends with exactly one address for the container,
// well inside the call's deadline.
func TestUnknownClaimOutcomeIsReadBack(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mode  testenv.ProxyMode
		fixed []netip.Addr
	}{
		{"response lost, dynamic", testenv.ProxyDropResponse, nil},
		{"request lost, dynamic", testenv.ProxyDropRequest, nil},
		{"response lost, fixed", testenv.ProxyDropResponse, []netip.Addr{netip.MustParseAddr("10.60.0.230")}},
		{"request lost, fixed", testenv.ProxyDropRequest, []netip.Addr{netip.MustParseAddr("10.60.0.231")}},
		// etcd keeps the connection but never answers the claim (a proposal
		// dropped in a leader change): the watchdog's patience abandons it.
		{"request lost inside etcd, dynamic", testenv.ProxySwallowRequest, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFaultEnv(t)
			a := f.allocator()
			a.beforeCommit = func() {
				if a.Unknown == 0 {
					f.proxy.SetMode(tc.mode)
				}
			}
			cid := "c-" + strings.ReplaceAll(tc.name, " ", "-")
			got, err := a.Allocate(ctxFor(t, 20*time.Second), Request{ContainerID: cid, IfName: "net1", Fixed: tc.fixed})
			if err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			if a.Unknown != 1 || !a.Committed || len(got) != 1 {
				t.Fatalf("unknown outcomes %d, committed %v, got %v; want 1, true, one address", a.Unknown, a.Committed, got)
			}
			if tc.fixed != nil && got[0].IP != tc.fixed[0] {
				t.Fatalf("got %v, want the fixed %v", got[0].IP, tc.fixed[0])
			}
			att, recs := f.held(cid)
			if len(att) != 1 || len(recs) != 1 || att[0] != got[0].IP.String() || recs[0] != att[0] {
				t.Fatalf("store holds attachment %v and records %v for the container, want exactly %v", att, recs, got[0].IP)
			}
		})
	}
}

// When etcd stays away after applying a claim, past the call's deadline,
// the ADD fails with an error that says etcd did not answer (code 11), and
// what it may hold is freed by the runtime's DEL, or taken over by the same
// pod's next ADD: the pod never holds two addresses.
func TestUnknownClaimOutcomePastTheDeadline(t *testing.T) {
	for _, then := range []string{"del", "next sandbox"} {
		t.Run(then, func(t *testing.T) {
			f := newFaultEnv(t)
			a := f.allocator()
			a.beforeCommit = func() { f.proxy.SetModeThen(testenv.ProxyDropResponse, testenv.ProxyDown) }
			req := Request{ContainerID: "sandbox-1", IfName: "net1", PodNamespace: "db", PodName: "web-7f", PodUID: "uid-1"}
			_, err := a.Allocate(ctxFor(t, 4*time.Second), req)
			var amb *store.AmbiguousError
			if err == nil || !errors.As(err, &amb) || !store.IsUnavailable(err) {
				t.Fatalf("Allocate = %v, want an unknown-outcome error that counts as unavailable (code 11)", err)
			}
			att, recs := f.held(req.ContainerID)
			if len(att) != 1 || len(recs) != 1 {
				t.Fatalf("the response was lost after the claim applied; store holds %v / %v", att, recs)
			}
			f.proxy.SetMode(testenv.ProxyPass)
			switch then {
			case "del":
				freed, err := f.allocator().Store.Release(ctxFor(t, 10*time.Second), req.ContainerID, req.IfName, time.Now(), ReusePolicy(f.net))
				if err != nil || len(freed) != 1 || freed[0].String() != att[0] {
					t.Fatalf("DEL freed %v, %v; want %v", freed, err, att)
				}
			case "next sandbox":
				next := req
				next.ContainerID = "sandbox-2"
				b := f.allocator()
				got, err := b.Allocate(ctxFor(t, 10*time.Second), next)
				if err != nil || len(got) != 1 || got[0].IP.String() != att[0] || b.Retired != 1 {
					t.Fatalf("next sandbox got %v, %v (retired %d); want %v taken over from the first", got, err, b.Retired, att[0])
				}
				// The first sandbox's late DEL frees nothing.
				freed, err := b.Store.Release(ctxFor(t, 10*time.Second), req.ContainerID, req.IfName, time.Now(), ReusePolicy(f.net))
				if err != nil || len(freed) != 0 {
					t.Fatalf("late DEL of the first sandbox freed %v, %v", freed, err)
				}
				if att2, recs2 := f.held(next.ContainerID); len(att2) != 1 || len(recs2) != 1 || att2[0] != att[0] {
					t.Fatalf("second sandbox holds %v / %v after the late DEL, want %v", att2, recs2, att[0])
				}
			}
			if att, recs := f.held(req.ContainerID); len(att)+len(recs) != 0 {
				t.Fatalf("first sandbox still holds %v / %v", att, recs)
			}
		})
	}
}

// An in-flight request to a member that stops answering (its packets held,
// as a cut network does) fails over to the other member within 5 s; the
// lost member is dropped from the client.
func TestWatchdogFailsOverFromALostMember(t *testing.T) {
	e := testenv.StartEtcd(t)
	target := strings.TrimPrefix(e.ClientURL, "http://")
	lost, good := testenv.StartProxy(t, target), testenv.StartProxy(t, target)
	eps := []string{"http://" + lost.Addr, "http://" + good.Addr}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := store.New(cli, "/kube-ipam", "faults")
	st.SetWatchdog(store.DefaultWatchdog())
	// Both connections up before the loss, so the balancer uses both.
	for i := range 4 {
		if _, err := st.Attachment(ctxFor(t, 5*time.Second), fmt.Sprint("warm", i), "net1"); err != nil {
			t.Fatal(err)
		}
	}
	lost.SetMode(testenv.ProxyBlackHole)
	// The balancer alternates, so one of the first requests goes to the lost
	// member; each must still finish inside its 5 s.
	for i := range 6 {
		if _, err := st.Attachment(ctxFor(t, 5*time.Second), fmt.Sprint("c", i), "net1"); err != nil {
			t.Fatalf("read %d with one member lost: %v", i, err)
		}
	}
	if got := cli.Endpoints(); len(got) != 1 || got[0] != eps[1] {
		t.Fatalf("client endpoints %v, want only the member that answers (%s)", got, eps[1])
	}
	lost.SetMode(testenv.ProxyPass)
}
