package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"kubeipam/internal/config"
	"kubeipam/internal/servingcert"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
	"kubeipam/internal/webhook"
)

const (
	ns         = "kube-ipam"
	secretName = "kube-ipam-webhook-tls"
	service    = "kube-ipam-webhook"
)

// syncBuffer is a log sink shared by goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// replica is one controller replica's webhook: a certificate manager and
// the webhook server serving its certificate.
type replica struct {
	m    *servingcert.Manager
	port int
	logs *syncBuffer
}

// startReplica runs a manager (as the controller's ServiceAccount, with
// deploy/rbac.yaml's permissions) and a webhook server on 127.0.0.1.
func startReplica(t *testing.T, cs kubernetes.Interface, h *webhook.Handler, tune func(*servingcert.Manager)) (*replica, func() error) {
	t.Helper()
	r := &replica{logs: &syncBuffer{}}
	r.m = &servingcert.Manager{Client: cs, Namespace: ns, Secret: secretName, Service: service,
		WebhookConfiguration: "kube-ipam", Period: 100 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(r.logs, nil))}
	if tune != nil {
		tune(r.m)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.port = l.Addr().(*net.TCPAddr).Port
	srv := webhook.NewServer("", h)
	go func() { _ = srv.ServeTLSWith(l, r.m.GetCertificate) }()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = srv.Shutdown(sctx)
		if t.Failed() {
			t.Logf("replica on port %d log:\n%s", r.port, r.logs.String())
		}
	})
	return r, func() error { return r.m.Start(ctx) }
}

// served is the certificate a real TLS handshake with the replica gets,
// verified against roots for the Service's name.
func (r *replica) served(roots *x509.CertPool) (*x509.Certificate, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", r.port),
		&tls.Config{RootCAs: roots, ServerName: service + "." + ns + ".svc"})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

func kubectl(t *testing.T, k *testenv.Kube, args ...string) {
	t.Helper()
	out, err := exec.Command(testenv.KubeBinary(t, "kubectl"), append([]string{"--kubeconfig", k.Kubeconfig}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestSelfManagedCertificate: the controller's certificate manager makes
// the Secret, the caBundle and the served certificate, and the real API
// server then calls the webhook through the shipped configuration's
// Service reference, over TLS with that CA, through rotations.
func TestSelfManagedCertificate(t *testing.T) {
	k := testenv.StartKube(t, testenv.KubeOptions{})
	e := testenv.StartEtcd(t)
	nets, err := config.ParseNetworks([]byte(fmt.Sprintf(`{"cniVersion": "0.3.1", "name": "k8snet", "type": "macvlan",
	  "ipam": {"type": "kube-ipam", "etcdConfig": {"etcdURL": %q}, "subnet": "10.10.0.0/16",
	           "rangeStart": "10.10.0.10", "rangeEnd": "10.10.0.200", "gateway": "10.10.0.1"}}`, e.Endpoints[0])), "test")
	if err != nil {
		t.Fatal(err)
	}
	lookup := webhook.NewBackendLookup(2 * time.Second)
	t.Cleanup(func() { lookup.Close() })
	h := webhook.NewHandler(nets, lookup.Lookup, time.Now)
	ctx, c := t.Context(), k.Client

	// The shipped namespace and RBAC; the managers act as the controller's
	// ServiceAccount, so a missing permission fails this test.
	root := testenv.ModuleRoot(t)
	kubectl(t, k, "apply", "-f", filepath.Join(root, "deploy", "namespace.yaml"), "-f", filepath.Join(root, "deploy", "rbac.yaml"))
	sa := rest.CopyConfig(k.Config)
	sa.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:kube-ipam:kube-ipam-controller"}
	saClient, err := kubernetes.NewForConfig(sa)
	if err != nil {
		t.Fatal(err)
	}

	// Two replicas at once, with short lifetimes: the leaf (8s) is renewed
	// every ~5s, the CA (45s) staged at 30s and promoted 5s later (the API
	// server reloads a changed configuration well within that, even on a
	// loaded machine).
	short := func(m *servingcert.Manager) {
		m.LeafValidity, m.CAValidity, m.CAStage = 8*time.Second, 45*time.Second, 5*time.Second
	}
	a, startA := startReplica(t, saClient, h, short)
	b, startB := startReplica(t, saClient, h, short)

	// The shipped configuration, as the install applies it (empty
	// caBundle), pointed at replica a: an ExternalName Service resolving to
	// 127.0.0.1 stands in for the Service, and the configuration's port is
	// a's. The API server verifies the name <service>.<ns>.svc.
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "webhook", "validatingwebhookconfiguration.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg admissionregv1.ValidatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	ref := cfg.Webhooks[0].ClientConfig.Service
	if ref == nil || ref.Name != service || ref.Namespace != ns || len(cfg.Webhooks[0].ClientConfig.CABundle) != 0 || len(cfg.Annotations) != 0 {
		t.Fatalf("shipped webhook configuration: clientConfig %+v, annotations %v", cfg.Webhooks[0].ClientConfig, cfg.Annotations)
	}
	ref.Port = ptr(int32(a.port))
	if _, err := c.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: service},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "127.0.0.1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Start both before the configuration exists: they log it and set the
	// caBundle once it does.
	errs := make(chan error, 2)
	go func() { errs <- startA() }()
	go func() { errs <- startB() }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if !strings.Contains(a.logs.String()+b.logs.String(), "ValidatingWebhookConfiguration does not exist (yet)") {
		t.Error("no replica logged the missing webhook configuration")
	}
	if _, err := c.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, &cfg, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	secret := func() *corev1.Secret {
		t.Helper()
		s, err := c.CoreV1().Secrets(ns).Get(ctx, secretName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	pool := func(pem []byte) *x509.CertPool {
		p := x509.NewCertPool()
		if !p.AppendCertsFromPEM(pem) {
			t.Fatalf("no certificate in bundle %q", pem)
		}
		return p
	}

	t.Run("two replicas: one Secret, the same CA, the caBundle", func(t *testing.T) {
		s := secret()
		if s.Type != corev1.SecretTypeTLS {
			t.Errorf("Secret type %s", s.Type)
		}
		created := strings.Count(a.logs.String()+b.logs.String(), "created Secret")
		if created != 1 {
			t.Errorf("%d replicas say they created the Secret, want 1", created)
		}
		roots := pool(s.Data[servingcert.KeyCABundle])
		for _, r := range []*replica{a, b} {
			if _, err := r.served(roots); err != nil {
				t.Errorf("replica on %d: %v", r.port, err)
			}
		}
		k.WaitFor(t, "the caBundle to be the Secret's ca.crt", 10*time.Second, func() (bool, error) {
			got, err := c.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "kube-ipam", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return bytes.Equal(got.Webhooks[0].ClientConfig.CABundle, secret().Data[servingcert.KeyCABundle]), nil
		})
	})

	// 10.10.0.77 is held by pod other/holder.
	st := store.New(e.Client(t), nets[0].Etcd.Prefix, nets[0].Name)
	ok, err := st.Commit(ctx, &store.Claim{Attachment: store.Attachment{ContainerID: "c-holder", IfName: "eth0"},
		Items: []store.ClaimItem{{Mode: store.ClaimFresh, Record: store.Record{Network: nets[0].Name, IP: "10.10.0.77",
			Kind: store.KindFixed, IfName: "eth0", ContainerID: "c-holder", Created: time.Now(),
			PodNamespace: "other", PodName: "holder", Node: "node-1"}}}})
	if err != nil || !ok {
		t.Fatalf("seeding: ok=%v err=%v", ok, err)
	}
	pods := c.CoreV1().Pods("default")
	var n atomic.Int64
	// call has the API server call the webhook: a pod asking for the held
	// address must be refused by the webhook, naming the holder (any TLS
	// or connection failure shows as "failed calling webhook" instead).
	call := func() error {
		name := fmt.Sprintf("conflict-%d", n.Add(1))
		_, err := pods.Create(ctx, pod(name, map[string]string{"kube-ipam.ip": "10.10.0.77"}), metav1.CreateOptions{})
		if err == nil {
			return fmt.Errorf("pod %s admitted", name)
		}
		if !strings.Contains(err.Error(), `denied the request`) || !strings.Contains(err.Error(), "held on network \"k8snet\" by pod other/holder") {
			return err
		}
		return nil
	}

	t.Run("the API server calls the webhook with the managed CA", func(t *testing.T) {
		// The API server reloads webhook configurations asynchronously.
		k.WaitFor(t, "the API server to call the webhook", 30*time.Second, func() (bool, error) {
			err := call()
			return err == nil, err
		})
	})

	t.Run("rotation without restart, calls succeeding throughout", func(t *testing.T) {
		firstCA := secret().Data[servingcert.KeyCABundle]
		var callErrs []string
		serials, issuers := map[string]bool{}, map[string]bool{}
		k.WaitFor(t, "two leaf renewals and a CA promotion served by replica b", 90*time.Second, func() (bool, error) {
			if err := call(); err != nil {
				callErrs = append(callErrs, err.Error())
			}
			// What b really serves, verified against the bundle the
			// API server has been given.
			got, err := c.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "kube-ipam", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			leaf, err := b.served(pool(got.Webhooks[0].ClientConfig.CABundle))
			if err != nil {
				return false, err
			}
			serials[leaf.SerialNumber.String()] = true
			issuers[leaf.Issuer.CommonName] = true
			return len(serials) >= 3 && len(issuers) >= 2, nil
		})
		if len(callErrs) > 0 {
			t.Errorf("%d of %d API server calls failed during rotation, first: %s; last: %s", len(callErrs), n.Load(), callErrs[0], callErrs[len(callErrs)-1])
		}
		if bytes.Equal(firstCA, secret().Data[servingcert.KeyCABundle]) {
			t.Error("the CA bundle never changed")
		}
		for _, w := range []string{"staging its successor", "signs from now on", "less than a third of its life left"} {
			if !strings.Contains(a.logs.String()+b.logs.String(), w) {
				t.Errorf("no replica logged %q", w)
			}
		}
	})

	t.Run("a tampered Secret is replaced, with the reason", func(t *testing.T) {
		s := secret()
		s.Data[servingcert.KeyCABundle] = []byte("garbage")
		s.Data[servingcert.KeyCAKey] = []byte("garbage")
		if _, err := c.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		k.WaitFor(t, "a replica to replace the garbage", 10*time.Second, func() (bool, error) {
			return strings.Contains(a.logs.String()+b.logs.String(), "ca.crt: not PEM"), nil
		})
		// A Secret of another type (its type cannot be updated) is
		// deleted and created again.
		if err := c.CoreV1().Secrets(ns).Delete(ctx, secretName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err := c.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secretName},
			Data: map[string][]byte{"x": []byte("y")}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		k.WaitFor(t, "the Opaque Secret to be replaced", 10*time.Second, func() (bool, error) {
			s, err := c.CoreV1().Secrets(ns).Get(ctx, secretName, metav1.GetOptions{})
			return err == nil && s.Type == corev1.SecretTypeTLS, err
		})
		if !strings.Contains(a.logs.String()+b.logs.String(), "replacing Secret of the wrong type") {
			t.Error("the replacement of the Opaque Secret was not logged")
		}
		// Both replicas still serve, and the API server's calls succeed
		// again once it has the new caBundle.
		k.WaitFor(t, "the API server to call the webhook with the new CA", 30*time.Second, func() (bool, error) {
			err := call()
			return err == nil, err
		})
		roots := pool(secret().Data[servingcert.KeyCABundle])
		k.WaitFor(t, "both replicas to serve the new CA's certificate", 10*time.Second, func() (bool, error) {
			for _, r := range []*replica{a, b} {
				if _, err := r.served(roots); err != nil {
					return false, err
				}
			}
			return true, nil
		})
	})
}
