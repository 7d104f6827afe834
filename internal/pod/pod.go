// Package pod answers "which pod is this ADD for, and what does it ask for":
// it parses CNI_ARGS the way runtimes and multus really send them, reads the
// pod from the Kubernetes API, and parses kube-ipam's pod annotations.
package pod

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"kubeipam/internal/config"
)

// Annotation keys (kube-ipam v0.2 compatible).
const (
	AnnotationIP      = "kube-ipam.ip"
	AnnotationNetmask = "kube-ipam.netmask"
	AnnotationGateway = "kube-ipam.gateway"
)

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
	IPs     []config.IPSpec
	Netmask int // prefix length from kube-ipam.netmask, -1 when absent
	Gateway netip.Addr
}

// AnnotationError is a malformed annotation.
type AnnotationError struct{ Key, Value, Reason string }

func (e *AnnotationError) Error() string {
	return fmt.Sprintf("pod annotation %s=%q: %s", e.Key, e.Value, e.Reason)
}

// ParseAnnotations reads kube-ipam.ip (comma list of addresses or CIDRs,
// IPv4 and IPv6), kube-ipam.netmask (dotted quad or prefix length) and
// kube-ipam.gateway.
func ParseAnnotations(ann map[string]string) (Wants, error) {
	w := Wants{Netmask: -1}
	if v, ok := ann[AnnotationIP]; ok && strings.TrimSpace(v) != "" {
		for _, item := range strings.Split(v, ",") {
			if strings.TrimSpace(item) == "" {
				return w, &AnnotationError{AnnotationIP, v, "empty entry in the list"}
			}
			spec, err := config.ParseIPOrCIDR(item)
			if err != nil {
				return w, &AnnotationError{AnnotationIP, v, fmt.Sprintf("%q: %v", strings.TrimSpace(item), err)}
			}
			w.IPs = append(w.IPs, spec)
		}
	}
	if v, ok := ann[AnnotationNetmask]; ok && strings.TrimSpace(v) != "" {
		bits, err := ParseNetmask(v)
		if err != nil {
			return w, &AnnotationError{AnnotationNetmask, v, err.Error()}
		}
		w.Netmask = bits
	}
	if v, ok := ann[AnnotationGateway]; ok && strings.TrimSpace(v) != "" {
		g, err := netip.ParseAddr(strings.TrimSpace(v))
		if err != nil {
			return w, &AnnotationError{AnnotationGateway, v, "not an IP address"}
		}
		w.Gateway = g.Unmap()
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
// it may carry secrets in env values, and it goes to logs).
type Info struct {
	Namespace, Name, UID, Node string
	Annotations                map[string]string
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

// Client reads pods through client-go.
type Client struct{ cs kubernetes.Interface }

// NewClient builds a client from a kubeconfig file.
func NewClient(kubeconfig string, timeout time.Duration) (*Client, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, &LookupError{fmt.Sprintf("cannot use kubeconfig %s: %v", kubeconfig, err)}
	}
	cfg.Timeout = timeout
	cfg.UserAgent = "kube-ipam"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, &LookupError{fmt.Sprintf("cannot use kubeconfig %s: %v", kubeconfig, err)}
	}
	return &Client{cs: cs}, nil
}

// NewClientFromInterface wraps an existing clientset.
func NewClientFromInterface(cs kubernetes.Interface) *Client { return &Client{cs: cs} }

// Get reads one pod.
func (c *Client) Get(ctx context.Context, namespace, name string) (*Info, error) {
	p, err := c.cs.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, classify(namespace, name, err)
	}
	return info(p), nil
}

func info(p *corev1.Pod) *Info {
	return &Info{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), Node: p.Spec.NodeName, Annotations: p.Annotations}
}

func classify(ns, name string, err error) error {
	switch {
	case apierrors.IsNotFound(err):
		return &LookupError{fmt.Sprintf("pod %s/%s not found in the Kubernetes API", ns, name)}
	case apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
		return &LookupError{fmt.Sprintf("not allowed to get pod %s/%s (the plugin's kubeconfig needs RBAC 'get pods'): %v", ns, name, err)}
	case apierrors.IsBadRequest(err), apierrors.IsInvalid(err):
		return &LookupError{fmt.Sprintf("getting pod %s/%s: %v", ns, name, err)}
	}
	var se *apierrors.StatusError
	if errors.As(err, &se) && se.Status().Code > 0 && se.Status().Code < 500 && se.Status().Code != 429 {
		return &LookupError{fmt.Sprintf("getting pod %s/%s: %v", ns, name, err)}
	}
	return &TransientError{fmt.Errorf("getting pod %s/%s: %w", ns, name, err)}
}
