package controller

import (
	"context"
	"encoding/json"
	"math/big"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"kubeipam/internal/ipam"
	"kubeipam/internal/store"
)

// Metrics are the controller's Prometheus collectors.
type Metrics struct {
	Registry *prometheus.Registry

	pool, used, fixed, sticky, cooling, candidates *prometheus.GaugeVec
	allocations, releases, conflicts, reclaimed    *prometheus.CounterVec
	newCandidates                                  *prometheus.CounterVec
	addLatency, passDuration                       *prometheus.HistogramVec
}

// NewMetrics registers the collectors on a new registry.
func NewMetrics() *Metrics {
	g := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "kube_ipam", Name: name, Help: help}, []string{"network"})
	}
	c := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kube_ipam", Name: name, Help: help}, []string{"network"})
	}
	m := &Metrics{
		Registry:      prometheus.NewRegistry(),
		pool:          g("pool_size", "Addresses in the network's dynamic ranges."),
		used:          g("used", "Claimed addresses inside the dynamic ranges."),
		fixed:         g("fixed", "Claimed fixed addresses."),
		sticky:        g("sticky", "Sticky StatefulSet ordinal records."),
		cooling:       g("cooling", "Released dynamic addresses still in their reuse cooldown."),
		candidates:    g("gc_candidates", "Allocations seen leaked in the last pass (waiting for the grace period or released)."),
		allocations:   c("allocations_total", "Allocation records created (etcd watch)."),
		releases:      c("releases_total", "Allocation records deleted (etcd watch): CNI DEL and GC."),
		conflicts:     c("claim_conflicts_total", "Claim transactions lost to concurrent writers before a new record was committed."),
		reclaimed:     c("gc_reclaimed_total", "Addresses freed by this controller's garbage collection."),
		newCandidates: c("gc_candidates_total", "Leaked allocations and sticky records first seen (the grace period starts)."),
		addLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "kube_ipam", Name: "add_duration_seconds",
			Help:    "Time the plugin's ADD had run when it committed a new record.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"network"}),
		passDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "kube_ipam", Name: "reconcile_duration_seconds",
			Help: "Duration of one reconcile pass over a network.", Buckets: prometheus.DefBuckets}, []string{"network"}),
	}
	m.Registry.MustRegister(m.pool, m.used, m.fixed, m.sticky, m.cooling, m.candidates,
		m.allocations, m.releases, m.conflicts, m.reclaimed, m.newCandidates, m.addLatency, m.passDuration)
	return m
}

func (m *Metrics) observeSnapshot(n *Network, s *snapshot, now time.Time) {
	cfg := n.Cfg
	var pool float64
	var dyn [][]ipam.Interval
	for i := range cfg.RangeSets {
		d := ipam.DynamicIntervals(cfg, i)
		dyn = append(dyn, d)
		f, _ := new(big.Float).SetInt(ipam.Size(d)).Float64()
		pool += f
	}
	inPool := func(a netip.Addr) bool {
		set, _, ok := cfg.SetFor(a)
		return ok && ipam.InAny(dyn[set], a)
	}
	var used, fixed, cooling float64
	for a, e := range s.records {
		if e.Rec.Kind == store.KindFixed {
			fixed++
		}
		if inPool(a) {
			used++
		}
	}
	cutoff := now.Add(-cfg.ReleaseCooldown)
	for _, r := range s.rel {
		t := s.tombs[r.IP]
		if _, held := s.records[r.IP]; held || t == nil || t.Log != r.Key {
			continue
		}
		if r.At.After(cutoff) && inPool(r.IP) {
			cooling++
		}
	}
	l := prometheus.Labels{"network": cfg.Name}
	m.pool.With(l).Set(pool)
	m.used.With(l).Set(used)
	m.fixed.With(l).Set(fixed)
	m.sticky.With(l).Set(float64(len(s.sticky)))
	m.cooling.With(l).Set(cooling)
}

func (m *Metrics) observePass(network string, r Result, d time.Duration) {
	m.candidates.WithLabelValues(network).Set(float64(r.Candidates))
	m.reclaimed.WithLabelValues(network).Add(float64(r.FreedIPs))
	m.passDuration.WithLabelValues(network).Observe(d.Seconds())
}

// Watch turns the network's etcd events into the allocation, release,
// conflict and ADD-latency metrics until ctx ends: a record key created is
// an allocation, deleted a release; every record written by an ADD (created
// or taken over) contributes its LostRaces and AddMillis.
func (m *Metrics) Watch(ctx context.Context, n *Network) {
	cli := n.Store.Client()
	base := n.Store.Base()
	var rev int64
	for ctx.Err() == nil {
		if rev == 0 {
			resp, err := cli.Get(ctx, base+"cursor/", clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				sleep(ctx, time.Second)
				continue
			}
			rev = resp.Header.Revision + 1
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range cli.Watch(wctx, base+"ip/", clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithPrevKV()) {
			if wr.CompactRevision != 0 {
				rev = 0 // missed events: restart from now
				break
			}
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				rev = ev.Kv.ModRevision + 1
				m.event(n, ev)
			}
		}
		cancel()
		sleep(ctx, 100*time.Millisecond)
	}
}

func (m *Metrics) event(n *Network, ev *clientv3.Event) {
	_, tomb, ok := n.Store.ParseIPKey(string(ev.Kv.Key))
	if !ok || tomb {
		return
	}
	name := n.Cfg.Name
	if ev.Type == clientv3.EventTypeDelete {
		m.releases.WithLabelValues(name).Inc()
		return
	}
	var r store.Record
	if json.Unmarshal(ev.Kv.Value, &r) != nil {
		return
	}
	if ev.IsCreate() {
		m.allocations.WithLabelValues(name).Inc()
	} else if ev.PrevKv != nil {
		var p store.Record
		if json.Unmarshal(ev.PrevKv.Value, &p) == nil && p.ContainerID == r.ContainerID && p.IfName == r.IfName {
			return // rewritten, not a new ADD
		}
	}
	m.conflicts.WithLabelValues(name).Add(float64(r.LostRaces))
	if r.AddMillis > 0 {
		m.addLatency.WithLabelValues(name).Observe(float64(r.AddMillis) / 1000)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
