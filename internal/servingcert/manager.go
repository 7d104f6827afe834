package servingcert

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// DefaultPeriod is how often a Manager re-reads the Secret by default.
const DefaultPeriod = time.Minute

// Manager keeps the Secret, the caBundle and the certificate this replica
// serves in step. Every replica runs one; the Secret is the one truth they
// share, and the API server's optimistic concurrency (create fails with
// AlreadyExists, update with Conflict) decides which replica's write wins.
type Manager struct {
	Client    kubernetes.Interface
	Namespace string // of the Secret and the Service
	Secret    string
	Service   string // the certificate covers Service, Service.Namespace, Service.Namespace.svc
	// WebhookConfiguration is the ValidatingWebhookConfiguration whose
	// webhooks' caBundle is set to the Secret's ca.crt; empty = none.
	WebhookConfiguration string

	// Lifetimes and stage time (Policy; zero = the defaults). Fields, not
	// flags: tests shorten them.
	CAValidity, LeafValidity, CAStage time.Duration
	Period                            time.Duration // re-read period; 0 = DefaultPeriod
	Log                               *slog.Logger
	Now                               func() time.Time // nil = time.Now

	serving atomic.Pointer[tls.Certificate]

	mu            sync.Mutex
	missingLogged bool // the webhook configuration's absence was logged
}

func (m *Manager) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

func (m *Manager) log() *slog.Logger {
	if m.Log != nil {
		return m.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (m *Manager) policy() Policy {
	return Policy{DNSNames: DNSNames(m.Service, m.Namespace),
		CAValidity: m.CAValidity, LeafValidity: m.LeafValidity, CAStage: m.CAStage}
}

// GetCertificate is tls.Config.GetCertificate: the serving certificate of
// the last successful Sync.
func (m *Manager) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := m.serving.Load(); c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("no serving certificate yet from Secret %s/%s", m.Namespace, m.Secret)
}

// Start syncs until the first success (so that the webhook has a
// certificate to serve), then keeps syncing every Period in the
// background until ctx ends. It returns ctx's error if ctx ends first.
func (m *Manager) Start(ctx context.Context) error {
	period := m.Period
	if period <= 0 {
		period = DefaultPeriod
	}
	retry := time.Second
	for {
		err := m.Sync(ctx)
		if err == nil {
			break
		}
		m.log().Error("webhook certificate: sync failed; retrying", "secret", m.Namespace+"/"+m.Secret, "in", retry, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(retry):
		}
		retry = min(2*retry, period)
	}
	go func() {
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := m.Sync(ctx); err != nil && ctx.Err() == nil {
					m.log().Error("webhook certificate: sync failed; serving the last certificate", "secret", m.Namespace+"/"+m.Secret, "err", err)
				}
			}
		}
	}()
	return nil
}

// Sync makes the Secret satisfy the policy (creating or renewing it when
// needed), copies its bundle into the webhook configuration's caBundle,
// then serves its certificate. The order matters: a certificate is served
// only once the caBundle trusts its CA (or there is no configuration yet),
// so that the API server never meets a CA it does not know.
func (m *Manager) Sync(ctx context.Context) error {
	sec, err := m.ensureSecret(ctx)
	if err != nil {
		return err
	}
	bundle := sec.Data[KeyCABundle]
	if err := m.patchCABundle(ctx, bundle); err != nil {
		// Keep serving what we serve; the API server trusts its CA.
		if m.serving.Load() != nil {
			return err
		}
		m.log().Error("webhook certificate: caBundle not updated; serving the Secret's certificate anyway (none served yet)", "err", err)
	}
	cert, err := tls.X509KeyPair(sec.Data[KeyCert], sec.Data[KeyKey])
	if err != nil { // ensureSecret just checked it: only a bug gets here
		return fmt.Errorf("Secret %s/%s: %w", m.Namespace, m.Secret, err)
	}
	if old := m.serving.Load(); old == nil || !equalChain(old, &cert) {
		if cert.Leaf == nil {
			cert.Leaf, _ = x509.ParseCertificate(cert.Certificate[0])
		}
		m.serving.Store(&cert)
		m.log().Info("webhook certificate: serving", "secret", m.Namespace+"/"+m.Secret,
			"serial", cert.Leaf.SerialNumber.Text(16), "notAfter", cert.Leaf.NotAfter.UTC().Format(time.RFC3339),
			"issuer", cert.Leaf.Issuer.CommonName)
	}
	return nil
}

func equalChain(a, b *tls.Certificate) bool {
	if len(a.Certificate) != len(b.Certificate) {
		return false
	}
	for i := range a.Certificate {
		if string(a.Certificate[i]) != string(b.Certificate[i]) {
			return false
		}
	}
	return true
}

// ensureSecret reads the Secret and, if it needs anything, writes the
// renewed content: create when absent, update guarded by the
// resourceVersion read. Losing a race (AlreadyExists, Conflict) means
// another replica wrote first: read and judge theirs.
func (m *Manager) ensureSecret(ctx context.Context) (*corev1.Secret, error) {
	secrets := m.Client.CoreV1().Secrets(m.Namespace)
	name := m.Namespace + "/" + m.Secret
	for attempt := 0; attempt < 5; attempt++ {
		now := m.now()
		sec, err := secrets.Get(ctx, m.Secret, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			data, err := Apply(nil, Plan{NewCA: true, NewLeaf: true}, m.policy(), now)
			if err != nil {
				return nil, err
			}
			sec = &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: m.Secret, Namespace: m.Namespace,
					Labels: map[string]string{"app.kubernetes.io/part-of": "kube-ipam", "app.kubernetes.io/component": "webhook"}},
				Type: corev1.SecretTypeTLS, Data: data,
			}
			created, err := secrets.Create(ctx, sec, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("creating Secret %s: %w", name, err)
			}
			m.log().Info("webhook certificate: created Secret with a new CA and serving certificate", "secret", name)
			return created, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading Secret %s: %w", name, err)
		}
		if sec.Type != corev1.SecretTypeTLS {
			// The type cannot be changed: replace the Secret, guarded by
			// the version we judged.
			m.log().Warn("webhook certificate: replacing Secret of the wrong type", "secret", name, "type", sec.Type, "want", corev1.SecretTypeTLS)
			err := secrets.Delete(ctx, m.Secret, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &sec.UID, ResourceVersion: &sec.ResourceVersion}})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				return nil, fmt.Errorf("deleting Secret %s of type %s: %w", name, sec.Type, err)
			}
			continue
		}
		plan := Assess(sec.Data, m.policy(), now)
		if !plan.Needed() {
			return sec, nil
		}
		data, err := Apply(sec.Data, plan, m.policy(), now)
		if err != nil {
			return nil, err
		}
		sec = sec.DeepCopy()
		sec.Data = data
		updated, err := secrets.Update(ctx, sec, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("updating Secret %s: %w", name, err)
		}
		m.log().Info("webhook certificate: renewed Secret", "secret", name, "reason", plan.Reason)
		return updated, nil
	}
	return nil, fmt.Errorf("Secret %s: still changing under us after 5 attempts", name)
}

// patchCABundle sets the caBundle of every webhook of the configuration to
// bundle, with a JSON patch of only the webhooks that differ (a "test" of
// each one's name guards against a concurrent reordering).
func (m *Manager) patchCABundle(ctx context.Context, bundle []byte) error {
	if m.WebhookConfiguration == "" {
		return nil
	}
	api := m.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	cfg, err := api.Get(ctx, m.WebhookConfiguration, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		m.mu.Lock()
		if !m.missingLogged {
			m.log().Info("webhook certificate: ValidatingWebhookConfiguration does not exist (yet); its caBundle will be set once it does",
				"configuration", m.WebhookConfiguration)
			m.missingLogged = true
		}
		m.mu.Unlock()
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading ValidatingWebhookConfiguration %s: %w", m.WebhookConfiguration, err)
	}
	m.mu.Lock()
	m.missingLogged = false
	m.mu.Unlock()
	ops := PatchOps(cfg.Webhooks, bundle)
	if len(ops) == 0 {
		return nil
	}
	body, err := json.Marshal(ops)
	if err != nil {
		return err
	}
	if _, err := api.Patch(ctx, m.WebhookConfiguration, types.JSONPatchType, body, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("patching the caBundle of ValidatingWebhookConfiguration %s: %w", m.WebhookConfiguration, err)
	}
	m.log().Info("webhook certificate: caBundle updated", "configuration", m.WebhookConfiguration, "webhooks", len(ops)/2)
	return nil
}

// PatchOp is one RFC 6902 operation.
type PatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// PatchOps is the JSON patch that sets the caBundle of every webhook whose
// caBundle differs from bundle; empty when all are equal.
func PatchOps(webhooks []admissionregv1.ValidatingWebhook, bundle []byte) []PatchOp {
	var ops []PatchOp
	for i, w := range webhooks {
		if string(w.ClientConfig.CABundle) == string(bundle) {
			continue
		}
		// "add" replaces an existing member and creates an absent one (an
		// empty caBundle is omitted from the object).
		ops = append(ops,
			PatchOp{Op: "test", Path: fmt.Sprintf("/webhooks/%d/name", i), Value: w.Name},
			PatchOp{Op: "add", Path: fmt.Sprintf("/webhooks/%d/clientConfig/caBundle", i), Value: base64.StdEncoding.EncodeToString(bundle)})
	}
	return ops
}
