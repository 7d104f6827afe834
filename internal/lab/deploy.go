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

	"kubeipam/internal/pki"
)

// ImageRef is the lab's build of the Dockerfile's image, under the name
// deploy/ uses ("kube-ipam:dev").
const ImageRef = "docker.io/library/kube-ipam:dev"

// ImageBinaries are the binaries the Dockerfile puts in /kube-ipam/bin.
var ImageBinaries = []string{"kube-ipam", "kube-multus", "kube-ipamctl", "kube-ipam-controller", "kube-ipam-install"}

// kubectl runs kubectl as admin, logging the command.
func (l *Lab) kubectl(ctx context.Context, args ...string) (string, error) {
	l.logf("  kubectl %s", strings.Join(args, " "))
	return run(ctx, append([]string{l.kube("kubectl"), "--kubeconfig", l.opts.Kubeconfig()}, args...)...)
}

// deployKubeIPAM installs kube-ipam the way deploy/README.md tells a user
// to, from the locally built image: namespace and RBAC, the etcd client
// Secret, the webhook's serving Secret, the network ConfigMap, then the
// installer DaemonSet (which puts the plugins and the config on every node)
// and the controller.
func (l *Lab) deployKubeIPAM(ctx context.Context) error {
	d := l.opts.Deploy
	steps := [][]string{
		{"apply", "-f", filepath.Join(d, "namespace.yaml"), "-f", filepath.Join(d, "rbac.yaml")},
		{"-n", "kube-ipam", "create", "secret", "generic", "kube-ipam-etcd", "--type=kubernetes.io/tls",
			"--from-file=tls.crt=" + l.pki("etcd-client.crt"), "--from-file=tls.key=" + l.pki("etcd-client.key"),
			"--from-file=ca.crt=" + l.pki("etcd-ca.crt")},
	}
	if err := l.ca.issue(certSpec{"webhook", pki.Leaf{CN: "kube-ipam-webhook.kube-ipam.svc", Server: true,
		DNS: []string{"kube-ipam-webhook", "kube-ipam-webhook.kube-ipam", "kube-ipam-webhook.kube-ipam.svc"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}}); err != nil {
		return err
	}
	conf, err := l.NetworkConfig()
	if err != nil {
		return err
	}
	confFile := filepath.Join(l.opts.Dir, ConfigKey)
	if err := os.WriteFile(confFile, conf, 0o644); err != nil {
		return err
	}
	steps = append(steps,
		[]string{"-n", "kube-ipam", "create", "secret", "tls", "kube-ipam-webhook-tls",
			"--cert=" + l.pki("webhook.crt"), "--key=" + l.pki("webhook.key")},
		[]string{"-n", "kube-ipam", "create", "configmap", "kube-ipam-config", "--from-file=" + ConfigKey + "=" + confFile},
		[]string{"apply", "-f", filepath.Join(d, "daemonset.yaml"), "-f", filepath.Join(d, "controller.yaml")},
	)
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
