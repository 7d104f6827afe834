package deploy

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"kubeipam/internal/install"
	"kubeipam/internal/pki"
	"kubeipam/internal/pod"
	"kubeipam/internal/testenv"
	"kubeipam/internal/tier"
)

// kube is a real control plane and its real kubectl.
type kube struct {
	*testenv.Kube
	kubectl, cacheDir string
}

// run runs kubectl against the test's API server; the discovery cache goes
// to a temp dir, never to $HOME.
func (k *kube) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, k.kubectl, append([]string{"--kubeconfig", k.Kubeconfig, "--cache-dir", k.cacheDir}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (k *kube) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := k.run(t, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func startKube(t *testing.T) *kube {
	t.Helper()
	kubectl := testenv.KubeBinary(t, "kubectl")
	return &kube{Kube: testenv.StartKube(t, testenv.KubeOptions{}), kubectl: kubectl, cacheDir: t.TempDir()}
}

// certManagerCRDs stands in for cert-manager's CRDs, so that
// webhook/cert-manager/certificate.yaml is dry-run like the rest: names, namespace and
// metadata are checked by the API server; the spec is cert-manager's to
// validate (its own schema is not vendored here).
const certManagerCRDs = `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: issuers.cert-manager.io
spec:
  group: cert-manager.io
  scope: Namespaced
  names: {plural: issuers, singular: issuer, kind: Issuer, listKind: IssuerList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: certificates.cert-manager.io
spec:
  group: cert-manager.io
  scope: Namespaced
  names: {plural: certificates, singular: certificate, kind: Certificate, listKind: CertificateList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
`

// TestManifestsAgainstAPIServer dry-runs every YAML file under deploy/ with
// the real kubectl against a real kube-apiserver v1.37.2 (server-side apply:
// schema, defaulting, validation and admission, including Pod Security on the
// namespace), then applies the RBAC for real and checks what each
// ServiceAccount may do, and that the installer's kubeconfig really works
// with exactly that.
func TestManifestsAgainstAPIServer(t *testing.T) {
	k := startKube(t)
	dir := deployDir(t)
	// Namespaced dry-runs need the namespace to exist.
	k.must(t, "apply", "--server-side", "-f", filepath.Join(dir, "namespace.yaml"))
	crds := filepath.Join(t.TempDir(), "cert-manager-crds.yaml")
	if err := os.WriteFile(crds, []byte(certManagerCRDs), 0o644); err != nil {
		t.Fatal(err)
	}
	k.must(t, "apply", "--server-side", "-f", crds)
	// The NetworkAttachmentDefinitions of examples/ need theirs (applied
	// again below: the same object, no conflict).
	k.must(t, "apply", "--server-side", "-f", filepath.Join(dir, "crds", "network-attachment-definitions.yaml"))
	k.must(t, "wait", "--for=condition=Established", "--timeout=60s", "crd/issuers.cert-manager.io", "crd/certificates.cert-manager.io",
		"crd/network-attachment-definitions.k8s.cni.cncf.io")

	t.Run("dry-run", func(t *testing.T) {
		patches := allComponentPatches(t)
		for _, rel := range manifests(t) {
			if slices.Contains(patches, rel) {
				continue // part of the component's install below
			}
			t.Run(rel, func(t *testing.T) {
				p := filepath.Join(dir, rel)
				args := []string{"apply", "--server-side", "--dry-run=server", "--field-manager=kube-ipam-test"}
				switch rel {
				case "kustomization.yaml":
					args = append(args, "-k", dir)
				case component + "/kustomization.yaml":
					// A Component: the install with it, as users apply it.
					overlay, _ := renderWithComponent(t)
					args = append(args, "-k", overlay)
				case certManagerComponent + "/kustomization.yaml":
					overlay, _ := renderWith(t, certManagerComponent)
					args = append(args, "-k", overlay)
				default:
					if c, ok := modeComponent(rel); ok {
						overlay, _ := renderWith(t, c)
						args = append(args, "-k", overlay)
						break
					}
					args = append(args, "-f", p)
				}
				out, err := k.run(t, args...)
				if err != nil {
					t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
				}
				n := strings.Count(out, "(server dry run)")
				if want := expectedObjects(t, rel); n != want {
					t.Errorf("kubectl dry-ran %d objects, want %d:\n%s", n, want, out)
				}
			})
		}
	})

	// The pods the DaemonSet and the Deployment would create pass pod
	// admission in namespace kube-ipam: Pod Security (hostNetwork, hostPath,
	// root need the namespace's "privileged" level) and the Priority
	// admission of system-node-critical outside kube-system.
	t.Run("pod templates admitted", func(t *testing.T) {
		var ds appsv1.DaemonSet
		decode(t, filepath.Join(dir, "daemonset.yaml"), "DaemonSet", "kube-ipam-node", &ds)
		var dep appsv1.Deployment
		decode(t, filepath.Join(dir, "controller.yaml"), "Deployment", "kube-ipam-controller", &dep)
		for name, tmpl := range map[string]corev1.PodTemplateSpec{"kube-ipam-node-x": ds.Spec.Template, "kube-ipam-controller-x": dep.Spec.Template} {
			p := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
			p.Name, p.Namespace = name, "kube-ipam"
			got, err := k.Client.CoreV1().Pods("kube-ipam").Create(t.Context(), p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err != nil {
				t.Errorf("pod of %s: %v", name, err)
				continue
			}
			if got.Spec.Priority == nil {
				t.Errorf("pod of %s: no priority resolved", name)
			}
		}
	})

	// RBAC for real (with the Kubernetes store's, and its CRDs), then ask
	// the authorizer.
	k.must(t, "apply", "--server-side", "-f", filepath.Join(dir, "rbac.yaml"), "-f", filepath.Join(dir, component, "rbac.yaml"))
	k.must(t, "apply", "--server-side", "-k", filepath.Join(dir, crdsDir))
	k.must(t, "apply", "--server-side", "-f", filepath.Join(dir, "crds", "network-attachment-definitions.yaml"))
	k.must(t, "wait", "--for=condition=Established", "--timeout=60s", "crd/ipallocations.ipam.kube-ipam.io", "crd/ipstickies.ipam.kube-ipam.io",
		"crd/network-attachment-definitions.k8s.cni.cncf.io")
	t.Run("can-i", func(t *testing.T) {
		const plugin, ctrl = "system:serviceaccount:kube-ipam:kube-ipam-plugin", "system:serviceaccount:kube-ipam:kube-ipam-controller"
		for _, c := range []struct {
			as   string
			args []string
			want bool
		}{
			{plugin, []string{"get", "pods", "-n", "default"}, true},
			{plugin, []string{"get", "pods", "-n", "db"}, true},
			{plugin, []string{"list", "pods", "-n", "default"}, false},
			{plugin, []string{"watch", "pods", "--all-namespaces"}, false},
			{plugin, []string{"update", "pods", "-n", "default"}, false},
			{plugin, []string{"get", "secrets", "-n", "kube-ipam"}, false},
			{plugin, []string{"get", "secrets", "-n", "default"}, false},
			{plugin, []string{"get", "statefulsets.apps", "-n", "default"}, false},
			{plugin, []string{"get", "nodes"}, false},
			// kube-multus, Kubernetes mode (kube-ipam-multus).
			{plugin, []string{"get", "network-attachment-definitions.k8s.cni.cncf.io/db-net", "-n", "db"}, true},
			{plugin, []string{"list", "network-attachment-definitions.k8s.cni.cncf.io", "-n", "db"}, false},
			{plugin, []string{"patch", "pods", "--subresource=status", "-n", "db"}, true},
			{plugin, []string{"patch", "pods", "-n", "db"}, false},
			{plugin, []string{"create", "events", "-n", "db"}, true},
			{plugin, []string{"delete", "events", "-n", "db"}, false},
			{ctrl, []string{"list", "pods", "--all-namespaces"}, true},
			{ctrl, []string{"watch", "pods", "--all-namespaces"}, true},
			{ctrl, []string{"get", "pods", "-n", "default"}, true},
			{ctrl, []string{"delete", "pods", "-n", "default"}, false},
			{ctrl, []string{"get", "statefulsets.apps", "-n", "default"}, true},
			{ctrl, []string{"list", "statefulsets.apps", "-n", "default"}, false},
			{ctrl, []string{"list", "network-attachment-definitions.k8s.cni.cncf.io", "--all-namespaces"}, true},
			{ctrl, []string{"watch", "network-attachment-definitions.k8s.cni.cncf.io", "--all-namespaces"}, false},
			{ctrl, []string{"get", "network-attachment-definitions.k8s.cni.cncf.io/db-net", "-n", "db"}, false},
			{ctrl, []string{"create", "leases.coordination.k8s.io", "-n", "kube-ipam"}, true},
			{ctrl, []string{"get", "leases.coordination.k8s.io/kube-ipam-controller", "-n", "kube-ipam"}, true},
			{ctrl, []string{"update", "leases.coordination.k8s.io/kube-ipam-controller", "-n", "kube-ipam"}, true},
			{ctrl, []string{"update", "leases.coordination.k8s.io/kube-controller-manager", "-n", "kube-ipam"}, false},
			{ctrl, []string{"create", "leases.coordination.k8s.io", "-n", "kube-system"}, false},
			{ctrl, []string{"get", "secrets", "-n", "kube-ipam"}, false},
			{ctrl, []string{"list", "secrets", "-n", "kube-ipam"}, false},
			{ctrl, []string{"get", "secrets/kube-ipam-etcd", "-n", "kube-ipam"}, false},
			{ctrl, []string{"get", "secrets/kube-ipam-webhook-tls", "-n", "kube-ipam"}, true},
			{ctrl, []string{"update", "secrets/kube-ipam-webhook-tls", "-n", "kube-ipam"}, true},
			{ctrl, []string{"delete", "secrets/kube-ipam-webhook-tls", "-n", "kube-ipam"}, true},
			{ctrl, []string{"create", "secrets", "-n", "kube-ipam"}, true},
			{ctrl, []string{"get", "secrets/kube-ipam-webhook-tls", "-n", "default"}, false},
			{ctrl, []string{"get", "validatingwebhookconfigurations.admissionregistration.k8s.io/kube-ipam"}, true},
			{ctrl, []string{"patch", "validatingwebhookconfigurations.admissionregistration.k8s.io/kube-ipam"}, true},
			{ctrl, []string{"patch", "validatingwebhookconfigurations.admissionregistration.k8s.io/other"}, false},
			{ctrl, []string{"list", "validatingwebhookconfigurations.admissionregistration.k8s.io"}, false},
			{ctrl, []string{"create", "events", "-n", "kube-ipam"}, false},
			// The Kubernetes API store (kubernetes-store/rbac.yaml).
			{plugin, []string{"create", "ipallocations.ipam.kube-ipam.io"}, true},
			{plugin, []string{"update", "ipallocations.ipam.kube-ipam.io/0abc00da.k8snet2"}, true},
			{plugin, []string{"delete", "ipallocations.ipam.kube-ipam.io/0abc00da.k8snet2"}, true},
			{plugin, []string{"list", "ipallocations.ipam.kube-ipam.io"}, true},
			{plugin, []string{"watch", "ipallocations.ipam.kube-ipam.io"}, false},
			{plugin, []string{"patch", "ipallocations.ipam.kube-ipam.io/0abc00da.k8snet2"}, false},
			{plugin, []string{"deletecollection", "ipallocations.ipam.kube-ipam.io"}, false},
			{plugin, []string{"get", "ipstickies.ipam.kube-ipam.io/x"}, true},
			{plugin, []string{"create", "ipstickies.ipam.kube-ipam.io"}, true},
			{plugin, []string{"delete", "ipstickies.ipam.kube-ipam.io/x"}, true},
			{plugin, []string{"list", "ipstickies.ipam.kube-ipam.io"}, false},
			{plugin, []string{"update", "ipstickies.ipam.kube-ipam.io/x"}, false},
			{plugin, []string{"create", "customresourcedefinitions.apiextensions.k8s.io"}, false},
			{ctrl, []string{"list", "ipallocations.ipam.kube-ipam.io"}, true},
			{ctrl, []string{"watch", "ipallocations.ipam.kube-ipam.io"}, true},
			{ctrl, []string{"update", "ipallocations.ipam.kube-ipam.io/0abc00da.k8snet2"}, true},
			{ctrl, []string{"delete", "ipallocations.ipam.kube-ipam.io/0abc00da.k8snet2"}, true},
			{ctrl, []string{"create", "ipallocations.ipam.kube-ipam.io"}, false},
			{ctrl, []string{"list", "ipstickies.ipam.kube-ipam.io"}, true},
			{ctrl, []string{"create", "ipstickies.ipam.kube-ipam.io"}, true},
			{ctrl, []string{"delete", "ipstickies.ipam.kube-ipam.io/x"}, true},
			{ctrl, []string{"update", "ipstickies.ipam.kube-ipam.io/x"}, false},
		} {
			out, err := k.run(t, append([]string{"auth", "can-i", "--as=" + c.as}, c.args...)...)
			// The answer is the last line (kubectl may warn before it).
			lines := strings.Split(strings.TrimSpace(out), "\n")
			answer := strings.TrimSpace(lines[len(lines)-1])
			if answer != "yes" && answer != "no" {
				t.Fatalf("kubectl auth can-i %v as %s: %v\n%s", c.args, c.as, err, out)
			}
			if got := answer == "yes"; got != c.want {
				t.Errorf("%s can %v: %v, want %v", c.as, c.args, got, c.want)
			}
		}
	})

	// The installer turns the kube-ipam-plugin ServiceAccount's token into
	// the node's kubeconfig; the plugins' own pod readers then get a pod
	// through it, and nothing more.
	t.Run("installer kubeconfig", func(t *testing.T) {
		ctx := t.Context()
		tr, err := k.Client.CoreV1().ServiceAccounts("kube-ipam").CreateToken(ctx, "kube-ipam-plugin",
			&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: new(int64(600))}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = k.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "database-1-0", Labels: map[string]string{"app": "database-1"},
				Annotations: map[string]string{"kube-ipam.ip": "10.188.0.218"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "docker.io/library/busybox:1.36"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		kubeconfig := runInstaller(t, k, tr.Status.Token)

		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		pc, err := pod.NewClient(kubeconfig, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		info, err := pc.Get(ctx, "default", "database-1-0")
		if err != nil {
			t.Fatalf("kube-ipam's pod read through the installed kubeconfig: %v", err)
		}
		if info.Annotations["kube-ipam.ip"] != "10.188.0.218" {
			t.Errorf("pod info %+v", info)
		}
		labels, err := tier.ReadLabels(ctx, kubeconfig, "default", "database-1-0", 10*time.Second)
		if err != nil || labels["app"] != "database-1" {
			t.Errorf("kube-multus's label read: %v %v", labels, err)
		}
		rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		cs, err := kubernetes.NewForConfig(rc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("list pods with the node kubeconfig: %v, want Forbidden", err)
		}
		if _, err := cs.CoreV1().Secrets("kube-ipam").Get(ctx, "kube-ipam-etcd", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("get secret with the node kubeconfig: %v, want Forbidden", err)
		}
	})

	// Last, since it leaves a ValidatingWebhookConfiguration behind that
	// would send the annotated examples' dry-runs to a webhook that does not
	// run here.
	t.Run("self-managed webhook certificate", func(t *testing.T) { selfManagedCert(t, k, dir) })
}

// expectedObjects counts the objects kubectl should report for a file.
func expectedObjects(t *testing.T, rel string) int {
	t.Helper()
	if rel == component+"/kustomization.yaml" {
		return expectedObjects(t, "kustomization.yaml") + componentObjects(t)
	}
	if rel == certManagerComponent+"/kustomization.yaml" {
		_, ds := renderWith(t, certManagerComponent) // checked in certmanager_test.go
		return len(ds)
	}
	if c, ok := modeComponent(rel); ok {
		_, ds := renderWith(t, c) // checked in modes_test.go
		return len(ds)
	}
	if rel != "kustomization.yaml" {
		return len(docs(t, filepath.Join(deployDir(t), rel)))
	}
	var n int
	var k struct {
		Resources []string `json:"resources"`
	}
	b, _ := os.ReadFile(filepath.Join(deployDir(t), rel))
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatal(err)
	}
	for _, r := range k.Resources {
		n += len(docs(t, filepath.Join(deployDir(t), r)))
	}
	return n
}

// runInstaller runs the real installer once, as the DaemonSet would, with
// the given service-account token and the test API server's CA, into a
// fake node; it returns the kubeconfig path.
func runInstaller(t *testing.T, k *kube, token string) string {
	t.Helper()
	root := t.TempDir()
	host := filepath.Join(root, "host")
	write := func(p string, b []byte, mode os.FileMode) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, mode); err != nil {
			t.Fatal(err)
		}
	}
	ca := servingCA(t, k)
	key, conf := networkConfig(t)
	o, _ := installerOptions(t)
	rehome := func(p string) string { return filepath.Join(host, strings.TrimPrefix(p, o.HostRoot)) }
	o.BinDir, o.ConfDir, o.Kubeconfig, o.EtcdCertDir, o.HostRoot = rehome(o.BinDir), rehome(o.ConfDir), rehome(o.Kubeconfig), rehome(o.EtcdCertDir), host
	o.BinSourceDir = filepath.Join(root, "image")
	for _, b := range o.Binaries {
		write(filepath.Join(o.BinSourceDir, b), []byte("#!/bin/sh\n"), 0o755)
	}
	o.ConfigSource = filepath.Join(root, "configmap", key)
	write(o.ConfigSource, conf, 0o644)
	o.TokenFile, o.CAFile = filepath.Join(root, "sa", "token"), filepath.Join(root, "sa", "ca.crt")
	write(o.TokenFile, []byte(token), 0o644)
	write(o.CAFile, ca, 0o644)
	o.EtcdCertSource = filepath.Join(root, "secret")
	etcdCA, etcdCert, etcdKey := etcdPKI(t)
	write(filepath.Join(o.EtcdCertSource, install.EtcdCAFile), etcdCA, 0o600)
	write(filepath.Join(o.EtcdCertSource, install.EtcdCertFile), etcdCert, 0o600)
	write(filepath.Join(o.EtcdCertSource, install.EtcdKeyFile), etcdKey, 0o600)
	o.KubeServer = k.Server
	o.Once = true
	if err := install.Run(t.Context(), o); err != nil {
		t.Fatalf("installer: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(o.ConfDir, key)); err != nil || !bytes.Equal(b, conf) {
		t.Fatalf("installed config: %v", err)
	}
	return o.Kubeconfig
}

// servingCA returns the certificates of the API server's self-signed
// serving chain (kube-apiserver --cert-dir writes the serving certificate
// followed by its CA).
func servingCA(t *testing.T, k *kube) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(k.Dir, "certs", "apiserver.crt"))
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil && c.IsCA {
			out = append(out, pem.EncodeToMemory(blk)...)
		}
	}
	if len(out) == 0 {
		t.Fatalf("no CA certificate in %s", filepath.Join(k.Dir, "certs", "apiserver.crt"))
	}
	return out
}

// etcdPKI makes a CA and a client certificate and key signed by it, as the
// kube-ipam-etcd Secret holds them.
func etcdPKI(t *testing.T) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	ca, err := pki.NewCA("etcd-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue(pki.Leaf{CN: "kube-ipam", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	return ca.CertPEM, client.CertPEM, client.KeyPEM
}
