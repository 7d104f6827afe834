package tier

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"kubeipam/internal/kubeapi"
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

// ReadLabels reads the labels of one pod with a single GET of its metadata
// (kubeapi.PodMetadata) through kubeconfig. It is called only when a selector needs labels.
func ReadLabels(ctx context.Context, kubeconfig, namespace, name string, timeout time.Duration) (map[string]string, error) {
	api, err := kubeapi.NewClient(kubeconfig, "kube-multus", timeout)
	if err != nil {
		return nil, &LookupError{err.Error()}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	meta, err := api.PodMetadata(ctx, namespace, name)
	var st *kubeapi.StatusError
	var tr *kubeapi.TransportError
	switch {
	case errors.As(err, &st):
		err := fmt.Errorf("reading pod %s/%s: %w", namespace, name, err)
		switch st.Code {
		case http.StatusNotFound, http.StatusForbidden, http.StatusBadRequest:
			return nil, &LookupError{err.Error()}
		}
		// 401 (rotated token), 429, 5xx: worth a retry by the runtime.
		return nil, &UnavailableError{err}
	case errors.As(err, &tr):
		return nil, &UnavailableError{fmt.Errorf("reading pod %s/%s: %w", namespace, name, err)}
	case err != nil:
		return nil, &LookupError{fmt.Sprintf("pod %s/%s: %v", namespace, name, err)}
	}
	if meta.Labels == nil {
		meta.Labels = map[string]string{}
	}
	return meta.Labels, nil
}
