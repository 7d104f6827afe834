package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"kubeipam/internal/config"
	"kubeipam/internal/netattach"
	"kubeipam/internal/store"
)

// NADResource is the NetworkAttachmentDefinition API the controller lists
// with --nads.
var NADResource = schema.GroupVersionResource{Group: "k8s.cni.cncf.io", Version: "v1", Resource: "network-attachment-definitions"}

// NADNetworks are the kube-ipam networks of NetworkAttachmentDefinitions,
// by NAD ("namespace/name"), and a message per NAD that could not be read.
type NADNetworks struct {
	ByNAD    map[string][]*config.Network
	Problems []string
}

// ListNADNetworks lists every NetworkAttachmentDefinition and parses the
// kube-ipam networks of their configs. A cluster without the CRD has none.
func ListNADNetworks(ctx context.Context, dyn dynamic.Interface) (NADNetworks, error) {
	out := NADNetworks{ByNAD: map[string][]*config.Network{}}
	list, err := dyn.Resource(NADResource).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) {
		return out, nil
	}
	if err != nil {
		return out, fmt.Errorf("listing NetworkAttachmentDefinitions: %w", err)
	}
	for _, item := range list.Items {
		b, err := json.Marshal(item.Object)
		var nad netattach.NAD
		if err == nil {
			err = json.Unmarshal(b, &nad)
		}
		ref := item.GetNamespace() + "/" + item.GetName()
		if err != nil {
			out.Problems = append(out.Problems, fmt.Sprintf("NetworkAttachmentDefinition %s: %v", ref, err))
			continue
		}
		if strings.TrimSpace(nad.Spec.Config) == "" {
			continue // a config file on the nodes: not the controller's to read
		}
		conf, err := netattach.ConfigOf(&nad, "")
		if err != nil {
			out.Problems = append(out.Problems, err.Error())
			continue
		}
		nets, err := config.ParseNetworks(conf, "NetworkAttachmentDefinition "+ref)
		var none *config.NoNetworkError
		switch {
		case errors.As(err, &none):
		case err != nil:
			out.Problems = append(out.Problems, err.Error())
		default:
			out.ByNAD[ref] = nets
		}
	}
	return out, nil
}

// DesiredNetworks is the set the controller manages: the --config networks
// first, then each NAD network whose name is new, NADs in name order. A
// NAD network named like one already in the set is the same network when
// it is on the same store with the same ranges (a ConfigMap copy of the
// NAD, or two NADs for one network); otherwise the first wins and the
// conflict is reported.
func DesiredNetworks(static []*config.Network, nads map[string][]*config.Network) (want []*config.Network, conflicts []string) {
	byName := map[string]*config.Network{}
	from := map[string]string{}
	add := func(n *config.Network, source string) {
		prev, ok := byName[n.Name]
		if !ok {
			byName[n.Name], from[n.Name] = n, source
			want = append(want, n)
			return
		}
		if !sameNetwork(prev, n) {
			conflicts = append(conflicts, fmt.Sprintf("network %q of %s differs from the one of %s (store or ranges); managing %s's",
				n.Name, source, from[n.Name], from[n.Name]))
		}
	}
	for _, n := range static {
		add(n, "--config")
	}
	refs := make([]string, 0, len(nads))
	for ref := range nads {
		refs = append(refs, ref)
	}
	sort.Strings(refs)
	for _, ref := range refs {
		for _, n := range nads[ref] {
			add(n, "NetworkAttachmentDefinition "+ref)
		}
	}
	return want, conflicts
}

// sameNetwork: the same store (kind, etcd endpoints and prefix, cluster)
// and the same addresses (ranges, fixed block, exclusions).
func sameNetwork(a, b *config.Network) bool {
	return a.Store == b.Store && slices.Equal(a.Etcd.Endpoints, b.Etcd.Endpoints) && a.Etcd.Prefix == b.Etcd.Prefix &&
		a.Cluster == b.Cluster && reflect.DeepEqual(a.RangeSets, b.RangeSets) && a.FixedStart == b.FixedStart && a.FixedEnd == b.FixedEnd &&
		reflect.DeepEqual(a.Exclude, b.Exclude)
}

// registry holds the networks the controller manages, open, each with its
// metrics watch; Set replaces the set (networks added are opened and
// watched, networks gone are dropped), Get and List read it.
type registry struct {
	open    func(ctx context.Context, n *config.Network) (store.Backend, error)
	watch   func(ctx context.Context, n *Network) // metrics; nil: none
	log     *slog.Logger
	mu      sync.Mutex
	nets    map[string]*Network
	stop    map[string]context.CancelFunc
	order   []string
	reports map[string]bool // conflicts and problems already logged
}

func newRegistry(open func(context.Context, *config.Network) (store.Backend, error), watch func(context.Context, *Network), log *slog.Logger) *registry {
	return &registry{open: open, watch: watch, log: log, nets: map[string]*Network{}, stop: map[string]context.CancelFunc{}, reports: map[string]bool{}}
}

// Set makes want the managed networks and returns the names added (or
// replaced). A network whose config changed is reopened. A network that cannot be
// opened is reported and left out (it is tried again on the next Set).
func (r *registry) Set(ctx context.Context, want []*config.Network) (added []string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	keep := map[string]bool{}
	var order []string
	var errs []error
	for _, cfg := range want {
		keep[cfg.Name] = true
		// Any change of the parsed config (not only the addresses) replaces
		// the network, so every setting of a reloaded config takes effect.
		if cur, ok := r.nets[cfg.Name]; ok && reflect.DeepEqual(cur.Cfg, cfg) {
			order = append(order, cfg.Name)
			continue
		}
		b, err := r.open(ctx, cfg)
		if err != nil {
			errs = append(errs, fmt.Errorf("network %s: %w", cfg.Name, err))
			if _, ok := r.nets[cfg.Name]; ok {
				order = append(order, cfg.Name) // keep managing it as it was
			} else {
				delete(keep, cfg.Name)
			}
			continue
		}
		r.drop(cfg.Name)
		n := NewNetwork(cfg, b)
		r.nets[cfg.Name] = n
		if r.watch != nil {
			wctx, cancel := context.WithCancel(ctx)
			r.stop[cfg.Name] = cancel
			go r.watch(wctx, n)
		}
		added = append(added, cfg.Name)
		order = append(order, cfg.Name)
	}
	for name := range r.nets {
		if !keep[name] {
			r.log.Info("network no longer configured: not managed any more", "network", name)
			r.drop(name)
		}
	}
	r.order = order
	return added, errors.Join(errs...)
}

func (r *registry) drop(name string) {
	if cancel := r.stop[name]; cancel != nil {
		cancel()
	}
	delete(r.stop, name)
	delete(r.nets, name)
}

// Get is the managed network of that name, or nil.
func (r *registry) Get(name string) *Network {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nets[name]
}

// List is the managed networks, --config's first.
func (r *registry) List() []*Network {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Network, 0, len(r.order))
	for _, name := range r.order {
		if n := r.nets[name]; n != nil {
			out = append(out, n)
		}
	}
	return out
}

// reportOnce logs msg at level the first time it is seen.
func (r *registry) reportOnce(level slog.Level, msg string, attrs ...any) {
	r.mu.Lock()
	seen := r.reports[msg]
	r.reports[msg] = true
	r.mu.Unlock()
	if !seen {
		r.log.Log(context.Background(), level, msg, attrs...)
	}
}
