// Package meta runs kube-multus as container runtimes do (a separate
// process, through libcni) with the seed's /etc/cni/net.d/10-multus.conf,
// the real bridge/host-local/macvlan plugins, the real kube-ipam and a real
// etcd, on several "nodes" whose pods are network namespaces, and proves
// the seed's scenarios and the tier policies with real traffic.
//
// Layout. kube-ipam must reach etcd on 127.0.0.1 of the root namespace, so
// every CNI chain runs in the test process's (root) namespace, as the
// plugins of a real node do; only interfaces live elsewhere:
//
//	underlay netns:  br-XXXX  (the L2 segment joining the nodes)
//	                   |   |   |
//	root netns:     kmnA  kmnB  kmnC   one veth end per node: that node's "eth0"
//	                                   (macvlan parent), the other end on br-XXXX
//	                kmbA  kmbB  kmbC   per-node bridges made by the bridge plugin
//	pod netns:      eth0 (bridge/host-local, standing in for flannel)
//	                net1 (macvlan on the node's kmnX, kube-ipam)
//
// Substitutions made to the seed's config, and nothing else:
//   - delegates[0] (flannel, which needs flanneld) becomes the bridge plugin
//     with host-local on the node's pod CIDR; it keeps "masterplugin"
//     (and, without an API server, gets kubeMultus.dropArgs ["IP"]: below);
//   - delegates[1] "master": "eth0" becomes the node's parent kmnX (each
//     node's "eth0" is its underlay interface);
//   - ipam.etcdConfig points at the test's etcd (plain HTTP, no certificates)
//     and the kube-ipam log goes to a temp dir;
//   - with an API server (newClusterAPI): ipam.kubeConfig and the meta
//     config's kubeconfig are the test apiserver's;
//   - without one (newCluster): ipam.kubeConfig is dropped and
//     "podLookup": false is set;
//   - cniDir, binDir and logFile of the meta config point at temp dirs.
//
// Fixed addresses: the seed's database pods get 10.188.0.218/.219 from pod
// annotations. TestSeedScenarioAPI does exactly that with a real
// kube-apiserver. The other tests skip the API server (faster, and no
// apiserver in the fault tests): they set "podLookup": false and pass the
// address as CNI_ARGS IP=10.188.0.219, which kube-ipam claims exactly like
// an annotated fixed address. Multus passes CNI_ARGS to every delegate and
// host-local would try to claim IP= too, so there the master delegate gets
// kubeMultus.dropArgs ["IP"].
package meta

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubeipam/internal/seed"
	"kubeipam/internal/testenv"
)

type cluster struct {
	t         *testing.T
	etcd      *testenv.Etcd
	binDir    string // multus-cni, kube-multus and kube-ipam
	pluginDir string // Debian's reference plugins
	cacheDir  string // the runtime's libcni cache
	underlay  ns.NetNS
	segment   string // the underlay bridge
	nodes     []*node
	seed      map[string]any
	tweak     func(conf map[string]any) // applied to each node's config
	kube      *testenv.Kube             // nil: no API server (podLookup false, IP=)
}

type node struct {
	idx            int
	parent, bridge string
	cniDir, logDir string
	conf           []byte // this node's 10-multus.conf
}

type pod struct {
	name, namespace string
	netns           ns.NetNS
	node            *node
	cid             string
	args            [][2]string
	deleted         bool
}

func hexID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newCluster starts etcd, lays out the underlay and n nodes, and prepares
// each node's config from the seed's 10-multus.conf; tweak may change the
// parsed config (e.g. add a kubeMultus policy) before it is specialised.
func newCluster(t *testing.T, n int, tweak func(conf map[string]any)) *cluster {
	t.Helper()
	return startCluster(t, n, tweak, false)
}

// newClusterAPI is newCluster with a real kube-apiserver: kube-ipam reads
// the pods' annotations, kube-multus their labels, through its kubeconfig.
func newClusterAPI(t *testing.T, n int, tweak func(conf map[string]any)) *cluster {
	t.Helper()
	return startCluster(t, n, tweak, true)
}

func startCluster(t *testing.T, n int, tweak func(conf map[string]any), api bool) *cluster {
	t.Helper()
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("ping not installed (apt-get install iputils-ping)")
	}
	c := &cluster{t: t, pluginDir: testenv.CNIPluginDir(t), cacheDir: t.TempDir(), binDir: t.TempDir()}
	for name, target := range map[string]string{
		"multus-cni": testenv.Binary(t, "kube-multus"), "kube-multus": testenv.Binary(t, "kube-multus"),
		"kube-ipam": testenv.Binary(t, "kube-ipam"),
	} {
		if err := os.Symlink(target, filepath.Join(c.binDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	c.etcd = testenv.StartEtcd(t)
	if api {
		c.kube = testenv.StartKube(t, testenv.KubeOptions{Etcd: c.etcd})
	}
	raw := seed.MultusConf
	if err := json.Unmarshal(raw, &c.seed); err != nil {
		t.Fatal(err)
	}
	c.tweak = tweak

	c.underlay = testenv.NewNS(t)
	c.segment = testenv.UniqueName("br-")
	h := nsHandle(t, c.underlay)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: c.segment}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatalf("underlay bridge: %v", err)
	}
	if err := h.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		c.addNode(t, i, h)
	}
	return c
}

func nsHandle(t *testing.T, n ns.NetNS) *netlink.Handle {
	t.Helper()
	var h *netlink.Handle
	if err := n.Do(func(ns.NetNS) error {
		var err error
		h, err = netlink.NewHandle()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func (c *cluster) addNode(t *testing.T, i int, underlay *netlink.Handle) {
	nd := &node{idx: i, parent: testenv.UniqueName("kmn"), bridge: testenv.UniqueName("kmb"), cniDir: t.TempDir(), logDir: t.TempDir()}
	port := testenv.UniqueName("kmu")
	testenv.VethPair(t, nil, nd.parent, c.underlay, port)
	l, err := underlay.LinkByName(port)
	if err == nil {
		var br netlink.Link
		if br, err = underlay.LinkByName(c.segment); err == nil {
			err = underlay.LinkSetMaster(l, br)
		}
	}
	if err != nil {
		t.Fatalf("attaching %s to %s: %v", port, c.segment, err)
	}
	// The bridge plugin creates the node's pod bridge in this (root)
	// namespace; it never deletes it, so we do.
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(nd.bridge); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("deleting bridge %s: %v", nd.bridge, err)
			}
		}
	})
	nd.conf = c.nodeConf(t, nd)
	c.nodes = append(c.nodes, nd)
}

// nodeConf specialises the seed's config for one node (see the package
// comment for the list of substitutions).
func (c *cluster) nodeConf(t *testing.T, nd *node) []byte {
	var conf map[string]any
	b, _ := json.Marshal(c.seed)
	_ = json.Unmarshal(b, &conf)
	conf["cniDir"] = nd.cniDir
	conf["binDir"] = c.binDir
	conf["logFile"] = filepath.Join(nd.logDir, "kube-multus.log")
	conf["logLevel"] = "debug"
	conf["logToStderr"] = false
	delegates := conf["delegates"].([]any)
	flannel := delegates[0].(map[string]any)
	if flannel["type"] != "flannel" {
		t.Fatalf("seed delegates[0] is %v, not flannel", flannel["type"])
	}
	delegates[0] = map[string]any{
		"name": flannel["name"], "type": "bridge", "masterplugin": flannel["masterplugin"], "bridge": nd.bridge,
		"ipam": map[string]any{"type": "host-local", "subnet": fmt.Sprintf("10.244.%d.0/24", 10+nd.idx),
			"dataDir": filepath.Join(nd.cniDir, "host-local")},
	}
	if c.kube == nil {
		delegates[0].(map[string]any)["kubeMultus"] = map[string]any{"dropArgs": []string{"IP"}}
	} else {
		conf["kubeconfig"] = c.kube.Kubeconfig
	}
	mv := delegates[1].(map[string]any)
	if mv["master"] != "eth0" {
		t.Fatalf("seed delegates[1].master is %v, not eth0", mv["master"])
	}
	mv["master"] = nd.parent
	ipam := mv["ipam"].(map[string]any)
	ipam["etcdConfig"] = map[string]any{"etcdURL": strings.Join(c.etcd.Endpoints, ",")}
	if c.kube != nil {
		ipam["kubeConfig"] = c.kube.Kubeconfig
	} else {
		delete(ipam, "kubeConfig")
		ipam["podLookup"] = false
	}
	ipam["logFile"] = filepath.Join(nd.logDir, "kube-ipam.log")
	if _, err := os.Stat("/etc/resolv.conf"); err != nil {
		delete(ipam, "resolvConf")
	}
	if c.tweak != nil {
		c.tweak(conf)
	}
	out, _ := json.Marshal(conf)
	return out
}

func (c *cluster) cni() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{c.binDir, c.pluginDir}, c.cacheDir, nil)
}

func (c *cluster) netconf(conf []byte) *libcni.PluginConfig {
	nc, err := libcni.NetworkPluginConfFromBytes(conf)
	if err != nil {
		c.t.Fatal(err)
	}
	return nc
}

func (p *pod) rt() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: p.cid, NetNS: p.netns.Path(), IfName: "eth0", Args: p.args}
}

// newPod creates a pod namespace on nd and runs ADD as kubelet would
// (CNI_ARGS with IgnoreUnknown and the pod keys; fixedIP adds IP=).
func (c *cluster) newPod(nd *node, namespace, name, fixedIP string) (*pod, error) {
	c.t.Helper()
	p := &pod{name: name, namespace: namespace, netns: testenv.NewNS(c.t), node: nd, cid: "cid" + hexID(8)}
	uid := "uid-" + name
	if c.kube != nil {
		uid = c.apiPod(namespace, name, nil, nil)
	}
	p.args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", namespace}, {"K8S_POD_NAME", name},
		{"K8S_POD_INFRA_CONTAINER_ID", p.cid}, {"K8S_POD_UID", uid}}
	if fixedIP != "" {
		p.args = append(p.args, [2]string{"IP", fixedIP})
	}
	// Registered before ADD: whatever ADD leaves behind is torn down.
	c.t.Cleanup(func() { _ = c.del(p) })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := c.cni().AddNetwork(ctx, c.netconf(nd.conf), p.rt())
	return p, err
}

// apiPod returns the UID of pod namespace/name in the API server, creating
// it (and its namespace) with labels and annotations if it does not exist.
func (c *cluster) apiPod(namespace, name string, labels, annotations map[string]string) string {
	c.t.Helper()
	ctx := context.Background()
	pods := c.kube.Client.CoreV1().Pods(namespace)
	if p, err := pods.Get(ctx, name, metav1.GetOptions{}); err == nil {
		return string(p.UID)
	}
	_, _ = c.kube.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{})
	p, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: labels, Annotations: annotations},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "img:v1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatalf("creating pod %s/%s: %v", namespace, name, err)
	}
	return string(p.UID)
}

// deleteAPIPod removes a pod from the API server (a StatefulSet pod that is
// re-created gets a new UID).
func (c *cluster) deleteAPIPod(namespace, name string) {
	c.t.Helper()
	zero := int64(0)
	if err := c.kube.Client.CoreV1().Pods(namespace).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) mustPod(nd *node, namespace, name, fixedIP string) *pod {
	c.t.Helper()
	p, err := c.newPod(nd, namespace, name, fixedIP)
	if err != nil {
		c.t.Fatalf("ADD %s/%s on node %d: %v\nkube-multus log:\n%s\nkube-ipam log:\n%s", namespace, name, nd.idx, err,
			tail(filepath.Join(nd.logDir, "kube-multus.log")), tail(filepath.Join(nd.logDir, "kube-ipam.log")))
	}
	return p
}

func (c *cluster) del(p *pod) error {
	if p.deleted {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := c.cni().DelNetwork(ctx, c.netconf(p.node.conf), p.rt())
	if err == nil {
		p.deleted = true
	}
	return err
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	return string(b[max(0, len(b)-3000):])
}

// addrs lists the IPv4 addresses of dev in p ("" and an error when dev
// does not exist).
func (p *pod) addrs(dev string) ([]string, error) {
	var out []string
	err := p.netns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		as, err := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range as {
			out = append(out, a.IPNet.String())
		}
		return err
	})
	return out, err
}

func (p *pod) net1IP(t *testing.T) string {
	t.Helper()
	as, err := p.addrs("net1")
	if err != nil || len(as) != 1 {
		t.Fatalf("%s: net1 addresses %v (%v)", p.name, as, err)
	}
	ip, _, _ := strings.Cut(as[0], "/")
	return ip
}

// ping sends one echo request from p (1 s timeout).
func (p *pod) ping(ip string) error { return testenv.Ping(p.netns, ip, time.Second) }

// pingEventually retries briefly: macvlan neighbours resolve on first use.
func (p *pod) pingEventually(ip string) error {
	var err error
	for range 3 {
		if err = p.ping(ip); err == nil {
			return nil
		}
	}
	return err
}

func (p *pod) dial(addr string) error { return testenv.DialTCP(p.netns, addr) }

func (p *pod) listen(t *testing.T, addr string) { testenv.ListenTCP(t, p.netns, addr) }

// attachments counts kube-ipam's records of cid on the secondary network.
func (c *cluster) attachments(cid string) int64 {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.etcd.Client(c.t).Get(ctx, "/kube-ipam/v1/networks/k8snet2/att/"+cid+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.Count
}

// holder returns the container holding ip on the secondary network ("" if free).
func (c *cluster) holder(ip string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.etcd.Client(c.t).Get(ctx, "/kube-ipam/v1/networks/k8snet2/att/", clientv3.WithPrefix())
	if err != nil {
		c.t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		var a struct {
			ContainerID string   `json:"containerID"`
			IPs         []string `json:"ips"`
		}
		if json.Unmarshal(kv.Value, &a) == nil {
			for _, x := range a.IPs {
				if x == ip {
					return a.ContainerID
				}
			}
		}
	}
	return ""
}

func cniCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}
