package pod_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubeipam/internal/kubeapi"
	"kubeipam/internal/pod"
)

// The plugin's HTTP client against canned API answers: how each status is
// classified, that owner references become a StatefulSet identity, and that
// it asks for the pod's metadata only (the real API server's answer to that
// is TestPluginsReadPodMetadataOnly in internal/kubeapi).
func TestHTTPClientClassification(t *testing.T) {
	yes := true
	p := metav1.PartialObjectMetadata{
		TypeMeta: metav1.TypeMeta{Kind: "PartialObjectMetadata", APIVersion: "meta.k8s.io/v1"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "db", Name: "mysql-1", UID: "u1",
			Annotations:     map[string]string{pod.AnnotationIP: "10.188.0.219"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "mysql", UID: "sts-uid", Controller: &yes}}},
	}
	status := map[string]int{"mysql-1": 200, "missing": 404, "secret": 403, "busy": 503, "slow": 429, "odd": 409}
	var gotAuth, gotAccept string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth, gotAccept = r.Header.Get("Authorization"), r.Header.Get("Accept")
		name := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		code := status[name]
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		if code == 200 {
			_ = json.NewEncoder(w).Encode(p)
			return
		}
		_ = json.NewEncoder(w).Encode(metav1.Status{Status: "Failure", Message: fmt.Sprintf("status %d for %s", code, name), Code: int32(code)})
	}))
	defer srv.Close()
	kc := filepath.Join(t.TempDir(), "kc")
	_ = os.WriteFile(kc, []byte(fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: %q, insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: sekret}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n", srv.URL)), 0o600)
	c, err := pod.NewClient(kc, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Get(context.Background(), "db", "mysql-1")
	if err != nil {
		t.Fatal(err)
	}
	if gotAccept != kubeapi.MetadataAccept {
		t.Errorf("Accept %q, want the metadata only (%s)", gotAccept, kubeapi.MetadataAccept)
	}
	if info.UID != "u1" || info.Node != "" || info.StatefulSet != "mysql" || info.StatefulSetUID != "sts-uid" || info.Ordinal != 1 || info.Annotations[pod.AnnotationIP] != "10.188.0.219" {
		t.Fatalf("info %+v", info)
	}
	// client-go sends credentials over TLS only.
	if gotAuth != "Bearer sekret" {
		t.Fatalf("kubeconfig token not sent: %q", gotAuth)
	}
	for name, transient := range map[string]bool{"missing": false, "secret": false, "busy": true, "slow": true, "odd": false} {
		_, err := c.Get(context.Background(), "db", name)
		var tr *pod.TransientError
		var lk *pod.LookupError
		if errors.As(err, &tr) != transient || (!transient && !errors.As(err, &lk)) {
			t.Errorf("%s: %T %v, want transient=%v", name, err, err, transient)
		}
		if !strings.Contains(err.Error(), "db/"+name) {
			t.Errorf("%s: error does not name the pod: %v", name, err)
		}
	}
	srv.Close()
	var tr *pod.TransientError
	if _, err := c.Get(context.Background(), "db", "mysql-1"); !errors.As(err, &tr) {
		t.Fatalf("unreachable API: %T %v, want TransientError", err, err)
	}
}

func TestOrdinal(t *testing.T) {
	for _, c := range []struct {
		pod, sts, label string
		want            int
	}{{"web-3", "web", "", 3}, {"web-3", "web", "7", 7}, {"web-x", "web", "", -1}, {"other-1", "web", "", -1}, {"web-01", "web", "", 1}, {"web--1", "web", "", -1}} {
		if got := pod.Ordinal(c.pod, c.sts, c.label); got != c.want {
			t.Errorf("Ordinal(%q,%q,%q) = %d, want %d", c.pod, c.sts, c.label, got, c.want)
		}
	}
}
