package controller

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// The informer's transform keeps what the rules read and drops the rest.
func TestSlimPod(t *testing.T) {
	del := metav1.NewTime(time.Unix(1700000000, 0))
	grace := int64(30)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-0", UID: "u1", ResourceVersion: "42",
			DeletionTimestamp: &del, DeletionGracePeriodSeconds: &grace, Labels: map[string]string{"app": "web"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec:   corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c", Image: "i"}}},
		Status: corev1.PodStatus{PodIP: "10.0.0.1"},
	}
	got, err := slimPod(p)
	if err != nil {
		t.Fatal(err)
	}
	s := got.(*corev1.Pod)
	if s.Namespace != "ns" || s.Name != "web-0" || s.UID != "u1" || s.ResourceVersion != "42" || s.Spec.NodeName != "node-1" ||
		s.DeletionTimestamp == nil || !s.DeletionTimestamp.Equal(&del) || *s.DeletionGracePeriodSeconds != 30 {
		t.Fatalf("slimmed pod lost a field the rules read: %+v", s)
	}
	if s.Labels != nil || s.ManagedFields != nil || s.Spec.Containers != nil || s.Status.PodIP != "" {
		t.Fatalf("slimmed pod kept fields the rules do not read: %+v", s)
	}
	if f := podFacts(s); f.UID != "u1" || f.Node != "node-1" || f.Deleting == nil {
		t.Fatalf("facts of the slimmed pod: %+v", f)
	}
	tomb := cache.DeletedFinalStateUnknown{Key: "ns/web-0", Obj: s}
	if got, err := slimPod(tomb); err != nil || got != any(tomb) {
		t.Fatalf("a tombstone is passed through: %v %v", got, err)
	}
}
