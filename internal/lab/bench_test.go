package lab

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// wb-net differs from db-net in its IPAM (and name) only, so the two
// variants compare IPAMs; its range stays clear of kube-ipam's.
func TestWhereaboutsNADConfig(t *testing.T) {
	l := &Lab{opts: DefaultOptions(moduleRoot(t))}
	l.opts.Mode = ModeNAD
	wb, err := l.WhereaboutsNADConfig()
	if err != nil {
		t.Fatal(err)
	}
	_, db, err := l.NADConfig()
	if err != nil {
		t.Fatal(err)
	}
	var w, d struct {
		Name    string           `json:"name"`
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(wb, &w); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(db, &d); err != nil {
		t.Fatal(err)
	}
	if w.Name != WhereaboutsNetwork || len(w.Plugins) != len(d.Plugins) {
		t.Fatalf("wb-net %q with %d plugins, db-net has %d", w.Name, len(w.Plugins), len(d.Plugins))
	}
	for i := range w.Plugins {
		ipam, _ := w.Plugins[i]["ipam"].(map[string]any)
		if ipam != nil {
			if ipam["type"] != "whereabouts" || ipam["range"] != WhereaboutsRange {
				t.Errorf("plugin %d's ipam %v", i, ipam)
			}
			delete(w.Plugins[i], "ipam")
			delete(d.Plugins[i], "ipam")
		}
		if !jsonEqual(mustJSON(t, w.Plugins[i]), mustJSON(t, d.Plugins[i])) {
			t.Errorf("plugin %d differs beyond ipam: %v vs %v", i, w.Plugins[i], d.Plugins[i])
		}
	}
	n, err := l.dbNetNetwork()
	if err != nil {
		t.Fatal(err)
	}
	wr := mustPrefix(t, WhereaboutsRange)
	for _, set := range n.RangeSets {
		for _, r := range set {
			if r.Subnet.Overlaps(wr) {
				t.Errorf("whereabouts' %s overlaps kube-ipam's %s", wr, r.Subnet)
			}
		}
	}
	size, err := l.dbNetDynamicSize()
	if err != nil || size < DefaultBenchPods {
		t.Errorf("db-net's dynamic range holds %d addresses (%v), the benchmark's default needs %d", size, err, DefaultBenchPods)
	}
	if n.Etcd.CertFile != l.pki("etcd-client.crt") {
		t.Errorf("the store is read with %q, want the host's copy of the client certificate", n.Etcd.CertFile)
	}
}

func TestBenchDeployment(t *testing.T) {
	for _, v := range BenchVariants {
		d := benchDeployment(v)
		if *d.Spec.Replicas != 0 {
			t.Errorf("%s: starts at %d replicas, want 0 (the scale is what is timed)", v.Name, *d.Spec.Replicas)
		}
		ann := d.Spec.Template.Annotations["k8s.v1.cni.cncf.io/networks"]
		if (v.NAD == "") != (ann == "") || (ann != "" && ann != v.NAD+"@net1") {
			t.Errorf("%s: networks annotation %q", v.Name, ann)
		}
		if d.Labels["app"] != benchApp || d.Spec.Template.Labels["bench"] != v.Deployment {
			t.Errorf("%s: labels %v / %v", v.Name, d.Labels, d.Spec.Template.Labels)
		}
	}
}

func TestPercentileAndMaxPods(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 150; i++ {
		ds = append(ds, time.Duration(i)*time.Second)
	}
	if p50, p99 := percentile(ds, 0.5), percentile(ds, 0.99); p50 != 75*time.Second || p99 != 149*time.Second {
		t.Errorf("p50 %v p99 %v, want 75s and 149s (nearest rank)", p50, p99)
	}
	if p := percentile(nil, 0.5); p != 0 {
		t.Errorf("percentile of nothing %v", p)
	}
	if m := benchMaxPods(150, 3); m != 60 {
		t.Errorf("maxPods for 150 pods on 3 nodes: %d", m)
	}
	if m := benchMaxPods(10, 3); m != DefaultMaxPods {
		t.Errorf("maxPods for 10 pods: %d", m)
	}
	o := DefaultOptions(moduleRoot(t))
	o.MaxPods = 300
	if err := o.validate(); err == nil || !strings.Contains(err.Error(), "maxPods") {
		t.Errorf("maxPods 300 accepted: %v", err)
	}
}

func TestBenchTable(t *testing.T) {
	rs := []BenchResult{
		{Variant: "eth0 only", Pods: 150, Ready: 40 * time.Second, Gone: 20 * time.Second, Free: 20 * time.Second, PerNode: map[string]int{"node1": 50}},
		{Variant: "kube-ipam", Pods: 150, Ready: 44 * time.Second, Gone: 22 * time.Second, Free: 22 * time.Second},
		{Variant: "whereabouts", Pods: 150, Ready: 88 * time.Second, Gone: 60 * time.Second, Free: 66 * time.Second},
	}
	var b strings.Builder
	BenchTable(&b, rs, "header")
	out := b.String()
	for _, want := range []string{"header", "node1 50", "kube-ipam / eth0 only", "create→Ready 1.10×, delete→gone 1.10×, delete→free 1.10×",
		"whereabouts / eth0 only", "create→Ready 2.20×, delete→gone 3.00×, delete→free 3.30×", "whereabouts / kube-ipam", "create→Ready 2.00×, delete→gone 2.73×, delete→free 3.00×"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	rs[2].Free, rs[2].Leaked = 0, 35
	b.Reset()
	BenchTable(&b, rs, "leak")
	for _, want := range []string{"35 leaked", "whereabouts / kube-ipam    create→Ready 2.00×, delete→gone 2.73×, delete→free n/a (a leak)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	BenchTable(&b, rs[:1], "partial")
	if !strings.Contains(b.String(), "n/a") {
		t.Errorf("a partial run's ratios should say n/a:\n%s", b.String())
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
