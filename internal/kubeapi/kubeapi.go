// Package kubeapi talks to the Kubernetes API with the transport a
// kubeconfig describes (auth, TLS, exec credential plugins) and plain HTTP
// requests: PodMetadata reads the metadata of one pod, Do sends any request
// and Watch streams a watch. The CNI plugins use it instead of a typed
// clientset, whose start-up (registering every API group) costs a plugin
// call more CPU than the work itself. It decodes only metadata: the plugins
// read a pod's labels, annotations and owners, never its spec (whose env
// values may be secrets), so kube-multus links no core/v1 types, and the
// Kubernetes API store (internal/store/kubestore) brings its own structs.
// Callers classify the errors: kube-ipam and kube-multus map them to
// different CNI codes.
package kubeapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Client sends requests to one API server.
type Client struct {
	hc   *http.Client
	base string
}

// ConfigError is a kubeconfig that cannot be used.
type ConfigError struct {
	Kubeconfig string
	Err        error
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("cannot use kubeconfig %s: %v", e.Kubeconfig, e.Err)
}
func (e *ConfigError) Unwrap() error { return e.Err }

// StatusError is an answer other than 200 OK. Msg is the API's Status
// message, else the body, at most 300 bytes; Reason is the Status reason
// (AlreadyExists, Conflict, NotFound, ...) and Name the object it names,
// when the body is a Status.
type StatusError struct {
	Code   int
	Msg    string
	Reason string
	Name   string
}

func (e *StatusError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.Code, e.Msg) }

// TransportError is a request that got no complete answer (connection
// refused or reset, timeout, truncated body): it may succeed later.
type TransportError struct{ Err error }

func (e *TransportError) Error() string { return e.Err.Error() }
func (e *TransportError) Unwrap() error { return e.Err }

// NewClient builds a client from a kubeconfig file; every request is bounded
// by timeout.
func NewClient(kubeconfig, userAgent string, timeout time.Duration) (*Client, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, &ConfigError{kubeconfig, err}
	}
	c, err := NewClientForConfig(cfg, userAgent, timeout)
	if err != nil {
		return nil, &ConfigError{kubeconfig, err}
	}
	return c, nil
}

// NewClientForConfig builds a client from a client-go configuration (an
// in-cluster one, or a long-running component's own); every request is
// bounded by timeout. cfg is not modified.
func NewClientForConfig(cfg *rest.Config, userAgent string, timeout time.Duration) (*Client, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.Timeout = timeout
	cfg.UserAgent = userAgent
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	base, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("bad server address: %w", err)
	}
	return &Client{hc: hc, base: strings.TrimRight(base.String(), "/")}, nil
}

// MetadataAccept asks the API server to answer with the object's metadata
// only (a meta.k8s.io/v1 PartialObjectMetadata, as client-go's metadata
// client does): a pod's spec carries its containers' env values, which may
// be secrets, and nothing a plugin needs. kube-apiserver has served it for
// every resource since 1.15, GET and PATCH alike (TestPodMetadata checks
// the release the tests run), so there is no fallback to the full object:
// a server that cannot answer so refuses with 406, an error naming it.
const MetadataAccept = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"

// PodMetadata reads the metadata (UID, labels, annotations, owner
// references) of pod namespace/name; the pod's spec and status never cross
// the wire. Errors are a *StatusError, a *TransportError, or (a request that
// cannot be built, an answer that is not JSON) another error.
func (c *Client) PodMetadata(ctx context.Context, namespace, name string) (*metav1.PartialObjectMetadata, error) {
	resp, err := c.Do(ctx, Request{Method: http.MethodGet, Path: PodPath(namespace, name), Accept: MetadataAccept})
	if err != nil {
		return nil, err
	}
	if resp.Code != http.StatusOK {
		return nil, resp.Status()
	}
	var m metav1.PartialObjectMetadata
	if err := json.Unmarshal(resp.Body, &m); err != nil {
		return nil, fmt.Errorf("undecodable answer (want a PartialObjectMetadata): %w", err)
	}
	return &m, nil
}

// PodPath is the API path of pod namespace/name.
func PodPath(namespace, name string) string {
	return "/api/v1/namespaces/" + url.PathEscape(namespace) + "/pods/" + url.PathEscape(name)
}

// Server is the API server's base URL.
func (c *Client) Server() string { return c.base }

// Request is one API request.
type Request struct {
	Method string
	// Path is the absolute path (/api/..., /apis/...), already escaped.
	Path  string
	Query url.Values
	// Accept defaults to application/json.
	Accept string
	// Body, when set, is sent as ContentType (default application/json).
	Body        []byte
	ContentType string
}

// Response is an API answer of any status.
type Response struct {
	Code   int
	Header http.Header
	Body   []byte
}

// Status is the answer as a *StatusError (whatever its code).
func (r *Response) Status() *StatusError { return statusError(r.Code, r.Body) }

// MaxBody bounds the answers Do reads.
const MaxBody = 64 << 20

// Do sends r and returns the answer whatever its status, the body read
// whole (at most MaxBody). The error is a *TransportError when no complete
// answer came (connection refused or reset, timeout, truncated body), or
// another error when the request cannot be built.
func (c *Client) Do(ctx context.Context, r Request) (*Response, error) {
	req, err := c.request(ctx, r)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, &TransportError{err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	if err != nil {
		return nil, &TransportError{fmt.Errorf("reading the answer: %w", err)}
	}
	if len(body) > MaxBody {
		return nil, fmt.Errorf("answer to %s %s exceeds %d bytes", r.Method, r.Path, MaxBody)
	}
	return &Response{Code: resp.StatusCode, Header: resp.Header, Body: body}, nil
}

// Watch sends r (a GET with watch=true) and returns the response, whose
// body streams events until the server ends the watch or ctx ends; the
// client's request timeout does not apply. The caller closes the body. A
// status other than 200 is returned as a *StatusError (the body read and
// closed).
func (c *Client) Watch(ctx context.Context, r Request) (*http.Response, error) {
	req, err := c.request(ctx, r)
	if err != nil {
		return nil, err
	}
	hc := *c.hc
	hc.Timeout = 0 // same transport; the stream lasts as long as ctx
	resp, err := hc.Do(req)
	if err != nil {
		return nil, &TransportError{err}
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return nil, &TransportError{fmt.Errorf("reading the answer: %w", err)}
		}
		return nil, statusError(resp.StatusCode, body)
	}
	return resp, nil
}

func (c *Client) request(ctx context.Context, r Request) (*http.Request, error) {
	u := c.base + r.Path
	if len(r.Query) > 0 {
		u += "?" + r.Query.Encode()
	}
	var body io.Reader
	if r.Body != nil {
		body = bytes.NewReader(r.Body)
	}
	method := r.Method
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	accept := r.Accept
	if accept == "" {
		accept = "application/json"
	}
	req.Header.Set("Accept", accept)
	if r.Body != nil {
		ct := r.ContentType
		if ct == "" {
			ct = "application/json"
		}
		req.Header.Set("Content-Type", ct)
	}
	return req, nil
}

// statusError reads an error answer: the Status's message, reason and
// object name when the body is a Status, else the body.
func statusError(code int, body []byte) *StatusError {
	e := &StatusError{Code: code, Msg: strings.TrimSpace(string(body))}
	var st metav1.Status
	if json.Unmarshal(body, &st) == nil {
		if st.Message != "" {
			e.Msg = st.Message
		}
		e.Reason = string(st.Reason)
		if st.Details != nil {
			e.Name = st.Details.Name
		}
	}
	if len(e.Msg) > 300 {
		e.Msg = e.Msg[:300]
	}
	return e
}
