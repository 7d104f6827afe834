package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"kubeipam/internal/pki"
)

func (l *Lab) pki(name string) string { return filepath.Join(l.opts.Dir, "pki", name) }

func (l *Lab) apiURL() string { return "https://" + addrPort(l.opts.HostIP(), l.opts.APIPort) }

// PluginUser is the identity of the CNI plugins' kubeconfig; RBAC lets it
// get pods and nothing else (deploy/rbac.yaml grants the same).
const PluginUser = "kube-ipam-plugin"

func (l *Lab) writePKI(context.Context) error {
	dir := filepath.Join(l.opts.Dir, "pki")
	ca, err := newAuthority(dir, "ca", "kube-ipam-lab-ca")
	if err != nil {
		return err
	}
	hostIP := net.IP(l.opts.HostIP().AsSlice())
	specs := []certSpec{
		{"apiserver", pki.Leaf{CN: "kube-apiserver", Server: true,
			IPs: []net.IP{net.IPv4(127, 0, 0, 1), hostIP, net.IPv4(10, 96, 0, 1)},
			DNS: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}}},
		{"admin", pki.Leaf{CN: "lab-admin", Orgs: []string{"system:masters"}, Client: true}},
		{"apiserver-kubelet-client", pki.Leaf{CN: "kube-apiserver-kubelet-client", Orgs: []string{"system:masters"}, Client: true}},
		{"controller-manager", pki.Leaf{CN: "system:kube-controller-manager", Client: true}},
		{"scheduler", pki.Leaf{CN: "system:kube-scheduler", Client: true}},
		{"kube-proxy", pki.Leaf{CN: "system:kube-proxy", Client: true}},
		{"plugin", pki.Leaf{CN: PluginUser, Client: true}},
		{"flannel", pki.Leaf{CN: "flannel", Client: true}},
	}
	for _, s := range specs {
		if err := ca.issue(s); err != nil {
			return err
		}
	}
	if err := writeServiceAccountKeys(dir); err != nil {
		return err
	}
	// The kube-ipam etcd has its own CA: its client certificate opens only
	// kube-ipam's store, never the cluster's.
	eca, err := newAuthority(dir, "etcd-ca", "kube-ipam-lab-etcd-ca")
	if err != nil {
		return err
	}
	if err := eca.issue(certSpec{"etcd-server", pki.Leaf{CN: "kube-ipam-etcd", Server: true,
		IPs: []net.IP{net.IPv4(127, 0, 0, 1), hostIP}}}); err != nil {
		return err
	}
	if err := eca.issue(certSpec{"etcd-client", pki.Leaf{CN: "kube-ipam", Client: true}}); err != nil {
		return err
	}
	for _, kc := range []struct{ file, base string }{
		{l.opts.Kubeconfig(), "admin"}, {l.pki("controller-manager.kubeconfig"), "controller-manager"},
		{l.pki("scheduler.kubeconfig"), "scheduler"}, {l.pki("kube-proxy.kubeconfig"), "kube-proxy"},
		{l.pki("plugin.kubeconfig"), "plugin"}, {l.pki("flannel.kubeconfig"), "flannel"},
	} {
		if err := writeKubeconfig(kc.file, l.apiURL(), l.pki("ca.crt"), l.pki(kc.base)); err != nil {
			return err
		}
	}
	l.ca = ca
	return nil
}

// issueNode writes a node's client and serving certificate and kubeconfig.
func (l *Lab) issueNode(n Node) error {
	if err := l.ca.issue(certSpec{n.Name, pki.Leaf{CN: "system:node:" + n.Name, Orgs: []string{"system:nodes"},
		Server: true, Client: true, IPs: []net.IP{net.IP(n.IP.AsSlice())}, DNS: []string{n.Name}}}); err != nil {
		return err
	}
	return writeKubeconfig(l.pki(n.Name+".kubeconfig"), l.apiURL(), l.pki("ca.crt"), l.pki(n.Name))
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// EtcdURL is the kube-ipam etcd's client URL (TLS, client certificates).
func (o Options) EtcdURL() string { return "https://" + addrPort(o.HostIP(), 2379) }

func (l *Lab) startEtcds(ctx context.Context) error {
	ports := make([]int, 3)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return err
		}
		ports[i] = p
	}
	k8sClient := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	k8sPeer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	p, err := l.startDaemon("etcd-kubernetes", nil, nil, "etcd", "--name", "kubernetes",
		"--data-dir", filepath.Join(l.opts.Dir, "etcd-kubernetes"),
		"--listen-client-urls", k8sClient, "--advertise-client-urls", k8sClient,
		"--listen-peer-urls", k8sPeer, "--initial-advertise-peer-urls", k8sPeer,
		"--initial-cluster", "kubernetes="+k8sPeer, "--log-level", "warn")
	if err != nil {
		return err
	}
	l.etcdKube = k8sClient
	if err := l.waitHTTP(ctx, p, k8sClient+"/health", nil); err != nil {
		return err
	}
	ipamPeer := fmt.Sprintf("http://127.0.0.1:%d", ports[2])
	p, err = l.startDaemon("etcd-kube-ipam", nil, nil, "etcd", "--name", "kube-ipam",
		"--data-dir", filepath.Join(l.opts.Dir, "etcd-kube-ipam"),
		"--listen-client-urls", l.opts.EtcdURL(), "--advertise-client-urls", l.opts.EtcdURL(),
		"--listen-peer-urls", ipamPeer, "--initial-advertise-peer-urls", ipamPeer,
		"--initial-cluster", "kube-ipam="+ipamPeer, "--log-level", "warn",
		"--cert-file", l.pki("etcd-server.crt"), "--key-file", l.pki("etcd-server.key"),
		"--client-cert-auth", "--trusted-ca-file", l.pki("etcd-ca.crt"))
	if err != nil {
		return err
	}
	tc, err := l.tlsConfig("etcd-ca.crt", "etcd-client")
	if err != nil {
		return err
	}
	return l.waitHTTP(ctx, p, l.opts.EtcdURL()+"/health", tc)
}

func (l *Lab) tlsConfig(ca, client string) (*tls.Config, error) {
	pem, err := os.ReadFile(l.pki(ca))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cert, err := tls.LoadX509KeyPair(l.pki(client+".crt"), l.pki(client+".key"))
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}, nil
}

// waitHTTP polls url until it answers 200, failing early (with the log's
// tail) when the daemon dies.
func (l *Lab) waitHTTP(ctx context.Context, p *Proc, url string, tc *tls.Config) error {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	err := poll(ctx, 60*time.Second, p.Name+" ready", func() (bool, string, error) {
		if !l.alive(*p) {
			return false, "", fmt.Errorf("%s exited:\n%s", p.Name, tail(p.Log, 15))
		}
		resp, err := c.Get(url)
		if err != nil {
			return false, err.Error(), nil
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status, nil
	})
	if err != nil {
		return fmt.Errorf("%w (log: %s)", err, p.Log)
	}
	return nil
}

func (l *Lab) kube(name string) string { return filepath.Join(l.opts.KubeBin, name) }

func (l *Lab) controlPlane(ctx context.Context) error {
	host := l.opts.HostIP().String()
	api, err := l.startDaemon("kube-apiserver", nil, nil, l.kube("kube-apiserver"),
		"--bind-address", host, "--secure-port", strconv.Itoa(l.opts.APIPort), "--advertise-address", host,
		"--etcd-servers", l.etcdKube,
		"--client-ca-file", l.pki("ca.crt"),
		"--tls-cert-file", l.pki("apiserver.crt"), "--tls-private-key-file", l.pki("apiserver.key"),
		"--kubelet-client-certificate", l.pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key", l.pki("apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types", "InternalIP,Hostname",
		"--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
		"--allow-privileged=true", "--service-cluster-ip-range", "10.96.0.0/24",
		"--service-node-port-range", "30000-32767",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", l.pki("sa.pub"), "--service-account-signing-key-file", l.pki("sa.key"),
		"--profiling=false", "--v=1",
		// The API server runs on the host, outside the pod network and
		// without kube-proxy: it calls the webhook Service's endpoints (pod
		// IPs, reached through routePodCIDRs) instead of its ClusterIP.
		"--enable-aggregator-routing=true")
	if err != nil {
		return err
	}
	tc, err := l.tlsConfig("ca.crt", "admin")
	if err != nil {
		return err
	}
	if err := l.waitHTTP(ctx, api, l.apiURL()+"/readyz", tc); err != nil {
		return err
	}
	l.state.APIUp = true
	if err := l.saveState(); err != nil {
		return err
	}
	kcm := l.pki("controller-manager.kubeconfig")
	if _, err := l.startDaemon("kube-controller-manager", nil, nil, l.kube("kube-controller-manager"),
		"--kubeconfig", kcm, "--authentication-kubeconfig", kcm, "--authorization-kubeconfig", kcm,
		"--controllers=*", "--use-service-account-credentials=true",
		"--service-account-private-key-file", l.pki("sa.key"), "--root-ca-file", l.pki("ca.crt"),
		"--cluster-signing-cert-file", l.pki("ca.crt"), "--cluster-signing-key-file", l.pki("ca.key"),
		"--allocate-node-cidrs=true", "--cluster-cidr", ClusterCIDR, "--node-cidr-mask-size=24",
		"--leader-elect=false", "--secure-port=0", "--v=1"); err != nil {
		return err
	}
	sch := l.pki("scheduler.kubeconfig")
	if _, err := l.startDaemon("kube-scheduler", nil, nil, l.kube("kube-scheduler"),
		"--kubeconfig", sch, "--authentication-kubeconfig", sch, "--authorization-kubeconfig", sch,
		"--leader-elect=false", "--secure-port=0", "--v=1"); err != nil {
		return err
	}
	cs, err := l.client()
	if err != nil {
		return err
	}
	// The plugins' identity: get pods, nothing else.
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "kube-ipam-lab-plugin"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}}
	if err := grant(ctx, cs, role, PluginUser); err != nil {
		return err
	}
	// flanneld's kube subnet manager: the nodes' podCIDR and its annotations.
	if err := grant(ctx, cs, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "kube-ipam-lab-flannel"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch", "patch"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
		}}, "flannel"); err != nil {
		return err
	}
	// Pods must wait for their service account (KCM creates "default").
	return poll(ctx, 60*time.Second, "default service account", func() (bool, string, error) {
		_, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		return true, "", nil
	})
}

// grant creates role and binds it to user.
func grant(ctx context.Context, cs kubernetes.Interface, role *rbacv1.ClusterRole, user string) error {
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: user}}}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// client is an admin clientset.
func (l *Lab) client() (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", l.opts.Kubeconfig())
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 30 * time.Second
	return kubernetes.NewForConfig(cfg)
}

// webhookProbe is a pod the webhook must refuse (never created: waitWebhook
// dry-runs it).
const webhookProbe = `apiVersion: v1
kind: Pod
metadata:
  name: kube-ipam-webhook-probe
  namespace: default
  annotations:
    kube-ipam.ip: "not-an-address"
spec:
  containers:
    - name: c
      image: ` + BusyboxImage + `
`
