package kubeapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"kubeipam/internal/kubeapi"
	"kubeipam/internal/meta"
	"kubeipam/internal/pod"
	"kubeipam/internal/testenv"
	"kubeipam/internal/tier"
)

// secretValue is the env value of the test pod: a marker no metadata
// carries, padded as a mounted certificate or token would be.
var secretValue = "S3CRET-ENV-VALUE-" + strings.Repeat("x", 64<<10)

// secretPod is a StatefulSet's pod (pod-index label, controller owner
// reference) with annotations and a large secret-like env value.
func secretPod(name string) *corev1.Pod {
	yes := true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default",
			Labels:          map[string]string{"tier": "db", pod.PodIndexLabel: "3"},
			Annotations:     map[string]string{pod.AnnotationIP: "10.188.0.218"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "db", UID: "sts-uid", Controller: &yes}}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox",
			Env: []corev1.EnvVar{{Name: "DB_PASSWORD", Value: secretValue}}}}},
	}
}

// exchange is one request and answer that crossed the recording proxy.
type exchange struct {
	method, path, accept, contentType string
	body                              []byte
}

// recorder is a TLS reverse proxy in front of the real kube-apiserver that
// keeps every answer's body: what crossed the wire to the client.
type recorder struct {
	mu  sync.Mutex
	log []exchange
	url string
}

func startRecorder(t *testing.T, k *testenv.Kube) *recorder {
	t.Helper()
	target, err := url.Parse(k.Server)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := rest.TransportFor(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = tr
	rp.ModifyResponse = func(resp *http.Response) error {
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			return err
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		r.mu.Lock()
		r.log = append(r.log, exchange{resp.Request.Method, resp.Request.URL.Path, resp.Request.Header.Get("Accept"), resp.Header.Get("Content-Type"), body})
		r.mu.Unlock()
		return nil
	}
	srv := httptest.NewTLSServer(rp)
	t.Cleanup(srv.Close)
	r.url = srv.URL
	return r
}

func (r *recorder) take() []exchange {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.log
	r.log = nil
	return l
}

// kubeconfig points at the recorder with the API server's token.
func (r *recorder) kubeconfig(t *testing.T, k *testenv.Kube) string {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	err := os.WriteFile(kc, []byte(fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: %q, insecure-skip-tls-verify: true}}]\n"+
		"users: [{name: u, user: {token: %q}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n", r.url, k.Token)), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

// Every read of a pod by a plugin (kube-ipam's pod lookup, kube-tier's and
// kube-multus's label reads, kube-multus's network-status patch) goes
// through the real kube-apiserver and receives the pod's metadata only:
// no answer that reaches the plugin carries the pod's env value, while a
// full GET through the same proxy does.
func TestPluginsReadPodMetadataOnly(t *testing.T) {
	k := testenv.StartKube(t, testenv.KubeOptions{})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	p, err := k.Client.CoreV1().Pods("default").Create(ctx, secretPod("db-3"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rec := startRecorder(t, k)
	kc := rec.kubeconfig(t, k)

	// kube-ipam
	pc, err := pod.NewClient(kc, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	info, err := pc.Get(ctx, "default", "db-3")
	if err != nil {
		t.Fatal(err)
	}
	if info.UID != string(p.UID) || info.StatefulSet != "db" || info.StatefulSetUID != "sts-uid" || info.Ordinal != 3 || info.Annotations[pod.AnnotationIP] != "10.188.0.218" {
		t.Errorf("kube-ipam's pod info %+v", info)
	}
	// kube-tier (and kube-multus's tier security)
	labels, err := tier.ReadLabels(ctx, kc, "default", "db-3", 10*time.Second)
	if err != nil || labels["tier"] != "db" {
		t.Errorf("kube-tier's labels %v, %v", labels, err)
	}
	// kube-multus
	kube, err := meta.NewKube(kc, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	mp, err := kube.Pod(ctx, "default", "db-3")
	if err != nil || mp.UID != string(p.UID) || mp.Labels["tier"] != "db" || mp.Annotations[pod.AnnotationIP] != "10.188.0.218" {
		t.Errorf("kube-multus's pod %+v, %v", mp, err)
	}
	if err := kube.SetNetworkStatus(ctx, "default", "db-3", string(p.UID), `[{"name":"x"}]`); err != nil {
		t.Fatal(err)
	}

	ex := rec.take()
	if len(ex) != 4 {
		t.Fatalf("%d answers crossed the proxy, want 4 (3 reads and a patch): %+v", len(ex), ex)
	}
	for _, e := range ex {
		if e.accept != kubeapi.MetadataAccept {
			t.Errorf("%s %s asked for %q, want %q", e.method, e.path, e.accept, kubeapi.MetadataAccept)
		}
		var m metav1.PartialObjectMetadata
		if err := json.Unmarshal(e.body, &m); err != nil || m.Kind != "PartialObjectMetadata" {
			t.Errorf("%s %s: answer %s (%v), want a PartialObjectMetadata", e.method, e.path, e.contentType, err)
		}
		// The env's name, not its value, is in metadata.managedFields.
		if bytes.Contains(e.body, []byte("S3CRET-ENV-VALUE")) {
			t.Errorf("%s %s: the answer carries the pod's env (%d bytes)", e.method, e.path, len(e.body))
		}
		t.Logf("%s %s: %d bytes, Content-Type %s", e.method, e.path, len(e.body), e.contentType)
	}

	// The recorder sees what a full GET (the plugins' read before) carries.
	c, err := kubeapi.NewClient(kc, "test", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Do(ctx, kubeapi.Request{Path: kubeapi.PodPath("default", "db-3")}); err != nil {
		t.Fatal(err)
	}
	if ex := rec.take(); len(ex) != 1 || !bytes.Contains(ex[0].body, []byte("S3CRET-ENV-VALUE")) {
		t.Fatalf("a full GET through the recorder: %d answers, want one carrying the env value", len(ex))
	}
}

// A pod that does not exist is a StatusError naming it (404), as before.
func TestPodMetadataNotFound(t *testing.T) {
	k := testenv.StartKube(t, testenv.KubeOptions{})
	c, err := kubeapi.NewClientForConfig(k.Config, "test", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.PodMetadata(t.Context(), "default", "gone")
	st, ok := err.(*kubeapi.StatusError)
	if !ok || st.Code != http.StatusNotFound || !strings.Contains(st.Msg, "gone") {
		t.Fatalf("PodMetadata(gone) = %T %v, want a 404 naming the pod", err, err)
	}
}

// BenchmarkPodRead compares the plugins' pod read before (full GET, decoded
// into a core/v1 Pod) and now (PodMetadata) against the real kube-apiserver,
// for an ordinary pod and for one with a 64 KiB env value; bytes/read is
// the answer's body size. Numbers: docs/performance.md.
func BenchmarkPodRead(b *testing.B) {
	k := testenv.StartKube(b, testenv.KubeOptions{})
	plain := secretPod("plain-0")
	plain.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}}
	for _, p := range []*corev1.Pod{plain, secretPod("env-0")} {
		if _, err := k.Client.CoreV1().Pods("default").Create(b.Context(), p, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	c, err := kubeapi.NewClientForConfig(k.Config, "bench", 10*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"plain-0", "env-0"} {
		b.Run(name+"/full", func(b *testing.B) {
			var n int
			for b.Loop() {
				resp, err := c.Do(b.Context(), kubeapi.Request{Path: kubeapi.PodPath("default", name)})
				if err != nil || resp.Code != http.StatusOK {
					b.Fatal(err, resp)
				}
				var p corev1.Pod
				if err := json.Unmarshal(resp.Body, &p); err != nil {
					b.Fatal(err)
				}
				n = len(resp.Body)
			}
			b.ReportMetric(float64(n), "bytes/read")
		})
		b.Run(name+"/metadata", func(b *testing.B) {
			// The same request as PodMetadata's, for its size.
			resp, err := c.Do(b.Context(), kubeapi.Request{Path: kubeapi.PodPath("default", name), Accept: kubeapi.MetadataAccept})
			if err != nil || resp.Code != http.StatusOK {
				b.Fatal(err, resp)
			}
			for b.Loop() {
				if _, err := c.PodMetadata(b.Context(), "default", name); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(resp.Body)), "bytes/read")
		})
	}
}
