package controller

import (
	"context"
	"math/big"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"kubeipam/internal/store"
)

// Metrics are the controller's Prometheus collectors.
type Metrics struct {
	Registry *prometheus.Registry

	pool, used, fixed, sticky, cooling, candidates *prometheus.GaugeVec
	skipped                                        *prometheus.GaugeVec
	allocations, releases, conflicts, reclaimed    *prometheus.CounterVec
	newCandidates, passFailures                    *prometheus.CounterVec
	addLatency, passDuration                       *prometheus.HistogramVec
	leader                                         prometheus.Gauge
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
		skipped:       g("gc_skipped", "Allocations and sticky records the last pass could not decide or release (kept; the pass log's skipReasons say why)."),
		allocations:   c("allocations_total", "Allocation records created (etcd watch)."),
		releases:      c("releases_total", "Allocation records deleted (etcd watch): CNI DEL and GC."),
		conflicts:     c("claim_conflicts_total", "Claim transactions lost to concurrent writers before a new record was committed."),
		reclaimed:     c("gc_reclaimed_total", "Addresses freed by this controller's garbage collection."),
		newCandidates: c("gc_candidates_total", "Leaked allocations and sticky records first seen (the grace period starts)."),
		passFailures:  c("reconcile_failures_total", "Reconcile passes over the network that did not finish (store or API error, timeout)."),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kube_ipam", Name: "leader",
			Help: "1 while this replica holds the leader Lease (or runs without leader election) and reconciles, else 0."}),
		addLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "kube_ipam", Name: "add_duration_seconds",
			Help:    "Time the plugin's ADD had run when it committed a new record.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"network"}),
		passDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "kube_ipam", Name: "reconcile_duration_seconds",
			Help: "Duration of one reconcile pass over a network.", Buckets: prometheus.DefBuckets}, []string{"network"}),
	}
	m.Registry.MustRegister(m.pool, m.used, m.fixed, m.sticky, m.cooling, m.candidates,
		m.allocations, m.releases, m.conflicts, m.reclaimed, m.newCandidates, m.addLatency, m.passDuration,
		m.skipped, m.passFailures, m.leader)
	return m
}

func (m *Metrics) observeSnapshot(n *Network, s *snapshot, now time.Time) {
	st := s.full.Stats(n.Cfg, now)
	pool, _ := new(big.Float).SetInt(st.Pool).Float64()
	l := prometheus.Labels{"network": n.Cfg.Name}
	m.pool.With(l).Set(pool)
	m.used.With(l).Set(float64(st.Used))
	m.fixed.With(l).Set(float64(st.Fixed))
	m.sticky.With(l).Set(float64(st.Sticky))
	m.cooling.With(l).Set(float64(st.Cooling))
}

// observePass records a pass that finished (err nil) or not. A pass that
// did not finish still freed what it freed and skipped what it skipped;
// its duration is left out of the histogram, whose count stays the number
// of passes that succeeded.
func (m *Metrics) observePass(network string, r Result, d time.Duration, err error) {
	m.reclaimed.WithLabelValues(network).Add(float64(r.FreedIPs))
	if err == nil || r.Checked > 0 {
		// A pass that could not even read the store says nothing about
		// what is skipped.
		m.skipped.WithLabelValues(network).Set(float64(r.Skipped))
	}
	// The failure counter exists from the first pass on, at 0, so that
	// increase() sees the first failure.
	failures := m.passFailures.WithLabelValues(network)
	if err != nil {
		failures.Inc()
		return
	}
	m.candidates.WithLabelValues(network).Set(float64(r.Candidates))
	m.passDuration.WithLabelValues(network).Observe(d.Seconds())
}

// setLeader says whether this replica reconciles.
func (m *Metrics) setLeader(leading bool) {
	v := 0.0
	if leading {
		v = 1
	}
	m.leader.Set(v)
}

// Watch turns the network's record changes into the allocation, release,
// conflict and ADD-latency metrics until ctx ends: a record created is an
// allocation, deleted a release; every record written by an ADD (created or
// taken over) contributes its LostRaces and AddMillis.
func (m *Metrics) Watch(ctx context.Context, n *Network) {
	n.Store.Watch(ctx, func(ev store.RecordEvent) { m.event(n.Cfg.Name, ev) })
}

func (m *Metrics) event(name string, ev store.RecordEvent) {
	r := ev.Record
	switch ev.Type {
	case store.EventDeleted:
		m.releases.WithLabelValues(name).Inc()
		return
	case store.EventCreated:
		m.allocations.WithLabelValues(name).Inc()
	case store.EventUpdated:
		if p := ev.Prev; p != nil && p.ContainerID == r.ContainerID && p.IfName == r.IfName {
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
