package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"k8s.io/client-go/kubernetes"

	"kubeipam/internal/config"
	"kubeipam/internal/stores"
)

// configPath is the network config a command reads: --config, else
// $KUBE_IPAMCTL_CONFIG, else the first file of ConfDir with a kube-ipam
// network.
func (a *App) configPath(g *globals) (string, error) {
	if g.config != "" {
		return g.config, nil
	}
	if p := os.Getenv("KUBE_IPAMCTL_CONFIG"); p != "" {
		return p, nil
	}
	return FindConfig(a.ConfDir)
}

// open parses the config and opens every network's store (one client per
// distinct connection); closeAll closes them.
func (a *App) open(ctx context.Context, g *globals) ([]*Network, func(), error) {
	path, err := a.configPath(g)
	if err != nil {
		return nil, nil, &ExitError{Code: 3, Msg: err.Error()}
	}
	return a.openPath(ctx, g, path)
}

// openPath is open for the network config at path. A network of the
// Kubernetes API store is opened with the identity KubeRESTConfig picks
// for it; so is the clientset of the GC rules (App.Kube).
func (a *App) openPath(ctx context.Context, g *globals, path string) ([]*Network, func(), error) {
	cfgs, err := config.LoadNetworks(path)
	if err != nil {
		return nil, nil, &ExitError{Code: 3, Msg: err.Error()}
	}
	newOpener := func() *stores.Opener {
		o := stores.New(min(g.timeout, 5*time.Second))
		o.WaitReady = true // fail in seconds, naming the reason
		o.ConnectEtcd = a.Connect
		return o
	}
	etcdOpener := newOpener()
	openers := []*stores.Opener{etcdOpener}
	// One opener per API identity: stores.Opener shares one client among
	// the networks of its KubeREST.
	kubeOpeners := map[string]*stores.Opener{}
	closeAll := func() {
		for _, o := range openers {
			_ = o.Close()
		}
	}
	type kubeOrNote struct {
		kube kubernetes.Interface
		note string
	}
	kubes := map[string]kubeOrNote{}
	var nets []*Network
	for _, cfg := range cfgs {
		opener := etcdOpener
		if cfg.Store == config.StoreKubernetes {
			rc, source, err := KubeRESTConfig(g.kubeconfig, cfg.KubeConfig)
			if err != nil {
				return nil, closeAll, &ExitError{Code: 3, Msg: fmt.Sprintf("network %s: kubernetes API store: %v", cfg.Name, err)}
			}
			if opener = kubeOpeners[source]; opener == nil {
				opener = newOpener()
				opener.KubeREST = rc
				kubeOpeners[source] = opener
				openers = append(openers, opener)
			}
		}
		b, err := opener.Open(ctx, cfg)
		if err != nil {
			return nil, closeAll, &ExitError{Code: 3, Msg: err.Error()}
		}
		n := NewNetwork(cfg, b)
		kc := cfg.KubeConfig
		if g.kubeconfig != "" {
			kc = g.kubeconfig
		}
		k, ok := kubes[kc]
		if !ok {
			kube, err := a.Kube(kc, KubeOptions{Timeout: g.timeout, QPS: g.kubeQPS, Burst: g.kubeBurst, Flag: g.kubeconfig})
			if err != nil {
				k = kubeOrNote{note: "Kubernetes API not configured: " + err.Error()}
			} else {
				k = kubeOrNote{kube: kube}
			}
			kubes[kc] = k
		}
		n.Kube, n.KubeNote, n.KubeConfig = k.kube, k.note, kc
		nets = append(nets, n)
	}
	return nets, closeAll, nil
}

// defaultKube is App.Kube: the clientset of KubeRESTConfig's identity,
// with the command's rate limit and timeout.
func defaultKube(kubeconfig string, o KubeOptions) (kubernetes.Interface, error) {
	ipamPath := kubeconfig
	if o.Flag != "" {
		ipamPath = ""
	}
	rc, _, err := KubeRESTConfig(o.Flag, ipamPath)
	if err != nil {
		return nil, err
	}
	rc.QPS, rc.Burst, rc.Timeout = o.QPS, o.Burst, o.Timeout
	return kubernetes.NewForConfig(rc)
}
