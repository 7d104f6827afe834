package plugin

// Real-process tests of the kube-ipam binary on the Kubernetes API store
// (ipam.store "kubernetes"): the plugin runs as a separate process, as a
// container runtime runs it, against a real kube-apiserver (testenv.StartKube)
// with the store's CRDs installed; the test reads back what it wrote through
// the API. TestKubeStoreMacvlanInNetns runs it under the real macvlan plugin
// in network namespaces (root).

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"kubeipam/internal/kubeapi"
	"kubeipam/internal/pod"
	"kubeipam/internal/store"
	"kubeipam/internal/store/kubestore"
	"kubeipam/internal/store/kubestore/kubestoretest"
	"kubeipam/internal/testenv"
)

// pluginLimit bounds one run of the binary: far above any ipam.timeout
// used here, so that hitting it means a bound is missing, not slowness.
const pluginLimit = 90 * time.Second

// kubeStore is a real kube-apiserver (with or without the store's CRDs)
// and the real kube-ipam binary.
type kubeStore struct {
	t   *testing.T
	k   *testenv.Kube
	api *kubeapi.Client // the admin's
	bin string
	dir string // plugin log files
}

func startKubeStore(t *testing.T, installCRDs bool) *kubeStore {
	t.Helper()
	bin := testenv.Binary(t, "kube-ipam")
	var k *testenv.Kube
	var api *kubeapi.Client
	if installCRDs {
		k, api = kubestoretest.Start(t, "kube-ipam-plugin-test")
	} else {
		k = testenv.StartKube(t, testenv.KubeOptions{})
		api = kubestoretest.Client(t, k, "kube-ipam-plugin-test")
	}
	s := &kubeStore{t: t, k: k, api: api, bin: bin, dir: t.TempDir()}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		logs, _ := filepath.Glob(filepath.Join(s.dir, "*.log"))
		for _, l := range logs {
			b, _ := os.ReadFile(l)
			b = b[max(0, len(b)-16<<10):]
			t.Logf("plugin log %s (last %d bytes):\n%s", filepath.Base(l), len(b), b)
		}
	})
	return s
}

// conf is a network config on the Kubernetes API store of s; entries of
// ipam override the defaults (nil deletes one).
func (s *kubeStore) conf(network string, ipam map[string]any) []byte {
	base := map[string]any{
		"type": "kube-ipam", "store": "kubernetes", "kubeConfig": s.k.Kubeconfig,
		"subnet": "10.188.0.0/16", "rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.200", "gateway": "10.188.0.1",
		"logFile": filepath.Join(s.dir, network+".log"), "logLevel": "debug", "timeout": "20s", "nodeName": "node-a",
	}
	for k, v := range ipam {
		if v == nil {
			delete(base, k)
		} else {
			base[k] = v
		}
	}
	b, err := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": network, "type": "macvlan", "ipam": base})
	if err != nil {
		s.t.Fatal(err)
	}
	return b
}

// withPrev is conf with a prevResult listing addrs (for CHECK).
func withPrev(t *testing.T, conf []byte, addrs ...string) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(conf, &m); err != nil {
		t.Fatal(err)
	}
	var ips []any
	for _, a := range addrs {
		ips = append(ips, map[string]any{"address": a})
	}
	m["prevResult"] = map[string]any{"cniVersion": "1.0.0", "ips": ips}
	b, _ := json.Marshal(m)
	return b
}

// v110 is conf as cniVersion 1.1.0 (STATUS needs it).
func v110(t *testing.T, conf []byte) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(conf, &m); err != nil {
		t.Fatal(err)
	}
	m["cniVersion"] = "1.1.0"
	b, _ := json.Marshal(m)
	return b
}

// pluginRun is one finished run of the binary.
type pluginRun struct {
	stdout, stderr []byte
	cniErr         *types.Error // the CNI error of a failed run
	took           time.Duration
}

// runningPlugin is a run of the binary in progress.
type runningPlugin struct {
	desc           string
	p              *testenv.Process
	stdout, stderr *bytes.Buffer
	start          time.Time
}

// startPlugin starts the binary as a runtime does (the verb and its
// arguments in CNI_* variables, the config on stdin). It is killed (by
// PID) at the end of the test if it is still running. Safe to call from
// several goroutines.
func startPlugin(t *testing.T, bin, verb, cid, ifname, cniArgs string, stdin []byte, env ...string) (*runningPlugin, error) {
	cmd := exec.Command(bin)
	cmd.Env = append([]string{
		"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + cid, "CNI_NETNS=/var/run/netns/kube-store-test",
		"CNI_NETNS_OVERRIDE=1", "CNI_IFNAME=" + ifname, "CNI_ARGS=" + cniArgs, "CNI_PATH=/opt/cni/bin",
		"PATH=" + os.Getenv("PATH"),
	}, env...)
	r := &runningPlugin{desc: fmt.Sprintf("%s %s/%s", verb, cid, ifname), stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = r.stdout, r.stderr
	r.start = time.Now()
	p, err := testenv.StartProcess(cmd, nil)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", r.desc, err)
	}
	r.p = p
	t.Cleanup(func() {
		if p.Signal(syscall.SIGKILL) == nil {
			p.Wait()
		}
	})
	return r, nil
}

// wait waits (at most limit, then kills it) until the run ends. A failed
// run must print a CNI error object on stdout; anything else (no answer
// within limit, a crash, a panic, garbage) is an error.
func (r *runningPlugin) wait(limit time.Duration) (*pluginRun, error) {
	select {
	case <-r.p.Exited:
	case <-time.After(limit):
		_ = r.p.Signal(syscall.SIGKILL)
		r.p.Wait()
		return nil, fmt.Errorf("%s still running after %v (killed); stderr: %s", r.desc, limit, r.stderr)
	}
	ws := r.p.Wait()
	out := &pluginRun{stdout: r.stdout.Bytes(), stderr: r.stderr.Bytes(), took: time.Since(r.start)}
	if ws.Signaled() {
		return nil, fmt.Errorf("%s killed by %v; stderr: %s", r.desc, ws.Signal(), out.stderr)
	}
	if bytes.Contains(out.stderr, []byte("panic")) || bytes.Contains(out.stderr, []byte("goroutine ")) {
		return nil, fmt.Errorf("%s panicked: %s", r.desc, out.stderr)
	}
	if ws.ExitStatus() == 0 {
		return out, nil
	}
	var e types.Error
	if err := json.Unmarshal(out.stdout, &e); err != nil || e.Msg == "" {
		return nil, fmt.Errorf("%s exited %d without a CNI error on stdout: %q (stderr: %s)", r.desc, ws.ExitStatus(), out.stdout, out.stderr)
	}
	out.cniErr = &e
	return out, nil
}

func runPlugin(t *testing.T, bin, verb, cid, ifname, cniArgs string, stdin []byte, env ...string) (*pluginRun, error) {
	r, err := startPlugin(t, bin, verb, cid, ifname, cniArgs, stdin, env...)
	if err != nil {
		return nil, err
	}
	return r.wait(pluginLimit)
}

// parseResult decodes an ADD result into its addresses (CIDR form).
func parseResult(stdout []byte) ([]string, *current.Result, error) {
	var r current.Result
	if err := json.Unmarshal(stdout, &r); err != nil {
		return nil, nil, fmt.Errorf("ADD result %q: %w", stdout, err)
	}
	var ips []string
	for _, ip := range r.IPs {
		ips = append(ips, ip.Address.String())
	}
	return ips, &r, nil
}

// call runs one verb that must succeed.
func (s *kubeStore) call(verb string, conf []byte, cid, ifname, cniArgs string, env ...string) *pluginRun {
	s.t.Helper()
	r, err := runPlugin(s.t, s.bin, verb, cid, ifname, cniArgs, conf, env...)
	if err != nil {
		s.t.Fatal(err)
	}
	if r.cniErr != nil {
		s.t.Fatalf("%s %s/%s: code %d: %s", verb, cid, ifname, r.cniErr.Code, r.cniErr.Msg)
	}
	return r
}

// add runs an ADD that must succeed and returns its addresses.
func (s *kubeStore) add(conf []byte, cid, ifname, cniArgs string) []string {
	s.t.Helper()
	r := s.call("ADD", conf, cid, ifname, cniArgs)
	ips, _, err := parseResult(r.stdout)
	if err != nil {
		s.t.Fatal(err)
	}
	return ips
}

// fail runs a verb that must fail with code, its message containing every
// one of parts; it returns the error.
func (s *kubeStore) fail(verb string, conf []byte, cid, ifname, cniArgs string, code uint, parts ...string) *types.Error {
	s.t.Helper()
	r, err := runPlugin(s.t, s.bin, verb, cid, ifname, cniArgs, conf)
	if err != nil {
		s.t.Fatal(err)
	}
	checkCNIError(s.t, verb+" "+cid+"/"+ifname, r, code, parts...)
	return r.cniErr
}

func checkCNIError(t *testing.T, desc string, r *pluginRun, code uint, parts ...string) {
	t.Helper()
	if r.cniErr == nil {
		t.Fatalf("%s succeeded (%s), want code %d", desc, r.stdout, code)
	}
	if r.cniErr.Code != code {
		t.Fatalf("%s: code %d %q, want code %d", desc, r.cniErr.Code, r.cniErr.Msg, code)
	}
	for _, p := range parts {
		if !strings.Contains(r.cniErr.Msg, p) {
			t.Fatalf("%s: code %d message %q does not contain %q", desc, code, r.cniErr.Msg, p)
		}
	}
	t.Logf("%s: code %d after %v: %s", desc, code, r.took.Round(time.Millisecond), r.cniErr.Msg)
}

// ipaObject is an IPAllocation as the API serves it (the fields checked).
type ipaObject struct {
	Metadata struct {
		Name              string            `json:"name"`
		ResourceVersion   string            `json:"resourceVersion"`
		CreationTimestamp string            `json:"creationTimestamp"`
		Labels            map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Network  string `json:"network"`
		Address  string `json:"address"`
		State    string `json:"state"`
		Kind     string `json:"kind"`
		RangeSet int    `json:"rangeSet"`
		Held     *struct {
			ContainerID    string   `json:"containerID"`
			IfName         string   `json:"ifname"`
			Pod            string   `json:"pod"`
			PodNamespace   string   `json:"podNamespace"`
			PodName        string   `json:"podName"`
			PodUID         string   `json:"podUID"`
			StatefulSet    string   `json:"statefulSet"`
			StatefulSetUID string   `json:"statefulSetUID"`
			Ordinal        int      `json:"ordinal"`
			Node           string   `json:"node"`
			ClaimIPs       []string `json:"claimIPs"`
		} `json:"held"`
		Released *struct {
			At       time.Time `json:"at"`
			Reusable bool      `json:"reusable"`
		} `json:"released"`
	} `json:"spec"`
}

type stickyObject struct {
	Metadata struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Network        string   `json:"network"`
		Namespace      string   `json:"namespace"`
		StatefulSet    string   `json:"statefulSet"`
		StatefulSetUID string   `json:"statefulSetUID"`
		Ordinal        int      `json:"ordinal"`
		IfName         string   `json:"ifname"`
		Addresses      []string `json:"addresses"`
	} `json:"spec"`
}

const ipamAPI = "/apis/" + kubestore.Group + "/" + kubestore.Version

// allocName is the IPAllocation name of ip on network (types.go: the
// address in fixed-width hex, then the network id).
func allocName(ip, network string) string {
	a := netip.MustParseAddr(strings.Split(ip, "/")[0])
	return hex.EncodeToString(a.AsSlice()) + "." + kubestore.NetworkID(network)
}

func (s *kubeStore) get(path string, accept string) *kubeapi.Response {
	s.t.Helper()
	resp, err := s.api.Do(s.t.Context(), kubeapi.Request{Path: path, Accept: accept})
	if err != nil {
		s.t.Fatalf("GET %s: %v", path, err)
	}
	return resp
}

// allocation reads one IPAllocation (nil when there is none).
func (s *kubeStore) allocation(ip, network string) *ipaObject {
	s.t.Helper()
	resp := s.get(ipamAPI+"/ipallocations/"+allocName(ip, network), "")
	if resp.Code == http.StatusNotFound {
		return nil
	}
	if resp.Code != http.StatusOK {
		s.t.Fatalf("GET IPAllocation of %s: %v", ip, resp.Status())
	}
	var o ipaObject
	if err := json.Unmarshal(resp.Body, &o); err != nil {
		s.t.Fatal(err)
	}
	return &o
}

func listObjects[T any](s *kubeStore, resource, selector string) []T {
	s.t.Helper()
	resp, err := s.api.Do(s.t.Context(), kubeapi.Request{Path: ipamAPI + "/" + resource, Query: url.Values{"labelSelector": {selector}}})
	if err != nil {
		s.t.Fatalf("LIST %s: %v", resource, err)
	}
	if resp.Code != http.StatusOK {
		s.t.Fatalf("LIST %s: %v", resource, resp.Status())
	}
	var l struct {
		Items []T `json:"items"`
	}
	if err := json.Unmarshal(resp.Body, &l); err != nil {
		s.t.Fatal(err)
	}
	return l.Items
}

// allocations lists the IPAllocations of network; extra are more
// label=value selector terms.
func (s *kubeStore) allocations(network string, extra ...string) []ipaObject {
	s.t.Helper()
	sel := append([]string{kubestore.LabelNetwork + "=" + kubestore.NetworkID(network)}, extra...)
	return listObjects[ipaObject](s, "ipallocations", strings.Join(sel, ","))
}

// heldBy is every IPAllocation of network held by container cid: those
// labelled with it, and (the spec being the truth) any whose spec names it.
func (s *kubeStore) heldBy(network, cid string) []ipaObject {
	s.t.Helper()
	var out []ipaObject
	for _, o := range s.allocations(network) {
		if o.Metadata.Labels[kubestore.LabelContainer] == cid || o.Spec.Held != nil && o.Spec.Held.ContainerID == cid {
			out = append(out, o)
		}
	}
	return out
}

func (s *kubeStore) stickies(network string) []stickyObject {
	s.t.Helper()
	return listObjects[stickyObject](s, "ipstickies", kubestore.LabelNetwork+"="+kubestore.NetworkID(network))
}

// createPod creates pod default/name (deleting an earlier one of that
// name first: the new one has a new UID).
func (s *kubeStore) createPod(name string, ann, labels map[string]string, owner *metav1.OwnerReference) *corev1.Pod {
	s.t.Helper()
	pods := s.k.Client.CoreV1().Pods("default")
	zero := int64(0)
	if err := pods.Delete(s.t.Context(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err == nil {
		s.k.WaitFor(s.t, "pod default/"+name+" to be gone", time.Minute, func() (bool, error) {
			_, err := pods.Get(s.t.Context(), name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
	} else if !apierrors.IsNotFound(err) {
		s.t.Fatal(err)
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann, Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}},
	}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	p, err := pods.Create(s.t.Context(), p, metav1.CreateOptions{})
	if err != nil {
		s.t.Fatalf("creating pod %s: %v", name, err)
	}
	return p
}

// statefulSet creates StatefulSet default/name (no controller runs: its
// pods are created by createStsPod) and returns the owner reference of its
// pods.
func (s *kubeStore) statefulSet(name string, ann map[string]string) *metav1.OwnerReference {
	s.t.Helper()
	labels := map[string]string{"app": name}
	sts, err := s.k.Client.AppsV1().StatefulSets("default").Create(s.t.Context(), &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.StatefulSetSpec{
			Replicas: new(int32(0)), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: ann},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	yes := true
	return &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "StatefulSet", Name: name, UID: sts.UID, Controller: &yes}
}

// createStsPod creates (or re-creates, with a new UID) pod <sts>-<ordinal>
// as the StatefulSet controller would: the template's annotations, the
// owner reference and the pod-index label.
func (s *kubeStore) createStsPod(owner *metav1.OwnerReference, ordinal int, ann map[string]string) *corev1.Pod {
	s.t.Helper()
	return s.createPod(fmt.Sprintf("%s-%d", owner.Name, ordinal), ann,
		map[string]string{pod.PodIndexLabel: fmt.Sprint(ordinal), "app": owner.Name}, owner)
}

// TestKubeStoreAddCheckDel: ADD, CHECK, DEL and a repeated DEL of the real
// binary on the Kubernetes API store. The IPAllocation read back through
// the API names the holder in its spec and labels, kubectl's columns show
// it, DEL leaves a tombstone for a dynamic address and removes a fixed one
// outside the dynamic range, and a second DEL changes nothing.
func TestKubeStoreAddCheckDel(t *testing.T) {
	s := startKubeStore(t, true)
	const network = "k8snet2"
	conf := s.conf(network, nil)
	web := s.createPod("web-1", nil, nil, nil)

	ips := s.add(conf, "rt-1", "net1", podArgs("default", "web-1"))
	if len(ips) != 1 || ips[0] != "10.188.0.10/16" {
		t.Fatalf("ADD got %v, want [10.188.0.10/16] (the first address of the range)", ips)
	}

	// The object: name, spec and labels.
	o := s.allocation("10.188.0.10", network)
	if o == nil {
		t.Fatal("no IPAllocation for 10.188.0.10 after ADD")
	}
	if want := "0abc000a." + network; o.Metadata.Name != want || allocName("10.188.0.10", network) != want {
		t.Fatalf("IPAllocation name %q, want %q", o.Metadata.Name, want)
	}
	sp, h := o.Spec, o.Spec.Held
	if sp.Network != network || sp.Address != "10.188.0.10" || sp.State != "held" || sp.Kind != "dynamic" || sp.RangeSet != 0 || sp.Released != nil || h == nil {
		t.Fatalf("IPAllocation spec %+v (held %+v)", sp, h)
	}
	if h.ContainerID != "rt-1" || h.IfName != "net1" || h.Pod != "default/web-1" || h.PodNamespace != "default" || h.PodName != "web-1" ||
		h.PodUID != string(web.UID) || h.Node != "node-a" || !slices.Equal(h.ClaimIPs, []string{"10.188.0.10"}) {
		t.Fatalf("IPAllocation spec.held %+v, want container rt-1/net1, pod default/web-1 (UID %s), node node-a, claim [10.188.0.10]", *h, web.UID)
	}
	wantLabels := map[string]string{
		kubestore.LabelNetwork: network, kubestore.LabelState: "held", kubestore.LabelContainer: "rt-1",
		kubestore.LabelIfName: "net1", kubestore.LabelPodUID: string(web.UID), kubestore.LabelNode: "node-a", kubestore.LabelRangeSet: "0",
	}
	for k, v := range wantLabels {
		if got, ok := o.Metadata.Labels[k]; !ok || got != v {
			t.Errorf("label %s = %q (present %v), want %q", k, got, ok, v)
		}
	}
	if v, ok := o.Metadata.Labels[kubestore.LabelReleasedAt]; ok {
		t.Errorf("a held address has label %s=%s", kubestore.LabelReleasedAt, v)
	}
	if n := len(s.allocations(network)); n != 1 {
		t.Fatalf("%d IPAllocations on the network after one ADD, want 1", n)
	}
	if n := len(s.stickies(network)); n != 0 {
		t.Fatalf("%d IPStickies for a pod that is not in a StatefulSet", n)
	}

	// kubectl get ipallocations: the CRD's columns, and a server-side Table
	// (what kubectl prints) showing the holder.
	checkPrinterColumns(t, s)
	cells := s.tableRow(ipamAPI+"/ipallocations/"+o.Metadata.Name, o.Metadata.Name)
	for col, want := range map[string]string{"Address": "10.188.0.10", "Network": network, "State": "held", "Pod": "default/web-1", "Node": "node-a", "Kind": "dynamic"} {
		if got := cells[col]; got != want {
			t.Errorf("kubectl column %s = %q, want %q (row %v)", col, got, want, cells)
		}
	}
	if cells["Age"] == "" {
		t.Errorf("kubectl column Age is empty (row %v)", cells)
	}

	// CHECK: the holder with its prevResult passes; a different prevResult
	// and an unknown container do not.
	s.call("CHECK", withPrev(t, conf, "10.188.0.10/16"), "rt-1", "net1", podArgs("default", "web-1"))
	s.call("STATUS", v110(t, conf), "", "", "")
	s.fail("CHECK", withPrev(t, conf, "10.188.0.99/16"), "rt-1", "net1", "", CodeCheckMismatch, "prevResult")
	s.fail("CHECK", conf, "never-added", "net1", "", CodeCheckMismatch, "no allocation")

	// DEL: a dynamic address inside the range is kept as a tombstone (in
	// the release log, for the cooldown), labelled with no holder.
	s.call("DEL", conf, "rt-1", "net1", podArgs("default", "web-1"))
	o = s.allocation("10.188.0.10", network)
	if o == nil || o.Spec.State != "released" || o.Spec.Held != nil || o.Spec.Released == nil || !o.Spec.Released.Reusable || o.Spec.Released.At.IsZero() {
		t.Fatalf("after DEL the IPAllocation is %+v, want a reusable tombstone", o)
	}
	if o.Metadata.Labels[kubestore.LabelState] != "released" || o.Metadata.Labels[kubestore.LabelReleasedAt] == "" {
		t.Fatalf("tombstone labels %v, want state released and a release time", o.Metadata.Labels)
	}
	for _, k := range []string{kubestore.LabelContainer, kubestore.LabelIfName, kubestore.LabelPodUID, kubestore.LabelNode} {
		if v, ok := o.Metadata.Labels[k]; ok {
			t.Fatalf("tombstone still labelled %s=%s", k, v)
		}
	}
	if held := s.heldBy(network, "rt-1"); len(held) != 0 {
		t.Fatalf("after DEL %d IPAllocations still name rt-1", len(held))
	}
	s.fail("CHECK", conf, "rt-1", "net1", "", CodeCheckMismatch, "no allocation")

	// A second DEL succeeds and writes nothing; so does a DEL of a
	// container that never had an address.
	rv := o.Metadata.ResourceVersion
	s.call("DEL", conf, "rt-1", "net1", podArgs("default", "web-1"))
	s.call("DEL", conf, "never-added", "net1", "")
	if o = s.allocation("10.188.0.10", network); o == nil || o.Metadata.ResourceVersion != rv {
		t.Fatalf("a repeated DEL changed the tombstone (resourceVersion %s -> %+v)", rv, o)
	}

	// A fixed address outside the dynamic range: held while the pod has
	// it, gone (no tombstone) after DEL.
	s.createPod("database-2-0", map[string]string{pod.AnnotationIP: "10.188.0.219", pod.AnnotationNetmask: "255.255.0.0"}, nil, nil)
	if ips := s.add(conf, "db-1", "net1", podArgs("default", "database-2-0")); len(ips) != 1 || ips[0] != "10.188.0.219/16" {
		t.Fatalf("fixed ADD got %v", ips)
	}
	if o := s.allocation("10.188.0.219", network); o == nil || o.Spec.Kind != "fixed" || o.Spec.Held == nil || o.Spec.Held.Pod != "default/database-2-0" {
		t.Fatalf("fixed address IPAllocation %+v", o)
	}
	s.call("DEL", conf, "db-1", "net1", "")
	if o := s.allocation("10.188.0.219", network); o != nil {
		t.Fatalf("fixed address outside the dynamic range still has an IPAllocation after DEL: %+v", o.Spec)
	}
	s.call("DEL", conf, "db-1", "net1", "")
}

// checkPrinterColumns: the IPAllocation CRD shows address, pod, node, kind
// and age in kubectl get.
func checkPrinterColumns(t *testing.T, s *kubeStore) {
	t.Helper()
	resp := s.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/ipallocations."+kubestore.Group, "")
	if resp.Code != http.StatusOK {
		t.Fatalf("reading the IPAllocation CRD: %v", resp.Status())
	}
	var crd struct {
		Spec struct {
			Versions []struct {
				Name    string `json:"name"`
				Columns []struct {
					Name     string `json:"name"`
					JSONPath string `json:"jsonPath"`
					Priority int    `json:"priority"`
				} `json:"additionalPrinterColumns"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(resp.Body, &crd); err != nil {
		t.Fatal(err)
	}
	cols := map[string]string{}
	for _, v := range crd.Spec.Versions {
		if v.Name != kubestore.Version {
			continue
		}
		for _, c := range v.Columns {
			if c.Priority == 0 {
				cols[strings.ToLower(c.Name)] = c.JSONPath
			}
		}
	}
	for name, path := range map[string]string{"address": ".spec.address", "pod": ".spec.held.pod", "node": ".spec.held.node", "kind": ".spec.kind", "age": ".metadata.creationTimestamp"} {
		if got, ok := cols[name]; !ok || got != path {
			t.Errorf("IPAllocation CRD %s: default column %q has jsonPath %q (present %v), want %q; columns %v", kubestore.Version, name, got, ok, path, cols)
		}
	}
}

// tableRow reads path as kubectl does (a server-side Table) and returns
// the cells of the row of object name by column name.
func (s *kubeStore) tableRow(path, name string) map[string]string {
	s.t.Helper()
	resp := s.get(path, "application/json;as=Table;v=v1;g=meta.k8s.io")
	if resp.Code != http.StatusOK {
		s.t.Fatalf("GET %s as a Table: %v", path, resp.Status())
	}
	var tbl struct {
		Kind    string `json:"kind"`
		Columns []struct {
			Name string `json:"name"`
		} `json:"columnDefinitions"`
		Rows []struct {
			Cells  []any `json:"cells"`
			Object struct {
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
			} `json:"object"`
		} `json:"rows"`
	}
	if err := json.Unmarshal(resp.Body, &tbl); err != nil || tbl.Kind != "Table" {
		s.t.Fatalf("GET %s as a Table: kind %q, %v", path, tbl.Kind, err)
	}
	for _, r := range tbl.Rows {
		if r.Object.Metadata.Name != name && len(tbl.Rows) > 1 {
			continue
		}
		cells := map[string]string{}
		for i, c := range tbl.Columns {
			if i < len(r.Cells) && r.Cells[i] != nil {
				cells[c.Name] = fmt.Sprint(r.Cells[i])
			}
		}
		return cells
	}
	s.t.Fatalf("GET %s as a Table: no row for %s", path, name)
	return nil
}

// TestKubeStoreStatefulSetKeepsAddress: a StatefulSet pod keeps its
// address through DEL and an ADD of its re-created pod (new pod UID, new
// container ID) on the Kubernetes API store: its sticky address (IPSticky)
// and, for a kube-ipam.ip-pool StatefulSet, the entry of its ordinal.
func TestKubeStoreStatefulSetKeepsAddress(t *testing.T) {
	s := startKubeStore(t, true)
	const network = "k8snet2"
	// No cooldown: a released address would be handed out again at once,
	// unless it is kept for its StatefulSet pod.
	conf := s.conf(network, map[string]any{"releaseCooldown": "0s"})

	t.Run("sticky", func(t *testing.T) {
		s.t = t
		mysql := s.statefulSet("mysql", nil)
		p0 := s.createStsPod(mysql, 0, nil)
		args := podArgs("default", "mysql-0")
		first := s.add(conf, "mysql-0-a", "net1", args)
		if len(first) != 1 {
			t.Fatalf("ADD got %v", first)
		}
		o := s.allocation(first[0], network)
		if o == nil || o.Spec.Kind != "sticky" || o.Spec.Held == nil || o.Spec.Held.StatefulSet != "mysql" ||
			o.Spec.Held.StatefulSetUID != string(mysql.UID) || o.Spec.Held.Ordinal != 0 || o.Spec.Held.PodUID != string(p0.UID) {
			t.Fatalf("IPAllocation of %s: %+v, want sticky, held by mysql-0 (StatefulSet UID %s)", first[0], o, mysql.UID)
		}
		st := s.stickies(network)
		if len(st) != 1 || st[0].Spec.StatefulSetUID != string(mysql.UID) || st[0].Spec.Ordinal != 0 || st[0].Spec.Namespace != "default" ||
			st[0].Spec.IfName != "net1" || !slices.Equal(st[0].Spec.Addresses, []string{strings.Split(first[0], "/")[0]}) {
			t.Fatalf("IPStickies %+v, want one for mysql ordinal 0 net1 with %s", st, first[0])
		}

		s.call("DEL", conf, "mysql-0-a", "net1", args)
		if o := s.allocation(first[0], network); o == nil || o.Spec.State != "released" || o.Spec.Released.Reusable {
			t.Fatalf("after DEL the sticky address is %+v, want a tombstone outside the release log", o)
		}
		// Other pods come and go meanwhile: none is given the address.
		for i := range 3 {
			other := s.add(conf, fmt.Sprintf("other-%d", i), "net1", "")
			if other[0] == first[0] {
				t.Fatalf("the StatefulSet pod's address %s was handed out to another container", first[0])
			}
		}
		// The pod is re-created (new UID) and its new sandbox gets the address back.
		p0b := s.createStsPod(mysql, 0, nil)
		if p0b.UID == p0.UID {
			t.Fatal("the re-created pod has the same UID")
		}
		if again := s.add(conf, "mysql-0-b", "net1", args); !slices.Equal(again, first) {
			t.Fatalf("re-created mysql-0 got %v, want %v", again, first)
		}
		if o := s.allocation(first[0], network); o == nil || o.Spec.Held == nil || o.Spec.Held.ContainerID != "mysql-0-b" || o.Spec.Held.PodUID != string(p0b.UID) {
			t.Fatalf("IPAllocation after the re-ADD: %+v, want held by mysql-0-b (pod UID %s)", o, p0b.UID)
		}
		// Re-created again before the old sandbox's DEL: the new sandbox
		// takes the address over, and the late DEL frees nothing.
		s.createStsPod(mysql, 0, nil)
		if again := s.add(conf, "mysql-0-c", "net1", args); !slices.Equal(again, first) {
			t.Fatalf("takeover got %v, want %v", again, first)
		}
		s.call("DEL", conf, "mysql-0-b", "net1", args)
		if o := s.allocation(first[0], network); o == nil || o.Spec.Held == nil || o.Spec.Held.ContainerID != "mysql-0-c" {
			t.Fatalf("the late DEL of mysql-0-b changed the address: %+v", o)
		}
		if n := len(s.stickies(network)); n != 1 {
			t.Fatalf("%d IPStickies, want still 1", n)
		}
	})

	t.Run("ip-pool", func(t *testing.T) {
		s.t = t
		ann := map[string]string{pod.AnnotationIPPool: "10.188.0.218,10.188.0.219", pod.AnnotationNetmask: "255.255.0.0"}
		db := s.statefulSet("database", ann)
		s.createStsPod(db, 1, ann)
		args := podArgs("default", "database-1")
		if got := s.add(conf, "database-1-a", "net1", args); !slices.Equal(got, []string{"10.188.0.219/16"}) {
			t.Fatalf("ordinal 1 got %v, want entry 1 of the pool, 10.188.0.219/16", got)
		}
		if o := s.allocation("10.188.0.219", network); o == nil || o.Spec.Kind != "fixed" || o.Spec.Held == nil || o.Spec.Held.Ordinal != 1 || o.Spec.Held.StatefulSet != "database" {
			t.Fatalf("IPAllocation of 10.188.0.219: %+v", o)
		}
		s.call("DEL", conf, "database-1-a", "net1", args)
		if held := s.heldBy(network, "database-1-a"); len(held) != 0 {
			t.Fatalf("after DEL %d IPAllocations still name database-1-a", len(held))
		}
		s.createStsPod(db, 1, ann)
		if got := s.add(conf, "database-1-b", "net1", args); !slices.Equal(got, []string{"10.188.0.219/16"}) {
			t.Fatalf("re-created ordinal 1 got %v, want 10.188.0.219/16", got)
		}
		if o := s.allocation("10.188.0.219", network); o == nil || o.Spec.Held == nil || o.Spec.Held.ContainerID != "database-1-b" {
			t.Fatalf("IPAllocation of 10.188.0.219 after the re-ADD: %+v", o)
		}
	})
}

// TestKubeStoreFixedConflictSameAsEtcd: a fixed address held by one pod is
// refused to another with code 100 naming the holder, in the same words
// on the Kubernetes API store as on etcd; the refused ADD holds nothing.
func TestKubeStoreFixedConflictSameAsEtcd(t *testing.T) {
	s := startKubeStore(t, true)
	e := testenv.StartEtcd(t)
	const network = "k8snet2"
	kubeConf := s.conf(network, nil)
	etcdConf := s.conf(network, map[string]any{"store": nil, "etcdConfig": map[string]any{"etcdURL": strings.Join(e.Endpoints, ",")}})
	ann := map[string]string{pod.AnnotationIP: "10.188.0.219"}
	s.createPod("database-2-0", ann, nil, nil)
	s.createPod("intruder", ann, nil, nil)

	// The same containers on both stores (each has its own allocations).
	msgs := map[string]string{}
	for _, name := range []string{"etcd", "kubernetes"} {
		conf := map[string][]byte{"etcd": etcdConf, "kubernetes": kubeConf}[name]
		if got := s.add(conf, "holder", "net1", podArgs("default", "database-2-0")); !slices.Equal(got, []string{"10.188.0.219/16"}) {
			t.Fatalf("%s: fixed ADD got %v", name, got)
		}
		e := s.fail("ADD", conf, "intruder", "net1", podArgs("default", "intruder"), CodeConflict,
			"10.188.0.219", "pod default/database-2-0", "container holder", "interface net1", "node node-a")
		msgs[name] = e.Msg
		// Repeated: still refused.
		s.fail("ADD", conf, "intruder", "net1", podArgs("default", "intruder"), CodeConflict, "pod default/database-2-0")
	}
	if msgs["etcd"] != msgs["kubernetes"] {
		t.Fatalf("the conflict is worded differently:\netcd:       %s\nkubernetes: %s", msgs["etcd"], msgs["kubernetes"])
	}
	if held := s.heldBy(network, "intruder"); len(held) != 0 {
		t.Fatalf("the refused ADD holds %d IPAllocations", len(held))
	}
	if o := s.allocation("10.188.0.219", network); o == nil || o.Spec.Held == nil || o.Spec.Held.ContainerID != "holder" || o.Spec.Held.Pod != "default/database-2-0" {
		t.Fatalf("the holder's IPAllocation changed: %+v", o)
	}
	if n := len(s.allocations(network)); n != 1 {
		t.Fatalf("%d IPAllocations, want only the holder's", n)
	}
	// Once the holder's DEL ran, the other pod gets the address.
	s.call("DEL", kubeConf, "holder", "net1", "")
	if got := s.add(kubeConf, "intruder", "net1", podArgs("default", "intruder")); !slices.Equal(got, []string{"10.188.0.219/16"}) {
		t.Fatalf("the freed fixed address went to %v", got)
	}
}

// TestKubeStoreAPIServerFrozen: with the kube-apiserver frozen (SIGSTOP),
// ADD, DEL and CHECK fail with code 11 naming the Kubernetes API within
// ipam.timeout (the process limit is the guard; no wall clock is
// asserted), and a failed ADD holds nothing once the API is back. An ADD
// whose claim was written before the freeze and that fails afterwards
// (its rollback cannot reach the API) leaves the claim to the runtime's
// DEL, which frees it once the API answers again.
func TestKubeStoreAPIServerFrozen(t *testing.T) {
	s := startKubeStore(t, true)
	const network = "k8snet2"
	// The calls made while the API is frozen have a short timeout; the
	// others a long one (the first write of an IPAllocation after the CRD
	// was installed can take seconds on a loaded machine).
	conf := s.conf(network, map[string]any{"timeout": "3s"})
	long := s.conf(network, nil)
	s.createPod("web-1", nil, nil, nil)
	before := s.add(long, "before", "net1", "")
	server := s.k.Server

	s.k.FreezeAPIServer(t)
	s.fail("ADD", conf, "frozen-1", "net1", "", 11, "the Kubernetes API", server)
	s.fail("ADD", conf, "frozen-2", "net1", podArgs("default", "web-1"), 11, "Kubernetes API")
	s.fail("DEL", conf, "before", "net1", "", 11, "the Kubernetes API", server)
	s.fail("CHECK", conf, "before", "net1", "", 11, "the Kubernetes API", server)
	s.fail("STATUS", v110(t, conf), "", "", "", types.ErrPluginNotAvailable, "the Kubernetes API", server)
	s.k.ThawAPIServer(t)
	s.waitReady()

	// Back: ADDs succeed, the DEL that failed left the address held, and
	// the failed containers' DELs leave nothing labelled with them.
	if o := s.allocation(before[0], network); o == nil || o.Spec.Held == nil || o.Spec.Held.ContainerID != "before" {
		t.Fatalf("the DEL that failed while frozen changed %s: %+v", before[0], o)
	}
	after := s.add(long, "after", "net1", podArgs("default", "web-1"))
	if slices.Equal(after, before) {
		t.Fatalf("after the freeze ADD got %v, the address held by another container", after)
	}
	for _, cid := range []string{"frozen-1", "frozen-2"} {
		s.call("DEL", long, cid, "net1", "")
		if held := s.heldBy(network, cid); len(held) != 0 {
			t.Fatalf("after DEL, %d IPAllocations name %s", len(held), cid)
		}
	}
	s.call("DEL", long, "before", "net1", "")
	if held := s.heldBy(network, "before"); len(held) != 0 {
		t.Fatalf("after DEL, %d IPAllocations name the container whose DEL failed while frozen", len(held))
	}
	if held := listObjects[ipaObject](s, "ipallocations", kubestore.LabelState+"=held"); len(held) != 1 || held[0].Spec.Held.ContainerID != "after" {
		t.Fatalf("held IPAllocations %+v, want only the one of container after", held)
	}

	t.Run("frozen between claim and result", func(t *testing.T) {
		s.t = t
		// The fault hook holds the ADD after its claim was written; the
		// result then fails (its resolvConf is removed meanwhile), and the
		// rollback of the claim meets the frozen API.
		hold := t.TempDir()
		resolv := filepath.Join(t.TempDir(), "resolv.conf")
		if err := os.WriteFile(resolv, []byte("nameserver 10.96.0.10\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		cut := s.conf(network, map[string]any{"timeout": "60s", "resolvConf": resolv})
		r, err := startPlugin(t, s.bin, "ADD", "cut-1", "net1", "", cut, HoldAfterCommitEnv+"="+hold)
		if err != nil {
			t.Fatal(err)
		}
		marker := filepath.Join(hold, "cut-1_net1")
		s.k.WaitFor(t, "the ADD to hold after its claim", time.Minute, func() (bool, error) {
			select {
			case <-r.p.Exited:
				return false, fmt.Errorf("the ADD ended before holding: stdout %s stderr %s", r.stdout, r.stderr)
			default:
			}
			_, err := os.Stat(marker)
			return err == nil, err
		})
		held := s.heldBy(network, "cut-1")
		if len(held) != 1 || held[0].Spec.State != "held" {
			t.Fatalf("while the ADD holds, IPAllocations of cut-1: %+v, want its claim", held)
		}
		addr := held[0].Spec.Address
		if err := os.Remove(resolv); err != nil {
			t.Fatal(err)
		}
		s.k.FreezeAPIServer(t)
		if err := os.Remove(marker); err != nil {
			t.Fatal(err)
		}
		res, err := r.wait(pluginLimit)
		if err != nil {
			t.Fatal(err)
		}
		checkCNIError(t, "ADD cut-1/net1", res, types.ErrIOFailure, "resolvConf", resolv)
		logb, _ := os.ReadFile(filepath.Join(s.dir, network+".log"))
		if !strings.Contains(string(logb), "releasing the claim of this failed ADD failed") {
			t.Fatalf("the plugin log does not say that the rollback failed:\n%s", logb)
		}
		s.k.ThawAPIServer(t)
		s.waitReady()
		if held := s.heldBy(network, "cut-1"); len(held) != 1 || held[0].Spec.Address != addr {
			t.Fatalf("after the failed rollback, IPAllocations of cut-1: %+v, want its claim of %s still held", held, addr)
		}
		s.call("DEL", long, "cut-1", "net1", "")
		if held := s.heldBy(network, "cut-1"); len(held) != 0 {
			t.Fatalf("after the runtime's DEL, %d IPAllocations name cut-1", len(held))
		}
		if o := s.allocation(addr, network); o == nil || o.Spec.State != "released" {
			t.Fatalf("%s after DEL: %+v, want a tombstone", addr, o)
		}
	})
}

// waitReady waits until the API server answers /readyz.
func (s *kubeStore) waitReady() {
	s.t.Helper()
	s.k.WaitFor(s.t, "kube-apiserver /readyz", time.Minute, func() (bool, error) {
		resp, err := s.api.Do(s.t.Context(), kubeapi.Request{Path: "/readyz"})
		if err != nil {
			return false, err
		}
		return resp.Code == http.StatusOK, resp.Status()
	})
}

// TestKubeStoreMissingKubeconfig: a kubeconfig that does not exist is a
// configuration error (code 7) naming the file, for every verb.
func TestKubeStoreMissingKubeconfig(t *testing.T) {
	bin := testenv.Binary(t, "kube-ipam")
	dir := t.TempDir()
	missing := filepath.Join(dir, "no-such-dir", "kube-ipam.kubeconfig")
	conf, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "k8snet2", "type": "macvlan", "ipam": map[string]any{
		"type": "kube-ipam", "store": "kubernetes", "kubeConfig": missing, "subnet": "10.188.0.0/16",
		"logFile": filepath.Join(dir, "kube-ipam.log"), "nodeName": "node-a",
	}})
	for _, verb := range []string{"ADD", "CHECK", "DEL"} {
		r, err := runPlugin(t, bin, verb, "c1", "net1", "", conf)
		if err != nil {
			t.Fatal(err)
		}
		checkCNIError(t, verb, r, types.ErrInvalidNetworkConfig, missing, `ipam.store "kubernetes"`)
	}
	// An ADD for a pod reads the pod through the same kubeconfig first.
	r, err := runPlugin(t, bin, "ADD", "c1", "net1", podArgs("default", "web-1"), conf)
	if err != nil {
		t.Fatal(err)
	}
	checkCNIError(t, "ADD for a pod", r, types.ErrInvalidNetworkConfig, missing)
}

// TestKubeStoreWithoutCRDs: on an API server without the store's CRDs
// every verb fails with a message asking whether the CRDs are installed
// (not code 11: retrying will not help); once that API server is gone,
// code 11 naming the Kubernetes API.
func TestKubeStoreWithoutCRDs(t *testing.T) {
	s := startKubeStore(t, false)
	conf := s.conf("k8snet2", nil)
	crds := "are the kube-ipam CRDs installed (internal/store/kubestore/crds)?"
	s.fail("ADD", conf, "c1", "net1", "", CodeStoreRejected, crds, "ipallocations."+kubestore.Group)
	s.fail("ADD", conf, "c2", "net1", "IgnoreUnknown=1;IP=10.188.0.219", CodeStoreRejected, crds)
	s.fail("CHECK", conf, "c1", "net1", "", CodeStoreRejected, crds)
	s.fail("DEL", conf, "c1", "net1", "", CodeStoreRejected, crds)
	s.fail("STATUS", v110(t, conf), "", "", "", types.ErrPluginNotAvailable, "the Kubernetes API refused the check", crds)

	s.k.StopAPIServer(t)
	s.fail("ADD", conf, "c1", "net1", "", 11, "the Kubernetes API", s.k.Server, "connection refused")
	s.fail("DEL", conf, "c1", "net1", "", 11, "the Kubernetes API", s.k.Server, "connection refused")
}

// rbacFile is the RBAC of the Kubernetes API store in deploy/.
const rbacFile = "deploy/kubernetes-store/rbac.yaml"

// TestKubeStoreRBAC: a user the API server authenticates but RBAC grants
// nothing on the store is refused (code 106, not retried) with a message
// naming the user, the verbs to grant and the deploy file; with that file
// applied as it is, the same user (the ServiceAccount it binds) can ADD,
// CHECK and DEL, a StatefulSet pod's too (its IPSticky).
func TestKubeStoreRBAC(t *testing.T) {
	s := startKubeStore(t, true)
	ctx := t.Context()
	const network = "k8snet2"
	cs := s.k.Client
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-ipam"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts("kube-ipam").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "kube-ipam-plugin"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tok, err := cs.CoreV1().ServiceAccounts("kube-ipam").CreateToken(ctx, "kube-ipam-plugin",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token of ServiceAccount kube-ipam/kube-ipam-plugin: %v", err)
	}
	kc := filepath.Join(t.TempDir(), "plugin.kubeconfig")
	if err := os.WriteFile(kc, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: plugin, user: {token: %q}}]
contexts: [{name: x, context: {cluster: c, user: plugin}}]
current-context: x
`, s.k.Server, tok.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := s.conf(network, map[string]any{"kubeConfig": kc})
	path := filepath.Join(testenv.ModuleRoot(t), rbacFile)
	docs := readManifests(t, path)

	// The message names the user, what it was refused, the file, and
	// every verb the file grants the plugin.
	forbidden := []string{"RBAC forbids", `User "system:serviceaccount:kube-ipam:kube-ipam-plugin" cannot list resource "ipallocations"`,
		"on ipallocations and get, create, delete on ipstickies of API group " + kubestore.Group, rbacFile}
	var verbs []string
	for _, d := range docs {
		if d.Kind == "ClusterRole" && d.Metadata.Name == "kube-ipam-plugin-kubernetes-store" {
			for _, r := range d.Rules {
				verbs = append(verbs, r.Verbs...)
			}
		}
	}
	if len(verbs) == 0 {
		t.Fatalf("%s has no ClusterRole kube-ipam-plugin-kubernetes-store with rules", rbacFile)
	}
	check := func(msg string) {
		t.Helper()
		for _, want := range forbidden {
			if !strings.Contains(msg, want) {
				t.Fatalf("refusal %q does not contain %q", msg, want)
			}
		}
		// "grant verbs get, list, ... on ipallocations ..."
		_, grant, _ := strings.Cut(msg, "grant verbs ")
		grant, _, _ = strings.Cut(grant, " on ")
		for _, v := range verbs {
			if !slices.Contains(strings.Split(grant, ", "), v) {
				t.Fatalf("refusal %q: the verbs to grant (%q) lack %q, which %s grants the plugin", msg, grant, v, rbacFile)
			}
		}
	}
	check(s.fail("ADD", conf, "c1", "net1", "", CodeStoreRejected).Msg)
	check(s.fail("DEL", conf, "c1", "net1", "", CodeStoreRejected).Msg)
	s.fail("STATUS", v110(t, conf), "", "", "", types.ErrPluginNotAvailable, "RBAC forbids", rbacFile)
	if n := len(s.allocations(network)); n != 0 {
		t.Fatalf("%d IPAllocations after refused calls", n)
	}

	// Apply the deploy file as it is (plus "get pods", which
	// deploy/rbac.yaml grants the plugin, for the StatefulSet pod below),
	// then wait until RBAC lets the ServiceAccount list IPAllocations.
	s.apply(docs)
	s.apply([]manifest{{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole", Metadata: manifestMeta{Name: "test-get-pods"},
		Rules: []policyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}},
		{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding", Metadata: manifestMeta{Name: "test-get-pods"},
			RoleRef:  map[string]string{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "test-get-pods"},
			Subjects: []map[string]string{{"kind": "ServiceAccount", "name": "kube-ipam-plugin", "namespace": "kube-ipam"}}}})
	sa, err := kubeapi.NewClient(kc, "kube-ipam-plugin-test", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s.k.WaitFor(t, "RBAC to let kube-ipam-plugin list ipallocations and get pods", time.Minute, func() (bool, error) {
		for _, p := range []string{ipamAPI + "/ipallocations", "/api/v1/namespaces/default/pods/none"} {
			resp, err := sa.Do(ctx, kubeapi.Request{Path: p, Query: url.Values{"limit": {"1"}}})
			if err != nil {
				return false, err
			}
			if resp.Code == http.StatusForbidden {
				return false, resp.Status()
			}
		}
		return true, nil
	})
	ips := s.add(conf, "c1", "net1", "")
	if len(ips) != 1 {
		t.Fatalf("ADD with the deploy RBAC got %v", ips)
	}
	s.call("CHECK", withPrev(t, conf, ips[0]), "c1", "net1", "")
	s.call("STATUS", v110(t, conf), "", "", "")
	s.call("DEL", conf, "c1", "net1", "")
	if held := s.heldBy(network, "c1"); len(held) != 0 {
		t.Fatalf("after DEL, %d IPAllocations name c1", len(held))
	}
	mysql := s.statefulSet("mysql", nil)
	s.createStsPod(mysql, 0, nil)
	first := s.add(conf, "mysql-0-a", "net1", podArgs("default", "mysql-0"))
	if n := len(s.stickies(network)); n != 1 {
		t.Fatalf("%d IPStickies after the StatefulSet pod's ADD, want 1", n)
	}
	s.call("DEL", conf, "mysql-0-a", "net1", "")
	s.createStsPod(mysql, 0, nil)
	if again := s.add(conf, "mysql-0-b", "net1", podArgs("default", "mysql-0")); !slices.Equal(again, first) {
		t.Fatalf("re-created mysql-0 got %v, want %v", again, first)
	}
	s.call("DEL", conf, "mysql-0-b", "net1", "")
}

// manifest is one object of a deploy/ manifest (the kinds RBAC files hold).
type manifest struct {
	APIVersion string              `json:"apiVersion"`
	Kind       string              `json:"kind"`
	Metadata   manifestMeta        `json:"metadata"`
	Rules      []policyRule        `json:"rules,omitempty"`
	RoleRef    map[string]string   `json:"roleRef,omitempty"`
	Subjects   []map[string]string `json:"subjects,omitempty"`
}

type manifestMeta struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
}

type policyRule struct {
	APIGroups []string `json:"apiGroups"`
	Resources []string `json:"resources"`
	Verbs     []string `json:"verbs"`
}

// readManifests reads the objects of a multi-document YAML file.
func readManifests(t *testing.T, path string) []manifest {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []manifest
	for doc := range strings.SplitSeq(string(b), "\n---") {
		body, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var m manifest
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if m.Kind != "" {
			out = append(out, m)
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no objects", path)
	}
	return out
}

// apply creates ClusterRoles and ClusterRoleBindings (as kubectl apply
// does on a fresh cluster).
func (s *kubeStore) apply(objs []manifest) {
	s.t.Helper()
	for _, m := range objs {
		var res string
		switch m.Kind {
		case "ClusterRole":
			res = "clusterroles"
		case "ClusterRoleBinding":
			res = "clusterrolebindings"
		default:
			s.t.Fatalf("apply: unexpected kind %s (%s)", m.Kind, m.Metadata.Name)
		}
		body, _ := json.Marshal(m)
		resp, err := s.api.Do(s.t.Context(), kubeapi.Request{Method: http.MethodPost, Path: "/apis/rbac.authorization.k8s.io/v1/" + res, Body: body})
		if err != nil {
			s.t.Fatalf("creating %s %s: %v", m.Kind, m.Metadata.Name, err)
		}
		if resp.Code != http.StatusCreated {
			s.t.Fatalf("creating %s %s: %v", m.Kind, m.Metadata.Name, resp.Status())
		}
	}
}

// TestKubeStoreConcurrentBinaryAdds: 50 ADD processes at once on one
// network give 50 distinct addresses and 50 IPAllocations, each naming the
// container that got it; 50 DEL processes at once then leave none held.
func TestKubeStoreConcurrentBinaryAdds(t *testing.T) {
	s := startKubeStore(t, true)
	const network, total = "burst", 50
	conf := s.conf(network, map[string]any{"subnet": "10.70.0.0/22", "rangeStart": "10.70.0.10", "rangeEnd": "10.70.3.250", "gateway": nil, "timeout": "60s", "logLevel": "info"})
	lo, hi := netip.MustParseAddr("10.70.0.10"), netip.MustParseAddr("10.70.3.250")

	runAll := func(verb string) ([]*pluginRun, time.Duration) {
		runs := make([]*pluginRun, total)
		errs := make([]error, total)
		start := time.Now()
		var wg sync.WaitGroup
		for i := range total {
			wg.Go(func() {
				r, err := runPlugin(t, s.bin, verb, fmt.Sprintf("burst-%02d", i), "net1", "", conf)
				if err == nil && r.cniErr != nil {
					err = fmt.Errorf("%s burst-%02d: code %d: %s", verb, i, r.cniErr.Code, r.cniErr.Msg)
				}
				runs[i], errs[i] = r, err
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		return runs, time.Since(start)
	}

	runs, took := runAll("ADD")
	owner := map[string]string{}
	for i, r := range runs {
		ips, _, err := parseResult(r.stdout)
		if err != nil || len(ips) != 1 {
			t.Fatalf("ADD %d: %v %v", i, ips, err)
		}
		a := netip.MustParsePrefix(ips[0]).Addr()
		if a.Compare(lo) < 0 || a.Compare(hi) > 0 {
			t.Fatalf("ADD %d got %s outside %s-%s", i, a, lo, hi)
		}
		cid := fmt.Sprintf("burst-%02d", i)
		if other, dup := owner[a.String()]; dup {
			t.Fatalf("%s given to %s and to %s", a, other, cid)
		}
		owner[a.String()] = cid
	}
	t.Logf("%d concurrent ADD processes: %v", total, took.Round(time.Millisecond))
	objs := s.allocations(network)
	if len(objs) != total {
		t.Fatalf("%d IPAllocations after %d ADDs, want %d", len(objs), total, total)
	}
	for _, o := range objs {
		want := owner[o.Spec.Address]
		if o.Spec.State != "held" || o.Spec.Held == nil || o.Spec.Held.ContainerID != want || o.Metadata.Labels[kubestore.LabelContainer] != want {
			t.Fatalf("IPAllocation of %s: state %s, held %+v, labels %v; want held by %q", o.Spec.Address, o.Spec.State, o.Spec.Held, o.Metadata.Labels, want)
		}
	}

	_, took = runAll("DEL")
	t.Logf("%d concurrent DEL processes: %v", total, took.Round(time.Millisecond))
	if held := s.allocations(network, kubestore.LabelState+"=held"); len(held) != 0 {
		t.Fatalf("%d IPAllocations still held after every DEL", len(held))
	}
	for _, o := range s.allocations(network) {
		if o.Spec.State != "released" || o.Spec.Held != nil {
			t.Fatalf("after every DEL, IPAllocation of %s is %s (held %+v)", o.Spec.Address, o.Spec.State, o.Spec.Held)
		}
	}
}

// TestKubeStoreMacvlanInNetns: the real macvlan plugin with kube-ipam on
// the Kubernetes API store as its IPAM, through libcni, puts the pod's
// fixed address on net1 in a pod namespace; a peer on the segment reaches
// it; the IPAllocation names the container; CHECK passes; DEL removes the
// interface and the IPAllocation.
func TestKubeStoreMacvlanInNetns(t *testing.T) {
	testenv.RequireRoot(t)
	pluginDir := testenv.CNIPluginDir(t)
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("ping not installed (apt-get install iputils-ping)")
	}
	s := startKubeStore(t, true)
	const network = "k8snet2"
	s.createPod("database-2-0", map[string]string{pod.AnnotationIP: "10.188.0.219", pod.AnnotationNetmask: "255.255.0.0", pod.AnnotationGateway: "10.188.0.1"}, nil, nil)

	// The macvlan parent is a veth whose other end is in a peer namespace
	// on the same segment; the plugin runs in the test's namespace, where
	// the API server listens on loopback.
	peer, parent := testenv.SegmentPeer(t, "kis", "10.188.0.250/16")
	podNS := testenv.NewNS(t)
	var ipamConf map[string]any
	if err := json.Unmarshal(s.conf(network, nil), &struct {
		IPAM *map[string]any `json:"ipam"`
	}{&ipamConf}); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": network, "type": "macvlan", "master": parent, "mode": "bridge", "ipam": ipamConf})
	netconf, err := libcni.NetworkPluginConfFromBytes(raw)
	if err != nil {
		t.Fatal(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(s.bin), pluginDir}, t.TempDir(), nil)
	rt := &libcni.RuntimeConf{
		ContainerID: "db2-netns", NetNS: podNS.Path(), IfName: "net1",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "database-2-0"}},
	}
	ctx := t.Context()
	added := false
	t.Cleanup(func() {
		if added {
			_ = cni.DelNetwork(context.Background(), netconf, rt)
		}
	})
	res, err := cni.AddNetwork(ctx, netconf, rt)
	if err != nil {
		t.Fatalf("ADD through macvlan: %v", err)
	}
	added = true
	r, err := current.NewResultFromResult(res)
	if err != nil || len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.188.0.219/16" {
		t.Fatalf("result %+v (%v)", res, err)
	}
	have := testenv.IPv4Addrs(t, podNS, "net1")
	if !slices.Equal(have, []string{"10.188.0.219/16"}) {
		t.Fatalf("net1 in the pod namespace has %v, want 10.188.0.219/16", have)
	}
	if err := testenv.Ping(peer, "10.188.0.219", 3*time.Second); err != nil {
		t.Fatalf("from the peer: %v", err)
	}
	if o := s.allocation("10.188.0.219", network); o == nil || o.Spec.Held == nil || o.Spec.Held.ContainerID != "db2-netns" || o.Spec.Held.Pod != "default/database-2-0" {
		t.Fatalf("IPAllocation of 10.188.0.219: %+v", o)
	}
	if err := cni.CheckNetwork(ctx, netconf, rt); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := cni.DelNetwork(ctx, netconf, rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	added = false
	if o := s.allocation("10.188.0.219", network); o != nil {
		t.Fatalf("IPAllocation of 10.188.0.219 after DEL: %+v", o.Spec)
	}
	if err := podNS.Do(func(ns.NetNS) error {
		if _, err := netlink.LinkByName("net1"); err == nil {
			return errors.New("net1 still exists after DEL")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestUnitKubeStoreErrorCodes: the Kubernetes API store's errors map to
// CNI codes and messages that name the API, never etcd (no process).
func TestUnitKubeStoreErrorCodes(t *testing.T) {
	const server = "https://127.0.0.1:6443"
	down := &kubestore.UnavailableError{Server: server, Op: "create ipallocations 0abc000a.k8snet2", Err: context.DeadlineExceeded}
	for _, c := range []struct {
		name  string
		err   error
		code  uint
		want  []string
		avoid string
	}{
		{"unavailable", down, 11, []string{"the Kubernetes API did not answer in time", server, "create ipallocations"}, "etcd"},
		{"write of unknown outcome", &store.AmbiguousError{Err: down}, 11, []string{"the Kubernetes API", "outcome of the write unknown", server}, "etcd"},
		{"forbidden", &kubestore.APIError{Server: server, Verb: "list", Resource: "ipallocations", Code: 403, Reason: "Forbidden", Msg: "no"},
			CodeStoreRejected, []string{"RBAC forbids", "list ipallocations." + kubestore.Group, rbacFile}, "etcd"},
		{"no CRDs", &kubestore.APIError{Server: server, Verb: "list", Resource: "ipallocations", Code: 404, Reason: "NotFound", Msg: "not found"},
			CodeStoreRejected, []string{"are the kube-ipam CRDs installed"}, "etcd"},
		{"token refused", &kubestore.APIError{Server: server, Verb: "list", Resource: "ipallocations", Code: 401, Reason: "Unauthorized", Msg: "no"},
			11, []string{"the Kubernetes API", "credentials were refused"}, "etcd"},
		{"unusable kubeconfig", &store.ConfigError{Msg: `ipam.store "kubernetes": cannot use kubeconfig /x`}, types.ErrInvalidNetworkConfig, []string{"/x"}, ""},
		// etcd's own wording is unchanged (docs/operations.md quotes it).
		{"etcd write of unknown outcome", &store.AmbiguousError{Err: context.DeadlineExceeded}, 11, []string{"etcd did not answer in time", "outcome of the etcd transaction unknown"}, ""},
	} {
		e := toCNI(c.err)
		if e.Code != c.code {
			t.Errorf("%s: code %d (%s), want %d", c.name, e.Code, e.Msg, c.code)
		}
		for _, w := range c.want {
			if !strings.Contains(e.Msg, w) {
				t.Errorf("%s: %q does not contain %q", c.name, e.Msg, w)
			}
		}
		if c.avoid != "" && strings.Contains(e.Msg, c.avoid) {
			t.Errorf("%s: %q names %s", c.name, e.Msg, c.avoid)
		}
	}
}
