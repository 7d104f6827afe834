// Package webhook is kube-ipam's validating admission webhook: it rejects
// Pods and workload templates (Deployment, StatefulSet, DaemonSet,
// ReplicaSet) whose kube-ipam annotations the plugin would refuse at pod
// sandbox creation — malformed values, addresses outside the network, or
// addresses another pod already holds — so the mistake surfaces at
// "kubectl apply" instead of as a ContainerCreating pod.
package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"kubeipam/internal/allocator"
	"kubeipam/internal/config"
	"kubeipam/internal/pod"
	"kubeipam/internal/store"
)

// StoreLookup returns the record of whoever holds ip on network n, or nil
// when nobody does (a tombstone is not a holder).
type StoreLookup func(ctx context.Context, n *config.Network, ip netip.Addr) (*store.Record, error)

// Handler serves AdmissionReview v1 requests (POST, JSON).
type Handler struct {
	networks atomic.Pointer[[]*config.Network]
	lookup   StoreLookup
	now      func() time.Time

	// AllowOnStoreError admits an object whose addresses could not be
	// checked against the network's store (etcd or the Kubernetes API),
	// with a warning; by default it is rejected.
	AllowOnStoreError bool
	// StoreTimeout bounds the store lookups of one request (default 3s; keep
	// it below the webhook's timeoutSeconds).
	StoreTimeout time.Duration
	// Log receives one line per rejection or store error; nil discards.
	Log *slog.Logger
}

// NewHandler returns a handler validating against networks (as loaded by
// config.LoadNetworks). lookup may be nil: collisions are then not checked.
// now defaults to time.Now.
func NewHandler(networks []*config.Network, lookup StoreLookup, now func() time.Time) *Handler {
	if now == nil {
		now = time.Now
	}
	h := &Handler{lookup: lookup, now: now, StoreTimeout: 3 * time.Second}
	h.SetNetworks(networks)
	return h
}

// SetNetworks replaces the networks requests are validated against (a
// reloaded config); requests in flight finish with the old ones.
func (h *Handler) SetNetworks(networks []*config.Network) { h.networks.Store(&networks) }

func (h *Handler) nets() []*config.Network { return *h.networks.Load() }

const maxBody = 8 << 20

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST an admission.k8s.io/v1 AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		http.Error(w, "Content-Type must be application/json", http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		http.Error(w, "cannot read the request body", http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(w, "body is not an AdmissionReview with a request", http.StatusBadRequest)
		return
	}
	resp := h.Review(r.Context(), review.Request)
	resp.UID = review.Request.UID
	out := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Response: resp,
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(&out)
}

// Review decides one admission request.
func (h *Handler) Review(ctx context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	start := h.now()
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update || req.SubResource != "" {
		return allow
	}
	obj, err := decode(req.Kind, req.Object.Raw, req.Namespace)
	if err != nil {
		return deny(fmt.Sprintf("kube-ipam: cannot decode %s %s/%s: %v", req.Kind.Kind, req.Namespace, req.Name, err))
	}
	if obj == nil { // a kind this webhook does not check
		return allow
	}
	if req.Operation == admissionv1.Update {
		old, err := decode(req.Kind, req.OldObject.Raw, req.Namespace)
		// Unchanged kube-ipam annotations and replica count: do not block
		// unrelated updates (status, labels, finalizers, deletion) because
		// the network or etcd changed since the object was admitted.
		if err == nil && old != nil && (obj.deleting || old.sameIPAM(obj)) {
			return allow
		}
	}
	v := h.check(ctx, obj)
	resp := allow
	if len(v.problems) > 0 {
		msg := "kube-ipam: " + obj.describe() + ": " + strings.Join(v.problems, "; ")
		resp = deny(msg)
		h.logf("rejected", "object", obj.describe(), "reason", msg)
	}
	resp.Warnings = v.warnings
	h.logf("reviewed", "object", obj.describe(), "allowed", resp.Allowed, "took", h.now().Sub(start).String())
	return resp
}

func (h *Handler) logf(msg string, args ...any) {
	if h.Log != nil {
		h.Log.Info(msg, args...)
	}
}

func deny(msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusForbidden, Reason: metav1.StatusReasonForbidden, Message: msg,
	}}
}

// object is what validation needs of a Pod or a workload.
type object struct {
	kind, namespace, name string
	uid                   types.UID
	template              bool // annotations are the pod template's
	annotations           map[string]string
	replicas              int32 // -1: a DaemonSet (one pod per node)
	ordinalStart          int32 // StatefulSet .spec.ordinals.start
	// Pod only: its controlling StatefulSet, and ordinal (-1 when none).
	stsName, stsUID string
	ordinal         int
	// Pod of a Deployment/ReplicaSet/DaemonSet: "<workload>-", the name
	// prefix of its siblings (a rollout's old pod may still hold the address).
	siblings string
	deleting bool
}

func (o *object) describe() string {
	s := o.kind + " " + o.namespace + "/" + o.name
	if o.template {
		s = "pod template of " + s
	}
	return s
}

// sameIPAM reports whether o and n ask for the same addresses.
func (o *object) sameIPAM(n *object) bool {
	if o.replicas != n.replicas || o.ordinalStart != n.ordinalStart || o.ordinal != n.ordinal || o.stsUID != n.stsUID {
		return false
	}
	pick := func(m map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			if strings.HasPrefix(k, "kube-ipam.") {
				out[k] = v
			}
		}
		return out
	}
	a, b := pick(o.annotations), pick(n.annotations)
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func replicas(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}

// decode reads the object; nil, nil for kinds that are not checked.
func decode(gvk metav1.GroupVersionKind, raw []byte, ns string) (*object, error) {
	if len(raw) == 0 {
		return nil, errors.New("no object in the request")
	}
	var o *object
	var meta metav1.ObjectMeta
	switch {
	case gvk.Group == "" && gvk.Version == "v1" && gvk.Kind == "Pod":
		var p corev1.Pod
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, err
		}
		if p.Namespace == "" {
			p.Namespace = ns
		}
		info := pod.InfoOf(&p)
		meta = p.ObjectMeta
		o = &object{annotations: p.Annotations, replicas: 1, stsName: info.StatefulSet, stsUID: info.StatefulSetUID, ordinal: info.Ordinal}
		if ref := metav1.GetControllerOf(&p); ref != nil && info.StatefulSetUID == "" && strings.HasPrefix(ref.APIVersion, "apps/") {
			base := ref.Name
			if h := p.Labels[appsv1.DefaultDeploymentUniqueLabelKey]; ref.Kind == "ReplicaSet" && h != "" {
				base = strings.TrimSuffix(base, "-"+h) // the Deployment's name
			}
			o.siblings = base + "-"
		}
	case gvk.Group == "apps" && gvk.Version == "v1":
		o = &object{template: true, ordinal: -1}
		switch gvk.Kind {
		case "Deployment":
			var d appsv1.Deployment
			if err := json.Unmarshal(raw, &d); err != nil {
				return nil, err
			}
			meta, o.annotations, o.replicas = d.ObjectMeta, d.Spec.Template.Annotations, replicas(d.Spec.Replicas)
		case "ReplicaSet":
			var d appsv1.ReplicaSet
			if err := json.Unmarshal(raw, &d); err != nil {
				return nil, err
			}
			meta, o.annotations, o.replicas = d.ObjectMeta, d.Spec.Template.Annotations, replicas(d.Spec.Replicas)
		case "StatefulSet":
			var d appsv1.StatefulSet
			if err := json.Unmarshal(raw, &d); err != nil {
				return nil, err
			}
			meta, o.annotations, o.replicas = d.ObjectMeta, d.Spec.Template.Annotations, replicas(d.Spec.Replicas)
			if d.Spec.Ordinals != nil {
				o.ordinalStart = d.Spec.Ordinals.Start
			}
		case "DaemonSet":
			var d appsv1.DaemonSet
			if err := json.Unmarshal(raw, &d); err != nil {
				return nil, err
			}
			meta, o.annotations, o.replicas = d.ObjectMeta, d.Spec.Template.Annotations, -1
		default:
			return nil, nil
		}
	default:
		return nil, nil
	}
	o.kind, o.namespace, o.name, o.uid = gvk.Kind, meta.Namespace, meta.Name, meta.UID
	if o.namespace == "" {
		o.namespace = ns
	}
	if o.name == "" && meta.GenerateName != "" {
		o.name = meta.GenerateName + "*"
	}
	o.deleting = meta.DeletionTimestamp != nil
	return o, nil
}

type verdict struct{ problems, warnings []string }

func (v *verdict) fail(format string, a ...any) {
	v.problems = append(v.problems, fmt.Sprintf(format, a...))
}

// wanted is one address an annotation asks for on one network.
type wanted struct {
	net     *config.Network
	key     string // annotation key it came from
	value   string // the annotation's value
	ip      netip.Addr
	ordinal int // the StatefulSet ordinal it is for (-1: not a pool entry)
	legacy  bool
}

// keyFor is the annotation key that applies to network for base.
func keyFor(ann map[string]string, base, network string) string {
	if _, ok := ann[base+"."+network]; ok {
		return base + "." + network
	}
	return base
}

func (h *Handler) check(ctx context.Context, o *object) *verdict {
	v := &verdict{}
	ann := o.annotations
	if !hasIPAMKeys(ann) {
		return v
	}
	h.unknownNetworks(o, v)
	// The legacy keys, parsed on their own so that a malformed one is
	// reported even when every network overrides it.
	if _, err := pod.ParseAnnotationsFor(ann, ""); err != nil {
		v.problems = append(v.problems, annotationProblem(err))
		return v
	}
	var asks []wanted
	legacyInside := map[netip.Addr]bool{}
	legacyAll := map[netip.Addr]wanted{}
	legacyNets := map[netip.Addr][]string{} // networks the legacy key applied to
	for _, n := range h.nets() {
		w, err := pod.ParseAnnotationsFor(ann, n.Name)
		if err != nil {
			v.problems = append(v.problems, annotationProblem(err))
			continue
		}
		lists := []struct {
			base  string
			specs []config.IPSpec
		}{{pod.AnnotationIP, w.IPs}, {pod.AnnotationIPPool, w.Pool}}
		for _, l := range lists {
			if len(l.specs) == 0 {
				continue
			}
			key := keyFor(ann, l.base, n.Name)
			value := ann[key]
			seen := map[netip.Addr]bool{}
			for i, s := range l.specs {
				if seen[s.Addr] {
					v.fail("annotation %s=%q: %s is listed twice", key, value, s.Addr)
					continue
				}
				seen[s.Addr] = true
				ord := -1
				if l.base == pod.AnnotationIPPool {
					ord = i
				}
				a := wanted{net: n, key: key, value: value, ip: s.Addr, ordinal: ord, legacy: key == l.base}
				if a.legacy {
					legacyAll[s.Addr] = a
					legacyNets[s.Addr] = append(legacyNets[s.Addr], fmt.Sprintf("%q", n.Name))
					if _, _, ok := n.SetFor(s.Addr); !ok {
						continue // maybe another network's; checked below
					}
					legacyInside[s.Addr] = true
				}
				if _, err := allocator.New(n, nil).ValidateFixed(s.Addr); err != nil {
					v.fail("annotation %s=%q: %v", key, value, err)
					continue
				}
				asks = append(asks, a)
			}
		}
		if len(w.Pool) > 0 {
			h.checkPool(o, w, keyFor(ann, pod.AnnotationIPPool, n.Name), v)
		}
		if len(w.IPs) > 0 && (o.replicas > 1 || o.replicas < 0) {
			key := keyFor(ann, pod.AnnotationIP, n.Name)
			if o.replicas < 0 {
				v.fail("annotation %s=%q: a DaemonSet runs one pod per node and every one would ask for the same fixed address; use kube-ipam.ip only on single pods", key, ann[key])
			} else if o.kind == "StatefulSet" {
				v.fail("annotation %s=%q: all %d replicas would ask for the same fixed address; give each ordinal its own with %s", key, ann[key], o.replicas, pod.AnnotationIPPool)
			} else {
				v.fail("annotation %s=%q: all %d replicas would ask for the same fixed address; use replicas: 1 (with strategy Recreate) or a StatefulSet with %s", key, ann[key], o.replicas, pod.AnnotationIPPool)
			}
		}
	}
	var outside []string
	for ip, a := range legacyAll {
		if !legacyInside[ip] {
			outside = append(outside, fmt.Sprintf("annotation %s=%q: %s is outside every subnet of the kube-ipam networks it applies to (%s)", a.key, a.value, ip, strings.Join(dedupe(legacyNets[ip]), ", ")))
		}
	}
	sort.Strings(outside)
	v.problems = dedupe(append(v.problems, outside...))
	if len(v.problems) > 0 {
		return v
	}
	h.checkHolders(ctx, o, asks, v)
	return v
}

func dedupe(list []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range list {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func hasIPAMKeys(ann map[string]string) bool {
	for k := range ann {
		if strings.HasPrefix(k, "kube-ipam.") {
			return true
		}
	}
	return false
}

func (h *Handler) networkNames() string {
	var names []string
	for _, n := range h.nets() {
		names = append(names, fmt.Sprintf("%q", n.Name))
	}
	return strings.Join(names, ", ")
}

// unknownNetworks warns about "<key>.<network>" annotations naming no
// configured network (a typo, or a network of another IPAM config).
func (h *Handler) unknownNetworks(o *object, v *verdict) {
	var keys []string
	for k := range o.annotations {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, base := range []string{pod.AnnotationIP, pod.AnnotationIPPool, pod.AnnotationNetmask, pod.AnnotationGateway} {
			name, ok := strings.CutPrefix(k, base+".")
			if !ok || name == "" {
				continue
			}
			if !slices.ContainsFunc(h.nets(), func(n *config.Network) bool { return n.Name == name }) {
				v.warnings = append(v.warnings, fmt.Sprintf("kube-ipam: annotation %s names network %q, which is not a kube-ipam network of this webhook's config (%s); it was not checked", k, name, h.networkNames()))
			}
		}
	}
}

// checkPool applies kube-ipam.ip-pool's rules: StatefulSet pods only, one
// entry per ordinal.
func (h *Handler) checkPool(o *object, w pod.Wants, key string, v *verdict) {
	value := o.annotations[key]
	switch {
	case o.template && o.kind != "StatefulSet":
		v.fail("annotation %s=%q: only applies to pods of a StatefulSet (pod N gets entry N), not to a %s", key, value, o.kind)
	case o.template:
		if last := int(o.ordinalStart) + int(o.replicas) - 1; o.replicas > 0 && last >= len(w.Pool) {
			v.fail("annotation %s=%q: has %d entries but the StatefulSet's highest ordinal is %d (replicas %d); add addresses or lower replicas", key, value, len(w.Pool), last, o.replicas)
		}
	case o.stsUID == "":
		v.fail("annotation %s=%q: only applies to pods of a StatefulSet (pod N gets entry N); this pod has no controlling StatefulSet", key, value)
	case o.ordinal < 0 || o.ordinal >= len(w.Pool):
		v.fail("annotation %s=%q: has %d entries but this pod is ordinal %d of StatefulSet %s", key, value, len(w.Pool), o.ordinal, o.stsName)
	}
}

// ownedBy reports whether rec belongs to the pod(s) o describes, for an
// address asked for by a (ordinal is the pool index, -1 for kube-ipam.ip).
func ownedBy(o *object, a wanted, rec *store.Record) bool {
	if rec.PodNamespace != o.namespace {
		return false
	}
	switch {
	case o.kind == "StatefulSet":
		ord := a.ordinal
		if ord < 0 {
			ord = int(o.ordinalStart) // kube-ipam.ip with replicas <= 1
		}
		return o.uid != "" && rec.StatefulSetUID == string(o.uid) && rec.Ordinal == ord
	case o.kind == "Pod" && o.stsUID != "":
		return rec.StatefulSetUID == o.stsUID && rec.Ordinal == o.ordinal
	case o.kind == "Pod":
		return rec.StatefulSetUID == "" && rec.PodName != "" &&
			(rec.PodName == o.name || o.siblings != "" && strings.HasPrefix(rec.PodName, o.siblings))
	default:
		// Deployment / ReplicaSet pods are named "<name>-<suffix>": a pod
		// of the same workload holding the address (a rollout) is its own.
		return rec.StatefulSetUID == "" && strings.HasPrefix(rec.PodName, o.name+"-")
	}
}

func (h *Handler) checkHolders(ctx context.Context, o *object, asks []wanted, v *verdict) {
	if h.lookup == nil || len(asks) == 0 {
		return
	}
	if h.StoreTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.StoreTimeout)
		defer cancel()
	}
	for _, a := range asks {
		// A plain pod with a pool uses only its own ordinal's entry.
		if o.kind == "Pod" && a.ordinal >= 0 && a.ordinal != o.ordinal {
			continue
		}
		rec, err := h.lookup(ctx, a.net, a.ip)
		if err != nil {
			msg := fmt.Sprintf("annotation %s=%q: cannot check whether %s is free on network %q: %s: %v", a.key, a.value, a.ip, a.net.Name, storeOf(a.net), err)
			if h.Log != nil {
				h.Log.Warn("store lookup failed", "network", a.net.Name, "ip", a.ip.String(), "error", err.Error())
			}
			if h.AllowOnStoreError {
				// The remaining addresses stay unchecked too: more lookups
				// would only run into the API server's timeout.
				v.warnings = append(v.warnings, "kube-ipam: "+msg+" (admitted unchecked: --allow-on-store-error)")
				return
			}
			v.problems = append(v.problems, msg)
			return
		}
		if rec == nil || ownedBy(o, a, rec) {
			continue
		}
		who := rec.Owner()
		if rec.StatefulSetUID != "" {
			who += fmt.Sprintf(", StatefulSet %s/%s ordinal %d", rec.PodNamespace, rec.StatefulSet, rec.Ordinal)
		}
		entry := ""
		if a.ordinal >= 0 && o.template {
			entry = fmt.Sprintf(" (entry for ordinal %d)", a.ordinal)
		}
		v.fail("annotation %s=%q: %s%s is already held on network %q by %s", a.key, a.value, a.ip, entry, a.net.Name, who)
	}
}

// storeOf names network n's store for messages: its etcd endpoints, or
// the kubeconfig of its Kubernetes API store.
func storeOf(n *config.Network) string {
	if n.Store == config.StoreKubernetes {
		return "kubernetes API store (kubeconfig " + n.KubeConfig + ")"
	}
	return fmt.Sprintf("etcd %v", n.Etcd.Endpoints)
}

func annotationProblem(err error) string {
	var ae *pod.AnnotationError
	if errors.As(err, &ae) {
		return fmt.Sprintf("annotation %s=%q: %s", ae.Key, ae.Value, ae.Reason)
	}
	return err.Error()
}
