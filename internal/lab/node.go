package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// SandboxImage is the pause image containerd's CRI uses for every pod.
const SandboxImage = "registry.k8s.io/pause:3.10"

func (l *Lab) containerdConfig(n Node) string {
	c := filepath.Join(n.Dir, "containerd")
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # No CAP_SYS_RESOURCE here: runc cannot give the pause container -998.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  # The defaults, /opt/cni/bin and /etc/cni/net.d: the node's own (NodeDirs).
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
`, filepath.Join(c, "root"), filepath.Join(c, "state"), n.sock(), n.sock()+".ttrpc", SandboxImage)
}

func (l *Lab) kubeletConfig(n Node) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: %s
failSwapOn: false
containerRuntimeEndpoint: unix://%s
address: %s
port: 10250
healthzPort: 10248
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %s}
authorization: {mode: AlwaysAllow}
tlsCertFile: %s
tlsPrivateKeyFile: %s
podLogsDir: %s
volumePluginDir: %s
resolvConf: /etc/resolv.conf
maxPods: %d
serializeImagePulls: false
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
evictionHard: {memory.available: 100Mi, nodefs.available: 1%%, imagefs.available: 1%%}
nodeStatusUpdateFrequency: 5s
`, n.Cgroup, n.sock(), n.IP, l.pki("ca.crt"), l.pki(n.Name+".crt"), l.pki(n.Name+".key"),
		filepath.Join(n.Dir, "pod-logs"), filepath.Join(n.Dir, "volume-plugins"), l.opts.maxPods())
}

func (l *Lab) kubeProxyConfig(n Node) string {
	// conntrack: zero means "leave the kernel's value": nf_conntrack_max
	// is one for the whole machine, not the node's.
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
mode: nftables
clusterCIDR: 10.244.0.0/16
healthzBindAddress: %s
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
`, l.pki("kube-proxy.kubeconfig"), n.Name, addrPort(n.IP, 10256))
}

func (n Node) subnetFile() string { return filepath.Join(n.FS("/run/flannel"), "subnet.env") }

// NetConf is flannel's network config: the seed's, as it set it in etcd.
const NetConf = `{"Network": "` + ClusterCIDR + `", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}`

func (l *Lab) startNodes(ctx context.Context) error {
	for _, n := range l.state.Nodes {
		if err := l.startNode(ctx, n); err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
	}
	cs, err := l.client()
	if err != nil {
		return err
	}
	// flanneld needs its Node and the podCIDR the controller-manager gives it.
	if err := poll(ctx, 2*time.Minute, "nodes registered with a podCIDR", func() (bool, string, error) {
		for _, n := range l.state.Nodes {
			node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error(), nil
			}
			if node.Spec.PodCIDR == "" {
				return false, n.Name + " has no podCIDR yet", nil
			}
		}
		return true, "", nil
	}); err != nil {
		return err
	}
	if err := l.routePodCIDRs(ctx, cs); err != nil {
		return err
	}
	netConf := filepath.Join(l.opts.Dir, "flannel-net-conf.json")
	if err := os.WriteFile(netConf, []byte(NetConf), 0o644); err != nil {
		return err
	}
	for _, n := range l.state.Nodes {
		p, err := l.startDaemon(n.Name+"-flanneld", &n, []string{"NODE_NAME=" + n.Name},
			filepath.Join(l.opts.LabBin, "flanneld"), "--kube-subnet-mgr", "--kubeconfig-file", l.pki("flannel.kubeconfig"),
			"--iface", "eth0", "--ip-masq", "--net-config-path", netConf)
		if err != nil {
			return err
		}
		if err := poll(ctx, time.Minute, n.Name+" flannel subnet", func() (bool, string, error) {
			if !l.alive(*p) {
				return false, "", fmt.Errorf("flanneld exited:\n%s", tail(p.Log, 15))
			}
			_, err := os.Stat(n.subnetFile())
			return err == nil, fmt.Sprint(err), nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// waitNodesReady waits until every node is Ready: kubelet reports the
// runtime network ready once a CNI config is installed.
func (l *Lab) waitNodesReady(ctx context.Context, cs kubernetes.Interface) error {
	return poll(ctx, 3*time.Minute, "nodes Ready", func() (bool, string, error) {
		for _, n := range l.state.Nodes {
			node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error(), nil
			}
			ready := false
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady {
					ready = c.Status == corev1.ConditionTrue
					if !ready {
						return false, n.Name + ": " + c.Message, nil
					}
				}
			}
			if !ready {
				return false, n.Name + " has no Ready condition yet", nil
			}
		}
		return true, "", nil
	})
}

func (l *Lab) startNode(ctx context.Context, n Node) error {
	if err := l.issueNode(n); err != nil {
		return err
	}
	if err := makeCgroupRoot(n.Cgroup); err != nil {
		return fmt.Errorf("cgroup root %s: %w", n.Cgroup, err)
	}
	files := map[string]string{
		"containerd.toml": l.containerdConfig(n), "kubelet.yaml": l.kubeletConfig(n), "kube-proxy.yaml": l.kubeProxyConfig(n),
	}
	for _, d := range []string{"containerd", "kubelet", "pod-logs", "volume-plugins"} {
		if err := os.MkdirAll(filepath.Join(n.Dir, d), 0o755); err != nil {
			return err
		}
	}
	for f, body := range files {
		if err := os.WriteFile(filepath.Join(n.Dir, f), []byte(body), 0o644); err != nil {
			return err
		}
	}
	ctrd, err := l.startDaemon(n.Name+"-containerd", &n, nil, "containerd", "--config", filepath.Join(n.Dir, "containerd.toml"))
	if err != nil {
		return err
	}
	if err := poll(ctx, 30*time.Second, "containerd", func() (bool, string, error) {
		if !l.alive(*ctrd) {
			return false, "", fmt.Errorf("containerd exited:\n%s", tail(ctrd.Log, 15))
		}
		_, err := run(ctx, "ctr", "-a", n.sock(), "version")
		return err == nil, fmt.Sprint(err), nil
	}); err != nil {
		return err
	}
	for _, img := range l.imageTars() {
		if _, err := run(ctx, "ctr", "-a", n.sock(), "-n", "k8s.io", "images", "import", img); err != nil {
			return err
		}
	}
	if _, err := l.startDaemon(n.Name+"-kubelet", &n, nil, l.kube("kubelet"),
		"--config", filepath.Join(n.Dir, "kubelet.yaml"), "--kubeconfig", l.pki(n.Name+".kubeconfig"),
		"--hostname-override", n.Name, "--node-ip", n.IP.String(),
		"--root-dir", filepath.Join(n.Dir, "kubelet"), "--cert-dir", filepath.Join(n.Dir, "kubelet", "pki"), "--v=1"); err != nil {
		return err
	}
	_, err = l.startDaemon(n.Name+"-kube-proxy", &n, nil, l.kube("kube-proxy"),
		"--config", filepath.Join(n.Dir, "kube-proxy.yaml"))
	return err
}

func (l *Lab) imageTars() []string {
	var out []string
	for _, e := range names(filepath.Join(l.opts.Dir, "images")) {
		if strings.HasSuffix(e, ".tar") {
			out = append(out, filepath.Join(l.opts.Dir, "images", e))
		}
	}
	return out
}

// routePodCIDRs routes each node's podCIDR via the node's underlay address
// on the host, so that processes on the host (the API server calling the
// webhook's pods) reach pod IPs; the node forwards into its cni0. The routes
// go through the lab's bridge and disappear with it.
func (l *Lab) routePodCIDRs(ctx context.Context, cs kubernetes.Interface) error {
	for _, n := range l.state.Nodes {
		node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if _, err := run(ctx, "ip", "route", "replace", node.Spec.PodCIDR, "via", n.IP.String(), "dev", l.bridge()); err != nil {
			return err
		}
	}
	return nil
}
