package chart

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"kubeipam/internal/testenv"
)

// kube is a real kube-apiserver and the real kubectl.
type kube struct {
	*testenv.Kube
	kubectl, cacheDir string
}

func startKube(t *testing.T) *kube {
	t.Helper()
	kubectl := testenv.KubeBinary(t, "kubectl")
	return &kube{Kube: testenv.StartKube(t, testenv.KubeOptions{}), kubectl: kubectl, cacheDir: t.TempDir()}
}

func (k *kube) run(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, k.kubectl, append([]string{"--kubeconfig", k.Kubeconfig, "--cache-dir", k.cacheDir}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (k *kube) must(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := k.run(t, stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// namespace is the release's namespace as docs/install.md creates it:
// Pod Security privileged (the installer needs host paths).
const namespace = `apiVersion: v1
kind: Namespace
metadata:
  name: kube-ipam
  labels:
    pod-security.kubernetes.io/enforce: privileged
`

// standInCRDs stand in for cert-manager's and the prometheus-operator's
// CRDs (not in the test apiserver), so that their objects are dry-run with
// the rest: names, namespace and metadata are checked by the API server;
// the spec is theirs to validate.
var standInCRDs = func() string {
	var b strings.Builder
	for _, c := range []struct{ group, plural, kind string }{
		{"cert-manager.io", "issuers", "Issuer"},
		{"cert-manager.io", "certificates", "Certificate"},
		{"monitoring.coreos.com", "servicemonitors", "ServiceMonitor"},
		{"monitoring.coreos.com", "prometheusrules", "PrometheusRule"},
	} {
		b.WriteString(`---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: ` + c.plural + "." + c.group + `
spec:
  group: ` + c.group + `
  scope: Namespaced
  names: {plural: ` + c.plural + `, kind: ` + c.kind + `}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
`)
	}
	return b.String()
}()

// TestRendersAgainstAPIServer renders every case of the matrix, checks
// what it must hold, and applies it with a server-side dry run (schema,
// defaulting, validation, admission) to a real kube-apiserver.
func TestRendersAgainstAPIServer(t *testing.T) {
	h := newHelm(t)
	k := startKube(t)
	k.must(t, namespace+standInCRDs, "apply", "--server-side", "-f", "-")
	k.must(t, "", "wait", "--for=condition=Established", "--timeout=60s", "crd/issuers.cert-manager.io", "crd/certificates.cert-manager.io",
		"crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com")
	for _, c := range matrix(t) {
		t.Run(c.name, func(t *testing.T) {
			objs, out, err := h.template(t, c.values)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, out)
			}
			c.check(t, decodeRender(t, objs))
			res, err := k.run(t, out, "apply", "--server-side", "--dry-run=server", "--field-manager=kube-ipam-test", "-f", "-")
			if err != nil {
				t.Fatalf("server-side dry run: %v\n%s", err, res)
			}
			if n := strings.Count(res, "(server dry run)"); n != len(objs) {
				t.Errorf("dry-ran %d objects, the render has %d:\n%s", n, len(objs), res)
			}
		})
	}
}

// allocation is an IPAllocation as the kube store writes one: held by a
// pod, in the guide's network.
func allocation(name, addr string) string {
	return `---
apiVersion: ipam.kube-ipam.io/v1alpha1
kind: IPAllocation
metadata:
  name: ` + name + `
spec:
  network: k8snet2
  address: ` + addr + `
  state: held
  kind: dynamic
  rangeSet: 0
  held:
    containerID: c-` + name + `
    ifname: net1
    pod: default/web-` + name + `
    claimIPs: [` + addr + `]
`
}

// TestInstallUpgradeUninstallKeepAllocations: helm install, upgrade and
// uninstall against a real kube-apiserver (no nodes: the pods stay
// pending) on the Kubernetes store. Allocations made before the upgrade
// survive it and the uninstall: the CRDs are kept (resource policy keep),
// and with them every IPAllocation; everything else of the release goes.
func TestInstallUpgradeUninstallKeepAllocations(t *testing.T) {
	h := newHelm(t)
	k := startKube(t)
	k.must(t, namespace, "apply", "--server-side", "-f", "-")
	kc := []string{"--kubeconfig", k.Kubeconfig, "--namespace", "kube-ipam"}
	chart := chartDir(t)

	h.must(t, append([]string{"install", "kube-ipam", chart, "--set", "store=kubernetes"}, kc...)...)
	k.must(t, "", "wait", "--for=condition=Established", "--timeout=60s", "crd/ipallocations.ipam.kube-ipam.io", "crd/ipstickies.ipam.kube-ipam.io",
		"crd/network-attachment-definitions.k8s.cni.cncf.io")
	k.must(t, allocation("0abc000a.k8snet2", "10.188.0.10")+allocation("0abc000b.k8snet2", "10.188.0.11"), "apply", "-f", "-")
	k.must(t, `apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: db-net, namespace: default}
spec: {config: '{"cniVersion": "0.3.1", "name": "k8snet2", "type": "macvlan"}'}
`, "apply", "-f", "-")
	allocations := func(when string) {
		t.Helper()
		out := k.must(t, "", "get", "ipallocations", "-o", "name")
		for _, n := range []string{"0abc000a.k8snet2", "0abc000b.k8snet2"} {
			if !strings.Contains(out, "ipallocation.ipam.kube-ipam.io/"+n) {
				t.Fatalf("%s: IPAllocation %s is gone; have:\n%s", when, n, out)
			}
		}
		if out := k.must(t, "", "get", "network-attachment-definitions", "-n", "default", "-o", "name"); !strings.Contains(out, "db-net") {
			t.Fatalf("%s: NAD db-net is gone", when)
		}
	}
	allocations("after install")

	// An upgrade that changes the workloads and the CRDs' labels (a new
	// chart version): both are upgraded, nothing is lost.
	h.must(t, append([]string{"upgrade", "kube-ipam", chart, "--set", "store=kubernetes", "--set", "image.tag=v9.9.9",
		"--set", "controller.replicas=1"}, kc...)...)
	if img := k.must(t, "", "-n", "kube-ipam", "get", "ds/kube-ipam-node", "-o", "jsonpath={.spec.template.spec.containers[0].image}"); img != "kube-ipam:v9.9.9" {
		t.Errorf("after upgrade the installer's image is %q", img)
	}
	if r := k.must(t, "", "-n", "kube-ipam", "get", "deploy/kube-ipam-controller", "-o", "jsonpath={.spec.replicas}"); r != "1" {
		t.Errorf("after upgrade the controller has %s replicas", r)
	}
	allocations("after upgrade")
	if out := h.must(t, append([]string{"history", "kube-ipam"}, kc...)...); !strings.Contains(out, "deployed") || strings.Count(out, "\n") < 3 {
		t.Errorf("helm history:\n%s", out)
	}

	out := h.must(t, append([]string{"uninstall", "kube-ipam", "--wait"}, kc...)...)
	t.Logf("helm uninstall:\n%s", out)
	allocations("after uninstall")
	for _, crd := range []string{"ipallocations.ipam.kube-ipam.io", "ipstickies.ipam.kube-ipam.io", "network-attachment-definitions.k8s.cni.cncf.io"} {
		k.must(t, "", "get", "crd", crd)
	}
	for _, gone := range []string{"ds/kube-ipam-node", "deploy/kube-ipam-controller", "configmap/kube-ipam-config", "sa/kube-ipam-plugin"} {
		if out, err := k.run(t, "", "-n", "kube-ipam", "get", gone); err == nil || !strings.Contains(out, "NotFound") {
			t.Errorf("%s is still there after uninstall: %v\n%s", gone, err, out)
		}
	}
	for _, gone := range []string{"clusterrole/kube-ipam-plugin", "clusterrole/kube-ipam-controller-kubernetes-store", "validatingwebhookconfiguration/kube-ipam"} {
		if out, err := k.run(t, "", "get", gone); err == nil || !strings.Contains(out, "NotFound") {
			t.Errorf("%s is still there after uninstall: %v\n%s", gone, err, out)
		}
	}

	// Installed again over the kept CRDs (adopted by the new release, as
	// docs/upgrade.md says): the allocations are the new release's state.
	h.must(t, append([]string{"install", "kube-ipam", chart, "--set", "store=kubernetes"}, kc...)...)
	allocations("after reinstall")
}
