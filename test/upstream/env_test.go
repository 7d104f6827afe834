// Package upstream runs kube-ipam, and kube-tier after it, under upstream
// multus: the real multus-cni v4.2.4 thin plugin (hack/multus.sh builds it
// from the Go module proxy), in Kubernetes mode, against a real
// kube-apiserver serving the repository's NetworkAttachmentDefinition CRD
// (deploy/crds), a real etcd, and the real bridge, host-local and macvlan
// plugins in real network namespaces. Nothing of ours stands between the
// runtime and multus: the test is the runtime (libcni, as containerd
// calls it) and multus does the rest, as on a node where kube-ipam was
// installed with kube-ipam-install --ipam-only beside an existing multus.
//
// Layout. multus reaches the API server and kube-ipam reaches etcd on
// 127.0.0.1 of the root namespace, so every plugin runs in the test
// process's (root) namespace, as on a node; only interfaces live elsewhere:
//
//	peer netns:  eth0 10.188.0.250/16   (another host on the database segment)
//	               |  veth
//	root netns:  umpXXXX   macvlan parent of the database network (net1)
//	             ubrXXXX   the bridge the cluster network's bridge plugin makes
//	pod netns:   eth0  bridge + host-local (the cluster network, standing in for flannel)
//	             net1  macvlan + kube-ipam (+ kube-tier), NAD db/db-net
//
// The database network is the NAD of deploy/examples/nad/db-net.yaml with
// the test's etcd, kubeconfig, parent link and log files substituted.
package upstream

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/plugins/pkg/ns"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubeipam/internal/kubeapi"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

// MultusVersion is the upstream release hack/multus.sh builds.
const MultusVersion = "v4.2.4"

// dbNetwork is the CNI network name inside NAD db-net: the guide's k8snet2,
// under which kube-ipam keeps the database network's allocations.
const dbNetwork = "k8snet2"

// env is one control plane, etcd, database segment and cluster-network
// bridge, shared by the pods of one test.
type env struct {
	t         *testing.T
	kube      *testenv.Kube
	etcd      *testenv.Etcd
	api       *kubeapi.Client
	multusDir string // hack/multus.sh's output: multus, multus-shim, multus-daemon
	binDir    string // multus's binDir: kube-ipam and kube-tier
	pluginDir string // the reference plugins
	cacheDir  string // the runtime's libcni cache
	cniDir    string // multus's scratch and result cache
	confDir   string // multus's confDir
	logDir    string
	parent    string   // macvlan parent of the database network (root netns)
	peer      ns.NetNS // the other end of parent: 10.188.0.250/16
	bridge    string   // made by the bridge plugin in the root netns
	tier      bool     // kube-tier is in binDir and runs after macvlan
	stderr    *os.File // the plugins' stderr (multus's klog lines)
}

// multusDir runs hack/multus.sh, which builds upstream multus at the pinned
// version unless its cache has it (make multus, make test), and returns its
// directory.
func multusDir(t *testing.T) string {
	t.Helper()
	dir := testenv.HackDir(t, "multus.sh")
	v, err := exec.Command(filepath.Join(dir, "multus"), "-version").Output()
	if err != nil || !strings.HasPrefix(string(v), "multus: version:"+MultusVersion+"(") {
		t.Fatalf("%s/multus -version: %q %v, want %s", dir, v, err, MultusVersion)
	}
	return dir
}

// tierBinary returns kube-tier (testenv.Binary: from KUBE_IPAM_BIN_DIR, or
// built) when the module has ./cmd/kube-tier, else "". Once the command
// exists, a KUBE_IPAM_BIN_DIR without it fails the test rather than
// silently leaving kube-tier out.
func tierBinary(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(filepath.Join(testenv.ModuleRoot(t), "cmd", "kube-tier")); err != nil {
		return ""
	}
	return testenv.Binary(t, "kube-tier")
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testenv.RequireRoot(t)
	e := &env{t: t, pluginDir: testenv.CNIPluginDir(t), multusDir: multusDir(t),
		binDir: t.TempDir(), cacheDir: t.TempDir(), cniDir: t.TempDir(), confDir: t.TempDir(), logDir: t.TempDir()}
	var err error
	if e.stderr, err = os.Create(filepath.Join(e.logDir, "stderr.log")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.stderr.Close()
		if t.Failed() {
			for _, f := range []string{"multus.log", "stderr.log", "kube-ipam.log", "kube-tier.log"} {
				t.Logf("%s:\n%s", f, tail(filepath.Join(e.logDir, f)))
			}
		}
	})
	bins := map[string]string{"kube-ipam": testenv.Binary(t, "kube-ipam")}
	if p := tierBinary(t); p != "" {
		bins["kube-tier"], e.tier = p, true
	} else {
		t.Log("no ./cmd/kube-tier in this module: db-net runs macvlan + kube-ipam only")
	}
	for name, target := range bins {
		if err := os.Symlink(target, filepath.Join(e.binDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	e.etcd = testenv.StartEtcd(t)
	e.kube = testenv.StartKube(t, testenv.KubeOptions{Etcd: e.etcd})
	e.kube.InstallCRDs(t, testenv.NADCRD)
	if e.api, err = kubeapi.NewClient(e.kube.Kubeconfig, "test-upstream", 30*time.Second); err != nil {
		t.Fatal(err)
	}

	// The database segment: the macvlan parent in the root namespace, its
	// peer in a namespace of its own with an address on the network.
	e.peer, e.parent = testenv.SegmentPeer(t, "ump", "10.188.0.250/16")
	// The bridge plugin creates the cluster network's bridge in this (root)
	// namespace and never deletes it: we do. No isGateway, so it neither
	// gets an address nor turns on forwarding in the root namespace.
	e.bridge = testenv.UniqueName("ubr")
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(e.bridge); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("deleting bridge %s: %v", e.bridge, err)
			}
		}
	})
	if _, err := e.kube.Client.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "db"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return e
}

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return string(b[max(0, len(b)-6<<10):])
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// bridgePlugin is the cluster network's plugin config: the bridge plugin
// with host-local keeping its leases in dataDir.
func (e *env) bridgePlugin(dataDir string) map[string]any {
	return map[string]any{"type": "bridge", "bridge": e.bridge,
		"ipam": map[string]any{"type": "host-local", "subnet": "10.244.60.0/24", "dataDir": dataDir}}
}

// clusterConf writes the cluster network as a single-plugin config file
// and returns its path.
func (e *env) clusterConf(name, dataDir string) string {
	conf := e.bridgePlugin(dataDir)
	conf["cniVersion"], conf["name"] = "0.3.1", name
	return e.writeConf(name+".conf", conf)
}

// clusterConflist is the cluster network as a conflist (as flannel's
// 10-flannel.conflist is).
func (e *env) clusterConflist(name, dataDir string) map[string]any {
	return map[string]any{"cniVersion": "0.3.1", "name": name, "plugins": []any{e.bridgePlugin(dataDir)}}
}

func (e *env) writeConf(file string, conf map[string]any) string {
	path := filepath.Join(e.confDir, file)
	if err := os.WriteFile(path, mustJSON(conf), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// multusConf is multus's own config (00-multus.conf) in Kubernetes mode.
func (e *env) multusConf(clusterNetwork string) []byte {
	return mustJSON(map[string]any{
		"cniVersion": "0.3.1", "name": "multus-cni-network", "type": "multus",
		"kubeconfig": e.kube.Kubeconfig, "clusterNetwork": clusterNetwork,
		"confDir": e.confDir, "cniDir": e.cniDir, "binDir": e.binDir,
		"logFile": filepath.Join(e.logDir, "multus.log"), "logLevel": "debug", "logToStderr": false,
	})
}

// dbNetConfig is spec.config of NAD db-net: deploy/examples/nad/db-net.yaml
// with the test's parent link, etcd, kubeconfig and log files (and without
// kube-tier when it is not built).
func (e *env) dbNetConfig() string { return string(mustJSON(e.dbNet(e.tier))) }

// dbNet is the conflist of dbNetConfig, with or without kube-tier.
func (e *env) dbNet(withTier bool) map[string]any {
	plugins := []any{map[string]any{
		"type": "macvlan", "master": e.parent, "mode": "bridge",
		"capabilities": map[string]any{"ips": true},
		"ipam": map[string]any{
			"name": "kube-subnet", "type": "kube-ipam", "kubeConfig": e.kube.Kubeconfig,
			"etcdConfig": map[string]any{"etcdURL": strings.Join(e.etcd.Endpoints, ",")},
			"subnet":     "10.188.0.0/16", "rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.200", "gateway": "10.188.0.1",
			"logFile": filepath.Join(e.logDir, "kube-ipam.log"), "logLevel": "debug",
		},
	}}
	if withTier {
		plugins = append(plugins, map[string]any{
			"type": "kube-tier", "kubeconfig": e.kube.Kubeconfig,
			"ingress": []any{map[string]any{
				"podSelector": "app in (database-1,database-2)", "from": []string{"10.188.0.0/16"},
				"ports": []any{map[string]any{"protocol": "tcp", "port": 3306}}, "icmp": true,
			}},
			"logFile": filepath.Join(e.logDir, "kube-tier.log"), "logLevel": "debug",
		})
	}
	return map[string]any{"cniVersion": "0.3.1", "name": dbNetwork, "plugins": plugins}
}

// createNAD creates NetworkAttachmentDefinition namespace/name.
func (e *env) createNAD(namespace, name, config string) {
	e.t.Helper()
	nad := nadv1.NetworkAttachmentDefinition{
		TypeMeta:   metav1.TypeMeta{APIVersion: "k8s.cni.cncf.io/v1", Kind: "NetworkAttachmentDefinition"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       nadv1.NetworkAttachmentDefinitionSpec{Config: config},
	}
	resp, err := e.api.Do(context.Background(), kubeapi.Request{Method: "POST",
		Path: "/apis/k8s.cni.cncf.io/v1/namespaces/" + namespace + "/network-attachment-definitions", Body: mustJSON(nad)})
	if err != nil || resp.Code != 201 {
		e.t.Fatalf("creating NAD %s/%s: %v %v", namespace, name, err, resp.Status())
	}
}

// pod is a pod object in the API server and its sandbox: a network
// namespace and a container ID.
type pod struct {
	namespace, name, uid string
	netns                ns.NetNS
	cid                  string
	conf                 []byte // the multus config the runtime used
}

// newPod creates the pod in the API server (labels app=<app>, and the
// networks annotation when networks is not empty) and its sandbox.
func (e *env) newPod(namespace, name, app, networks string) *pod {
	e.t.Helper()
	ann := map[string]string{}
	if networks != "" {
		ann[nadv1.NetworkAttachmentAnnot] = networks
	}
	p, err := e.kube.Client.CoreV1().Pods(namespace).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app": app}, Annotations: ann},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "img:v1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("creating pod %s/%s: %v", namespace, name, err)
	}
	return &pod{namespace: namespace, name: name, uid: string(p.UID), netns: testenv.NewNS(e.t), cid: "cid" + rand.Text()[:16]}
}

// deletePod deletes the pod object (at once: no kubelet is there to wait
// for), so that a pod of the same name can be created again.
func (e *env) deletePod(p *pod) {
	e.t.Helper()
	zero := int64(0)
	if err := e.kube.Client.CoreV1().Pods(p.namespace).Delete(context.Background(), p.name,
		metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		e.t.Fatal(err)
	}
}

// rt is what kubelet's runtime passes: CNI_ARGS with the pod's keys.
func (p *pod) rt() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: p.cid, NetNS: p.netns.Path(), IfName: "eth0", Args: [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", p.namespace}, {"K8S_POD_NAME", p.name},
		{"K8S_POD_INFRA_CONTAINER_ID", p.cid}, {"K8S_POD_UID", p.uid}}}
}

func (e *env) cni() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{e.multusDir, e.binDir, e.pluginDir}, e.cacheDir,
		&invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: e.stderr}})
}

func (e *env) netconf(conf []byte) *libcni.PluginConfig {
	e.t.Helper()
	nc, err := libcni.NetworkPluginConfFromBytes(conf)
	if err != nil {
		e.t.Fatal(err)
	}
	return nc
}

// add runs the runtime's ADD of p through multus with conf. A DEL is
// registered first, so that whatever ADD leaves behind is torn down.
func (e *env) add(p *pod, conf []byte) error {
	e.t.Helper()
	p.conf = conf
	e.t.Cleanup(func() { _ = e.del(p) })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := e.cni().AddNetwork(ctx, e.netconf(conf), p.rt())
	return err
}

func (e *env) mustAdd(p *pod, conf []byte) {
	e.t.Helper()
	if err := e.add(p, conf); err != nil {
		e.t.Fatalf("ADD %s/%s through multus: %v", p.namespace, p.name, err)
	}
}

// del runs the runtime's DEL of p through multus.
func (e *env) del(p *pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return e.cni().DelNetwork(ctx, e.netconf(p.conf), p.rt())
}

// networkStatus is the pod's k8s.v1.cni.cncf.io/network-status annotation
// as multus wrote it (nil when absent).
func (e *env) networkStatus(p *pod) []nadv1.NetworkStatus {
	e.t.Helper()
	got, err := e.kube.Client.CoreV1().Pods(p.namespace).Get(context.Background(), p.name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	v, ok := got.Annotations[nadv1.NetworkStatusAnnot]
	if !ok {
		return nil
	}
	var st []nadv1.NetworkStatus
	if err := json.Unmarshal([]byte(v), &st); err != nil {
		e.t.Fatalf("%s of %s/%s: %v: %s", nadv1.NetworkStatusAnnot, p.namespace, p.name, err, v)
	}
	return st
}

// snapshot reads kube-ipam's store of the database network.
func (e *env) snapshot() *store.Snapshot {
	e.t.Helper()
	snap, err := store.New(e.etcd.Client(e.t), "/kube-ipam", dbNetwork).Snapshot(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return snap
}

// holder is the record of address a in kube-ipam's store (nil if free).
func (e *env) holder(a string) *store.Record {
	e.t.Helper()
	if r := e.snapshot().Record(netip.MustParseAddr(a)); r != nil {
		return r.Record
	}
	return nil
}

// leases lists the addresses host-local holds in dataDir (its files named
// by address, under a directory per network).
func leases(t *testing.T, dataDir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dataDir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if _, perr := netip.ParseAddr(d.Name()); perr == nil && !d.IsDir() {
			out = append(out, d.Name())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// links lists the links of p's namespace other than lo.
func links(t *testing.T, p *pod) []string {
	t.Helper()
	var out []string
	if err := p.netns.Do(func(ns.NetNS) error {
		ls, err := netlink.LinkList()
		for _, l := range ls {
			if l.Attrs().Name != "lo" {
				out = append(out, l.Attrs().Name)
			}
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// ping sends one echo request from the peer to addr.
func (e *env) ping(addr string) error {
	if err := testenv.Ping(e.peer, addr, 3*time.Second); err != nil {
		return fmt.Errorf("from the peer: %w", err)
	}
	return nil
}
