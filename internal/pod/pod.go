// Package pod answers "which pod is this ADD for, and what does it ask for":
// it parses CNI_ARGS the way runtimes and multus really send them, reads the
// pod from the Kubernetes API, and parses kube-ipam's pod annotations.
package pod

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubeipam/internal/config"
	"kubeipam/internal/kubeapi"
)

// Annotation keys. The first three are kube-ipam v0.2's and apply to every
// kube-ipam network of the pod; "<key>.<network name>" applies to one network
// and wins over the legacy key for it. AnnotationIPPool gives StatefulSet pod
// N the N-th address of the list.
const (
	AnnotationIP      = "kube-ipam.ip"
	AnnotationNetmask = "kube-ipam.netmask"
	AnnotationGateway = "kube-ipam.gateway"
	AnnotationIPPool  = "kube-ipam.ip-pool"
)

// PodIndexLabel is set by the StatefulSet controller (Kubernetes >= 1.28).
const PodIndexLabel = "apps.kubernetes.io/pod-index"

// Args are the CNI_ARGS this plugin uses.
type Args struct {
	Namespace     string
	Name          string
	UID           string
	InfraID       string
	IPs           []string // IP=a,b (legacy CNI convention)
	Unknown       []string
	IgnoreUnknown bool
}

// ParseArgs reads CNI_ARGS ("K=V;K=V"). Unknown keys are accepted whatever
// IgnoreUnknown says (multus adds its own), and a duplicated key keeps its
// last value (multus sends the pod keys twice).
func ParseArgs(s string) (Args, error) {
	var a Args
	if strings.TrimSpace(s) == "" {
		return a, nil
	}
	for _, pair := range strings.Split(s, ";") {
		if strings.TrimSpace(pair) == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			return a, fmt.Errorf("CNI_ARGS: %q is not KEY=VALUE", pair)
		}
		switch strings.TrimSpace(k) {
		case "K8S_POD_NAMESPACE":
			a.Namespace = v
		case "K8S_POD_NAME":
			a.Name = v
		case "K8S_POD_UID":
			a.UID = v
		case "K8S_POD_INFRA_CONTAINER_ID":
			a.InfraID = v
		case "IP":
			a.IPs = nil
			for _, ip := range strings.Split(v, ",") {
				if ip = strings.TrimSpace(ip); ip != "" {
					a.IPs = append(a.IPs, ip)
				}
			}
		case "IgnoreUnknown":
			switch strings.ToLower(v) {
			case "1", "true":
				a.IgnoreUnknown = true
			case "0", "false", "":
				a.IgnoreUnknown = false
			default:
				return a, fmt.Errorf("CNI_ARGS: IgnoreUnknown=%q: want 1, true, 0 or false", v)
			}
		default:
			a.Unknown = append(a.Unknown, k)
		}
	}
	if (a.Namespace == "") != (a.Name == "") {
		return a, fmt.Errorf("CNI_ARGS: K8S_POD_NAMESPACE and K8S_POD_NAME must be given together")
	}
	return a, nil
}

// Wants is what a pod's annotations ask for.
type Wants struct {
	IPs []config.IPSpec
	// Pool is the ordinal list (kube-ipam.ip-pool).
	Pool    []config.IPSpec
	Netmask int // prefix length from kube-ipam.netmask, -1 when absent
	Gateway netip.Addr
	// NetmaskKey and GatewayKey name the annotations Netmask and Gateway
	// came from (the legacy key or its per-network form), for errors.
	NetmaskKey, GatewayKey string
}

// AnnotationError is a malformed annotation.
type AnnotationError struct{ Key, Value, Reason string }

func (e *AnnotationError) Error() string {
	return fmt.Sprintf("pod annotation %s=%q: %s", e.Key, e.Value, e.Reason)
}

// ParseAnnotations reads the legacy, all-network keys: kube-ipam.ip (comma
// list of addresses or CIDRs, IPv4 and IPv6), kube-ipam.netmask (dotted quad
// or prefix length), kube-ipam.gateway and kube-ipam.ip-pool.
func ParseAnnotations(ann map[string]string) (Wants, error) { return ParseAnnotationsFor(ann, "") }

// ParseAnnotationsFor reads the annotations that apply to one network: for
// each key, "<key>.<network>" when present, else the legacy key.
func ParseAnnotationsFor(ann map[string]string, network string) (Wants, error) {
	w := Wants{Netmask: -1}
	get := func(key string) (string, string, bool) {
		if network != "" {
			if v, ok := ann[key+"."+network]; ok {
				return key + "." + network, v, strings.TrimSpace(v) != ""
			}
		}
		v, ok := ann[key]
		return key, v, ok && strings.TrimSpace(v) != ""
	}
	list := func(key, v string) ([]config.IPSpec, error) {
		var out []config.IPSpec
		for _, item := range strings.Split(v, ",") {
			if strings.TrimSpace(item) == "" {
				return nil, &AnnotationError{key, v, "empty entry in the list"}
			}
			spec, err := config.ParseIPOrCIDR(item)
			if err != nil {
				return nil, &AnnotationError{key, v, fmt.Sprintf("%q: %v", strings.TrimSpace(item), err)}
			}
			out = append(out, spec)
		}
		return out, nil
	}
	var err error
	if k, v, ok := get(AnnotationIP); ok {
		if w.IPs, err = list(k, v); err != nil {
			return w, err
		}
	}
	if k, v, ok := get(AnnotationIPPool); ok {
		if w.Pool, err = list(k, v); err != nil {
			return w, err
		}
		if len(w.IPs) > 0 {
			return w, &AnnotationError{k, v, "cannot be combined with " + AnnotationIP + " for the same network"}
		}
	}
	if k, v, ok := get(AnnotationNetmask); ok {
		bits, err := ParseNetmask(v)
		if err != nil {
			return w, &AnnotationError{k, v, err.Error()}
		}
		w.Netmask, w.NetmaskKey = bits, k
	}
	if k, v, ok := get(AnnotationGateway); ok {
		g, err := netip.ParseAddr(strings.TrimSpace(v))
		if err != nil {
			return w, &AnnotationError{k, v, "not an IP address"}
		}
		w.Gateway, w.GatewayKey = g.Unmap(), k
	}
	return w, nil
}

// ParseNetmask accepts "255.255.0.0", "16" or "/16".
func ParseNetmask(v string) (int, error) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "/")
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 || n > 128 {
			return 0, fmt.Errorf("prefix length %d out of range", n)
		}
		return n, nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil || !a.Is4() {
		return 0, fmt.Errorf("want a dotted mask such as 255.255.0.0 or a prefix length such as 16")
	}
	b := a.As4()
	ones, bits := net.IPv4Mask(b[0], b[1], b[2], b[3]).Size()
	if bits == 0 {
		return 0, fmt.Errorf("%s is not a contiguous netmask", v)
	}
	return ones, nil
}

// Info is the part of a pod that allocation needs (never the whole object:
// it may carry secrets in env values, and it goes to logs). Node is the
// pod's spec.nodeName, which only the long-running components' getters
// (InfoOf) set: the plugin's Client reads metadata only, and the plugin
// knows its node from its own config.
type Info struct {
	Namespace, Name, UID, Node string
	Annotations                map[string]string
	// StatefulSet and StatefulSetUID name the controlling StatefulSet, and
	// Ordinal the pod's index in it (-1 when the pod has none).
	StatefulSet, StatefulSetUID string
	Ordinal                     int
}

// Getter reads pods.
type Getter interface {
	Get(ctx context.Context, namespace, name string) (*Info, error)
}

// LookupError is a pod lookup that failed for a reason retrying will not fix.
type LookupError struct{ Msg string }

func (e *LookupError) Error() string { return e.Msg }

// TransientError is a pod lookup that may succeed later (API unreachable).
type TransientError struct{ Err error }

func (e *TransientError) Error() string {
	return "Kubernetes API unreachable, try again later: " + e.Err.Error()
}
func (e *TransientError) Unwrap() error { return e.Err }

// Client reads pods through kubeapi: one plain GET of the pod's metadata
// (kubeapi.PodMetadata), no typed clientset, no spec.
type Client struct{ api *kubeapi.Client }

// NewClient builds a client from a kubeconfig file.
func NewClient(kubeconfig string, timeout time.Duration) (*Client, error) {
	api, err := kubeapi.NewClient(kubeconfig, "kube-ipam", timeout)
	if err != nil {
		return nil, &LookupError{err.Error()}
	}
	return &Client{api: api}, nil
}

// Get reads one pod. A transient failure (connection reset, 5xx, 429) is
// retried a few times with backoff inside ctx, since one hiccup of the API
// server should not fail a pod sandbox.
func (c *Client) Get(ctx context.Context, namespace, name string) (*Info, error) {
	var err error
	for attempt := 0; attempt < 4; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, err
			case <-time.After(time.Duration(50<<attempt) * time.Millisecond):
			}
		}
		var info *Info
		info, err = c.get(ctx, namespace, name)
		var tr *TransientError
		if !errors.As(err, &tr) {
			return info, err
		}
	}
	return nil, err
}

func (c *Client) get(ctx context.Context, namespace, name string) (*Info, error) {
	m, err := c.api.PodMetadata(ctx, namespace, name)
	var st *kubeapi.StatusError
	var tr *kubeapi.TransportError
	switch {
	case errors.As(err, &st):
		return nil, ClassifyStatus(namespace, name, st.Code, st.Msg)
	case errors.As(err, &tr):
		return nil, &TransientError{fmt.Errorf("getting pod %s/%s: %w", namespace, name, err)}
	case err != nil:
		return nil, &LookupError{fmt.Sprintf("getting pod %s/%s: %v", namespace, name, err)}
	}
	return infoOfMeta(&m.ObjectMeta), nil
}

// ClassifyStatus turns an API error status into a LookupError (retrying will
// not help) or a TransientError (it may).
func ClassifyStatus(ns, name string, code int, msg string) error {
	switch {
	case code == http.StatusNotFound:
		return &LookupError{fmt.Sprintf("pod %s/%s not found in the Kubernetes API", ns, name)}
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return &LookupError{fmt.Sprintf("not allowed to get pod %s/%s (the plugin's kubeconfig needs RBAC 'get pods'): %s", ns, name, msg)}
	case code == http.StatusTooManyRequests || code >= 500 || code == 0:
		return &TransientError{fmt.Errorf("getting pod %s/%s: HTTP %d: %s", ns, name, code, msg)}
	}
	return &LookupError{fmt.Sprintf("getting pod %s/%s: HTTP %d: %s", ns, name, code, msg)}
}

// InfoOf extracts what allocation needs from a pod object (the
// long-running components' full pods: Node set).
func InfoOf(p *corev1.Pod) *Info {
	in := infoOfMeta(&p.ObjectMeta)
	in.Node = p.Spec.NodeName
	return in
}

// infoOfMeta is everything of Info but Node, from the pod's metadata.
func infoOfMeta(m *metav1.ObjectMeta) *Info {
	in := &Info{Namespace: m.Namespace, Name: m.Name, UID: string(m.UID), Annotations: m.Annotations, Ordinal: -1}
	if ref := metav1.GetControllerOf(m); ref != nil && ref.Kind == "StatefulSet" && strings.HasPrefix(ref.APIVersion, "apps/") {
		in.StatefulSet, in.StatefulSetUID = ref.Name, string(ref.UID)
		in.Ordinal = Ordinal(m.Name, ref.Name, m.Labels[PodIndexLabel])
	}
	return in
}

// Ordinal is a StatefulSet pod's index: the pod-index label, else the
// numeric suffix of "<statefulset>-<n>"; -1 when neither is usable.
func Ordinal(podName, stsName, label string) int {
	if n, err := strconv.Atoi(label); err == nil && n >= 0 {
		return n
	}
	if suffix, ok := strings.CutPrefix(podName, stsName+"-"); ok {
		if n, err := strconv.Atoi(suffix); err == nil && n >= 0 {
			return n
		}
	}
	return -1
}
