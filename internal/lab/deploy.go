package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

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

// HelmVersion is the helm hack/helm.sh builds (make helm), which the lab
// installs kube-ipam with; test/chart holds the two to one version.
const HelmVersion = "v4.3.2"

// HelmBinary is helm in hack/helm.sh's cache: $KUBE_IPAM_HELM/helm, else
// the user cache directory's helm-<HelmVersion>/helm.
func HelmBinary() string {
	return filepath.Join(cacheDir("KUBE_IPAM_HELM", "helm-"+HelmVersion), "helm")
}

// deployKubeIPAM installs kube-ipam the way docs/install.md tells a user
// to, from the locally built image: the namespace (deploy/namespace.yaml,
// Pod Security privileged), then `helm install` of charts/kube-ipam with
// this lab's store and mode as values (chartValues): the etcd Secret from
// the lab's PKI, the network config, the installer DaemonSet (which puts
// the plugins and the config on every node), the controller, and the
// webhook, whose certificate the controller makes itself.
func (l *Lab) deployKubeIPAM(ctx context.Context) error {
	values, err := l.chartValues()
	if err != nil {
		return err
	}
	dir := filepath.Join(l.opts.Dir, "manifests", "kube-ipam")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	valuesFile := filepath.Join(dir, "values.yaml")
	if err := os.WriteFile(valuesFile, values, 0o600); err != nil { // holds the etcd client key
		return err
	}
	if _, err := l.kubectl(ctx, "apply", "-f", filepath.Join(l.opts.Deploy, "namespace.yaml")); err != nil {
		return err
	}
	chart := filepath.Join(filepath.Dir(l.opts.Deploy), "charts", "kube-ipam")
	args := []string{HelmBinary(), "upgrade", "--install", "kube-ipam", chart, "--namespace", "kube-ipam",
		"--kubeconfig", l.opts.Kubeconfig(), "-f", valuesFile}
	l.logf("  helm %s", strings.Join(args[1:], " "))
	if out, err := run(ctx, args...); err != nil {
		return fmt.Errorf("helm install: %w\n%s", err, out)
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
	if err := poll(ctx, 3*time.Minute, "kube-ipam-controller available", func() (bool, string, error) {
		dep, err := cs.AppsV1().Deployments("kube-ipam").Get(ctx, "kube-ipam-controller", metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		want := int32(1)
		if dep.Spec.Replicas != nil {
			want = *dep.Spec.Replicas
		}
		return dep.Status.AvailableReplicas >= want, fmt.Sprintf("%d/%d available", dep.Status.AvailableReplicas, want), nil
	}); err != nil {
		return err
	}
	return l.waitWebhook(ctx)
}

// waitWebhook waits until the API server really calls the webhook the
// chart configured (ValidatingWebhookConfiguration kube-ipam; the
// controller makes its certificate and sets the caBundle itself): a
// server-side dry-run of a pod with a malformed kube-ipam annotation
// (webhookProbe) is denied by it.
func (l *Lab) waitWebhook(ctx context.Context) error {
	probe := filepath.Join(l.opts.Dir, "webhook-probe.yaml")
	if err := os.WriteFile(probe, []byte(webhookProbe), 0o644); err != nil {
		return err
	}
	l.logf("  waiting for the API server to call the webhook (kubectl create --dry-run=server -f %s)", probe)
	return poll(ctx, 2*time.Minute, "the API server calling the kube-ipam webhook", func() (bool, string, error) {
		out, err := run(ctx, l.kube("kubectl"), "--kubeconfig", l.opts.Kubeconfig(), "create", "--dry-run=server", "-f", probe)
		switch {
		case err == nil:
			return false, "probe pod admitted: the configuration is not in effect yet", nil
		case strings.Contains(out, `admission webhook "validate.kube-ipam.io" denied the request`):
			return true, "", nil
		default:
			return false, strings.TrimSpace(out), nil
		}
	})
}

// NADConfigKey is the ConfigMap key of the database network's config in
// the NAD modes: the controller reads it (the nodes run the NAD).
const NADConfigKey = "db-net.conflist"

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

// chartValues are the chart's values for this lab (docs/install.md's
// values file): the image built here, the store, the guide's network
// config with the lab's etcd (on the Kubernetes store without etcdConfig),
// the etcd client Secret from the lab's PKI; in ModeNAD kube-multus's
// Kubernetes-mode meta config, the node's own cluster network and the
// database network's NAD config for the controller; in ModeMultus the
// IPAM-only install with that NAD config.
func (l *Lab) chartValues() ([]byte, error) {
	v := map[string]any{
		"image": map[string]any{"repository": strings.TrimSuffix(strings.TrimPrefix(ImageRef, "docker.io/library/"), ":dev"), "tag": "dev"},
		"store": StoreEtcd,
	}
	if l.opts.KubernetesStore() {
		v["store"] = StoreKubernetes
	} else {
		tls := map[string]any{}
		for key, file := range map[string]string{"cert": "etcd-client.crt", "key": "etcd-client.key", "ca": "etcd-ca.crt"} {
			b, err := os.ReadFile(l.pki(file))
			if err != nil {
				return nil, err
			}
			tls[key] = string(b)
		}
		v["etcd"] = map[string]any{"endpoints": []string{l.opts.EtcdURL()}, "tls": tls}
	}
	// The chart refuses an etcdConfig on the Kubernetes store.
	storeConf := func(conf []byte) (string, error) {
		if !l.opts.KubernetesStore() {
			return string(conf), nil
		}
		var m map[string]any
		if err := json.Unmarshal(conf, &m); err != nil {
			return "", err
		}
		var sections []any
		for _, key := range []string{"delegates", "plugins"} {
			list, _ := m[key].([]any)
			sections = append(sections, list...)
		}
		for _, d := range sections {
			if ipam, ok := d.(map[string]any)["ipam"].(map[string]any); ok {
				delete(ipam, "etcdConfig")
			}
		}
		b, err := json.Marshal(m)
		return string(b), err
	}
	if l.opts.NADs() {
		_, nad, err := l.NADConfig()
		if err != nil {
			return nil, err
		}
		c, err := storeConf(nad)
		if err != nil {
			return nil, err
		}
		v["nadConfigs"] = map[string]any{NADConfigKey: c}
	}
	switch l.opts.Mode {
	case ModeNAD:
		v["networkConfig"] = string(KubernetesModeConfig())
		v["clusterNetwork"] = "auto"
	case ModeMultus:
		v["ipamOnly"] = true
	default:
		conf, err := l.NetworkConfig()
		if err != nil {
			return nil, err
		}
		if v["networkConfig"], err = storeConf(conf); err != nil {
			return nil, err
		}
	}
	return yaml.Marshal(v)
}
