package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/util/workqueue"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
)

// Config is the command line of kube-ipam-controller.
type Config struct {
	ConfigFile                   string
	Kubeconfig                   string
	Resync                       time.Duration
	Grace                        time.Duration
	ReleaseTerminatingOnNotReady time.Duration
	LeaderElect                  bool
	LeaseNamespace, LeaseName    string
	Identity                     string
	MetricsAddr                  string
	Log                          *slog.Logger
}

// Run is the whole controller: metrics server, etcd watches, and (as leader)
// the reconcile loop, until ctx ends.
func Run(ctx context.Context, c Config) error {
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	cfgs, err := config.LoadNetworks(c.ConfigFile)
	if err != nil {
		return err
	}
	var nets []*Network
	for _, cfg := range cfgs {
		ecli, err := store.Connect(cfg.Etcd, 5*time.Second)
		if err != nil {
			return fmt.Errorf("network %s: %w", cfg.Name, err)
		}
		defer ecli.Close()
		nets = append(nets, NewNetwork(cfg, ecli))
	}
	var rc *rest.Config
	if c.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	m := NewMetrics()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.MetricsAddr != "" {
		ln, err := net.Listen("tcp", c.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		c.Log.Info("serving metrics", "addr", ln.Addr().String())
	}
	for _, n := range nets {
		go m.Watch(ctx, n)
	}
	reconcile := func(ctx context.Context) {
		if err := runLoop(ctx, c, nets, kube, m); err != nil {
			c.Log.Error("controller stopped", "err", err)
		}
	}
	if !c.LeaderElect {
		reconcile(ctx)
		return nil
	}
	id := c.Identity
	if id == "" {
		h, _ := os.Hostname()
		id = fmt.Sprintf("%s_%d", h, os.Getpid())
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: c.LeaseNamespace, Name: c.LeaseName},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	lost := make(chan struct{})
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, ReleaseOnCancel: true,
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				c.Log.Info("became leader", "identity", id)
				reconcile(ctx)
			},
			OnStoppedLeading: func() { close(lost) },
		},
	})
	if err != nil {
		return err
	}
	le.Run(ctx)
	if ctx.Err() == nil {
		<-lost
		return errors.New("lost the leader lease")
	}
	return nil
}

// runLoop is the sample-controller loop: pod deletions and the periodic
// full pass enqueue a network; one worker reconciles it.
func runLoop(ctx context.Context, c Config, nets []*Network, kube kubernetes.Interface, m *Metrics) error {
	factory := informers.NewSharedInformerFactory(kube, 0)
	podInf := factory.Core().V1().Pods()
	q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer q.ShutDown()
	enqueueAll := func() {
		for _, n := range nets {
			q.Add(n.Cfg.Name)
		}
	}
	_, err := podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		DeleteFunc: func(any) { enqueueAll() },
		UpdateFunc: func(old, cur any) {
			if p, ok := cur.(*corev1.Pod); ok && p.DeletionTimestamp != nil && c.ReleaseTerminatingOnNotReady > 0 {
				enqueueAll()
			}
		},
	})
	if err != nil {
		return err
	}
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("informer %v did not sync", typ)
		}
	}
	r := NewReconciler(nets, kube, podInf.Lister(), m, Options{Grace: c.Grace, ReleaseTerminatingOnNotReady: c.ReleaseTerminatingOnNotReady, Log: c.Log})
	byName := map[string]*Network{}
	for _, n := range nets {
		byName[n.Cfg.Name] = n
	}
	go func() {
		for {
			key, quit := q.Get()
			if quit {
				return
			}
			func() {
				defer q.Done(key)
				n := byName[key]
				if n == nil {
					q.Forget(key)
					return
				}
				res, err := r.Pass(ctx, n)
				if err != nil && ctx.Err() != nil {
					return // shutting down (or lost the lease) mid-pass
				}
				if err != nil {
					c.Log.Error("reconcile pass failed", "network", key, "err", err)
					q.AddRateLimited(key)
					return
				}
				q.Forget(key)
				if res.Released > 0 || res.Stickies > 0 {
					c.Log.Info("pass", "network", key, "attachments", res.Attachments, "candidates", res.Candidates, "released", res.Released, "stickies", res.Stickies, "freedIPs", res.FreedIPs)
				}
			}()
		}
	}()
	enqueueAll()
	t := time.NewTicker(c.Resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			enqueueAll()
		}
	}
}
