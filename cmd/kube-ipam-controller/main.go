// Command kube-ipam-controller is the cluster-side half of kube-ipam: it
// frees allocations whose pods are gone and exports pool metrics. See
// docs/controller.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"

	"kubeipam/internal/cmdline"
	"kubeipam/internal/config"
	"kubeipam/internal/controller"
	"kubeipam/internal/servingcert"
	"kubeipam/internal/version"
	"kubeipam/internal/webhook"
)

func main() {
	var c controller.Config
	fs := pflag.NewFlagSet("kube-ipam-controller", pflag.ContinueOnError)
	fs.StringVar(&c.ConfigFile, "config", "", "CNI config file, or directory of them, with kube-ipam networks (required unless --nads)")
	fs.BoolVar(&c.NADs, "nads", false, "also manage the kube-ipam networks of every NetworkAttachmentDefinition, re-read every --resync (RBAC: list network-attachment-definitions)")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty = in-cluster config")
	fs.DurationVar(&c.Resync, "resync", time.Minute, "period of the full reconcile pass")
	fs.DurationVar(&c.Grace, "grace", 5*time.Minute, "an allocation must be seen leaked on two passes this far apart before it is freed")
	fs.DurationVar(&c.ReleaseTerminatingOnNotReady, "release-terminating-on-notready", 0, "free the addresses of a pod Terminating on a NotReady node for this long (0 = keep until the pod object is gone)")
	fs.BoolVar(&c.LeaderElect, "leader-elect", true, "elect a leader with a coordination.k8s.io Lease so that several replicas are safe")
	fs.StringVar(&c.LeaseNamespace, "leader-elect-namespace", "kube-system", "namespace of the leader Lease")
	fs.StringVar(&c.LeaseName, "leader-elect-name", "kube-ipam-controller", "name of the leader Lease")
	fs.StringVar(&c.Identity, "leader-elect-identity", "", "identity in the Lease (default hostname_pid)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", ":9548", "address of the /metrics endpoint; empty = off")
	fs.Float32Var(&c.KubeAPIQPS, "kube-api-qps", controller.DefaultKubeAPIQPS, "client-go rate limit for Kubernetes API calls: sustained requests per second")
	fs.IntVar(&c.KubeAPIBurst, "kube-api-burst", controller.DefaultKubeAPIBurst, "client-go rate limit for Kubernetes API calls: burst")
	fs.IntVar(&c.Workers, "workers", controller.DefaultWorkers, "concurrent API lookups and etcd releases of a pass")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	showVersion := fs.Bool("version", false, "print the version and exit")
	var wh webhookFlags
	fs.StringVar(&wh.addr, "webhook-addr", "", "address of the validating admission webhook (HTTPS, /validate); empty = off")
	fs.StringVar(&wh.cert, "webhook-cert", "/etc/kube-ipam/webhook/tls.crt", "webhook serving certificate")
	fs.StringVar(&wh.key, "webhook-key", "/etc/kube-ipam/webhook/tls.key", "webhook serving key")
	fs.StringVar(&wh.secret, "webhook-cert-secret", "", "self-managed webhook certificate: create and rotate it in this Secret and keep --webhook-configuration's caBundle up to date (--webhook-cert and --webhook-key are then not read); empty = the files")
	fs.StringVar(&wh.service, "webhook-service", "kube-ipam-webhook", "Service of the webhook, whose DNS names the self-managed certificate covers")
	fs.StringVar(&wh.namespace, "webhook-namespace", envOr("POD_NAMESPACE", "kube-ipam"), "namespace of --webhook-cert-secret and --webhook-service (default: $POD_NAMESPACE, else kube-ipam)")
	fs.StringVar(&wh.configuration, "webhook-configuration", "kube-ipam", "ValidatingWebhookConfiguration whose caBundle the self-managed mode keeps up to date")
	fs.BoolVar(&wh.allowOnStoreError, "allow-on-store-error", false, "admit objects (with a warning) when the store (etcd or the Kubernetes API) cannot be read, instead of rejecting them")
	if code, ok := cmdline.Parse(fs, os.Args[1:], false); !ok {
		os.Exit(code)
	}
	if *showVersion {
		fmt.Println("kube-ipam-controller", version.Version)
		os.Exit(0)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		os.Exit(cmdline.Fail(fs, "--log-level %q: want debug, info, warn or error", *logLevel))
	}
	if (c.ConfigFile == "" && !c.NADs) || c.Resync <= 0 || c.Grace < 0 || c.KubeAPIQPS <= 0 || c.KubeAPIBurst <= 0 || c.Workers <= 0 {
		os.Exit(cmdline.Fail(fs, "--config is required (unless --nads), --resync, --kube-api-qps, --kube-api-burst and --workers must be > 0, and --grace >= 0"))
	}
	if wh.secret != "" {
		switch {
		case wh.addr == "":
			os.Exit(cmdline.Fail(fs, "--webhook-cert-secret needs --webhook-addr (the webhook it is for is off)"))
		case fs.Changed("webhook-cert") || fs.Changed("webhook-key"):
			os.Exit(cmdline.Fail(fs, "--webhook-cert/--webhook-key and --webhook-cert-secret exclude each other: the certificate comes either from files or from the self-managed Secret"))
		case wh.service == "" || wh.namespace == "" || wh.configuration == "":
			os.Exit(cmdline.Fail(fs, "--webhook-cert-secret needs a non-empty --webhook-service, --webhook-namespace and --webhook-configuration"))
		}
	}
	c.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	c.Log.Info("starting", "version", version.Version, "logLevel", level.String(), "grace", c.Grace, "resync", c.Resync,
		"kubeAPIQPS", c.KubeAPIQPS, "kubeAPIBurst", c.KubeAPIBurst, "workers", c.Workers)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The webhook answers on every replica, leader or not: admission must
	// not depend on who reconciles.
	if wh.addr != "" {
		shutdown, err := serveWebhook(ctx, c, wh)
		if err != nil {
			c.Log.Error("kube-ipam-controller: webhook", "err", err)
			os.Exit(1)
		}
		defer shutdown()
	}
	if err := controller.Run(ctx, c); err != nil {
		c.Log.Error("kube-ipam-controller", "err", err)
		os.Exit(1)
	}
}

type webhookFlags struct {
	addr, cert, key                           string
	secret, service, namespace, configuration string
	allowOnStoreError                         bool
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func serveWebhook(ctx context.Context, c controller.Config, f webhookFlags) (func(), error) {
	log := c.Log
	reloader := &config.Reloader{Path: c.ConfigFile}
	networks, _, err := reloader.Reload()
	if err != nil {
		return nil, err
	}
	// The Kubernetes API store is read as the controller itself.
	rc, err := controller.KubeClientConfig(c.Kubeconfig, c.KubeAPIQPS, c.KubeAPIBurst)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	lookup := webhook.NewBackendLookup(2 * time.Second)
	lookup.UseKubeREST(rc)
	h := webhook.NewHandler(networks, lookup.Lookup, time.Now)
	h.AllowOnStoreError = f.allowOnStoreError
	h.Log = log
	// The webhook follows the mounted config as the controller does.
	ctx, stopFollowing := context.WithCancel(ctx)
	go reloader.Follow(ctx, c.Resync, func(nets []*config.Network) {
		h.SetNetworks(nets)
		log.Info("webhook: config reloaded", "config", c.ConfigFile, "networks", len(nets))
	}, func(err error) {
		log.Error("webhook: config refused; keeping the last good one", "config", c.ConfigFile, "err", err)
	})
	srv := webhook.NewServer(f.addr, h)
	serve := func() error { return srv.ListenAndServeTLS(f.cert, f.key) }
	if f.secret != "" {
		cs, err := kubernetes.NewForConfig(rc)
		if err != nil {
			stopFollowing()
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
		m := &servingcert.Manager{Client: cs, Namespace: f.namespace, Secret: f.secret, Service: f.service,
			WebhookConfiguration: f.configuration, Log: log}
		// Until the first sync the webhook has no certificate: its
		// readiness probe fails, which is what we want.
		go func() {
			if err := m.Start(ctx); err != nil && ctx.Err() == nil {
				log.Error("webhook certificate", "err", err)
			}
		}()
		serve = func() error { return srv.ListenAndServeTLSWith(m.GetCertificate) }
	}
	go func() {
		if err := serve(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("webhook server", "err", err)
		}
	}()
	return func() {
		stopFollowing()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		lookup.Close()
	}, nil
}
