package testenv

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// The control plane has no kubelet: these helpers play its part for tests
// that run the CNI chain themselves. They work in namespace "default".

// Scheduled waits until exactly n pods matching selector, other than those
// with the given UIDs, are bound to a node and not being deleted, and
// returns them sorted by name.
func (k *Kube) Scheduled(t testing.TB, selector string, n int, except ...types.UID) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	k.WaitFor(t, fmt.Sprintf("%d scheduled pods %q", n, selector), 60*time.Second, func() (bool, error) {
		l, err := k.Client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, err
		}
		pods = pods[:0]
	next:
		for _, p := range l.Items {
			for _, uid := range except {
				if p.UID == uid {
					continue next
				}
			}
			if p.Spec.NodeName != "" && p.DeletionTimestamp == nil {
				pods = append(pods, p)
			}
		}
		return len(pods) == n, nil
	})
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
	return pods
}

// FinishTermination completes the deletion a controller started: once the
// pod is Terminating, it is removed for good (grace 0); returns when gone.
func (k *Kube) FinishTermination(t testing.TB, p corev1.Pod) {
	t.Helper()
	ctx := context.Background()
	zero := int64(0)
	k.WaitFor(t, "pod "+p.Name+" gone", 60*time.Second, func() (bool, error) {
		cur, err := k.Client.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil || cur.UID != p.UID {
			return true, nil
		}
		if cur.DeletionTimestamp != nil {
			_ = k.Client.CoreV1().Pods("default").Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &p.UID}})
		}
		return false, nil
	})
}

// ScaleStatefulSet sets the replicas of a StatefulSet.
func (k *Kube) ScaleStatefulSet(t testing.TB, name string, replicas int32) {
	t.Helper()
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas)
	if _, err := k.Client.AppsV1().StatefulSets("default").Patch(context.Background(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// StatefulSet is a minimal StatefulSet (label app=<name>, Parallel pod
// management, so every ordinal appears without a kubelet making pods Ready).
func StatefulSet(name string, replicas int32, ann map[string]string) *appsv1.StatefulSet {
	labels := map[string]string{"app": name}
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.StatefulSetSpec{
			Replicas: &replicas, ServiceName: name, PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: ann},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "db", Image: "db:v1"}}},
			},
		},
	}
}
