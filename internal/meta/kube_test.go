package meta

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubeipam/internal/netattach"
	"kubeipam/internal/testenv"
	"kubeipam/internal/tier"
)

// TestAPIKube runs the production Kube against a real kube-apiserver: the
// network-status patch lands on the pod with that UID only (a re-created
// pod of the same name, or a deleted one, is "not found"), Events are
// created, a missing NAD is *NotFoundError, and a stopped API server is
// *tier.UnavailableError (code 11).
func TestAPIKube(t *testing.T) {
	k := testenv.StartKube(t, testenv.KubeOptions{})
	k.InstallCRDs(t, testenv.NADCRD)
	ctx := context.Background()
	pods := k.Client.CoreV1().Pods("default")
	mk := func(name string) *corev1.Pod {
		p, err := pods.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"tier": "db"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "img"}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	api, err := NewKube(k.Kubeconfig, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p := mk("db-0")
	got, err := api.Pod(ctx, "default", "db-0")
	if err != nil || got.UID != string(p.UID) || got.Labels["tier"] != "db" {
		t.Fatalf("Pod: %+v %v", got, err)
	}
	if err := api.SetNetworkStatus(ctx, "default", "db-0", string(p.UID), "[]"); err != nil {
		t.Fatal(err)
	}
	p2, _ := pods.Get(ctx, "db-0", metav1.GetOptions{})
	if p2.Annotations[netattach.NetworkStatusAnnotation] != "[]" || p2.Spec.Containers[0].Image != "img" {
		t.Fatalf("annotation not written: %v", p2.Annotations)
	}
	// Re-created under the same name: the old UID's status is refused.
	if err := pods.Delete(ctx, "db-0", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	var nf *NotFoundError
	if err := api.SetNetworkStatus(ctx, "default", "db-0", string(p.UID), "[1]"); !errors.As(err, &nf) {
		t.Fatalf("deleted pod: %v", err)
	}
	mk("db-0")
	if err := api.SetNetworkStatus(ctx, "default", "db-0", string(p.UID), "[2]"); !errors.As(err, &nf) {
		t.Fatalf("re-created pod: want not found, got %v", err)
	}
	p3, _ := pods.Get(ctx, "db-0", metav1.GetOptions{})
	if _, ok := p3.Annotations[netattach.NetworkStatusAnnotation]; ok {
		t.Fatalf("the re-created pod got the old sandbox's status: %v", p3.Annotations)
	}
	if err := api.Event(ctx, Event{Namespace: "default", Pod: "db-0", UID: string(p3.UID), Reason: ReasonAdded, Message: "Add net1 [10.188.0.219/16] from db/db-net"}); err != nil {
		t.Fatal(err)
	}
	evs, err := k.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
	if err != nil || len(evs.Items) != 1 || evs.Items[0].InvolvedObject.UID != p3.UID || evs.Items[0].Type != "Normal" || evs.Items[0].Source.Component != EventComponent {
		t.Fatalf("events %+v %v", evs, err)
	}
	if _, err := api.NAD(ctx, "default", "nope"); !errors.As(err, &nf) {
		t.Fatalf("missing NAD: %v", err)
	}
	if _, err := api.Pod(ctx, "default", "nope"); !errors.As(err, &nf) {
		t.Fatalf("missing pod: %v", err)
	}
	k.StopAPIServer(t)
	var una *tier.UnavailableError
	if _, err := api.Pod(ctx, "default", "db-0"); !errors.As(err, &una) || toCNI(err).Code != 11 || !strings.Contains(err.Error(), "reading pod default/db-0") {
		t.Fatalf("API stopped: %v", err)
	}
}
