// Package kubeapi reads single pod objects from the Kubernetes API with the
// transport a kubeconfig describes (auth, TLS, exec credential plugins) and
// one plain GET. The CNI plugins use it instead of a typed clientset, whose
// start-up (registering every API group) costs a plugin call more CPU than
// the lookup itself; it does not decode the object, so kube-multus, which
// needs only labels, links no core/v1 types. Callers classify the errors:
// kube-ipam and kube-multus map them to different CNI codes.
package kubeapi

import (
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

// Client GETs pods from one API server.
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
// message, else the body, at most 300 bytes.
type StatusError struct {
	Code int
	Msg  string
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
	cfg.Timeout = timeout
	cfg.UserAgent = userAgent
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, &ConfigError{kubeconfig, err}
	}
	base, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return nil, &ConfigError{kubeconfig, fmt.Errorf("bad server address: %w", err)}
	}
	return &Client{hc: hc, base: strings.TrimRight(base.String(), "/")}, nil
}

// GetPod returns the JSON of pod namespace/name (at most 8 MiB). Errors are
// a *StatusError, a *TransportError, or (a request that cannot be built)
// another error.
func (c *Client) GetPod(ctx context.Context, namespace, name string) ([]byte, error) {
	u := c.base + "/api/v1/namespaces/" + url.PathEscape(namespace) + "/pods/" + url.PathEscape(name)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, &TransportError{err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, &TransportError{fmt.Errorf("reading the answer: %w", err)}
	}
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(body))
		var st metav1.Status
		if json.Unmarshal(body, &st) == nil && st.Message != "" {
			msg = st.Message
		}
		if len(msg) > 300 {
			msg = msg[:300]
		}
		return nil, &StatusError{Code: resp.StatusCode, Msg: msg}
	}
	return body, nil
}
