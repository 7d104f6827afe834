package tier

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

// LookupError is a pod read that retrying will not fix (pod gone, access
// denied, unusable kubeconfig).
type LookupError struct{ Msg string }

func (e *LookupError) Error() string { return e.Msg }

// UnavailableError is a pod read that may succeed later (API unreachable,
// timeout, server error, expired credentials).
type UnavailableError struct{ Err error }

func (e *UnavailableError) Error() string { return e.Err.Error() }
func (e *UnavailableError) Unwrap() error { return e.Err }

// ReadLabels reads the labels of one pod with a single GET through
// kubeconfig. It is called only when a selector needs labels.
func ReadLabels(ctx context.Context, kubeconfig, namespace, name string, timeout time.Duration) (map[string]string, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, &LookupError{fmt.Sprintf("kubeconfig %s: %v", kubeconfig, err)}
	}
	cfg.Timeout = timeout
	cfg.UserAgent = "kube-multus"
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, &LookupError{fmt.Sprintf("kubeconfig %s: %v", kubeconfig, err)}
	}
	base, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return nil, &LookupError{fmt.Sprintf("kubeconfig %s: server address: %v", kubeconfig, err)}
	}
	u := strings.TrimRight(base.String(), "/") + "/api/v1/namespaces/" + url.PathEscape(namespace) + "/pods/" + url.PathEscape(name)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, &LookupError{fmt.Sprintf("pod %s/%s: %v", namespace, name, err)}
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, &UnavailableError{fmt.Errorf("reading pod %s/%s: %w", namespace, name, err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, &UnavailableError{fmt.Errorf("reading pod %s/%s: %w", namespace, name, err)}
	}
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(body))
		var st metav1.Status
		if json.Unmarshal(body, &st) == nil && st.Message != "" {
			msg = st.Message
		}
		err := fmt.Errorf("reading pod %s/%s: HTTP %d: %s", namespace, name, resp.StatusCode, msg)
		switch resp.StatusCode {
		case http.StatusNotFound, http.StatusForbidden, http.StatusBadRequest:
			return nil, &LookupError{err.Error()}
		}
		// 401 (rotated token), 429, 5xx: worth a retry by the runtime.
		return nil, &UnavailableError{err}
	}
	var meta metav1.PartialObjectMetadata
	if err := json.Unmarshal(body, &meta); err != nil {
		return nil, &LookupError{fmt.Sprintf("pod %s/%s: undecodable answer: %v", namespace, name, err)}
	}
	if meta.Labels == nil {
		meta.Labels = map[string]string{}
	}
	return meta.Labels, nil
}
