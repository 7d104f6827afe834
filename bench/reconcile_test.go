package bench

// BenchmarkReconcile times one kube-ipam-controller reconcile pass over
// 10 000 allocations stored in a real etcd, with 10 000 pods in an
// in-memory informer store; 1% of the pod names were reused by new pods
// (another UID), so their allocations are GC candidates.

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"kubeipam/internal/config"
	"kubeipam/internal/controller"
	"kubeipam/internal/ipam"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

func BenchmarkReconcile(b *testing.B) {
	const n, gone = 10000, 100
	e := testenv.StartEtcd(b)
	cfg, err := config.Parse([]byte(`{"cniVersion":"1.0.0","name":"bench","type":"macvlan","ipam":{"type":"kube-ipam",
		"etcdConfig":{"etcdURL":"` + e.Endpoints[0] + `"},"subnet":"10.32.0.0/16","rangeStart":"10.32.0.10","rangeEnd":"10.32.255.200"}}`))
	if err != nil {
		b.Fatal(err)
	}
	net := controller.NewNetwork(cfg, store.New(e.Client(b), cfg.Etcd.Prefix, cfg.Name))
	ctx := context.Background()
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	work := make(chan int)
	for range 64 {
		wg.Go(func() {
			for i := range work {
				name, uid := fmt.Sprintf("pod-%05d", i), fmt.Sprintf("uid-%05d", i)
				ip := ipam.Advance(netip.MustParseAddr("10.32.0.10"), uint64(i))
				cid := fmt.Sprintf("c%05d", i)
				ok, err := net.Store.Commit(ctx, &store.Claim{
					Attachment: store.Attachment{ContainerID: cid, IfName: "net1", PodNamespace: "default", PodName: name, PodUID: uid},
					Items: []store.ClaimItem{{Mode: store.ClaimFresh, Record: store.Record{Network: "bench", IP: ip.String(), Kind: store.KindDynamic,
						IfName: "net1", ContainerID: cid, PodNamespace: "default", PodName: name, PodUID: uid}}}})
				if !ok || err != nil {
					errs <- fmt.Errorf("claim %d: %v %v", i, ok, err)
					return
				}
			}
		})
	}
	for i := range n {
		uid := fmt.Sprintf("uid-%05d", i)
		if i < gone {
			uid = "new-" + uid
		}
		_ = indexer.Add(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("pod-%05d", i), UID: types.UID(uid)}})
		work <- i
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	b.Logf("seeded %d allocations in etcd in %v", n, time.Since(start).Round(time.Millisecond))

	r := controller.NewReconciler([]*controller.Network{net}, fake.NewClientset(), corelisters.NewPodLister(indexer),
		controller.NewMetrics(), controller.Options{Grace: time.Hour})
	b.ResetTimer()
	var total time.Duration
	for range b.N {
		t0 := time.Now()
		res, err := r.Pass(ctx, net)
		if err != nil {
			b.Fatal(err)
		}
		total += time.Since(t0)
		if res.Attachments != n || res.Candidates != gone {
			b.Fatalf("pass: %+v", res)
		}
	}
	per := total / time.Duration(b.N)
	b.ReportMetric(float64(per.Milliseconds()), "ms/pass")
	fmt.Printf("reconcile pass over %d allocations and %d pods (%d candidates): %v\n", n, n, gone, per.Round(time.Millisecond))
}
