package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

// networks: net-a 10.10.0.0/16 with fixed block 10.10.1.0-10.10.1.255,
// net-b 10.20.0.0/24, both in etcd at endpoint.
func networks(t *testing.T, endpoint string) []*config.Network {
	t.Helper()
	conf := fmt.Sprintf(`{"cniVersion": "0.3.1", "name": "multus", "type": "multus", "delegates": [
	  {"cniVersion": "0.3.1", "name": "net-a", "type": "macvlan", "ipam": {"type": "kube-ipam",
	    "etcdConfig": {"etcdURL": %[1]q}, "subnet": "10.10.0.0/16", "rangeStart": "10.10.0.10",
	    "rangeEnd": "10.10.0.200", "gateway": "10.10.0.1", "fixedStart": "10.10.1.0", "fixedEnd": "10.10.1.255"}},
	  {"cniVersion": "0.3.1", "name": "net-b", "type": "macvlan", "ipam": {"type": "kube-ipam",
	    "etcdConfig": {"etcdURL": %[1]q}, "subnet": "10.20.0.0/24", "gateway": "10.20.0.1"}}]}`, endpoint)
	nets, err := config.ParseNetworks([]byte(conf), "test")
	if err != nil {
		t.Fatal(err)
	}
	return nets
}

func ptr[T any](v T) *T { return &v }

func podObj(ns, name string, ann map[string]string) *corev1.Pod {
	return &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: ann}}
}

func stsPod(ns, sts, uid string, ordinal int, ann map[string]string) *corev1.Pod {
	p := podObj(ns, fmt.Sprintf("%s-%d", sts, ordinal), ann)
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: sts, UID: types.UID(uid), Controller: ptr(true)}}
	return p
}

func rsPod(rs, hash string, ann map[string]string) *corev1.Pod {
	p := podObj("default", rs+"-xyz12", ann)
	p.Labels = map[string]string{"pod-template-hash": hash}
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs, UID: "rs-uid", Controller: ptr(true)}}
	return p
}

func template(ann map[string]string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Annotations: ann}}
}

func deployment(name string, replicas int32, ann map[string]string) *appsv1.Deployment {
	return &appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: "uid-" + types.UID(name)},
		Spec:       appsv1.DeploymentSpec{Replicas: ptr(replicas), Template: template(ann)}}
}

func statefulSet(name, uid string, replicas int32, ann map[string]string) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "StatefulSet"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID(uid)},
		Spec:       appsv1.StatefulSetSpec{Replicas: ptr(replicas), Template: template(ann)}}
}

func daemonSet(ann map[string]string) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "ds"}, Spec: appsv1.DaemonSetSpec{Template: template(ann)}}
}

func request(t *testing.T, op admissionv1.Operation, obj, old runtime.Object) *admissionv1.AdmissionRequest {
	t.Helper()
	gvk := obj.GetObjectKind().GroupVersionKind()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	m := obj.(metav1.Object)
	req := &admissionv1.AdmissionRequest{UID: "req-1", Operation: op, Namespace: m.GetNamespace(), Name: m.GetName(),
		Kind:   metav1.GroupVersionKind{Group: gvk.Group, Version: gvk.Version, Kind: gvk.Kind},
		Object: runtime.RawExtension{Raw: raw}}
	if old != nil {
		req.OldObject.Raw, _ = json.Marshal(old)
	}
	return req
}

type tcase struct {
	name    string
	op      admissionv1.Operation
	obj     runtime.Object
	old     runtime.Object
	deny    []string // substrings of the message; nil: allowed
	warning string
}

func run(t *testing.T, h *Handler, cases []tcase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			op := tc.op
			if op == "" {
				op = admissionv1.Create
			}
			resp := h.Review(context.Background(), request(t, op, tc.obj, tc.old))
			msg := ""
			if resp.Result != nil {
				msg = resp.Result.Message
			}
			if tc.deny == nil {
				if !resp.Allowed {
					t.Fatalf("denied: %s", msg)
				}
			} else {
				if resp.Allowed {
					t.Fatalf("allowed, want a denial containing %q (warnings %q)", tc.deny, resp.Warnings)
				}
				for _, want := range tc.deny {
					if !strings.Contains(msg, want) {
						t.Errorf("message %q lacks %q", msg, want)
					}
				}
			}
			if tc.warning != "" && !strings.Contains(strings.Join(resp.Warnings, "\n"), tc.warning) {
				t.Errorf("warnings %q lack %q", resp.Warnings, tc.warning)
			}
		})
	}
}

type ann = map[string]string

func TestDecisions(t *testing.T) {
	h := NewHandler(networks(t, "http://127.0.0.1:1"), nil, nil)
	bad := podObj("default", "p", ann{"kube-ipam.ip": "10.10.0.50"})
	run(t, h, []tcase{
		{name: "no annotations", obj: podObj("default", "p", nil)},
		{name: "valid fixed", obj: podObj("default", "p", ann{"kube-ipam.ip": "10.10.1.5"})},
		{name: "valid list and netmask", obj: podObj("default", "p", ann{"kube-ipam.ip": "10.10.1.5,10.20.0.9", "kube-ipam.netmask": "255.255.0.0"})},
		{name: "malformed", obj: podObj("default", "p", ann{"kube-ipam.ip": "10.10.1.300"}),
			deny: []string{`Pod default/p`, `annotation kube-ipam.ip="10.10.1.300"`, "not an IP address"}},
		{name: "malformed netmask", obj: podObj("default", "p", ann{"kube-ipam.netmask": "255.0.255.0"}),
			deny: []string{`kube-ipam.netmask="255.0.255.0"`}},
		{name: "malformed gateway", obj: podObj("default", "p", ann{"kube-ipam.gateway": "x"}),
			deny: []string{`kube-ipam.gateway="x"`, "not an IP address"}},
		{name: "ip and pool", obj: podObj("default", "p", ann{"kube-ipam.ip": "10.10.1.5", "kube-ipam.ip-pool": "10.10.1.6"}),
			deny: []string{"cannot be combined"}},
		{name: "outside every subnet", obj: podObj("default", "p", ann{"kube-ipam.ip": "192.168.1.5"}),
			deny: []string{`kube-ipam.ip="192.168.1.5"`, "outside every subnet", `"net-a", "net-b"`}},
		{name: "gateway", obj: podObj("default", "p", ann{"kube-ipam.ip": "10.20.0.1"}),
			deny: []string{`kube-ipam.ip="10.20.0.1"`, "is the gateway of 10.20.0.0/24"}},
		{name: "broadcast", obj: podObj("default", "p", ann{"kube-ipam.ip": "10.20.0.255"}), deny: []string{"broadcast"}},
		{name: "outside fixed block", obj: bad, deny: []string{"outside the fixed block 10.10.1.0-10.10.1.255"}},
		{name: "per-network key, other network's subnet", obj: podObj("default", "p", ann{"kube-ipam.ip.net-b": "10.10.1.5"}),
			deny: []string{`kube-ipam.ip.net-b="10.10.1.5"`, `outside every subnet of network "net-b"`}},
		{name: "per-network key valid", obj: podObj("default", "p", ann{"kube-ipam.ip.net-b": "10.20.0.7", "kube-ipam.ip.net-a": "10.10.1.7"})},
		{name: "per-network key overrides a bad legacy one", obj: podObj("default", "p", ann{"kube-ipam.ip": "10.10.1.9", "kube-ipam.ip.net-b": "10.20.0.7"})},
		{name: "legacy key outside the networks it still applies to", obj: podObj("default", "p", ann{"kube-ipam.ip": "10.20.0.5", "kube-ipam.ip.net-b": "10.20.0.7"}),
			deny: []string{`kube-ipam.ip="10.20.0.5"`, `outside every subnet of the kube-ipam networks it applies to ("net-a")`}},
		{name: "unknown network warns", obj: podObj("default", "p", ann{"kube-ipam.ip.net-z": "10.99.0.7"}), warning: `names network "net-z"`},
		{name: "duplicate in list", obj: podObj("default", "p", ann{"kube-ipam.ip": "10.10.1.5,10.10.1.5"}), deny: []string{"10.10.1.5 is listed twice"}},
		{name: "pool duplicate", obj: statefulSet("web", "u1", 2, ann{"kube-ipam.ip-pool": "10.10.1.5,10.10.1.6,10.10.1.5"}),
			deny: []string{`pod template of StatefulSet default/web`, `kube-ipam.ip-pool="10.10.1.5,10.10.1.6,10.10.1.5"`, "10.10.1.5 is listed twice"}},
		{name: "pool valid", obj: statefulSet("web", "u1", 2, ann{"kube-ipam.ip-pool": "10.10.1.5,10.10.1.6"})},
		{name: "pool too short", obj: statefulSet("web", "u1", 3, ann{"kube-ipam.ip-pool": "10.10.1.5,10.10.1.6"}),
			deny: []string{"has 2 entries but the StatefulSet's highest ordinal is 2"}},
		{name: "pool on a deployment", obj: deployment("d", 1, ann{"kube-ipam.ip-pool": "10.10.1.5"}), deny: []string{"only applies to pods of a StatefulSet"}},
		{name: "pool on a plain pod", obj: podObj("default", "p", ann{"kube-ipam.ip-pool": "10.10.1.5"}), deny: []string{"no controlling StatefulSet"}},
		{name: "pool on a StatefulSet pod", obj: stsPod("default", "web", "u1", 1, ann{"kube-ipam.ip-pool": "10.10.1.5,10.10.1.6"})},
		{name: "pool too short for the pod", obj: stsPod("default", "web", "u1", 2, ann{"kube-ipam.ip-pool": "10.10.1.5,10.10.1.6"}), deny: []string{"ordinal 2"}},
		{name: "deployment replicas 3", obj: deployment("d", 3, ann{"kube-ipam.ip": "10.10.1.5"}),
			deny: []string{`pod template of Deployment default/d`, `kube-ipam.ip="10.10.1.5"`, "all 3 replicas"}},
		{name: "deployment replicas 1", obj: deployment("d", 1, ann{"kube-ipam.ip": "10.10.1.5"})},
		{name: "statefulset fixed ip replicas 2", obj: statefulSet("web", "u1", 2, ann{"kube-ipam.ip": "10.10.1.5"}), deny: []string{"kube-ipam.ip-pool"}},
		{name: "daemonset", obj: daemonSet(ann{"kube-ipam.ip": "10.10.1.5"}), deny: []string{"DaemonSet runs one pod per node"}},
		{name: "daemonset without fixed ip", obj: daemonSet(ann{"kube-ipam.netmask": "16"})},
		{name: "update with unchanged annotations", op: admissionv1.Update, obj: bad, old: bad},
		{name: "update changing annotations", op: admissionv1.Update, obj: bad, old: podObj("default", "p", nil), deny: []string{"fixed block"}},
		{name: "update scaling up", op: admissionv1.Update, obj: deployment("d", 2, ann{"kube-ipam.ip": "10.10.1.5"}),
			old: deployment("d", 1, ann{"kube-ipam.ip": "10.10.1.5"}), deny: []string{"all 2 replicas"}},
		{name: "delete", op: admissionv1.Delete, obj: bad},
	})
}

// seed commits a record for ip as the plugin would.
func seed(t *testing.T, st *store.Store, cid string, rec store.Record) {
	t.Helper()
	rec.Kind, rec.IfName, rec.ContainerID, rec.Created = store.KindFixed, "eth0", cid, time.Now()
	ok, err := st.Commit(context.Background(), &store.Claim{
		Attachment: store.Attachment{ContainerID: cid, IfName: "eth0", PodNamespace: rec.PodNamespace, PodName: rec.PodName},
		Items:      []store.ClaimItem{{Record: rec, Mode: store.ClaimFresh}},
	})
	if err != nil || !ok {
		t.Fatalf("seeding %s: ok=%v err=%v", rec.IP, ok, err)
	}
}

func TestHolders(t *testing.T) {
	e := testenv.StartEtcd(t)
	nets := networks(t, e.Endpoints[0])
	lookup := NewBackendLookup(2 * time.Second)
	t.Cleanup(func() { lookup.Close() })
	h := NewHandler(nets, lookup.Lookup, time.Now)

	cli := e.Client(t)
	stA := store.New(cli, nets[0].Etcd.Prefix, "net-a")
	seed(t, stA, "c-holder", store.Record{Network: "net-a", IP: "10.10.1.7", PodNamespace: "other", PodName: "holder", Node: "n1"})
	seed(t, stA, "c-web1", store.Record{Network: "net-a", IP: "10.10.1.8", PodNamespace: "default", PodName: "web-1",
		StatefulSet: "web", StatefulSetUID: "uid-web", Ordinal: 1})
	seed(t, stA, "c-dep", store.Record{Network: "net-a", IP: "10.10.1.9", PodNamespace: "default", PodName: "d-5d8f7-abcde"})

	run(t, h, holderCases())
}

func TestStoreError(t *testing.T) {
	nets := networks(t, "http://127.0.0.1:1")
	fail := func(context.Context, *config.Network, netip.Addr) (*store.Record, error) {
		return nil, errors.New("context deadline exceeded")
	}
	obj := podObj("default", "x", ann{"kube-ipam.ip": "10.10.1.7"})
	run(t, NewHandler(nets, fail, nil), []tcase{{name: "closed", obj: obj, deny: []string{"cannot check whether 10.10.1.7 is free"}}})
	h := NewHandler(nets, fail, nil)
	h.AllowOnStoreError = true
	run(t, h, []tcase{{name: "open", obj: obj, warning: "admitted unchecked"}})
	// A real unreachable etcd, through BackendLookup: rejected in about the dial timeout.
	l := NewBackendLookup(300 * time.Millisecond)
	defer l.Close()
	run(t, NewHandler(nets, l.Lookup, nil), []tcase{{name: "unreachable", obj: obj, deny: []string{"cannot check"}}})
}

func TestServeHTTP(t *testing.T) {
	h := NewHandler(networks(t, "http://127.0.0.1:1"), nil, nil)
	srv := httptest.NewServer(h)
	defer srv.Close()
	req := request(t, admissionv1.Create, podObj("default", "p", ann{"kube-ipam.ip": "nope"}), nil)
	body, _ := json.Marshal(admissionv1.AdmissionReview{TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}, Request: req})
	resp, err := http.Post(srv.URL, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if out.Kind != "AdmissionReview" || out.APIVersion != "admission.k8s.io/v1" || out.Response == nil ||
		out.Response.UID != "req-1" || out.Response.Allowed || !strings.Contains(out.Response.Result.Message, `kube-ipam.ip="nope"`) {
		t.Fatalf("response %+v", out)
	}
	if r, _ := http.Get(srv.URL); r.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d", r.StatusCode)
	}
	if r, _ := http.Post(srv.URL, "application/json", strings.NewReader("{}")); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("empty review: %d", r.StatusCode)
	}
}

// TestFollowsConfig: the handler validates against the config as it is
// now: a reloaded config that parses is used for the next request, one that
// does not is refused and the last good one stays.
func TestFollowsConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "00-multus.conf")
	write := func(subnet string) {
		b := `{"cniVersion":"0.3.1","name":"k8snet2","type":"macvlan","ipam":{"type":"kube-ipam","etcdConfig":{"etcdURL":"http://127.0.0.1:1"},"subnet":"` + subnet + `"}}`
		if err := os.WriteFile(file, []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("10.188.0.0/16")
	r := &config.Reloader{Path: dir}
	nets, _, err := r.Reload()
	if err != nil {
		t.Fatal(err)
	}
	h := NewHandler(nets, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes, refusals := make(chan int, 10), make(chan error, 10)
	go r.Follow(ctx, 10*time.Millisecond, func(n []*config.Network) { h.SetNetworks(n); changes <- len(n) }, func(err error) { refusals <- err })
	allowed := func() bool {
		return h.Review(ctx, request(t, admissionv1.Create, podObj("default", "p", ann{"kube-ipam.ip": "10.189.0.5"}), nil)).Allowed
	}
	if allowed() {
		t.Fatal("10.189.0.5 allowed outside 10.188.0.0/16")
	}
	write("10.188.0.0/15")
	<-changes
	if !allowed() {
		t.Fatal("10.189.0.5 denied after the subnet grew to 10.188.0.0/15")
	}
	if err := os.WriteFile(file, []byte(`{"cniVersion":"0.3.1","name":"k8snet2","type":"macvlan","ipam":{"type":"kube-ipam","subnet":"nope"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-refusals; err == nil || !strings.Contains(err.Error(), "k8snet2") {
		t.Fatalf("refusal %v", err)
	}
	if !allowed() {
		t.Fatal("the last good config was dropped for a bad one")
	}
}
