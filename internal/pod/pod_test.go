package pod_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"kubeipam/internal/config"
	"kubeipam/internal/pod"
	"kubeipam/internal/pod/clientset"
)

// --- ParseArgs ---------------------------------------------------------------------

// multusArgs is CNI_ARGS as multus sends it: every pod key twice.
const multusArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=database-1-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u1;IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=database-1-0"

func TestParseArgs(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want pod.Args
	}{
		{"empty", "", pod.Args{}},
		{"blank", "  ", pod.Args{}},
		{"multus with duplicated keys", multusArgs, pod.Args{
			Namespace: "default", Name: "database-1-0", UID: "u1", InfraID: "abc", IgnoreUnknown: true,
		}},
		{"kubelet/containerd style", "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=cid;K8S_POD_UID=uid-1", pod.Args{
			Namespace: "ns", Name: "p", UID: "uid-1", InfraID: "cid",
		}},
		{"duplicated key keeps the last value", "K8S_POD_NAMESPACE=a;K8S_POD_NAME=x;K8S_POD_NAMESPACE=b;K8S_POD_NAME=y", pod.Args{
			Namespace: "b", Name: "y",
		}},
		{"IgnoreUnknown=true", "IgnoreUnknown=true", pod.Args{IgnoreUnknown: true}},
		{"IgnoreUnknown=TRUE", "IgnoreUnknown=TRUE", pod.Args{IgnoreUnknown: true}},
		{"IgnoreUnknown=0", "IgnoreUnknown=0", pod.Args{}},
		{"IgnoreUnknown=false", "IgnoreUnknown=false", pod.Args{}},
		{"IgnoreUnknown empty", "IgnoreUnknown=", pod.Args{}},
		{"IgnoreUnknown last wins", "IgnoreUnknown=1;IgnoreUnknown=0", pod.Args{}},
		{"unknown keys accepted without IgnoreUnknown", "FOO=bar;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;MAC=00:11:22:33:44:55", pod.Args{
			Namespace: "ns", Name: "p", Unknown: []string{"FOO", "MAC"},
		}},
		{"unknown keys accepted with IgnoreUnknown", "IgnoreUnknown=1;FOO=bar", pod.Args{IgnoreUnknown: true, Unknown: []string{"FOO"}}},
		{"IP list", "IP=10.188.0.218,fd00::5", pod.Args{IPs: []string{"10.188.0.218", "fd00::5"}}},
		{"IP list with spaces and empty items", "IP= 10.0.0.1 ,,10.0.0.2,", pod.Args{IPs: []string{"10.0.0.1", "10.0.0.2"}}},
		{"IP single", "IP=10.0.0.1/24", pod.Args{IPs: []string{"10.0.0.1/24"}}},
		{"IP repeated keeps the last", "IP=10.0.0.1;IP=10.0.0.2", pod.Args{IPs: []string{"10.0.0.2"}}},
		{"IP empty clears", "IP=10.0.0.1;IP=", pod.Args{}},
		{"empty pairs and trailing separator skipped", ";;K8S_POD_NAMESPACE=ns;;K8S_POD_NAME=p;", pod.Args{Namespace: "ns", Name: "p"}},
		{"value containing '='", "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a=b", pod.Args{Namespace: "ns", Name: "a=b"}},
		{"keys trimmed", " K8S_POD_NAMESPACE=ns; K8S_POD_NAME=p", pod.Args{Namespace: "ns", Name: "p"}},
		{"uid without pod is fine", "K8S_POD_UID=u", pod.Args{UID: "u"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pod.ParseArgs(tc.in)
			if err != nil {
				t.Fatalf("ParseArgs(%q): %v", tc.in, err)
			}
			if got.Namespace != tc.want.Namespace || got.Name != tc.want.Name || got.UID != tc.want.UID ||
				got.InfraID != tc.want.InfraID || got.IgnoreUnknown != tc.want.IgnoreUnknown ||
				!slices.Equal(got.IPs, tc.want.IPs) || !slices.Equal(got.Unknown, tc.want.Unknown) {
				t.Errorf("ParseArgs(%q) =\n  %+v\nwant\n  %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseArgsErrors(t *testing.T) {
	tests := []struct {
		name, in, part string
	}{
		{"malformed pair", "K8S_POD_NAMESPACE=ns;garbage;K8S_POD_NAME=p", `"garbage" is not KEY=VALUE`},
		{"malformed only", "IgnoreUnknown", "not KEY=VALUE"},
		{"bad IgnoreUnknown", "IgnoreUnknown=yes", `IgnoreUnknown="yes"`},
		{"bad IgnoreUnknown number", "IgnoreUnknown=2", "IgnoreUnknown"},
		{"namespace without name", "K8S_POD_NAMESPACE=default", "must be given together"},
		{"name without namespace", "K8S_POD_NAME=database-1-0", "must be given together"},
		{"empty name", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=", "must be given together"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pod.ParseArgs(tc.in)
			if err == nil {
				t.Fatalf("ParseArgs(%q): want error", tc.in)
			}
			if !strings.Contains(err.Error(), tc.part) {
				t.Errorf("error %q does not mention %q", err, tc.part)
			}
		})
	}
}

// --- ParseAnnotations -----------------------------------------------------------------

func spec(ip string, bits int) config.IPSpec {
	return config.IPSpec{Addr: netip.MustParseAddr(ip), Bits: bits}
}

func TestParseAnnotations(t *testing.T) {
	tests := []struct {
		name    string
		ann     map[string]string
		ips     []config.IPSpec
		netmask int
		gw      string
	}{
		{"nil", nil, nil, -1, ""},
		{"unrelated annotations", map[string]string{"foo": "bar", "kube-ipam.io/ip": "10.0.0.1"}, nil, -1, ""},
		{"seed", map[string]string{
			"kube-ipam.ip": "10.188.0.218", "kube-ipam.netmask": "255.255.0.0", "kube-ipam.gateway": "10.188.0.1",
		}, []config.IPSpec{spec("10.188.0.218", -1)}, 16, "10.188.0.1"},
		{"seed second statefulset", map[string]string{
			pod.AnnotationIP: "10.188.0.219", pod.AnnotationNetmask: "255.255.0.0", pod.AnnotationGateway: "10.188.0.1",
		}, []config.IPSpec{spec("10.188.0.219", -1)}, 16, "10.188.0.1"},
		{"ip only", map[string]string{pod.AnnotationIP: "10.188.0.218"}, []config.IPSpec{spec("10.188.0.218", -1)}, -1, ""},
		{"comma list", map[string]string{pod.AnnotationIP: "10.188.0.218,10.188.0.219"}, []config.IPSpec{spec("10.188.0.218", -1), spec("10.188.0.219", -1)}, -1, ""},
		{"stray spaces", map[string]string{pod.AnnotationIP: " 10.188.0.218 , 10.188.0.219 ", pod.AnnotationNetmask: " 255.255.255.0 ", pod.AnnotationGateway: " 10.188.0.1 "},
			[]config.IPSpec{spec("10.188.0.218", -1), spec("10.188.0.219", -1)}, 24, "10.188.0.1"},
		{"IPv6", map[string]string{pod.AnnotationIP: "fd00::218", pod.AnnotationGateway: "fd00::1"}, []config.IPSpec{spec("fd00::218", -1)}, -1, "fd00::1"},
		{"dual stack", map[string]string{pod.AnnotationIP: "10.188.0.218,fd00::218/64"}, []config.IPSpec{spec("10.188.0.218", -1), spec("fd00::218", 64)}, -1, ""},
		{"CIDR form", map[string]string{pod.AnnotationIP: "10.188.0.218/16"}, []config.IPSpec{spec("10.188.0.218", 16)}, -1, ""},
		{"v4-mapped unmapped", map[string]string{pod.AnnotationIP: "::ffff:10.188.0.218", pod.AnnotationGateway: "::ffff:10.188.0.1"}, []config.IPSpec{spec("10.188.0.218", -1)}, -1, "10.188.0.1"},
		{"netmask prefix length", map[string]string{pod.AnnotationNetmask: "16"}, nil, 16, ""},
		{"netmask /prefix", map[string]string{pod.AnnotationNetmask: "/16"}, nil, 16, ""},
		{"netmask /24 with spaces", map[string]string{pod.AnnotationNetmask: " /24 "}, nil, 24, ""},
		{"netmask 255.255.255.255", map[string]string{pod.AnnotationNetmask: "255.255.255.255"}, nil, 32, ""},
		{"netmask 0.0.0.0", map[string]string{pod.AnnotationNetmask: "0.0.0.0"}, nil, 0, ""},
		{"netmask 255.255.255.128", map[string]string{pod.AnnotationNetmask: "255.255.255.128"}, nil, 25, ""},
		{"netmask v6 prefix length", map[string]string{pod.AnnotationNetmask: "64"}, nil, 64, ""},
		{"blank values mean absent", map[string]string{pod.AnnotationIP: " ", pod.AnnotationNetmask: "", pod.AnnotationGateway: "  "}, nil, -1, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, err := pod.ParseAnnotations(tc.ann)
			if err != nil {
				t.Fatalf("ParseAnnotations(%v): %v", tc.ann, err)
			}
			if !slices.Equal(w.IPs, tc.ips) {
				t.Errorf("IPs = %v, want %v", w.IPs, tc.ips)
			}
			if w.Netmask != tc.netmask {
				t.Errorf("Netmask = %d, want %d", w.Netmask, tc.netmask)
			}
			if tc.gw == "" {
				if w.Gateway.IsValid() {
					t.Errorf("Gateway = %s, want none", w.Gateway)
				}
			} else if w.Gateway != netip.MustParseAddr(tc.gw) {
				t.Errorf("Gateway = %s, want %s", w.Gateway, tc.gw)
			}
		})
	}
}

func TestParseAnnotationsErrors(t *testing.T) {
	tests := []struct {
		name    string
		ann     map[string]string
		key     string
		inMsg   string
		wantVal string
	}{
		{"empty entry in the middle", map[string]string{pod.AnnotationIP: "10.0.0.1,,10.0.0.2"}, pod.AnnotationIP, "empty entry", "10.0.0.1,,10.0.0.2"},
		{"trailing comma", map[string]string{pod.AnnotationIP: "10.0.0.1,"}, pod.AnnotationIP, "empty entry", "10.0.0.1,"},
		{"leading blank entry", map[string]string{pod.AnnotationIP: " ,10.0.0.1"}, pod.AnnotationIP, "empty entry", " ,10.0.0.1"},
		{"garbage ip", map[string]string{pod.AnnotationIP: "database"}, pod.AnnotationIP, `"database"`, "database"},
		{"garbage second ip", map[string]string{pod.AnnotationIP: "10.0.0.1, 10.0.0.300"}, pod.AnnotationIP, `"10.0.0.300"`, "10.0.0.1, 10.0.0.300"},
		{"space inside an ip", map[string]string{pod.AnnotationIP: "10.0. 0.1"}, pod.AnnotationIP, "10.0. 0.1", "10.0. 0.1"},
		{"zone", map[string]string{pod.AnnotationIP: "fe80::1%eth0"}, pod.AnnotationIP, "fe80::1%eth0", "fe80::1%eth0"},
		{"bad CIDR", map[string]string{pod.AnnotationIP: "10.0.0.1/33"}, pod.AnnotationIP, "10.0.0.1/33", "10.0.0.1/33"},
		{"non-contiguous mask", map[string]string{pod.AnnotationIP: "10.0.0.1", pod.AnnotationNetmask: "255.0.255.0"}, pod.AnnotationNetmask, "not a contiguous netmask", "255.0.255.0"},
		{"netmask garbage", map[string]string{pod.AnnotationNetmask: "class-b"}, pod.AnnotationNetmask, "dotted mask", "class-b"},
		{"netmask v6 mask", map[string]string{pod.AnnotationNetmask: "ffff:ffff::"}, pod.AnnotationNetmask, "dotted mask", "ffff:ffff::"},
		{"netmask short dotted", map[string]string{pod.AnnotationNetmask: "255.255.0"}, pod.AnnotationNetmask, "dotted mask", "255.255.0"},
		{"netmask too long", map[string]string{pod.AnnotationNetmask: "129"}, pod.AnnotationNetmask, "out of range", "129"},
		{"netmask negative", map[string]string{pod.AnnotationNetmask: "-1"}, pod.AnnotationNetmask, "out of range", "-1"},
		{"gateway garbage", map[string]string{pod.AnnotationIP: "10.0.0.1", pod.AnnotationGateway: "router"}, pod.AnnotationGateway, "not an IP address", "router"},
		{"gateway CIDR", map[string]string{pod.AnnotationGateway: "10.0.0.1/24"}, pod.AnnotationGateway, "not an IP address", "10.0.0.1/24"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pod.ParseAnnotations(tc.ann)
			var ae *pod.AnnotationError
			if !errors.As(err, &ae) {
				t.Fatalf("want *pod.AnnotationError, got %T: %v", err, err)
			}
			if ae.Key != tc.key {
				t.Errorf("Key = %q, want %q", ae.Key, tc.key)
			}
			if ae.Value != tc.wantVal {
				t.Errorf("Value = %q, want %q", ae.Value, tc.wantVal)
			}
			msg := ae.Error()
			if !strings.Contains(msg, tc.key) || !strings.Contains(msg, tc.inMsg) {
				t.Errorf("message %q should name the key %q and %q", msg, tc.key, tc.inMsg)
			}
		})
	}
}

func TestParseNetmask(t *testing.T) {
	good := map[string]int{"255.255.0.0": 16, "16": 16, "/16": 16, "0": 0, "/0": 0, "32": 32, "128": 128, "255.255.255.252": 30, " 8 ": 8}
	for in, want := range good {
		got, err := pod.ParseNetmask(in)
		if err != nil || got != want {
			t.Errorf("ParseNetmask(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "/", "255.255.0.255", "0.255.255.255", "255.255.0.0/16", "1.2.3.4.5", "x"} {
		if got, err := pod.ParseNetmask(in); err == nil {
			t.Errorf("ParseNetmask(%q) = %d, want error", in, got)
		}
	}
}

// --- Client (client-go fake) --------------------------------------------------------------

func seedPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "default", Name: "database-1-0", UID: k8stypes.UID("u1"),
			Annotations: map[string]string{
				pod.AnnotationIP: "10.188.0.218", pod.AnnotationNetmask: "255.255.0.0", pod.AnnotationGateway: "10.188.0.1",
			},
		},
		Spec: corev1.PodSpec{NodeName: "node-a"},
	}
}

func TestClientGet(t *testing.T) {
	cs := fake.NewClientset(seedPod())
	c := clientset.New(cs)
	var g pod.Getter = c // Client satisfies the interface the plugin uses
	info, err := g.Get(context.Background(), "default", "database-1-0")
	if err != nil {
		t.Fatal(err)
	}
	if info.Namespace != "default" || info.Name != "database-1-0" || info.UID != "u1" || info.Node != "node-a" {
		t.Errorf("Info = %+v", info)
	}
	w, err := pod.ParseAnnotations(info.Annotations)
	if err != nil {
		t.Fatal(err)
	}
	if len(w.IPs) != 1 || w.IPs[0].Addr.String() != "10.188.0.218" || w.Netmask != 16 || w.Gateway.String() != "10.188.0.1" {
		t.Errorf("annotations from the API = %+v", w)
	}
	// The namespace is honoured.
	if _, err := c.Get(context.Background(), "other", "database-1-0"); err == nil {
		t.Error("Get in another namespace found the pod")
	}
}

func TestClientGetErrors(t *testing.T) {
	gr := schema.GroupResource{Resource: "pods"}
	tests := []struct {
		name      string
		err       error // returned by the reactor; nil = real not-found
		transient bool
		inMsg     string
	}{
		{"not found", nil, false, "not found"},
		{"403 forbidden", apierrors.NewForbidden(gr, "database-1-0", errors.New("RBAC says no")), false, "RBAC"},
		{"401 unauthorized", apierrors.NewUnauthorized("bad token"), false, "not allowed"},
		{"400 bad request", apierrors.NewBadRequest("nope"), false, "nope"},
		{"410 gone", apierrors.NewGone("gone"), false, "gone"},
		{"500 internal", apierrors.NewInternalError(errors.New("etcd leader lost")), true, "etcd leader lost"},
		{"503 unavailable", apierrors.NewServiceUnavailable("starting"), true, "starting"},
		{"504 timeout", apierrors.NewTimeoutError("slow", 1), true, "slow"},
		{"429 too many requests", apierrors.NewTooManyRequests("throttled", 1), true, "throttled"},
		{"connection refused", fmt.Errorf("dial tcp 10.0.0.1:6443: %w", syscall.ECONNREFUSED), true, "connection refused"},
		{"deadline", context.DeadlineExceeded, true, "deadline"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset()
			if tc.err != nil {
				cs.PrependReactor("get", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
					return true, nil, tc.err
				})
			}
			info, err := clientset.New(cs).Get(context.Background(), "default", "database-1-0")
			if info != nil {
				t.Errorf("Info = %+v with an error", info)
			}
			var lk *pod.LookupError
			var tr *pod.TransientError
			isLookup, isTransient := errors.As(err, &lk), errors.As(err, &tr)
			if isLookup == isTransient {
				t.Fatalf("error %T %v: lookup=%v transient=%v, want exactly one", err, err, isLookup, isTransient)
			}
			if isTransient != tc.transient {
				t.Errorf("transient = %v, want %v (err %v)", isTransient, tc.transient, err)
			}
			if !strings.Contains(err.Error(), "default/database-1-0") {
				t.Errorf("error %q does not name the pod", err)
			}
			if !strings.Contains(err.Error(), tc.inMsg) {
				t.Errorf("error %q does not mention %q", err, tc.inMsg)
			}
			if tc.transient && tc.err != nil && !errors.Is(err, tc.err) {
				t.Errorf("transient error does not wrap the cause: %v", err)
			}
		})
	}
}

func TestNewClientBadKubeconfig(t *testing.T) {
	_, err := pod.NewClient(t.TempDir()+"/missing.kubeconfig", 0)
	var lk *pod.LookupError
	if !errors.As(err, &lk) || !strings.Contains(err.Error(), "missing.kubeconfig") {
		t.Errorf("NewClient(missing) = %T %v, want *pod.LookupError naming the file", err, err)
	}
}

func TestErrorMessages(t *testing.T) {
	ae := &pod.AnnotationError{Key: "kube-ipam.ip", Value: "x", Reason: "bad"}
	if ae.Error() != `pod annotation kube-ipam.ip="x": bad` {
		t.Errorf("AnnotationError = %q", ae.Error())
	}
	tr := &pod.TransientError{Err: errors.New("down")}
	if !strings.Contains(tr.Error(), "try again") || !strings.Contains(tr.Error(), "down") || tr.Unwrap().Error() != "down" {
		t.Errorf("TransientError = %q", tr.Error())
	}
	if (&pod.LookupError{Msg: "m"}).Error() != "m" {
		t.Error("LookupError message")
	}
}
