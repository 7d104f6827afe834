// Package lab_test runs `make lab`'s scenario as a test: the seed's
// architecture on real kubelet nodes (containerd + runc, one network
// namespace per node), the seed's manifests applied with kubectl, and the
// seed's verification (sections 4 and 5) replayed; then the lab is taken
// down and the test checks that nothing is left behind. It runs twice: on
// the guide's etcd, then on the Kubernetes API store.
package lab_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"kubeipam/internal/lab"
	"kubeipam/internal/testenv"
)

// logWriter streams the lab's output into the test log as it happens.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestLabReplaysTheSeed(t *testing.T) {
	testenv.RequireRoot(t)
	for _, c := range []string{"containerd", "ctr", "runc", "nsenter", "conntrack"} {
		if _, err := exec.LookPath(c); err != nil {
			testenv.Missing(t, "%s not installed (hack/deps.sh installs containerd, runc, conntrack)", c)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		testenv.Missing(t, "/bin/busybox missing (apt-get install busybox-static)")
	}
	for _, b := range []string{"kubelet", "kube-proxy", "kubectl", "kube-apiserver"} {
		testenv.KubeBinary(t, b)
	}
	for _, b := range []string{"flanneld", "flannel"} {
		if _, err := os.Stat(filepath.Join(lab.LabBinDir(), b)); err != nil {
			testenv.Missing(t, "%s not built (%v): run hack/labbin.sh", b, err)
		}
	}
	root := testenv.ModuleRoot(t)
	bin := filepath.Dir(testenv.Binary(t, "kube-ipam"))
	for _, b := range append([]string{"kube-ipam-lab-pause"}, lab.ImageBinaries...) {
		if p := testenv.Binary(t, b); filepath.Dir(p) != bin {
			t.Fatalf("%s and kube-ipam are in different directories", b)
		}
	}
	if _, err := os.Stat(filepath.Join(bin, "multus-cni")); err != nil {
		// The seed's "type": "multus-cni"; make build makes this copy.
		if err := os.Symlink(filepath.Join(bin, "kube-multus"), filepath.Join(bin, "multus-cni")); err != nil {
			t.Fatal(err)
		}
	}
	// One lab after the other (never two at once on a small machine): the
	// guide on both stores (its etcd, then the Kubernetes API store as
	// deploy/README.md installs it), then the NAD way under kube-multus's
	// Kubernetes mode and under upstream multus. Each lab has its own
	// names, underlay and directory, beside a `make lab` that may be
	// running.
	for _, v := range []struct{ test, store, mode, name, underlay string }{
		{lab.StoreEtcd, lab.StoreEtcd, lab.ModeDelegates, "kitest", "172.30.211.0/24"},
		{lab.StoreKubernetes, lab.StoreKubernetes, lab.ModeDelegates, "kitestks", "172.30.212.0/24"},
		{"nad", lab.StoreEtcd, lab.ModeNAD, "kitestnd", "172.30.213.0/24"},
		{"multus", lab.StoreEtcd, lab.ModeMultus, "kitestmu", "172.30.214.0/24"},
	} {
		t.Run(v.test, func(t *testing.T) {
			if v.mode == lab.ModeMultus {
				if _, err := os.Stat(filepath.Join(lab.MultusBinDir(), "multus")); err != nil {
					testenv.Missing(t, "upstream multus not built (%v): run hack/multus.sh", err)
				}
			}
			opts := lab.DefaultOptions(root)
			opts.Name, opts.RepoBin, opts.Store, opts.Mode = v.name, bin, v.store, v.mode
			opts.Underlay = netip.MustParsePrefix(v.underlay)
			opts.CNIBin = testenv.CNIPluginDir(t)
			opts.Out = logWriter{t}
			replayLab(t, opts)
		})
	}
}

// etcdPrefix is where the guide's config keeps kube-ipam's keys (the
// default etcdPrefix), and networkKeys those of the seed's network.
const (
	etcdPrefix  = "/kube-ipam/"
	networkKeys = etcdPrefix + "v1/networks/k8snet2/"
)

func replayLab(t *testing.T, opts lab.Options) {
	dir, err := os.MkdirTemp("", "kube-ipam-lab-test-")
	if err != nil {
		t.Fatal(err)
	}
	opts.Dir = dir
	before := hostSnapshot()

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var up, replayed time.Duration // for the log: how long each part took
	t0 := time.Now()
	l, err := lab.Up(ctx, opts)
	if l != nil {
		t.Cleanup(func() {
			t1 := time.Now()
			down(t, l, dir, before)
			t.Logf("%s store, %s mode: up %.0fs, replay and checks %.0fs, down %.0fs", opts.Store, opts.Mode, up.Seconds(), replayed.Seconds(), time.Since(t1).Seconds())
		})
	} else {
		os.RemoveAll(dir)
	}
	if err != nil {
		t.Fatal(err)
	}
	up = time.Since(t0)
	t0 = time.Now()
	defer func() { replayed = time.Since(t0) }()
	results, err := l.Replay(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var sum bytes.Buffer
	if failed := lab.Summary(&sum, results); failed > 0 {
		t.Errorf("%d of the replay's checks failed:\n%s", failed, sum.String())
	}
	// Where the allocations are: in etcd, or as IPAllocations in the API
	// and nothing in etcd.
	keys, err := l.EtcdKeys(ctx, etcdPrefix)
	if err != nil {
		t.Fatalf("reading the lab's kube-ipam etcd: %v", err)
	}
	if opts.KubernetesStore() {
		if len(keys) > 0 {
			t.Errorf("on the Kubernetes store, the kube-ipam etcd has keys under %s: %q", etcdPrefix, keys)
		}
		checkIPAllocations(ctx, t, l)
	} else if !slices.ContainsFunc(keys, func(k string) bool { return strings.HasPrefix(k, networkKeys) }) {
		t.Errorf("on etcd, no key under %s: %q", networkKeys, keys)
	}
	// Deleting the pods through the API runs every CNI DEL: kube-ipam must
	// hold nothing afterwards, and its store must be consistent.
	if err := l.DeleteWorkloads(ctx); err != nil {
		t.Fatal(err)
	}
	ipamctl := func(args ...string) (string, error) {
		b, err := l.IPAMCtl(ctx, args...)
		return string(b), err
	}
	out, err := ipamctl("list", "-o", "json")
	var held []map[string]any
	if err == nil {
		err = json.Unmarshal([]byte(out), &held)
	}
	if err != nil || len(held) > 0 {
		t.Errorf("after every pod was deleted, kube-ipamctl list says (%v):\n%s", err, out)
	}
	if out, err := ipamctl("check"); err != nil {
		t.Errorf("kube-ipamctl check after the pods were deleted (%v):\n%s", err, out)
	}
	checkClusterNetworkFreed(ctx, t, l)
	if opts.KubernetesStore() {
		for _, a := range ipAllocations(ctx, t, l) {
			if a.state == "held" {
				t.Errorf("after every pod was deleted, IPAllocation %s (%s) is still held by %s", a.name, a.address, a.pod)
			}
		}
	}
	// The replay must have covered the seed's sections, not stopped early.
	want := []string{"database-2-0 net1 is 10.188.0.219/16", "database-1-0 net1 is 10.188.0.218/16",
		"pings 10.188.0.219", "database-2-0 pings 10.188.0.218", "outsider has no net1", "database-2-0 moved to another node",
		"curl the NodePort", "dropped by the tier policy", "over eth0 (flannel)", "registered to the new database-2-0",
		"network-status of database-2-0 lists net1 with 10.188.0.219", "an AddedInterface Event says net1 got 10.188.0.219/16"}
	if opts.NADs() {
		want = append(want, "kubectl apply -f db-net.yaml", "kubectl apply -f nad/db.yaml", "outsider has no net1 (it asks for no network)")
	}
	if opts.KubernetesStore() {
		want = append(want, "CRDs are installed", "IPAllocation 10.188.0.218 is held by default/database-1-0",
			"IPAllocation 10.188.0.219 is held by default/database-2-0 on node")
	}
	for _, w := range want {
		if !strings.Contains(sum.String(), w) {
			t.Errorf("the replay has no check %q:\n%s", w, sum.String())
		}
	}
}

// checkClusterNetworkFreed: every eth0 address host-local handed out on a
// node (flannel's bridge delegate keeps them in
// /var/lib/cni/networks/<network>/) belongs to a pod that still exists:
// the meta plugin's DEL reached the cluster network with a config it could
// use (upstream multus v4.2.4 leaks them with a conflist clusterNetwork).
func checkClusterNetworkFreed(ctx context.Context, t *testing.T, l *lab.Lab) {
	t.Helper()
	cs, err := kubernetes.NewForConfig(restConfig(t, l))
	if err != nil {
		t.Fatal(err)
	}
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{}
	for _, p := range pods.Items {
		for _, ip := range p.Status.PodIPs {
			live[ip.IP] = true
		}
	}
	for _, n := range l.Nodes() {
		nets, _ := filepath.Glob(filepath.Join(n.FS("/var/lib/cni"), "networks", "*", "*"))
		for _, f := range nets {
			ip := filepath.Base(f)
			if net.ParseIP(ip) != nil && !live[ip] {
				b, _ := os.ReadFile(f)
				t.Errorf("%s: host-local still holds %s (%s) after its pod was deleted: the cluster network's DEL did not free it", n.Name, ip, strings.TrimSpace(string(b)))
			}
		}
	}
}

// ipAllocation is what the test reads of an IPAllocation object.
type ipAllocation struct {
	name, address, network, state, kind, pod, podUID, node string
}

var ipAllocationsGVR = schema.GroupVersionResource{Group: "ipam.kube-ipam.io", Version: "v1alpha1", Resource: "ipallocations"}

// ipAllocations lists the IPAllocation objects through the API.
func ipAllocations(ctx context.Context, t *testing.T, l *lab.Lab) []ipAllocation {
	t.Helper()
	dc, err := dynamic.NewForConfig(restConfig(t, l))
	if err != nil {
		t.Fatal(err)
	}
	list, err := dc.Resource(ipAllocationsGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing IPAllocations: %v", err)
	}
	var out []ipAllocation
	for _, o := range list.Items {
		str := func(path ...string) string {
			v, _, _ := unstructured.NestedString(o.Object, append([]string{"spec"}, path...)...)
			return v
		}
		out = append(out, ipAllocation{name: o.GetName(), address: str("address"), network: str("network"), state: str("state"),
			kind: str("kind"), pod: str("held", "podNamespace") + "/" + str("held", "podName"), podUID: str("held", "podUID"), node: str("held", "node")})
	}
	return out
}

// checkIPAllocations: the database pods' fixed addresses are IPAllocation
// objects held by those pods (the re-created database-2-0: its UID and
// node), and nothing else holds them.
func checkIPAllocations(ctx context.Context, t *testing.T, l *lab.Lab) {
	t.Helper()
	cs, err := kubernetes.NewForConfig(restConfig(t, l))
	if err != nil {
		t.Fatal(err)
	}
	allocs := ipAllocations(ctx, t, l)
	for _, want := range []struct{ ip, pod string }{{lab.DB1IP, "database-1-0"}, {lab.DB2IP, "database-2-0"}} {
		p, err := cs.CoreV1().Pods("default").Get(ctx, want.pod, metav1.GetOptions{})
		if err != nil {
			t.Errorf("pod %s: %v", want.pod, err)
			continue
		}
		var got []ipAllocation
		for _, a := range allocs {
			if a.address == want.ip {
				got = append(got, a)
			}
		}
		if len(got) != 1 || got[0].state != "held" || got[0].kind != "fixed" || got[0].network != "k8snet2" ||
			got[0].pod != "default/"+want.pod || got[0].podUID != string(p.UID) || got[0].node != p.Spec.NodeName {
			t.Errorf("IPAllocations of %s: %+v; want one, held (fixed, k8snet2) by default/%s (UID %s, node %s)",
				want.ip, got, want.pod, p.UID, p.Spec.NodeName)
		}
	}
}

func restConfig(t *testing.T, l *lab.Lab) *rest.Config {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", l.Options().Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

// snapshot is what must be the same before the lab and after its Down.
type snapshot struct{ netns, links, sysctls string }

func hostSnapshot() snapshot {
	out := func(args ...string) string {
		b, _ := exec.Command(args[0], args[1:]...).Output()
		return string(b)
	}
	var sys []string
	for _, s := range []string{"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"} {
		b, _ := os.ReadFile("/proc/sys/" + s)
		sys = append(sys, s+"="+strings.TrimSpace(string(b)))
	}
	return snapshot{
		netns:   filterLines(out("ip", "netns", "list"), "kitest"),
		links:   filterLines(out("ip", "-o", "link", "show"), "kitest"),
		sysctls: strings.Join(sys, " "),
	}
}

func filterLines(s, sub string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func down(t *testing.T, l *lab.Lab, dir string, before snapshot) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := l.Down(ctx); err != nil {
		t.Errorf("lab down: %v", err)
	}
	after := hostSnapshot()
	if after != before {
		t.Errorf("the host changed:\nbefore %+v\nafter  %+v", before, after)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("lab dir %s is still there", dir)
		os.RemoveAll(dir)
	}
	for _, n := range l.Nodes() {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/memory", n.Cgroup)); err == nil {
			t.Errorf("cgroup %s is still there", n.Cgroup)
		}
	}
}
