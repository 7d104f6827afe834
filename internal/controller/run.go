package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/util/workqueue"

	"kubeipam/internal/config"
	"kubeipam/internal/stores"
)

// Config is the command line of kube-ipam-controller.
type Config struct {
	ConfigFile string
	// NADs: also manage the kube-ipam networks of every
	// NetworkAttachmentDefinition, re-read every Resync.
	NADs                         bool
	Kubeconfig                   string
	Resync                       time.Duration
	Grace                        time.Duration
	ReleaseTerminatingOnNotReady time.Duration
	LeaderElect                  bool
	LeaseNamespace, LeaseName    string
	Identity                     string
	MetricsAddr                  string
	// KubeAPIQPS and KubeAPIBurst are client-go's rate limit for the
	// controller's API calls (client-go's own default, 5 and 10, held GC
	// to 5 lookups a second).
	KubeAPIQPS   float32
	KubeAPIBurst int
	// Workers bounds a pass's concurrent lookups and releases (0: DefaultWorkers).
	Workers int
	Log     *slog.Logger
}

// Defaults of Config's client-go rate limit.
const (
	DefaultKubeAPIQPS   = 50
	DefaultKubeAPIBurst = 100
)

// KubeClientConfig reads a kubeconfig file (in-cluster configuration when
// empty) and sets client-go's rate limit (QPS and Burst; the defaults
// above when 0).
func KubeClientConfig(kubeconfig string, qps float32, burst int) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, err
	}
	if qps <= 0 {
		qps = DefaultKubeAPIQPS
	}
	if burst <= 0 {
		burst = DefaultKubeAPIBurst
	}
	rc.QPS, rc.Burst = qps, burst
	return rc, nil
}

// Run is the whole controller: metrics server, etcd watches, and (as leader)
// the reconcile loop, until ctx ends.
func Run(ctx context.Context, c Config) error {
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	// --config is followed: a change that parses replaces the networks at
	// the next refresh, one that does not is refused (logged) and the last
	// good config stays.
	var static []*config.Network
	var reloader *config.Reloader
	if c.ConfigFile != "" {
		reloader = &config.Reloader{Path: c.ConfigFile}
		var err error
		static, _, err = reloader.Reload()
		var none *config.NoNetworkError
		if err != nil && !(c.NADs && errors.As(err, &none)) {
			return err
		}
	}
	rc, err := KubeClientConfig(c.Kubeconfig, c.KubeAPIQPS, c.KubeAPIBurst)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	opener := stores.New(5 * time.Second)
	// Networks on the Kubernetes API store are opened as the controller
	// itself (their ipam.kubeConfig is the nodes' file).
	opener.KubeREST = rc
	defer opener.Close()
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	m := NewMetrics()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reg := newRegistry(opener.Open, m.Watch, c.Log)
	var dyn dynamic.Interface
	if c.NADs {
		if dyn, err = dynamic.NewForConfig(rc); err != nil {
			return err
		}
	}
	// refresh makes the managed networks those of --config (re-read) and,
	// with --nads, of the NetworkAttachmentDefinitions now.
	refresh := func(ctx context.Context) error {
		if reloader != nil {
			nets, changed, err := reloader.Reload()
			switch {
			case err != nil && len(static) > 0:
				reg.reportOnce(slog.LevelError, "config refused; keeping the last good one", "config", c.ConfigFile, "err", err.Error())
			case changed && len(static) > 0:
				c.Log.Info("config reloaded", "config", c.ConfigFile, "networks", len(nets))
			}
			if changed {
				static = nets
			}
		}
		want := static
		if c.NADs {
			nn, err := ListNADNetworks(ctx, dyn)
			if err != nil {
				return err // keep the networks as they are
			}
			for _, p := range nn.Problems {
				reg.reportOnce(slog.LevelWarn, "NetworkAttachmentDefinition not managed: "+p)
			}
			var conflicts []string
			want, conflicts = DesiredNetworks(static, nn.ByNAD)
			for _, msg := range conflicts {
				reg.reportOnce(slog.LevelWarn, msg)
			}
		}
		added, err := reg.Set(ctx, want)
		if len(added) > 0 {
			c.Log.Info("managing networks", "added", added, "all", len(reg.List()))
		}
		return err
	}
	if err := refresh(ctx); err != nil {
		return err
	}
	if len(reg.List()) == 0 && !c.NADs {
		return fmt.Errorf("%s: no kube-ipam network", c.ConfigFile)
	}
	// Every replica follows the config and the NADs (the metrics of every
	// network are exported by all of them); the leader's loop reads reg.
	go func() {
		t := time.NewTicker(c.Resync)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := refresh(ctx); err != nil && ctx.Err() == nil {
					c.Log.Error("reading the networks", "err", err)
				}
			}
		}
	}()
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
	reconcile := func(ctx context.Context) {
		m.setLeader(true)
		defer m.setLeader(false)
		if err := runLoop(ctx, c, reg, kube, m); err != nil {
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
func runLoop(ctx context.Context, c Config, reg *registry, kube kubernetes.Interface, m *Metrics) error {
	factory := informers.NewSharedInformerFactory(kube, 0)
	podInf := factory.Core().V1().Pods()
	// The cache holds every pod of the cluster; only what the rules read
	// is kept (about a third of the controller's memory at 20,000 pods).
	if err := podInf.Informer().SetTransform(slimPod); err != nil {
		return err
	}
	q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer q.ShutDown()
	enqueueAll := func() {
		for _, n := range reg.List() {
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
	r := NewReconciler(reg.List(), kube, podInf.Lister(), m, Options{Grace: c.Grace, ReleaseTerminatingOnNotReady: c.ReleaseTerminatingOnNotReady,
		Workers: c.Workers, Log: c.Log})
	go func() {
		for {
			key, quit := q.Get()
			if quit {
				return
			}
			func() {
				defer q.Done(key)
				n := reg.Get(key)
				if n == nil {
					q.Forget(key)
					return
				}
				res, err := r.Pass(ctx, n)
				if err != nil && ctx.Err() != nil {
					return // shutting down (or lost the lease) mid-pass
				}
				logPass(c.Log, key, res, err)
				if err != nil {
					q.AddRateLimited(key)
					return
				}
				q.Forget(key)
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

// slimPod is the informer's transform: a pod reduced to what the rules and
// the event handlers read (namespace, name, UID, deletion timestamp, node),
// so that a large cluster's pod cache does not hold specs, statuses and
// managed fields.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a DeletedFinalStateUnknown: its pod was slimmed when cached
	}
	return &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, UID: p.UID, ResourceVersion: p.ResourceVersion,
			DeletionTimestamp: p.DeletionTimestamp, DeletionGracePeriodSeconds: p.DeletionGracePeriodSeconds},
		Spec: corev1.PodSpec{NodeName: p.Spec.NodeName},
	}, nil
}

// logPass logs one pass: a line at info with every count (warn when some
// allocations could not be decided, error when the pass failed).
func logPass(log *slog.Logger, network string, res Result, err error) {
	attrs := []any{"network", network, "attachments", res.Attachments, "stickyRecords", res.StickyRecords,
		"alive", res.Alive, "candidates", res.Candidates, "released", res.Released, "stickiesReleased", res.Stickies,
		"freedIPs", res.FreedIPs, "keptGrace", res.KeptGrace, "keptStatefulSet", res.KeptStatefulSet,
		"keptChanged", res.KeptChanged, "skipped", res.Skipped, "duration", res.Duration.Round(time.Millisecond)}
	if res.Skipped > 0 {
		attrs = append(attrs, "skipReasons", strings.Join(res.SkipSummary(), "; "))
	}
	switch {
	case err != nil:
		log.Error("reconcile pass failed", append(attrs, "err", err)...)
	case res.Skipped > 0:
		log.Warn("pass", attrs...) // the skipped allocations are kept and looked at again next pass
	default:
		log.Info("pass", attrs...)
	}
}
