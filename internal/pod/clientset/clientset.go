// Package clientset adapts a client-go clientset (the fake one in unit
// tests, a typed one in long-running components) to pod.Getter, with the same
// error classification as the plugin's lightweight client.
package clientset

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"kubeipam/internal/pod"
)

// Getter reads pods through a clientset.
type Getter struct{ cs kubernetes.Interface }

// New wraps cs.
func New(cs kubernetes.Interface) *Getter { return &Getter{cs: cs} }

// Get reads one pod.
func (g *Getter) Get(ctx context.Context, namespace, name string) (*pod.Info, error) {
	p, err := g.cs.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		return pod.InfoOf(p), nil
	}
	var st apierrors.APIStatus
	if errors.As(err, &st) && st.Status().Code != 0 {
		cerr := pod.ClassifyStatus(namespace, name, int(st.Status().Code), st.Status().Message)
		var lk *pod.LookupError
		if errors.As(cerr, &lk) {
			return nil, cerr
		}
	}
	return nil, &pod.TransientError{Err: fmt.Errorf("getting pod %s/%s: %w", namespace, name, err)}
}
