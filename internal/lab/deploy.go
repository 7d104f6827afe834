package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"kubeipam/internal/pki"
)

// ImageRef is the lab's build of the Dockerfile's image, under the name
// deploy/ uses ("kube-ipam:dev").
const ImageRef = "docker.io/library/kube-ipam:dev"

// ImageBinaries are the binaries the Dockerfile puts in /kube-ipam/bin.
var ImageBinaries = []string{"kube-ipam", "kube-multus", "kube-tier", "kube-ipamctl", "kube-ipam-controller", "kube-ipam-install"}

// kubectl runs kubectl as admin, logging the command.
func (l *Lab) kubectl(ctx context.Context, args ...string) (string, error) {
	l.logf("  kubectl %s", strings.Join(args, " "))
	return run(ctx, append([]string{l.kube("kubectl"), "--kubeconfig", l.opts.Kubeconfig()}, args...)...)
}

// deployKubeIPAM installs kube-ipam the way deploy/README.md tells a user
// to, from the locally built image: namespace and RBAC, the etcd client
// Secret, the webhook's serving Secret, the network ConfigMap, then the
// installer DaemonSet (which puts the plugins and the config on every node)
// and the controller. On the Kubernetes store it installs deploy/ with its
// kubernetes-store component instead (kubernetesStoreSteps).
func (l *Lab) deployKubeIPAM(ctx context.Context) error {
	if err := l.ca.issue(certSpec{"webhook", pki.Leaf{CN: "kube-ipam-webhook.kube-ipam.svc", Server: true,
		DNS: []string{"kube-ipam-webhook", "kube-ipam-webhook.kube-ipam", "kube-ipam-webhook.kube-ipam.svc"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}}); err != nil {
		return err
	}
	conf, err := l.NetworkConfig()
	if err != nil {
		return err
	}
	webhookSecret := []string{"-n", "kube-ipam", "create", "secret", "tls", "kube-ipam-webhook-tls",
		"--cert=" + l.pki("webhook.crt"), "--key=" + l.pki("webhook.key")}
	var steps [][]string
	if l.opts.KubernetesStore() {
		steps, err = l.kubernetesStoreSteps(ctx, conf, webhookSecret)
		if err != nil {
			return err
		}
	} else {
		d := l.opts.Deploy
		confFile := filepath.Join(l.opts.Dir, ConfigKey)
		if err := os.WriteFile(confFile, conf, 0o644); err != nil {
			return err
		}
		steps = [][]string{
			{"apply", "-f", filepath.Join(d, "namespace.yaml"), "-f", filepath.Join(d, "rbac.yaml")},
			{"-n", "kube-ipam", "create", "secret", "generic", "kube-ipam-etcd", "--type=kubernetes.io/tls",
				"--from-file=tls.crt=" + l.pki("etcd-client.crt"), "--from-file=tls.key=" + l.pki("etcd-client.key"),
				"--from-file=ca.crt=" + l.pki("etcd-ca.crt")},
			webhookSecret,
			{"-n", "kube-ipam", "create", "configmap", "kube-ipam-config", "--from-file=" + ConfigKey + "=" + confFile},
			{"apply", "-f", filepath.Join(d, "daemonset.yaml"), "-f", filepath.Join(d, "controller.yaml")},
		}
	}
	for _, s := range steps {
		if _, err := l.kubectl(ctx, s...); err != nil {
			return err
		}
	}
	cs, err := l.client()
	if err != nil {
		return err
	}
	if err := poll(ctx, 2*time.Minute, "the installer DaemonSet's config on every node", func() (bool, string, error) {
		for _, n := range l.state.Nodes {
			if _, err := os.Stat(filepath.Join(n.FS("/etc/cni/net.d"), ConfigKey)); err != nil {
				ds, _ := cs.AppsV1().DaemonSets("kube-ipam").Get(ctx, "kube-ipam-node", metav1.GetOptions{})
				why := n.Name + " has no /etc/cni/net.d/" + ConfigKey
				if ds != nil {
					why += fmt.Sprintf(" (installer pods ready: %d/%d)", ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
				}
				return false, why, nil
			}
		}
		return true, "", nil
	}); err != nil {
		return err
	}
	if err := l.waitNodesReady(ctx, cs); err != nil {
		return err
	}
	return poll(ctx, 3*time.Minute, "kube-ipam-controller available", func() (bool, string, error) {
		dep, err := cs.AppsV1().Deployments("kube-ipam").Get(ctx, "kube-ipam-controller", metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		want := int32(1)
		if dep.Spec.Replicas != nil {
			want = *dep.Spec.Replicas
		}
		return dep.Status.AvailableReplicas >= want, fmt.Sprintf("%d/%d available", dep.Status.AvailableReplicas, want), nil
	})
}

// StoreComponent is the kustomize Component of deploy/ that moves
// kube-ipam's allocations to the Kubernetes API.
const StoreComponent = "kubernetes-store"

// kubernetesStoreSteps are the kubectl steps of deploy/README.md's install
// on the Kubernetes store: deploy/ with its kubernetes-store component (the
// CRDs, their RBAC, no etcd Secret), rendered by kubectl's kustomize from
// an overlay in the lab dir. The lab's network config replaces the
// ConfigMap's; the CRDs, RBAC and ConfigMaps are applied, and the CRDs
// Established, before the installer DaemonSet and the controller.
func (l *Lab) kubernetesStoreSteps(ctx context.Context, conf []byte, webhookSecret []string) ([][]string, error) {
	deploy, err := filepath.Abs(l.opts.Deploy)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(l.opts.Dir, "manifests", "kube-ipam")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// kustomize takes only relative paths, and an overlay must not sit
	// inside its base: hence one here, pointing back at the checkout.
	base, err := filepath.Rel(dir, deploy)
	if err != nil {
		return nil, err
	}
	overlay := fmt.Sprintf(`# The lab's install: deploy/ with its %[2]s component.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %[1]s
components:
  - %[1]s/%[2]s
`, filepath.ToSlash(base), StoreComponent)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(overlay), 0o644); err != nil {
		return nil, err
	}
	out := filepath.Join(dir, "rendered.yaml")
	if _, err := l.kubectl(ctx, "kustomize", dir, "--output", out); err != nil {
		return nil, err
	}
	rendered, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	setup, workloads, crds, err := splitInstall(rendered, conf)
	if err != nil {
		return nil, fmt.Errorf("kubectl kustomize %s: %w", dir, err)
	}
	files := map[string][]byte{"setup.yaml": setup, "workloads.yaml": workloads}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return nil, err
		}
	}
	wait := []string{"wait", "--for=condition=Established", "--timeout=60s"}
	for _, c := range crds {
		wait = append(wait, "crd/"+c)
	}
	return [][]string{
		{"apply", "-f", filepath.Join(dir, "setup.yaml")},
		wait,
		webhookSecret,
		{"apply", "-f", filepath.Join(dir, "workloads.yaml")},
	}, nil
}

// splitInstall splits a rendered install into what must exist first
// (namespace, CRDs, RBAC, ConfigMaps, Services, …) and the workloads that
// use it (the DaemonSet and the Deployment), with conf as the data of
// ConfigMap kube-ipam-config; it also returns the CRDs' names.
func splitInstall(rendered, conf []byte) (setup, workloads []byte, crds []string, err error) {
	var cm, ds, dep bool
	for _, d := range strings.Split("\n"+string(rendered), "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(d), &obj); err != nil {
			return nil, nil, nil, err
		}
		if len(obj) == 0 {
			continue
		}
		kind, _ := obj["kind"].(string)
		meta, _ := obj["metadata"].(map[string]any)
		name, _ := meta["name"].(string)
		to := &setup
		switch kind {
		case "ConfigMap":
			if name == "kube-ipam-config" {
				obj["data"] = map[string]any{ConfigKey: string(conf)}
				cm = true
			}
		case "CustomResourceDefinition":
			crds = append(crds, name)
		case "DaemonSet":
			to, ds = &workloads, true
		case "Deployment":
			to, dep = &workloads, true
		}
		b, err := yaml.Marshal(obj)
		if err != nil {
			return nil, nil, nil, err
		}
		if len(*to) > 0 {
			*to = append(*to, "---\n"...)
		}
		*to = append(*to, b...)
	}
	if !cm || !ds || !dep || len(crds) == 0 {
		return nil, nil, nil, fmt.Errorf("want ConfigMap kube-ipam-config, a DaemonSet, a Deployment and CRDs; have %v, %v, %v, %q", cm, ds, dep, crds)
	}
	return setup, workloads, crds, nil
}
