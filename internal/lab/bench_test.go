package lab

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/netip"
	"os"
	"slices"
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

// Rounds: every round is a row, the medians make the ratios, and each
// round's kube-ipam / eth0 ratio shows the spread.
func TestBenchTableRounds(t *testing.T) {
	res := func(v string, round int, ready, free time.Duration, leaked int, cni time.Duration) BenchResult {
		return BenchResult{Variant: v, Round: round, Pods: 100, Ready: ready, Gone: free, Free: free, Leaked: leaked,
			CPUUp:   map[string]time.Duration{cpuCNI: cni, cpuHost: 10 * cni, cpuRest: cni},
			CPUDown: map[string]time.Duration{cpuCNI: cni / 2, cpuHost: 5 * cni, cpuRest: cni / 2}}
	}
	s := time.Second
	rs := []BenchResult{
		res("eth0 only", 1, 100*s, 50*s, 0, 1*s), res("kube-ipam", 1, 110*s, 55*s, 0, 3*s), res("whereabouts", 1, 200*s, 0, 40, 4*s),
		res("kube-ipam", 2, 150*s, 60*s, 0, 5*s), res("whereabouts", 2, 190*s, 90*s, 0, 6*s), res("eth0 only", 2, 100*s, 50*s, 0, 2*s),
		res("whereabouts", 3, 210*s, 0, 30, 8*s), res("eth0 only", 3, 120*s, 60*s, 0, 3*s), res("kube-ipam", 3, 120*s, 65*s, 0, 4*s),
	}
	sum, rounds := benchSummary(rs)
	if rounds != 3 || len(sum) != 3 {
		t.Fatalf("%d rounds, %d variants: %+v", rounds, len(sum), sum)
	}
	if k := sum[1]; k.Variant != "kube-ipam" || k.Ready != 120*s || k.Free != 60*s || k.CPUUp[cpuCNI] != 4*s || k.CPUDown[cpuCNI] != 2*s {
		t.Errorf("kube-ipam's medians: %+v", k)
	}
	if w := sum[2]; w.Leaked != 40 || w.Free != 0 || w.Ready != 200*s {
		t.Errorf("whereabouts leaked in two rounds: median %+v, want Leaked 40 (the largest), no Free", w)
	}
	var b strings.Builder
	BenchTable(&b, rs, "header")
	out := b.String()
	for _, want := range []string{
		"median of 3 rounds:", "ratios (medians of 3 rounds):",
		"kube-ipam / eth0 only      create→Ready 1.20×", // 120 s / 100 s
		"create→Ready by round: 1.10×, 1.50×, 1.00×",
		"CPU per pod (ms) (medians of 3 rounds)",
		cpuCNI, "40.0 / 20.0", // 4 s and 2 s over 100 pods
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	lines := strings.Split(out, "\n")
	ci, ri := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, cpuCNI) }),
		slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, cpuHost) })
	if ci < 0 || ri < ci {
		t.Errorf("the whole machine should come after the components:\n%s", out)
	}
}

// heldSince: what a peer leaked in an earlier round (base) is not counted
// again in this one.
func TestHeldSince(t *testing.T) {
	held := func(context.Context, string) ([]string, error) {
		return []string{"offset 1 old-a", "offset 2 new-a", "offset 3 old-b", "offset 4 new-b"}, nil
	}
	n, some, err := heldSince(context.Background(), held, "d", map[string]bool{"offset 1 old-a": true, "offset 3 old-b": true})
	if err != nil || n != 2 || !slices.Equal(some, []string{"offset 2 new-a", "offset 4 new-b"}) {
		t.Errorf("heldSince = %d, %v, %v; want the 2 new ones", n, some, err)
	}
	failing := func(context.Context, string) ([]string, error) { return nil, errors.New("store down") }
	if _, _, err := heldSince(context.Background(), failing, "d", nil); err == nil {
		t.Error("a failing store read gave no error")
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []time.Duration
		want time.Duration
	}{{nil, 0}, {[]time.Duration{3}, 3}, {[]time.Duration{5, 1, 3}, 3}, {[]time.Duration{4, 1, 3, 2}, 2}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

// cpuDelta: by component over PIDs, a reused PID counts only its own
// time, and the rest is the machine's less the components'.
func TestCPUDelta(t *testing.T) {
	before := cpuSample{host: 10 * time.Second, procs: map[string]procCPUTime{
		"1": {"kubelet", time.Second}, "2": {"kubelet", 2 * time.Second},
		"3": {cpuContainerd, time.Second}, "3/children": {cpuCNI, 4 * time.Second},
		"9": {cpuAgent, 50 * time.Second}, // PID 9 is reused by a new agent below
	}}
	after := cpuSample{host: 30 * time.Second, procs: map[string]procCPUTime{
		"1": {"kubelet", 2 * time.Second}, "2": {"kubelet", 4 * time.Second},
		"3": {cpuContainerd, 2 * time.Second}, "3/children": {cpuCNI, 10 * time.Second},
		"9": {cpuAgent, time.Second},
	}}
	d := cpuDelta(before, after)
	want := map[string]time.Duration{"kubelet": 3 * time.Second, cpuContainerd: time.Second, cpuCNI: 6 * time.Second,
		cpuAgent: time.Second, cpuHost: 20 * time.Second, cpuRest: 9 * time.Second}
	if !maps.Equal(d, want) {
		t.Errorf("cpuDelta = %v, want %v", d, want)
	}
}

// procTimes and hostBusy read this machine's /proc as the benchmark does.
func TestProcTimes(t *testing.T) {
	self, children, err := procTimes(os.Getpid())
	if err != nil || self < 0 || children < 0 {
		t.Fatalf("procTimes(self) = %v, %v, %v", self, children, err)
	}
	if _, _, err := procTimes(-1); err == nil {
		t.Error("procTimes of no process gave no error")
	}
	if b, err := hostBusy(); err != nil || b <= 0 {
		t.Errorf("hostBusy = %v, %v", b, err)
	}
	l := &Lab{state: state{Nodes: []Node{{Name: "node1"}, {Name: "node2"}}}}
	if c := l.component("node2-kubelet"); c != "kubelet" {
		t.Errorf("node2-kubelet is %q", c)
	}
	if c := l.component("etcd-kube-ipam"); c != "etcd-kube-ipam" {
		t.Errorf("etcd-kube-ipam is %q", c)
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
