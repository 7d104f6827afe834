package deploy

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"kubeipam/internal/servingcert"
)

// certManagerComponent switches the webhook's certificate from the
// controller's own (the default) to cert-manager's, relative to deploy/.
const certManagerComponent = "webhook/cert-manager"

// TestCertManagerComponent renders deploy/ with the cert-manager component:
// the controller reads the files of the Certificate's Secret, for the
// webhook Service's name, and cert-manager injects the CA.
func TestCertManagerComponent(t *testing.T) {
	checkFilesUsed(t, certManagerComponent, readKustomization(t, filepath.Join(deployDir(t), certManagerComponent)))
	_, ds := renderWith(t, certManagerComponent)
	find := func(kind, name string, obj any) {
		t.Helper()
		for _, d := range ds {
			if d.kind == kind && d.name == name {
				if err := yaml.Unmarshal(d.raw, obj); err != nil {
					t.Fatal(err)
				}
				return
			}
		}
		t.Fatalf("rendered install has no %s %s", kind, name)
	}
	var dep appsv1.Deployment
	find("Deployment", "kube-ipam-controller", &dep)
	var cert unstructured.Unstructured
	find("Certificate", "kube-ipam-webhook", &cert.Object)
	var vwc admissionregv1.ValidatingWebhookConfiguration
	find("ValidatingWebhookConfiguration", "kube-ipam", &vwc)
	var svc corev1.Service
	find("Service", "kube-ipam-webhook", &svc)

	args := dep.Spec.Template.Spec.Containers[0].Args
	if last := args[len(args)-1]; last != "--webhook-cert-secret=" {
		t.Errorf("last controller arg %q: want the self-managed mode switched off", last)
	}
	for _, a := range args {
		if strings.HasPrefix(a, "--webhook-cert=") || strings.HasPrefix(a, "--webhook-key=") {
			t.Errorf("arg %q: the component relies on the default paths", a)
		}
	}
	secretName, _, _ := unstructured.NestedString(cert.Object, "spec", "secretName")
	for _, f := range []string{"/etc/kube-ipam/webhook/tls.crt", "/etc/kube-ipam/webhook/tls.key"} { // the flags' defaults
		m, v := mountFor(t, dep.Spec.Template.Spec, 0, f)
		if v.Secret == nil || v.Secret.SecretName != secretName || filepath.Join(m.MountPath, filepath.Base(f)) != f {
			t.Errorf("%s is not mounted from the Certificate's Secret %q: %+v", f, secretName, v.VolumeSource)
		}
	}
	dns, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
	if cert.GetNamespace() != svc.Namespace || !slices.Contains(dns, svc.Name+"."+svc.Namespace+".svc") {
		t.Errorf("Certificate %s/%s dnsNames %q; Service %s/%s", cert.GetNamespace(), cert.GetName(), dns, svc.Namespace, svc.Name)
	}
	if inj := vwc.Annotations["cert-manager.io/inject-ca-from"]; inj != cert.GetNamespace()+"/"+cert.GetName() {
		t.Errorf("inject-ca-from %q", inj)
	}
}

// selfManagedCert applies the webhook configuration, runs the controller's
// certificate manager once as the controller's ServiceAccount (with
// rbac.yaml's permissions only), and checks that re-applying the
// configuration, client-side or server-side, keeps the caBundle it set.
func selfManagedCert(t *testing.T, k *kube, dir string) {
	ctx := t.Context()
	vwcFile := filepath.Join(dir, "webhook", "validatingwebhookconfiguration.yaml")
	k.must(t, "apply", "--server-side", "-f", vwcFile)
	t.Cleanup(func() {
		_ = k.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(t.Context(), "kube-ipam", metav1.DeleteOptions{})
	})
	sa := rest.CopyConfig(k.Config)
	sa.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:kube-ipam:kube-ipam-controller"}
	cs, err := kubernetes.NewForConfig(sa)
	if err != nil {
		t.Fatal(err)
	}
	m := &servingcert.Manager{Client: cs, Namespace: "kube-ipam", Secret: "kube-ipam-webhook-tls", Service: "kube-ipam-webhook", WebhookConfiguration: "kube-ipam"}
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := k.Client.CoreV1().Secrets("kube-ipam").Get(ctx, "kube-ipam-webhook-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if s.Type != corev1.SecretTypeTLS || !roots.AppendCertsFromPEM(s.Data["ca.crt"]) {
		t.Fatalf("Secret type %s, ca.crt %q", s.Type, s.Data["ca.crt"])
	}
	blk, _ := pem.Decode(s.Data["tls.crt"])
	if blk == nil {
		t.Fatal("Secret has no tls.crt")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "kube-ipam-webhook.kube-ipam.svc", Roots: roots}); err != nil {
		t.Errorf("serving certificate: %v", err)
	}
	caBundle := func() []byte {
		t.Helper()
		w, err := k.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "kube-ipam", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return w.Webhooks[0].ClientConfig.CABundle
	}
	if !bytes.Equal(caBundle(), s.Data["ca.crt"]) {
		t.Fatal("caBundle is not the Secret's ca.crt")
	}
	for _, args := range [][]string{{"apply", "--server-side", "-f", vwcFile}, {"apply", "--server-side", "--force-conflicts", "-f", vwcFile}} {
		k.must(t, args...)
		if !bytes.Equal(caBundle(), s.Data["ca.crt"]) {
			t.Errorf("kubectl %s reset the caBundle", strings.Join(args, " "))
		}
	}
	// kubectl apply -k deploy/ (client-side) as users run it.
	k.must(t, "apply", "-f", vwcFile)
	k.must(t, "apply", "-f", vwcFile)
	if !bytes.Equal(caBundle(), s.Data["ca.crt"]) {
		t.Error("client-side kubectl apply reset the caBundle")
	}
}
