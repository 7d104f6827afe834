package testenv

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestKubeStatefulSet checks what kube-ipam relies on: StatefulSet pods
// carry the template's annotations, an owner reference and their ordinal,
// and get a node from the scheduler. The sub-test lets us check afterwards
// that its cleanups left no process behind.
func TestKubeStatefulSet(t *testing.T) {
	pids := map[int]string{}
	t.Run("cluster", func(t *testing.T) {
		k := StartKube(t, KubeOptions{ControllerManager: true, Scheduler: true})
		for _, p := range k.procs {
			pids[p.cmd.Process.Pid] = p.name
		}
		pids[k.Etcd.cmd.Process.Pid] = "etcd"
		k.AddNode(t, "node-a")
		k.AddNode(t, "node-b")

		labels := map[string]string{"app": "web"}
		sts, err := k.Client.AppsV1().StatefulSets("default").Create(t.Context(), &appsv1.StatefulSet{
			ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: appsv1.StatefulSetSpec{
				Replicas: new(int32(2)),
				// The default OrderedReady would wait forever for web-0 to be
				// Ready: there is no kubelet.
				PodManagementPolicy: appsv1.ParallelPodManagement,
				Selector:            &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{"kube-ipam.ip": "10.188.0.218"}},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}},
				},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}

		var pods []corev1.Pod
		k.WaitFor(t, "2 scheduled pods of StatefulSet web", time.Minute, func() (bool, error) {
			l, err := k.Client.CoreV1().Pods("default").List(t.Context(), metav1.ListOptions{LabelSelector: "app=web"})
			if err != nil {
				return false, err
			}
			pods = l.Items
			for _, p := range pods {
				if p.Spec.NodeName == "" {
					return false, nil
				}
			}
			return len(pods) == 2, nil
		})
		for _, p := range pods {
			if got := p.Annotations["kube-ipam.ip"]; got != "10.188.0.218" {
				t.Errorf("%s: annotation kube-ipam.ip = %q, want 10.188.0.218", p.Name, got)
			}
			if ref := metav1.GetControllerOf(&p); ref == nil || ref.Kind != "StatefulSet" || ref.Name != "web" || ref.UID != sts.UID {
				t.Errorf("%s: controller = %+v, want StatefulSet web %s", p.Name, ref, sts.UID)
			}
			if idx, ok := p.Labels[appsv1.PodIndexLabel]; !ok || p.Name != "web-"+idx {
				t.Errorf("%s: label %s = %q (present %v), want the ordinal", p.Name, appsv1.PodIndexLabel, idx, ok)
			}
			if !strings.HasPrefix(p.Spec.NodeName, "node-") {
				t.Errorf("%s: nodeName = %q, want one of the added nodes", p.Name, p.Spec.NodeName)
			}
			t.Logf("%s on %s", p.Name, p.Spec.NodeName)
		}
	})
	if len(pids) == 0 {
		t.Skip("control plane not started")
	}
	for pid, name := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s (pid %d) still exists after cleanup (kill 0: %v)", name, pid, err)
		}
	}
}
