// Package webhook runs kube-ipam's validating admission webhook behind a
// real kube-apiserver v1.37.2: the API server calls it over TLS for Pods,
// Deployments and StatefulSets, and the test checks what kubectl users see.
package webhook

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"kubeipam/internal/config"
	"kubeipam/internal/pki"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
	"kubeipam/internal/webhook"
)

// certs returns a CA (PEM) and a serving certificate for 127.0.0.1 it signed.
func certs(t *testing.T) ([]byte, tls.Certificate) {
	t.Helper()
	ca, err := pki.NewCA("kube-ipam-webhook-test-ca", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue(pki.Leaf{CN: "127.0.0.1", IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	return ca.CertPEM, srv.TLS()
}

func ptr[T any](v T) *T { return &v }

func pod(name string, ann map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}}}
}

func podTemplate(app string, ann map[string]string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}, Annotations: ann},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}}}
}

func statefulSet(name string, replicas int32, ann map[string]string) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: appsv1.StatefulSetSpec{
		Replicas: ptr(replicas), ServiceName: name, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
		Template: podTemplate(name, ann)}}
}

func denied(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("admitted, want a denial containing %q", want)
	}
	msg := err.Error()
	if !strings.Contains(msg, `admission webhook "validate.kube-ipam.io" denied the request`) {
		t.Errorf("error %q is not the webhook's denial", msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q lacks %q", msg, w)
		}
	}
}

func TestWebhookBehindAPIServer(t *testing.T) {
	k := testenv.StartKube(t, testenv.KubeOptions{})
	e := testenv.StartEtcd(t) // kube-ipam's own etcd
	nets, err := config.ParseNetworks([]byte(fmt.Sprintf(`{"cniVersion": "0.3.1", "name": "k8snet", "type": "macvlan",
	  "ipam": {"type": "kube-ipam", "etcdConfig": {"etcdURL": %q}, "subnet": "10.10.0.0/16",
	           "rangeStart": "10.10.0.10", "rangeEnd": "10.10.0.200", "gateway": "10.10.0.1"}}`, e.Endpoints[0])), "test")
	if err != nil {
		t.Fatal(err)
	}
	lookup := webhook.NewBackendLookup(2 * time.Second)
	t.Cleanup(func() { lookup.Close() })
	h := webhook.NewHandler(nets, lookup.Lookup, time.Now)

	caPEM, cert := certs(t)
	mux := http.NewServeMux()
	var calls atomic.Int64
	mux.Handle(webhook.Path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		h.ServeHTTP(w, r)
	}))
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	url := "https://" + srv.Listener.Addr().String() + webhook.Path

	ctx := t.Context()
	c := k.Client
	// The shipped manifest, pointed at the test's server: its rules,
	// namespaceSelector and matchConditions (CEL) are what the API server
	// really evaluates here.
	raw, err := os.ReadFile(filepath.Join(testenv.ModuleRoot(t), "deploy", "webhook", "validatingwebhookconfiguration.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg admissionregv1.ValidatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	wh := &cfg.Webhooks[0]
	if wh.Name != "validate.kube-ipam.io" || *wh.FailurePolicy != admissionregv1.Fail || *wh.SideEffects != admissionregv1.SideEffectClassNone ||
		*wh.TimeoutSeconds != 5 || len(wh.AdmissionReviewVersions) != 1 || wh.AdmissionReviewVersions[0] != "v1" {
		t.Fatalf("manifest webhook %+v", wh)
	}
	wh.ClientConfig = admissionregv1.WebhookClientConfig{URL: &url, CABundle: caPEM}
	_, err = c.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, &cfg, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// The API server picks the configuration up asynchronously: poll with a
	// malformed pod until it is rejected.
	pods := c.CoreV1().Pods("default")
	n := 0
	k.WaitFor(t, "the webhook to take effect", 30*time.Second, func() (bool, error) {
		n++
		_, err := pods.Create(ctx, pod(fmt.Sprintf("probe-%d", n), map[string]string{"kube-ipam.ip": "bogus"}), metav1.CreateOptions{})
		if err == nil {
			return false, nil
		}
		return strings.Contains(err.Error(), "denied the request"), nil
	})

	t.Run("malformed pod annotation", func(t *testing.T) {
		_, err := pods.Create(ctx, pod("bad", map[string]string{"kube-ipam.ip": "10.10.1.300"}), metav1.CreateOptions{})
		denied(t, err, `kube-ipam: Pod default/bad: annotation kube-ipam.ip="10.10.1.300"`, "not an IP address")
	})
	t.Run("pod outside the subnet", func(t *testing.T) {
		_, err := pods.Create(ctx, pod("far", map[string]string{"kube-ipam.ip": "192.168.7.7"}), metav1.CreateOptions{})
		denied(t, err, `annotation kube-ipam.ip="192.168.7.7"`, "outside every subnet")
	})

	// 10.10.0.77 is held by pod other/holder, as the plugin would record it.
	st := store.New(e.Client(t), nets[0].Etcd.Prefix, nets[0].Name)
	claim := func(ip string, rec store.Record) {
		t.Helper()
		rec.Network, rec.IP, rec.Kind, rec.IfName, rec.ContainerID, rec.Created = nets[0].Name, ip, store.KindFixed, "eth0", "c-"+ip, time.Now()
		ok, err := st.Commit(ctx, &store.Claim{Attachment: store.Attachment{ContainerID: rec.ContainerID, IfName: "eth0"},
			Items: []store.ClaimItem{{Record: rec, Mode: store.ClaimFresh}}})
		if err != nil || !ok {
			t.Fatalf("seeding %s: ok=%v err=%v", ip, ok, err)
		}
	}
	claim("10.10.0.77", store.Record{PodNamespace: "other", PodName: "holder", Node: "node-1"})

	sts := c.AppsV1().StatefulSets("default")
	t.Run("conflicting statefulset", func(t *testing.T) {
		_, err := sts.Create(ctx, statefulSet("db", 2, map[string]string{"kube-ipam.ip-pool": "10.10.0.76,10.10.0.77"}), metav1.CreateOptions{})
		denied(t, err, `kube-ipam: pod template of StatefulSet default/db: annotation kube-ipam.ip-pool="10.10.0.76,10.10.0.77"`,
			`10.10.0.77 (entry for ordinal 1) is already held on network "k8snet" by pod other/holder`)
	})
	t.Run("valid statefulset, and its own pods' addresses", func(t *testing.T) {
		web, err := sts.Create(ctx, statefulSet("web", 2, map[string]string{"kube-ipam.ip-pool": "10.10.0.80,10.10.0.81"}), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("valid StatefulSet rejected: %v", err)
		}
		// web-1 got its address; an update of web keeps passing, another
		// StatefulSet asking for it does not.
		claim("10.10.0.81", store.Record{PodNamespace: "default", PodName: "web-1", StatefulSet: "web", StatefulSetUID: string(web.UID), Ordinal: 1})
		web.Spec.Template.Annotations["kube-ipam.netmask"] = "16"
		if _, err := sts.Update(ctx, web, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("update of the holder's own StatefulSet rejected: %v", err)
		}
		_, err = sts.Create(ctx, statefulSet("web2", 1, map[string]string{"kube-ipam.ip-pool": "10.10.0.81"}), metav1.CreateOptions{})
		denied(t, err, "10.10.0.81 (entry for ordinal 0) is already held", "StatefulSet default/web ordinal 1")
	})
	t.Run("deployment with a fixed address and 3 replicas", func(t *testing.T) {
		_, err := c.AppsV1().Deployments("default").Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "api"},
			Spec: appsv1.DeploymentSpec{Replicas: ptr(int32(3)), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}},
				Template: podTemplate("api", map[string]string{"kube-ipam.ip": "10.10.0.90"})}}, metav1.CreateOptions{})
		denied(t, err, "all 3 replicas would ask for the same fixed address")
	})
	t.Run("pods without kube-ipam annotations are not sent", func(t *testing.T) {
		before := calls.Load()
		if _, err := pods.Create(ctx, pod("plain", map[string]string{"other": "x"}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if n := calls.Load(); n != before {
			t.Fatalf("the webhook was called %d times for a pod without kube-ipam annotations", n-before)
		}
	})
	t.Run("valid pod", func(t *testing.T) {
		if _, err := pods.Create(ctx, pod("good", map[string]string{"kube-ipam.ip": "10.10.0.91"}), metav1.CreateOptions{}); err != nil {
			t.Fatalf("valid pod rejected: %v", err)
		}
	})
}
