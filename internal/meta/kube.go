package meta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubeipam/internal/kubeapi"
	"kubeipam/internal/netattach"
	"kubeipam/internal/tier"
)

// Kube is what kube-multus asks of the Kubernetes API: one pod read per
// ADD, the NetworkAttachmentDefinitions the pod and the config name, the
// network-status annotation, and Events on the pod. Errors are
// *tier.LookupError (retrying will not help), *tier.UnavailableError (it
// may), or *NotFoundError.
type Kube interface {
	Pod(ctx context.Context, namespace, name string) (*Pod, error)
	NAD(ctx context.Context, namespace, name string) (*netattach.NAD, error)
	// SetNetworkStatus writes the annotation on the pod with that UID; a
	// pod that is gone (or is another instance) is a *NotFoundError.
	SetNetworkStatus(ctx context.Context, namespace, name, uid, value string) error
	Event(ctx context.Context, e Event) error
}

// Pod is what kube-multus reads of a pod.
type Pod struct {
	UID         string
	Labels      map[string]string
	Annotations map[string]string
}

// Event is one Event about a pod.
type Event struct {
	Namespace, Pod, UID string
	Warning             bool
	Reason, Message     string
}

// NotFoundError: the object does not exist.
type NotFoundError struct{ What string }

func (e *NotFoundError) Error() string { return e.What + " not found" }

// apiKube is Kube over plain HTTP requests (package kubeapi).
type apiKube struct {
	api        *kubeapi.Client
	kubeconfig string
}

// NewKube is the production Kube, built from the meta config's kubeconfig.
func NewKube(kubeconfig string, timeout time.Duration) (Kube, error) {
	api, err := kubeapi.NewClient(kubeconfig, "kube-multus", timeout)
	if err != nil {
		return nil, &tier.LookupError{Msg: fmt.Sprintf("kubeconfig (meta config key \"kubeconfig\"): %v", err)}
	}
	return &apiKube{api: api, kubeconfig: kubeconfig}, nil
}

// classify maps an API answer to the error kinds of Kube. what names the
// request in messages ("reading pod db/x").
func (k *apiKube) classify(what string, err error) error {
	var st *kubeapi.StatusError
	var tr *kubeapi.TransportError
	switch {
	case errors.As(err, &st):
		switch st.Code {
		case http.StatusNotFound:
			return &NotFoundError{What: what + ": " + st.Msg + " (" + k.api.Server() + ")"}
		case http.StatusForbidden:
			return &tier.LookupError{Msg: fmt.Sprintf("%s: %v: kube-multus's identity (kubeconfig %s) lacks the RBAC deploy/rbac.yaml grants the plugin (ClusterRole kube-ipam-plugin)", what, err, k.kubeconfig)}
		case http.StatusBadRequest, http.StatusUnprocessableEntity, http.StatusConflict:
			return &tier.LookupError{Msg: fmt.Sprintf("%s: %v", what, err)}
		}
		// 401 (rotated token), 429, 5xx: worth a retry by the runtime.
		return &tier.UnavailableError{Err: fmt.Errorf("%s: %w", what, err)}
	case errors.As(err, &tr):
		return &tier.UnavailableError{Err: fmt.Errorf("%s: %w", what, err)}
	}
	return &tier.LookupError{Msg: fmt.Sprintf("%s: %v", what, err)}
}

func (k *apiKube) do(ctx context.Context, what string, r kubeapi.Request, want int) ([]byte, error) {
	resp, err := k.api.Do(ctx, r)
	if err != nil {
		return nil, k.classify(what, err)
	}
	if resp.Code != want {
		return nil, k.classify(what, resp.Status())
	}
	return resp.Body, nil
}

func (k *apiKube) Pod(ctx context.Context, namespace, name string) (*Pod, error) {
	what := fmt.Sprintf("reading pod %s/%s", namespace, name)
	m, err := k.api.PodMetadata(ctx, namespace, name)
	if err != nil {
		return nil, k.classify(what, err)
	}
	return &Pod{UID: string(m.UID), Labels: orEmpty(m.Labels), Annotations: orEmpty(m.Annotations)}, nil
}

func orEmpty(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func (k *apiKube) NAD(ctx context.Context, namespace, name string) (*netattach.NAD, error) {
	what := fmt.Sprintf("reading NetworkAttachmentDefinition %s/%s", namespace, name)
	body, err := k.do(ctx, what, kubeapi.Request{Path: "/apis/k8s.cni.cncf.io/v1/namespaces/" + url.PathEscape(namespace) +
		"/network-attachment-definitions/" + url.PathEscape(name)}, http.StatusOK)
	if err != nil {
		return nil, err
	}
	var nad netattach.NAD
	if err := json.Unmarshal(body, &nad); err != nil {
		return nil, &tier.LookupError{Msg: fmt.Sprintf("%s: undecodable answer: %v", what, err)}
	}
	return &nad, nil
}

// SetNetworkStatus merge-patches the annotation through the pods/status
// subresource (RBAC "patch pods/status": it cannot change a pod's spec),
// with the pod's UID in the patch, which the API server refuses to change:
// the status of one sandbox never lands on a re-created pod of the same
// name (TestAPIKube).
func (k *apiKube) SetNetworkStatus(ctx context.Context, namespace, name, uid, value string) error {
	what := fmt.Sprintf("writing %s on pod %s/%s", netattach.NetworkStatusAnnotation, namespace, name)
	meta := map[string]any{"annotations": map[string]string{netattach.NetworkStatusAnnotation: value}}
	if uid != "" {
		meta["uid"] = uid
	}
	body, _ := json.Marshal(map[string]any{"metadata": meta})
	// The answer is the patched pod: metadata only, as for Pod.
	_, err := k.do(ctx, what, kubeapi.Request{Method: http.MethodPatch, Path: kubeapi.PodPath(namespace, name) + "/status",
		Accept: kubeapi.MetadataAccept, Body: body, ContentType: "application/merge-patch+json"}, http.StatusOK)
	var le *tier.LookupError
	if uid != "" && errors.As(err, &le) && isUIDPrecondition(err) {
		return &NotFoundError{What: fmt.Sprintf("%s: pod UID %s", what, uid)}
	}
	return err
}

// isUIDPrecondition: the API server refused the patch because the pod of
// that name has another UID (422 "metadata.uid: ... field is immutable"; 409
// "Precondition failed: UID" from servers that check it as a precondition).
func isUIDPrecondition(err error) bool {
	m := err.Error()
	return strings.Contains(m, "Precondition failed: UID") || (strings.Contains(m, "metadata.uid") && strings.Contains(m, "immutable"))
}

// event is the core/v1 Event kube-multus creates (its own struct: the
// plugin links no core/v1 types).
type event struct {
	APIVersion          string            `json:"apiVersion"`
	Kind                string            `json:"kind"`
	Metadata            metav1.ObjectMeta `json:"metadata"`
	InvolvedObject      objectRef         `json:"involvedObject"`
	Reason              string            `json:"reason"`
	Message             string            `json:"message"`
	Type                string            `json:"type"`
	Source              eventSource       `json:"source"`
	FirstTimestamp      metav1.Time       `json:"firstTimestamp"`
	LastTimestamp       metav1.Time       `json:"lastTimestamp"`
	Count               int               `json:"count"`
	ReportingController string            `json:"reportingComponent"`
	ReportingInstance   string            `json:"reportingInstance"`
}

type objectRef struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace"`
	Name       string `json:"name"`
	UID        string `json:"uid,omitempty"`
}

type eventSource struct {
	Component string `json:"component"`
	Host      string `json:"host,omitempty"`
}

// EventComponent is the source of kube-multus's Events.
const EventComponent = "kube-multus"

func (k *apiKube) Event(ctx context.Context, e Event) error {
	now := metav1.NewTime(time.Now())
	host, _ := os.Hostname()
	typ := "Normal"
	if e.Warning {
		typ = "Warning"
	}
	ev := event{APIVersion: "v1", Kind: "Event",
		// client-go's recorder names Events the same way.
		Metadata:       metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", e.Pod, now.UnixNano()), Namespace: e.Namespace},
		InvolvedObject: objectRef{APIVersion: "v1", Kind: "Pod", Namespace: e.Namespace, Name: e.Pod, UID: e.UID},
		Reason:         e.Reason, Message: e.Message, Type: typ,
		Source:         eventSource{Component: EventComponent, Host: host},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: EventComponent, ReportingInstance: host,
	}
	body, _ := json.Marshal(ev)
	_, err := k.do(ctx, fmt.Sprintf("creating an Event on pod %s/%s", e.Namespace, e.Pod),
		kubeapi.Request{Method: http.MethodPost, Path: "/api/v1/namespaces/" + url.PathEscape(e.Namespace) + "/events", Body: body}, http.StatusCreated)
	return err
}
