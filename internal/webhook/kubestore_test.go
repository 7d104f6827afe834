package webhook

// The webhook's holder check (BackendLookup) on a network whose
// allocations live in the Kubernetes API store, against a real
// kube-apiserver: the same decisions, with the same messages, as on etcd.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"

	"kubeipam/internal/allocator"
	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/store/kubestore"
	"kubeipam/internal/store/kubestore/kubestoretest"
)

// kubeNetworks is networks() with net-a in the Kubernetes API store of
// the API server of kubeconfig (net-b stays in etcd at endpoint).
func kubeNetworks(t *testing.T, kubeconfig, endpoint string) []*config.Network {
	t.Helper()
	conf := fmt.Sprintf(`{"cniVersion": "0.3.1", "name": "multus", "type": "multus", "delegates": [
	  {"cniVersion": "0.3.1", "name": "net-a", "type": "macvlan", "ipam": {"type": "kube-ipam", "store": "kubernetes",
	    "kubeConfig": %[2]q, "subnet": "10.10.0.0/16", "rangeStart": "10.10.0.10",
	    "rangeEnd": "10.10.0.200", "gateway": "10.10.0.1", "fixedStart": "10.10.1.0", "fixedEnd": "10.10.1.255"}},
	  {"cniVersion": "0.3.1", "name": "net-b", "type": "macvlan", "ipam": {"type": "kube-ipam",
	    "etcdConfig": {"etcdURL": %[1]q}, "subnet": "10.20.0.0/24", "gateway": "10.20.0.1"}}]}`, endpoint, kubeconfig)
	nets, err := config.ParseNetworks([]byte(conf), "test")
	if err != nil {
		t.Fatal(err)
	}
	if nets[0].Store != config.StoreKubernetes {
		t.Fatalf("net-a has store %q", nets[0].Store)
	}
	return nets
}

// seedBackend commits a record for ip as the plugin would, on any store.
func seedBackend(t *testing.T, b store.Backend, cid string, rec store.Record) {
	t.Helper()
	rec.Kind, rec.IfName, rec.ContainerID, rec.Created = store.KindFixed, "eth0", cid, time.Now()
	ok, err := b.Commit(context.Background(), &store.Claim{
		Attachment: store.Attachment{ContainerID: cid, IfName: "eth0", PodNamespace: rec.PodNamespace, PodName: rec.PodName},
		Items:      []store.ClaimItem{{Record: rec, Mode: store.ClaimFresh}},
	})
	if err != nil || !ok {
		t.Fatalf("seeding %s in %s: ok=%v err=%v", rec.IP, b.Describe(), ok, err)
	}
}

// holderCases are TestHolders' requests against the holders seedHolders
// writes.
func holderCases() []tcase {
	return []tcase{
		{name: "pod conflict", obj: podObj("default", "x", ann{"kube-ipam.ip": "10.10.1.7"}),
			deny: []string{`Pod default/x`, `kube-ipam.ip="10.10.1.7"`, `10.10.1.7 is already held on network "net-a" by pod other/holder`}},
		{name: "pod holding its own address", obj: podObj("other", "holder", ann{"kube-ipam.ip": "10.10.1.7"})},
		{name: "same address on another network is free", obj: podObj("default", "x", ann{"kube-ipam.ip.net-b": "10.20.0.7"})},
		{name: "free address", obj: podObj("default", "x", ann{"kube-ipam.ip": "10.10.1.20"})},
		{name: "released address is free", obj: podObj("default", "x", ann{"kube-ipam.ip": "10.10.1.11"})},
		{name: "own statefulset passes", obj: statefulSet("web", "uid-web", 2, ann{"kube-ipam.ip-pool": "10.10.1.10,10.10.1.8"})},
		{name: "own statefulset pod passes", obj: stsPod("default", "web", "uid-web", 1, ann{"kube-ipam.ip-pool": "10.10.1.10,10.10.1.8"})},
		{name: "same name, new statefulset UID", obj: statefulSet("web", "uid-new", 2, ann{"kube-ipam.ip-pool": "10.10.1.10,10.10.1.8"}),
			deny: []string{"10.10.1.8 (entry for ordinal 1) is already held", "StatefulSet default/web ordinal 1"}},
		{name: "own statefulset, other ordinal", obj: statefulSet("web", "uid-web", 2, ann{"kube-ipam.ip-pool": "10.10.1.8,10.10.1.10"}),
			deny: []string{"entry for ordinal 0"}},
		{name: "statefulset taking a pod's address", obj: statefulSet("db", "uid-db", 1, ann{"kube-ipam.ip-pool": "10.10.1.7"}),
			deny: []string{"pod other/holder"}},
		{name: "deployment rollout keeps its address", obj: deployment("d", 1, ann{"kube-ipam.ip": "10.10.1.9"})},
		{name: "pod of the deployment's next ReplicaSet", obj: rsPod("d-77c9b", "77c9b", ann{"kube-ipam.ip": "10.10.1.9"})},
		{name: "pod of another ReplicaSet", obj: rsPod("e-77c9b", "77c9b", ann{"kube-ipam.ip": "10.10.1.9"}), deny: []string{"pod default/d-5d8f7-abcde"}},
		{name: "other deployment", obj: deployment("e", 1, ann{"kube-ipam.ip": "10.10.1.9"}), deny: []string{"pod default/d-5d8f7-abcde"}},
		{name: "two addresses, one held", obj: podObj("default", "x", ann{"kube-ipam.ip": "10.10.1.20,10.10.1.7"}),
			deny: []string{`10.10.1.7 is already held on network "net-a" by pod other/holder (container c-holder, interface eth0, node n1)`}},
	}
}

// seedHolders writes net-a's holders of TestHolders into b, and a
// released address (a tombstone is not a holder).
func seedHolders(t *testing.T, b store.Backend, n *config.Network) {
	t.Helper()
	seedBackend(t, b, "c-holder", store.Record{Network: "net-a", IP: "10.10.1.7", PodNamespace: "other", PodName: "holder", Node: "n1"})
	seedBackend(t, b, "c-web1", store.Record{Network: "net-a", IP: "10.10.1.8", PodNamespace: "default", PodName: "web-1",
		StatefulSet: "web", StatefulSetUID: "uid-web", Ordinal: 1})
	seedBackend(t, b, "c-dep", store.Record{Network: "net-a", IP: "10.10.1.9", PodNamespace: "default", PodName: "d-5d8f7-abcde"})
	seedBackend(t, b, "c-gone", store.Record{Network: "net-a", IP: "10.10.1.11", PodNamespace: "default", PodName: "gone"})
	if freed, err := b.Release(context.Background(), "c-gone", "eth0", time.Now(), allocator.ReusePolicy(n)); err != nil || len(freed) != 1 {
		t.Fatalf("releasing 10.10.1.11 in %s: %v %v", b.Describe(), freed, err)
	}
}

// The webhook on a Kubernetes API store network finds the holder of a
// fixed address and refuses a conflicting request exactly as on etcd:
// every case of TestHolders is decided the same way, with the same
// message, on both stores.
func TestHoldersOnKubeStore(t *testing.T) {
	k, api := kubestoretest.Start(t, "webhook-test")
	endpoint := k.Etcd.Endpoints[0]
	etcdNets, kubeNets := networks(t, endpoint), kubeNetworks(t, k.Kubeconfig, endpoint)
	seedHolders(t, store.New(k.Etcd.Client(t), etcdNets[0].Etcd.Prefix, "net-a"), etcdNets[0])
	seedHolders(t, kubestore.New(api, "net-a", ""), kubeNets[0])

	lookup := NewBackendLookup(2 * time.Second)
	t.Cleanup(func() { lookup.Close() })
	onEtcd, onKube := NewHandler(etcdNets, lookup.Lookup, time.Now), NewHandler(kubeNets, lookup.Lookup, time.Now)
	t.Run("kubernetes", func(t *testing.T) { run(t, onKube, holderCases()) })
	t.Run("etcd", func(t *testing.T) { run(t, onEtcd, holderCases()) })
	for _, tc := range holderCases() {
		req := request(t, admissionv1.Create, tc.obj, nil)
		e, ks := onEtcd.Review(t.Context(), req), onKube.Review(t.Context(), req)
		if fmt.Sprint(e.Allowed, e.Result, e.Warnings) != fmt.Sprint(ks.Allowed, ks.Result, ks.Warnings) {
			t.Errorf("%s: etcd and the Kubernetes API store decide differently:\n  etcd: %v %+v %q\n  kube: %v %+v %q",
				tc.name, e.Allowed, e.Result, e.Warnings, ks.Allowed, ks.Result, ks.Warnings)
		}
	}

	// The lookup really reads the API: a holder written there after the
	// handler was made is seen on the next request.
	seedBackend(t, kubestore.New(api, "net-a", ""), "c-late", store.Record{Network: "net-a", IP: "10.10.1.20", PodNamespace: "other", PodName: "late"})
	run(t, onKube, []tcase{{name: "holder written later", obj: podObj("default", "x", ann{"kube-ipam.ip": "10.10.1.20"}),
		deny: []string{`10.10.1.20 is already held on network "net-a" by pod other/late`}}})
}

// An API server that cannot be reached: the request is refused (or, with
// AllowOnStoreError, admitted with a warning) naming the Kubernetes API
// store, not an etcd.
func TestKubeStoreUnreachable(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	body := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`
	if err := os.WriteFile(kc, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	nets := kubeNetworks(t, kc, "http://127.0.0.1:1")
	l := NewBackendLookup(300 * time.Millisecond)
	defer l.Close()
	h := NewHandler(nets, l.Lookup, nil)
	h.StoreTimeout = 2 * time.Second
	obj := podObj("default", "x", ann{"kube-ipam.ip": "10.10.1.7"})
	start := time.Now()
	run(t, h, []tcase{{name: "closed", obj: obj, deny: []string{`cannot check whether 10.10.1.7 is free on network "net-a"`, "kubernetes API store", kc}}})
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("refused after %v: longer than the store timeout", took)
	}
	resp := h.Review(context.Background(), request(t, admissionv1.Create, obj, nil))
	if msg := resp.Result.Message; strings.Contains(msg, "etcd") {
		t.Errorf("the refusal names an etcd for a Kubernetes API store network: %q", msg)
	}
	h.AllowOnStoreError = true
	run(t, h, []tcase{{name: "open", obj: obj, warning: "admitted unchecked"}})
}
