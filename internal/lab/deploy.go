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
	"kubeipam/internal/release"
)

// ImageRef is the lab's build of the Dockerfile's image, under the name
// deploy/ uses ("kube-ipam:dev").
const ImageRef = "docker.io/library/kube-ipam:dev"

// ImageBinaries are the binaries the Dockerfile puts in /kube-ipam/bin.
var ImageBinaries = release.Binaries

// kubectl runs kubectl as admin, logging the command.
func (l *Lab) kubectl(ctx context.Context, args ...string) (string, error) {
	l.logf("  kubectl %s", strings.Join(args, " "))
	return run(ctx, append([]string{l.kube("kubectl"), "--kubeconfig", l.opts.Kubeconfig()}, args...)...)
}

// deployKubeIPAM installs kube-ipam the way deploy/README.md tells a user
// to, from the locally built image: namespace and RBAC, the etcd client
// Secret, the webhook's serving Secret, the network ConfigMap, then the
// installer DaemonSet (which puts the plugins and the config on every node)
// and the controller. On the Kubernetes store, and in the NAD modes, it
// installs deploy/ with the matching kustomize components instead
// (kustomizeSteps).
func (l *Lab) deployKubeIPAM(ctx context.Context) error {
	if err := l.ca.issue(certSpec{"webhook", pki.Leaf{CN: "kube-ipam-webhook.kube-ipam.svc", Server: true,
		DNS: []string{"kube-ipam-webhook", "kube-ipam-webhook.kube-ipam", "kube-ipam-webhook.kube-ipam.svc"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}}); err != nil {
		return err
	}
	webhookSecret := []string{"-n", "kube-ipam", "create", "secret", "tls", "kube-ipam-webhook-tls",
		"--cert=" + l.pki("webhook.crt"), "--key=" + l.pki("webhook.key")}
	etcdSecret := []string{"-n", "kube-ipam", "create", "secret", "generic", "kube-ipam-etcd", "--type=kubernetes.io/tls",
		"--from-file=tls.crt=" + l.pki("etcd-client.crt"), "--from-file=tls.key=" + l.pki("etcd-client.key"),
		"--from-file=ca.crt=" + l.pki("etcd-ca.crt")}
	var steps [][]string
	if l.opts.KubernetesStore() || l.opts.NADs() {
		data, err := l.configMapData()
		if err != nil {
			return err
		}
		secrets := [][]string{webhookSecret}
		if !l.opts.KubernetesStore() {
			secrets = append(secrets, etcdSecret)
		}
		steps, err = l.kustomizeSteps(ctx, data, secrets)
		if err != nil {
			return err
		}
	} else {
		conf, err := l.NetworkConfig()
		if err != nil {
			return err
		}
		d := l.opts.Deploy
		confFile := filepath.Join(l.opts.Dir, ConfigKey)
		if err := os.WriteFile(confFile, conf, 0o644); err != nil {
			return err
		}
		steps = [][]string{
			{"apply", "-f", filepath.Join(d, "namespace.yaml"), "-f", filepath.Join(d, "rbac.yaml")},
			etcdSecret,
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
	// What the installer writes on every node: the meta config, or with
	// --ipam-only the plugins' kubeconfig (the cluster's multus owns the
	// config).
	want := ConfigKey
	if l.opts.UpstreamMultus() {
		want = "kube-ipam.d/kubeconfig"
	}
	if err := poll(ctx, 2*time.Minute, "the installer DaemonSet's files on every node", func() (bool, string, error) {
		for _, n := range l.state.Nodes {
			if _, err := os.Stat(filepath.Join(n.FS("/etc/cni/net.d"), want)); err != nil {
				ds, _ := cs.AppsV1().DaemonSets("kube-ipam").Get(ctx, "kube-ipam-node", metav1.GetOptions{})
				why := n.Name + " has no /etc/cni/net.d/" + want
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
	if l.opts.UpstreamMultus() {
		if err := l.installMultus(ctx); err != nil {
			return err
		}
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

// The kustomize Components of deploy/ the lab can switch on.
const (
	// StoreComponent moves kube-ipam's allocations to the Kubernetes API.
	StoreComponent = "kubernetes-store"
	// AutoComponent builds each node's meta config around its cluster
	// network (kube-ipam-install --cluster-network=auto).
	AutoComponent = "auto-cluster-network"
	// IPAMOnlyComponent installs kube-ipam beside another multus.
	IPAMOnlyComponent = "ipam-only"
)

// NADConfigKey is the ConfigMap key of the database network's config in
// the NAD modes: the controller reads it (the nodes run the NAD).
const NADConfigKey = "db-net.conflist"

// components are the kustomize Components of this lab's install.
func (o Options) components() []string {
	var c []string
	if o.KubernetesStore() {
		c = append(c, StoreComponent)
	}
	switch o.Mode {
	case ModeNAD:
		c = append(c, AutoComponent)
	case ModeMultus:
		c = append(c, IPAMOnlyComponent)
	}
	return c
}

// KubernetesModeConfig is the ConfigMap's meta config in ModeNAD:
// kube-multus in Kubernetes mode with no network of its own. The installer
// (--cluster-network=auto) adds the node's cluster network (flannel's
// conflist) as delegates[0]; every other network is a NAD a pod asks for.
func KubernetesModeConfig() []byte {
	return []byte(`{
  "cniVersion": "0.3.1",
  "name": "multus-cni-network",
  "type": "kube-multus",
  "kubeconfig": "/etc/cni/net.d/kube-ipam.d/kubeconfig",
  "logFile": "/var/log/kube-multus.log",
  "logLevel": "verbose"
}
`)
}

// configMapData is ConfigMap kube-ipam-config's data: the guide's network
// config, or in the NAD modes the database network's NAD config for the
// controller (and, for kube-multus, the Kubernetes-mode meta config).
func (l *Lab) configMapData() (map[string]string, error) {
	if !l.opts.NADs() {
		conf, err := l.NetworkConfig()
		return map[string]string{ConfigKey: string(conf)}, err
	}
	_, nad, err := l.NADConfig()
	if err != nil {
		return nil, err
	}
	data := map[string]string{NADConfigKey: string(nad)}
	if l.opts.Mode == ModeNAD {
		data[ConfigKey] = string(KubernetesModeConfig())
	}
	return data, nil
}

// controllerReadsDir is ModeNAD's patch of the controller: it reads every
// network of the mounted ConfigMap (the NAD's config beside the meta
// config), as deploy/ipam-only's does.
const controllerReadsDir = `- op: replace
  path: /spec/template/spec/containers/0/args/0
  value: --config=/etc/kube-ipam/config
- op: remove
  path: /spec/template/spec/volumes/0/configMap/items
`

// kustomizeSteps are the kubectl steps of deploy/README.md's install with
// this lab's components, rendered by kubectl's kustomize from an overlay in
// the lab dir. data replaces the ConfigMap's; the CRDs, RBAC and
// ConfigMaps are applied, and the CRDs Established, before the secrets,
// the installer DaemonSet and the controller.
func (l *Lab) kustomizeSteps(ctx context.Context, data map[string]string, secrets [][]string) ([][]string, error) {
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
	base = filepath.ToSlash(base)
	overlay := fmt.Sprintf("# The lab's install: deploy/ with %v.\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\n",
		l.opts.components(), base)
	if cs := l.opts.components(); len(cs) > 0 {
		overlay += "components:\n"
		for _, c := range cs {
			overlay += "  - " + base + "/" + c + "\n"
		}
	}
	if l.opts.Mode == ModeNAD {
		if err := os.WriteFile(filepath.Join(dir, "controller-patch.yaml"), []byte(controllerReadsDir), 0o644); err != nil {
			return nil, err
		}
		overlay += "patches:\n  - path: controller-patch.yaml\n    target:\n      group: apps\n      version: v1\n      kind: Deployment\n      name: kube-ipam-controller\n"
	}
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
	setup, workloads, crds, err := splitInstall(rendered, data)
	if err != nil {
		return nil, fmt.Errorf("kubectl kustomize %s: %w", dir, err)
	}
	files := map[string][]byte{"setup.yaml": setup, "workloads.yaml": workloads}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return nil, err
		}
	}
	steps := [][]string{{"apply", "-f", filepath.Join(dir, "setup.yaml")}}
	if len(crds) > 0 {
		wait := []string{"wait", "--for=condition=Established", "--timeout=60s"}
		for _, c := range crds {
			wait = append(wait, "crd/"+c)
		}
		steps = append(steps, wait)
	}
	steps = append(steps, secrets...)
	return append(steps, []string{"apply", "-f", filepath.Join(dir, "workloads.yaml")}), nil
}

// splitInstall splits a rendered install into what must exist first
// (namespace, CRDs, RBAC, ConfigMaps, Services, …) and the workloads that
// use it (the DaemonSet and the Deployment), with data as the data of
// ConfigMap kube-ipam-config; it also returns the CRDs' names.
func splitInstall(rendered []byte, data map[string]string) (setup, workloads []byte, crds []string, err error) {
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
				obj["data"] = data
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
	if !cm || !ds || !dep {
		return nil, nil, nil, fmt.Errorf("want ConfigMap kube-ipam-config, a DaemonSet and a Deployment; have %v, %v, %v", cm, ds, dep)
	}
	return setup, workloads, crds, nil
}
