package bench

// BenchmarkKubeStores compares IPAM plugins that keep their allocations in
// the Kubernetes API with kube-ipam on etcd and with host-local, in one run
// on one real kube-apiserver (testenv.StartKube), each plugin on fresh /16s:
//
//   - whereabouts (hack/whereabouts.sh builds it, version pinned there), its
//     CRDs applied, configured as its DaemonSet install configures it: a
//     flat file with the kubeconfig, the range in the network config;
//   - kube-ipam with "store": "kubernetes" and the same kubeconfig (skipped
//     with the plugin's answer while this build has no such store; its CRDs
//     are applied when the repository has them);
//   - kube-ipam on etcd: the API server's own etcd, under its own prefix;
//   - host-local.
//
// Every call is the real binary, one process per ADD or DEL as a container
// runtime makes them, with the CNI_ARGS a runtime passes
// (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_INFRA_CONTAINER_ID). Like
// BenchmarkAdd the scenario runs once per benchmark run (b.N == 1).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"kubeipam/internal/kubeapi"
	"kubeipam/internal/store/kubestore"
	"kubeipam/internal/testenv"
)

const (
	ksAdds    = 300 // ADD processes with inFlight (50) at a time, then as many DELs
	ksSeqAdds = 50  // ADDs one at a time
	ksWarmups = 3   // unmeasured sequential ADDs per plugin first
	// The pods' namespace in CNI_ARGS. No pod is created: none of the
	// plugins reads it here (kube-ipam runs with podLookup false, and
	// whereabouts' CNI binary only names the pod in its allocation; its
	// ip-control-loop, not run here, is what reads pods).
	ksPodNS      = "bench"
	ksEtcdPrefix = "/kube-ipam-kubestores"
	// whereabouts gives up an ADD after 2 minutes by itself: let it.
	ksCallMax = 3 * time.Minute
	// whereabouts keeps its pools and its Lease in its kubeconfig context's
	// namespace, kube-system when the context names none (as here).
	wbNamespace = "kube-system"
)

const (
	whereabouts = "whereabouts"
	kipamKube   = "kube-ipam/kubernetes"
	kipamEtcd   = "kube-ipam/etcd"
)

var ksPlugins = []string{whereabouts, kipamKube, kipamEtcd, hostLocal}

// ksShort names a plugin in container IDs, network names and metric names.
var ksShort = map[string]string{whereabouts: "wb", kipamKube: "kk", kipamEtcd: "ke", hostLocal: "hl"}

var ksMetricName = map[string]string{whereabouts: "whereabouts", kipamKube: "kube-ipam-kubernetes",
	kipamEtcd: "kube-ipam-etcd", hostLocal: "host-local"}

// ksSubnets: one fresh /16 per plugin and phase.
var ksSubnets = map[string]map[string]string{
	whereabouts: {"warm": "10.80.0.0/16", "conc": "10.81.0.0/16", "seq": "10.82.0.0/16"},
	kipamKube:   {"warm": "10.83.0.0/16", "conc": "10.84.0.0/16", "seq": "10.85.0.0/16"},
	kipamEtcd:   {"warm": "10.86.0.0/16", "conc": "10.87.0.0/16", "seq": "10.88.0.0/16"},
	hostLocal:   {"warm": "10.89.0.0/16", "conc": "10.90.0.0/16", "seq": "10.91.0.0/16"},
}

// ksColumn is one plugin's figures.
type ksColumn struct {
	skipped        string // why the column has no figures
	conc, del, seq phase
	failedAdds     int // concurrent and sequential
	failedDels     int
	dups           int      // addresses given to two containers at once
	problems       []string // what makes the run fail
	notes          []string // context printed under the table
}

type ksResults struct {
	cols       map[string]*ksColumn
	wbVersion  string
	kubeCRDs   []string // kube-ipam's CRDs found in the repository and applied
	etcdPrefix string
}

var ksScenario scenario[ksResults]

func BenchmarkKubeStores(b *testing.B) {
	r := ksScenario.result(b, runKubeStores, printKubeStores)
	for _, pl := range ksPlugins {
		c := r.cols[pl]
		if c.skipped != "" {
			continue
		}
		reportMetrics(b, ksMetricName[pl], func(b *testing.B) {
			b.ReportMetric(c.conc.okPerSec(), "adds/s")
			b.ReportMetric(c.conc.p50(), "add-p50-ms")
			b.ReportMetric(c.conc.p99(), "add-p99-ms")
			b.ReportMetric(c.seq.p50(), "seq-add-p50-ms")
			b.ReportMetric(c.del.okPerSec(), "dels/s")
			b.ReportMetric(float64(c.failedAdds), "failed-adds")
			b.ReportMetric(float64(c.dups), "duplicates")
		})
	}
	for _, pl := range []string{kipamKube, kipamEtcd} {
		if c := r.cols[pl]; c.skipped == "" {
			reportMetrics(b, "ratio-"+ksMetricName[pl], func(b *testing.B) {
				b.ReportMetric(c.conc.okPerSec()/r.cols[whereabouts].conc.okPerSec(), "adds/s-per-whereabouts")
				b.ReportMetric(c.conc.okPerSec()/r.cols[hostLocal].conc.okPerSec(), "adds/s-per-host-local")
			})
		}
	}
	var problems []string
	for _, pl := range ksPlugins {
		for _, p := range r.cols[pl].problems {
			problems = append(problems, pl+": "+p)
		}
	}
	if len(problems) > 0 {
		b.Fatalf("%d problem(s):\n%s", len(problems), strings.Join(problems, "\n"))
	}
}

// ksEnv is the scenario's shared setup.
type ksEnv struct {
	b      *testing.B
	ctx    context.Context
	kube   *testenv.Kube
	dyn    dynamic.Interface
	etcd   *clientv3.Client
	cni    *cniRunner
	bins   map[string]string
	dir    string
	wbFlat string // whereabouts' flat configuration file
}

func runKubeStores(b *testing.B) *ksResults {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	wbDir := whereaboutsDir(b)
	e := &ksEnv{b: b, ctx: ctx, dir: b.TempDir()}
	e.cni = newCNIRunner(ctx, testenv.CNIPluginDir(b))
	e.cni.max = ksCallMax
	kipamBin := testenv.Binary(b, "kube-ipam")
	e.bins = map[string]string{
		whereabouts: filepath.Join(wbDir, "whereabouts"),
		kipamKube:   kipamBin,
		kipamEtcd:   kipamBin,
		hostLocal:   filepath.Join(e.cni.path, "host-local"),
	}
	e.kube = testenv.StartKube(b, testenv.KubeOptions{})
	e.etcd = e.kube.Etcd.Client(b)
	var err error
	if e.dyn, err = dynamic.NewForConfig(e.kube.Config); err != nil {
		b.Fatal(err)
	}
	r := &ksResults{cols: map[string]*ksColumn{}, wbVersion: e.whereaboutsVersion(), etcdPrefix: ksEtcdPrefix}
	for _, pl := range ksPlugins {
		r.cols[pl] = &ksColumn{}
	}

	// whereabouts' CRDs, and kube-ipam's where the repository has them.
	wbCRDs, _ := filepath.Glob(filepath.Join(wbDir, "crds", "*.yaml"))
	if len(wbCRDs) == 0 {
		b.Fatalf("no CRDs in %s/crds: run hack/whereabouts.sh", wbDir)
	}
	e.applyCRDs(wbCRDs)
	root := testenv.ModuleRoot(b)
	var kiCRDs []string
	for _, d := range []string{"internal/store/kubestore/crds", "deploy/crds"} {
		for _, pat := range []string{"*.yaml", "*.yml"} {
			m, _ := filepath.Glob(filepath.Join(root, d, pat))
			kiCRDs = append(kiCRDs, m...)
		}
	}
	r.kubeCRDs = e.applyCRDs(kiCRDs)

	// whereabouts' DaemonSet installs this file (with its own kubeconfig);
	// without one of its flat files it refuses every call.
	e.wbFlat = filepath.Join(e.dir, "whereabouts.d", "whereabouts.conf")
	flat, _ := json.Marshal(map[string]any{"datastore": "kubernetes",
		"kubernetes": map[string]any{"kubeconfig": e.kube.Kubeconfig}})
	if err := os.MkdirAll(filepath.Dir(e.wbFlat), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(e.wbFlat, flat, 0o644); err != nil {
		b.Fatal(err)
	}

	// Warm-up: the first exec of each binary reads it from disk; whereabouts
	// creates its Lease.
	for _, pl := range ksPlugins {
		c := r.cols[pl]
		subnet := ksSubnets[pl]["warm"]
		p := e.adds(pl, "warm", subnet, e.calls(pl, "warm", ksWarmups), 1)
		errs, _, _ := addErrors(p, subnet, nil)
		if len(errs) == 0 {
			continue
		}
		c.skipped = "warm-up ADD failed: " + errs[0]
		c.problems = append(c.problems, c.skipped)
	}
	run := func(f func(pl string, c *ksColumn)) {
		for _, pl := range ksPlugins {
			if c := r.cols[pl]; c.skipped == "" {
				f(pl, c)
			}
		}
	}

	// 1. ADDs, inFlight at a time, then DELs of the same containers.
	conc := map[string][]cniCall{}
	run(func(pl string, c *ksColumn) {
		subnet := ksSubnets[pl]["conc"]
		conc[pl] = e.calls(pl, "conc", ksAdds)
		c.conc = e.adds(pl, "conc", subnet, conc[pl], inFlight)
		c.judge(pl, "concurrent ADDs", subnet, c.conc)
		c.check(pl, "after the concurrent ADDs", e.checkStore(pl, "conc", subnet, c.conc))
		c.notes = append(c.notes, e.storeNote(pl, "conc", "after the concurrent ADDs")...)
	})
	run(func(pl string, c *ksColumn) {
		subnet := ksSubnets[pl]["conc"]
		calls := conc[pl]
		c.del = e.cni.batch(e.bins[pl], "DEL", e.conf(pl, "DEL", "conc", subnet), len(calls), inFlight,
			func(i int) cniCall { return calls[i] })
		n, first := c.del.failures()
		c.failedDels = n
		if msg := fmt.Sprintf("%d of %d DELs failed; the first: %v", n, len(calls), first); n > 0 && pl == whereabouts {
			c.notes = append(c.notes, msg)
		} else if n > 0 {
			c.problems = append(c.problems, msg)
		}
		c.check(pl, "after the DELs", e.checkStore(pl, "conc", subnet, phase{}))
		c.notes = append(c.notes, e.storeNote(pl, "conc", "after the DELs")...)
	})

	// 2. ADDs one at a time.
	run(func(pl string, c *ksColumn) {
		subnet := ksSubnets[pl]["seq"]
		c.seq = e.adds(pl, "seq", subnet, e.calls(pl, "seq", ksSeqAdds), 1)
		c.judge(pl, "sequential ADDs", subnet, c.seq)
		c.check(pl, "after the sequential ADDs", e.checkStore(pl, "seq", subnet, c.seq))
	})

	if c := r.cols[whereabouts]; c.skipped == "" {
		for _, ph := range []struct{ what, verb, tag string }{
			{"concurrent ADDs", "ADD", "conc"}, {"DELs", "DEL", "conc"}, {"sequential ADDs", "ADD", "seq"}} {
			upd, read := whereaboutsRetries(b, e.logFile(whereabouts, ph.verb, ph.tag))
			c.notes = append(c.notes, fmt.Sprintf("%s: %d pool updates refused (conflict) and %d pool reads failed, each retried (its log)",
				ph.what, upd, read))
		}
	}
	return r
}

// judge records what is wrong with a phase's ADDs. Every failed ADD is
// counted; it fails the run except for whereabouts, whose ADDs give up
// waiting for its Lease under load (its own behaviour, reported as such).
// A duplicate or an address outside the subnet fails the run for every
// plugin.
func (c *ksColumn) judge(pl, what, subnet string, p phase) {
	errs, failed, dups := addErrors(p, subnet, nil)
	c.failedAdds += failed
	c.dups += dups
	if pl == whereabouts && failed > 0 {
		_, first := p.failures()
		c.notes = append(c.notes, fmt.Sprintf("%s: %d of %d failed; the first: %v", what, failed, len(p.samples), first))
		errs, _, _ = addErrors(p.succeeded(), subnet, nil)
	}
	if len(errs) > 0 {
		c.problems = append(c.problems, fmt.Sprintf("%s: %d of %d wrong; first ones:\n  %s", what, len(errs), len(p.samples),
			strings.Join(errs[:min(len(errs), 5)], "\n  ")))
	}
}

// check records a difference between pl's store and the ADDs: a problem,
// except that whereabouts holding more or fewer allocations than it
// answered for (a failed ADD that kept its address, a DEL that gave up
// and says nothing) is its behaviour, reported as a note.
func (c *ksColumn) check(pl, when string, err error) {
	var cm countMismatch
	switch {
	case err == nil:
	case pl == whereabouts && errors.As(err, &cm):
		c.notes = append(c.notes, when+": "+err.Error())
	default:
		c.problems = append(c.problems, when+": "+err.Error())
	}
}

// countMismatch is a store holding another number of allocations than the
// successful ADDs.
type countMismatch struct{ error }

// calls names n containers and their pods, one pod per ADD as a runtime
// would (whereabouts gives a pod that asks again the address it already
// has, and names its Lease holder after the pod).
func (e *ksEnv) calls(pl, tag string, n int) []cniCall {
	calls := make([]cniCall, n)
	for i := range calls {
		cid := fmt.Sprintf("%s-%s-%05d-%08x", ksShort[pl], tag, i, rand.Uint32())
		pod := fmt.Sprintf("%s-%s-%05d", ksShort[pl], tag, i)
		calls[i] = cniCall{cid: cid, args: fmt.Sprintf("IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=%s", ksPodNS, pod, cid)}
	}
	return calls
}

func (e *ksEnv) adds(pl, tag, subnet string, calls []cniCall, par int) phase {
	return e.cni.batch(e.bins[pl], "ADD", e.conf(pl, "ADD", tag, subnet), len(calls), par, func(i int) cniCall { return calls[i] })
}

// logFile is the plugin's log of one phase: network tag, calls verb.
func (e *ksEnv) logFile(pl, verb, tag string) string {
	return filepath.Join(e.dir, ksShort[pl]+"-"+tag+"-"+strings.ToLower(verb)+".log")
}

func (e *ksEnv) hostLocalDir(tag string) string { return filepath.Join(e.dir, "host-local-"+tag) }

// conf is the network config handed to pl on stdin.
func (e *ksEnv) conf(pl, verb, tag, subnet string) []byte {
	name := ksShort[pl] + "-" + tag
	logFile := e.logFile(pl, verb, tag)
	var ipam map[string]any
	switch pl {
	case whereabouts:
		// The keys of its README's example; configuration_path points it
		// at the flat file (its defaults are under /etc). Its log level is
		// "error", where it logs failures and the pool-update conflicts it
		// retries; unset, it logs nothing.
		ipam = map[string]any{"type": "whereabouts", "range": subnet,
			"kubernetes":         map[string]any{"kubeconfig": e.kube.Kubeconfig},
			"configuration_path": e.wbFlat, "log_file": logFile, "log_level": "error"}
	case kipamKube:
		ipam = map[string]any{"type": "kube-ipam", "store": "kubernetes", "kubeConfig": e.kube.Kubeconfig,
			"subnet": subnet, "podLookup": false, "logFile": logFile}
	case kipamEtcd:
		ipam = map[string]any{"type": "kube-ipam",
			"etcdConfig": map[string]any{"etcdURL": strings.Join(e.kube.Etcd.Endpoints, ","), "etcdPrefix": ksEtcdPrefix},
			"subnet":     subnet, "podLookup": false, "logFile": logFile}
	case hostLocal:
		ipam = map[string]any{"type": "host-local", "subnet": subnet, "dataDir": e.hostLocalDir(tag)}
	}
	data, err := json.Marshal(map[string]any{"cniVersion": "0.3.1", "name": name, "type": "macvlan", "ipam": ipam})
	if err != nil {
		e.b.Fatal(err)
	}
	return data
}

// checkStore compares what pl's store holds for network tag with the
// successful ADDs of p (an empty phase: nothing must be held). The
// kubernetes store's format is still being written: it is only counted
// (storeNote).
func (e *ksEnv) checkStore(pl, tag, subnet string, p phase) error {
	ok := 0
	for _, s := range p.samples {
		if s.err == nil {
			ok++
		}
	}
	switch pl {
	case whereabouts:
		allocs, err := e.whereaboutsAllocations(subnet)
		if err != nil {
			return err
		}
		for _, s := range p.samples {
			if s.err == nil && allocs[s.ip] != s.cid {
				return fmt.Errorf("whereabouts' IPPool says %s belongs to %q, but ADD %s got it", s.ip, allocs[s.ip], s.cid)
			}
		}
		if len(allocs) != ok {
			return countMismatch{fmt.Errorf("whereabouts' IPPool holds %d allocations for %d successful ADDs", len(allocs), ok)}
		}
	case kipamEtcd:
		return etcdRecordErrors(e.ctx, e.etcd, ksEtcdPrefix, ksShort[pl]+"-"+tag, p)
	case kipamKube:
		// What the store itself says (internal/store/kubestore), as etcd's
		// records are read for the etcd column.
		api, err := kubeapi.NewClient(e.kube.Kubeconfig, "kube-ipam-bench", time.Minute)
		if err != nil {
			return err
		}
		atts, err := kubestore.New(api, ksShort[pl]+"-"+tag, "").Attachments(e.ctx)
		if err != nil {
			return err
		}
		owner := map[netip.Addr]string{}
		for _, att := range atts {
			for _, ip := range att.IPs {
				owner[netip.MustParseAddr(ip)] = att.ContainerID
			}
		}
		for _, s := range p.samples {
			if s.err == nil && owner[s.ip] != s.cid {
				return fmt.Errorf("the Kubernetes API store says %s belongs to %q, but ADD %s got it", s.ip, owner[s.ip], s.cid)
			}
		}
		if len(owner) != ok {
			return countMismatch{fmt.Errorf("the Kubernetes API store holds %d addresses for %d successful ADDs", len(owner), ok)}
		}
	case hostLocal:
		n, err := hostLocalReservations(filepath.Join(e.hostLocalDir(tag), ksShort[pl]+"-"+tag))
		if err != nil {
			return err
		}
		if n != ok {
			return countMismatch{fmt.Errorf("host-local's data dir holds %d reservations for %d successful ADDs", n, ok)}
		}
	}
	return nil
}

// storeNote counts the kubernetes store's custom resources, when the API
// serves them.
func (e *ksEnv) storeNote(pl, tag, when string) []string {
	if pl != kipamKube {
		return nil
	}
	const crd = "ipallocations.ipam.kube-ipam.io"
	n, err := e.countCRs(crd)
	if err != nil {
		return []string{fmt.Sprintf("%s %s: %v", crd, when, err)}
	}
	return []string{fmt.Sprintf("%d %s in the API %s (all networks)", n, crd, when)}
}

var (
	crdGVR    = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	wbPoolGVR = schema.GroupVersionResource{Group: "whereabouts.cni.cncf.io", Version: "v1alpha1", Resource: "ippools"}
	yamlDocRe = regexp.MustCompile(`(?m)^---[ \t]*$`)
)

// applyCRDs creates the CustomResourceDefinitions in files (other kinds of
// documents are left out) and waits until the API serves them. It returns
// their names.
func (e *ksEnv) applyCRDs(files []string) []string {
	e.b.Helper()
	var names []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			e.b.Fatal(err)
		}
		for _, doc := range yamlDocRe.Split(string(data), -1) {
			j, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				e.b.Fatalf("%s: %v", f, err)
			}
			var obj map[string]any
			if err := json.Unmarshal(j, &obj); err != nil || obj == nil {
				continue // an empty document
			}
			u := &unstructured.Unstructured{Object: obj}
			if u.GetKind() != "CustomResourceDefinition" {
				continue
			}
			if _, err := e.dyn.Resource(crdGVR).Create(e.ctx, u, metav1.CreateOptions{}); err != nil {
				e.b.Fatalf("creating CRD %s from %s: %v", u.GetName(), f, err)
			}
			names = append(names, u.GetName())
		}
	}
	for _, name := range names {
		e.kube.WaitFor(e.b, "CRD "+name+" to be established", time.Minute, func() (bool, error) {
			u, err := e.dyn.Resource(crdGVR).Get(e.ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				if m, _ := c.(map[string]any); m["type"] == "Established" && m["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		})
	}
	return names
}

// countCRs counts the objects of a custom resource (all namespaces), read
// through its CRD's storage version.
func (e *ksEnv) countCRs(crd string) (int, error) {
	u, err := e.dyn.Resource(crdGVR).Get(e.ctx, crd, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return 0, fmt.Errorf("no such CRD")
	} else if err != nil {
		return 0, err
	}
	group, _, _ := unstructured.NestedString(u.Object, "spec", "group")
	plural, _, _ := unstructured.NestedString(u.Object, "spec", "names", "plural")
	versions, _, _ := unstructured.NestedSlice(u.Object, "spec", "versions")
	version := ""
	for _, v := range versions {
		if m, _ := v.(map[string]any); m["storage"] == true {
			version, _ = m["name"].(string)
		}
	}
	list, err := e.dyn.Resource(schema.GroupVersionResource{Group: group, Version: version, Resource: plural}).
		List(e.ctx, metav1.ListOptions{})
	if err != nil {
		return 0, err
	}
	return len(list.Items), nil
}

// whereaboutsAllocations reads whereabouts' IPPool of subnet: address ->
// container ID. Its name is the range with '/' as '-'; its allocations are
// keyed by the offset from the range's first address.
func (e *ksEnv) whereaboutsAllocations(subnet string) (map[netip.Addr]string, error) {
	pfx := netip.MustParsePrefix(subnet)
	name := strings.ReplaceAll(pfx.String(), "/", "-")
	u, err := e.dyn.Resource(wbPoolGVR).Namespace(wbNamespace).Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("whereabouts' IPPool %s/%s: %v", wbNamespace, name, err)
	}
	allocs, _, err := unstructured.NestedMap(u.Object, "spec", "allocations")
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]string{}
	first := pfx.Masked().Addr().As4()
	base := uint32(first[0])<<24 | uint32(first[1])<<16 | uint32(first[2])<<8 | uint32(first[3])
	for off, v := range allocs {
		n, err := strconv.ParseUint(off, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("IPPool %s: allocation key %q: %v", name, off, err)
		}
		a := base + uint32(n)
		ip := netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)})
		m, _ := v.(map[string]any)
		out[ip], _ = m["id"].(string)
	}
	return out, nil
}

// whereaboutsDir runs hack/whereabouts.sh, which builds whereabouts at the
// pinned version unless its cache has it, and returns its directory.
func whereaboutsDir(b *testing.B) string {
	b.Helper()
	return testenv.HackDir(b, "whereabouts.sh")
}

// whereaboutsVersion is the first line of the binary's about text.
func (e *ksEnv) whereaboutsVersion() string {
	cmd := exec.CommandContext(e.ctx, e.bins[whereabouts])
	cmd.Env = e.cni.baseEnv
	out, _ := cmd.CombinedOutput()
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

var (
	wbUpdateRetryRe = regexp.MustCompile(`IPAM error updating pool \(attempt`)
	wbReadRetryRe   = regexp.MustCompile(`IPAM error reading pool allocations \(attempt`)
)

// whereaboutsRetries counts the retries whereabouts logged at level error:
// pool updates the API refused (the allocations changed since they were
// read) and failed pool reads (the first ADD on a range creates the pool).
func whereaboutsRetries(tb testing.TB, path string) (update, read int) {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0, 0 // nothing logged
	} else if err != nil {
		tb.Fatal(err)
	}
	return len(wbUpdateRetryRe.FindAll(data, -1)), len(wbReadRetryRe.FindAll(data, -1))
}

func printKubeStores(r *ksResults) {
	t := &table{nameW: 36, widths: []int{12, 21, 15, 11}}
	t.text("\nIPAM on the Kubernetes API (same machine, same run: %d CPUs, kube-apiserver %s, %s; one process per call)",
		runtime.NumCPU(), testenv.KubeVersion, etcdVersion())
	t.row("metric", ksPlugins...)
	row := func(name string, prec int, f func(c *ksColumn) float64) {
		cells := make([]string, len(ksPlugins))
		for i, pl := range ksPlugins {
			if c := r.cols[pl]; c.skipped != "" {
				cells[i] = "-"
			} else {
				cells[i] = num(f(c), prec)
			}
		}
		t.row(name, cells...)
	}
	row(fmt.Sprintf("ADDs/s, %d in flight (%d ADDs)", inFlight, ksAdds), 1, func(c *ksColumn) float64 { return c.conc.okPerSec() })
	row(fmt.Sprintf("p50 ms ADD, %d in flight", inFlight), 1, func(c *ksColumn) float64 { return c.conc.p50() })
	row(fmt.Sprintf("p99 ms ADD, %d in flight", inFlight), 1, func(c *ksColumn) float64 { return c.conc.p99() })
	row(fmt.Sprintf("p50 ms ADD, sequential (%d ADDs)", ksSeqAdds), 1, func(c *ksColumn) float64 { return c.seq.p50() })
	row(fmt.Sprintf("DELs/s, %d in flight (%d DELs)", inFlight, ksAdds), 1, func(c *ksColumn) float64 { return c.del.okPerSec() })
	row("failed ADDs", 0, func(c *ksColumn) float64 { return float64(c.failedAdds) })
	row("failed DELs", 0, func(c *ksColumn) float64 { return float64(c.failedDels) })
	row("duplicate addresses (must be 0)", 0, func(c *ksColumn) float64 { return float64(c.dups) })

	t.text("ADDs/s and DELs/s count successful calls over the phase's wall time; p50/p99 are per process, start to exit.")
	ratio := func(pl, vs string) string {
		a, b := r.cols[pl], r.cols[vs]
		if a.skipped != "" || b.skipped != "" {
			return "-"
		}
		return num(a.conc.okPerSec()/b.conc.okPerSec(), 2)
	}
	t.text("ADDs/s ratios: kube-ipam/kubernetes ÷ whereabouts %s (goal ≥ 5), ÷ host-local %s;",
		ratio(kipamKube, whereabouts), ratio(kipamKube, hostLocal))
	t.text("               kube-ipam/etcd ÷ whereabouts %s, ÷ host-local %s.",
		ratio(kipamEtcd, whereabouts), ratio(kipamEtcd, hostLocal))
	t.text("whereabouts: %s, its defaults (one Lease, %s/whereabouts, held by every ADD and DEL in turn; overlapping ranges on).",
		r.wbVersion, wbNamespace)
	if len(r.kubeCRDs) > 0 {
		t.text("kube-ipam's CRDs applied: %s.", strings.Join(r.kubeCRDs, ", "))
	} else {
		t.text("kube-ipam's CRDs: none in internal/store/kubestore/crds or deploy/crds.")
	}
	t.text("kube-ipam/etcd: the API server's etcd, prefix %s.", r.etcdPrefix)
	for _, pl := range ksPlugins {
		c := r.cols[pl]
		if c.skipped != "" {
			t.text("%s: SKIPPED: %s", pl, c.skipped)
		}
		for _, n := range c.notes {
			t.text("%s: %s", pl, n)
		}
	}
	fmt.Print(t.String())
}
