// Package k8s runs kube-ipam against a real Kubernetes control plane
// (kube-apiserver, controller-manager and scheduler v1.37.2, fake nodes): the
// test plays the kubelet, invoking the real binary for each scheduled pod.
package k8s

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"kubeipam/internal/testenv"
)

// cluster is one test's control plane, store and plugin.
type cluster struct {
	t    *testing.T
	kube *testenv.Kube
	etcd *testenv.Etcd
	bin  string
	log  string
}

func newCluster(t *testing.T, nodes ...string) *cluster {
	t.Helper()
	bin := testenv.Binary(t, "kube-ipam")
	k := testenv.StartKube(t, testenv.KubeOptions{ControllerManager: true, Scheduler: true})
	for _, n := range nodes {
		k.AddNode(t, n)
	}
	c := &cluster{t: t, kube: k, etcd: testenv.StartEtcd(t), bin: bin, log: filepath.Join(t.TempDir(), "kube-ipam.log")}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(c.log)
			t.Logf("kube-ipam log:\n%s", b)
		}
	})
	return c
}

// conf is the seed's k8snet2 delegate, pointed at the test's apiserver and etcd.
func (c *cluster) conf(kubeconfig string, extra map[string]any) []byte {
	ipam := map[string]any{
		"name": "kube-subnet", "type": "kube-ipam", "kubeConfig": kubeconfig,
		"etcdConfig": map[string]any{"etcdURL": strings.Join(c.etcd.Endpoints, ",")},
		"subnet":     "10.188.0.0/16", "rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.200",
		"gateway": "10.188.0.1", "routes": []any{map[string]any{"dst": "0.0.0.0/0"}},
		"logFile": c.log, "logLevel": "debug", "timeout": "10s",
	}
	for k, v := range extra {
		ipam[k] = v
	}
	b, _ := json.Marshal(map[string]any{"cniVersion": "0.3.1", "name": "k8snet2", "type": "macvlan", "master": "eth0", "ipam": ipam})
	return b
}

var containerSeq atomic.Int64

// result of one CNI call.
type result struct {
	IP   string
	Code int
	Msg  string
}

// cni runs the real binary for a pod, as the kubelet's runtime would.
func (c *cluster) cni(verb string, conf []byte, p *corev1.Pod, cid string) result {
	c.t.Helper()
	cmd := exec.Command(c.bin)
	cmd.Env = []string{
		"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + cid, "CNI_NETNS=/var/run/netns/" + cid, "CNI_NETNS_OVERRIDE=1",
		"CNI_IFNAME=net1", "CNI_PATH=/opt/cni/bin", "KUBE_IPAM_NODE_NAME=" + p.Spec.NodeName,
		fmt.Sprintf("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=%s;K8S_POD_UID=%s", p.Namespace, p.Name, cid, p.UID),
	}
	cmd.Stdin = bytes.NewReader(conf)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	}
	if jerr := json.Unmarshal(out.Bytes(), &r); jerr != nil && (verb == "ADD" || err != nil) {
		c.t.Fatalf("%s %s/%s: output %q stderr %q: %v", verb, p.Namespace, p.Name, out.String(), stderr.String(), jerr)
	}
	if err == nil && r.Code != 0 {
		c.t.Fatalf("%s exited 0 with an error object %s", verb, out.String())
	}
	res := result{Code: r.Code, Msg: r.Msg}
	if len(r.IPs) > 0 {
		res.IP = r.IPs[0].Address
	}
	return res
}

// add expects success.
func (c *cluster) add(conf []byte, p *corev1.Pod) (ip, cid string) {
	c.t.Helper()
	cid = fmt.Sprintf("%s-%d", strings.ReplaceAll(p.Name, ".", "-"), containerSeq.Add(1))
	r := c.cni("ADD", conf, p, cid)
	if r.Code != 0 {
		c.t.Fatalf("ADD for %s/%s: code %d: %s", p.Namespace, p.Name, r.Code, r.Msg)
	}
	return r.IP, cid
}

func (c *cluster) del(conf []byte, p *corev1.Pod, cid string) {
	c.t.Helper()
	if r := c.cni("DEL", conf, p, cid); r.Code != 0 {
		c.t.Fatalf("DEL %s: code %d: %s", cid, r.Code, r.Msg)
	}
}

// apply creates every object of a manifest file in namespace default.
func (c *cluster) apply(file string) {
	c.t.Helper()
	f, err := os.Open(filepath.Join("testdata", file))
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	ctx := context.Background()
	for {
		var raw map[string]any
		if err := dec.Decode(&raw); err != nil {
			break
		}
		if raw == nil {
			continue
		}
		b, _ := json.Marshal(raw)
		switch raw["kind"] {
		case "StatefulSet":
			var s appsv1.StatefulSet
			must(c.t, json.Unmarshal(b, &s))
			_, err = c.kube.Client.AppsV1().StatefulSets("default").Create(ctx, &s, metav1.CreateOptions{})
		case "Deployment":
			var d appsv1.Deployment
			must(c.t, json.Unmarshal(b, &d))
			_, err = c.kube.Client.AppsV1().Deployments("default").Create(ctx, &d, metav1.CreateOptions{})
		default:
			c.t.Fatalf("%s: unexpected kind %v", file, raw["kind"])
		}
		if err != nil {
			c.t.Fatalf("%s: %v", file, err)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (c *cluster) deletePod(name string) {
	c.t.Helper()
	zero := int64(0)
	must(c.t, c.kube.Client.CoreV1().Pods("default").Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero}))
}

func (c *cluster) cordon(node string, on bool) {
	c.t.Helper()
	patch := fmt.Sprintf(`{"spec":{"unschedulable":%v}}`, on)
	_, err := c.kube.Client.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	must(c.t, err)
}

// TestSeedManifests replays the seed's sections 3.2-3.3 and the database
// re-creation of section 5 against a real control plane.
func TestSeedManifests(t *testing.T) {
	c := newCluster(t, "node-1", "node-2", "node-3")
	conf := c.conf(c.kube.Kubeconfig, nil)
	c.apply("db.yaml")
	c.apply("web.yaml")

	db1 := c.kube.Scheduled(c.t, "app=database-1", 1)[0]
	db2 := c.kube.Scheduled(c.t, "app=database-2", 1)[0]
	if ip, _ := c.add(conf, &db1); ip != "10.188.0.218/16" {
		t.Fatalf("database-1-0 got %s", ip)
	}
	ip2, oldCID := c.add(conf, &db2)
	if ip2 != "10.188.0.219/16" {
		t.Fatalf("database-2-0 got %s", ip2)
	}
	webIPs := map[string]bool{}
	for _, w := range c.kube.Scheduled(c.t, "app=web", 2) {
		ip, _ := c.add(conf, &w)
		if ip == "10.188.0.218/16" || ip == "10.188.0.219/16" || webIPs[ip] {
			t.Fatalf("web pod %s got %s (dynamic addresses must be distinct and not the databases')", w.Name, ip)
		}
		webIPs[ip] = true
	}

	// kubectl delete pod database-2-0: the StatefulSet controller re-creates
	// it; with its node cordoned the scheduler places it on another node.
	c.cordon(db2.Spec.NodeName, true)
	c.deletePod(db2.Name)
	re := c.kube.Scheduled(c.t, "app=database-2", 1, db2.UID)[0]
	if re.Spec.NodeName == db2.Spec.NodeName {
		t.Fatalf("re-created pod landed on the cordoned node %s", re.Spec.NodeName)
	}
	// Its ADD comes before the old container's DEL (a crashed node, say).
	ipNew, newCID := c.add(conf, &re)
	if ipNew != "10.188.0.219/16" {
		t.Fatalf("re-created database-2-0 on %s got %s, want 10.188.0.219/16", re.Spec.NodeName, ipNew)
	}
	c.del(conf, &db2, oldCID) // the late DEL frees nothing
	if r := c.cni("CHECK", withVersion(conf, "0.4.0"), &re, newCID); r.Code != 0 {
		t.Fatalf("CHECK of the re-created pod after the late DEL: %d %s", r.Code, r.Msg)
	}
	// And after a normal delete (DEL first) it comes back again.
	c.cordon(db2.Spec.NodeName, false)
	c.del(conf, &re, newCID)
	c.deletePod(re.Name)
	again := c.kube.Scheduled(c.t, "app=database-2", 1, db2.UID, re.UID)[0]
	if ip, _ := c.add(conf, &again); ip != "10.188.0.219/16" {
		t.Fatalf("database-2-0 re-created after DEL got %s", ip)
	}
}

func withVersion(conf []byte, v string) []byte {
	var m map[string]any
	_ = json.Unmarshal(conf, &m)
	m["cniVersion"] = v
	b, _ := json.Marshal(m)
	return b
}

// TestOrdinalListScaleAndRecreate: one StatefulSet with replicas 2 and an
// ordinal IP list reproduces the seed; scale 2 -> 1 -> 2 gives ordinal 1 its
// address back; sticky dynamic addresses behave the same; a StatefulSet
// re-created under the same name with a new list gets the new addresses.
func TestOrdinalListScaleAndRecreate(t *testing.T) {
	c := newCluster(t, "node-1", "node-2")
	conf := c.conf(c.kube.Kubeconfig, nil)
	ctx := context.Background()
	ann := map[string]string{"kube-ipam.ip-pool": "10.188.0.218,10.188.0.219", "kube-ipam.netmask": "255.255.0.0", "kube-ipam.gateway": "10.188.0.1"}
	_, err := c.kube.Client.AppsV1().StatefulSets("default").Create(ctx, testenv.StatefulSet("database", 2, ann), metav1.CreateOptions{})
	must(t, err)
	_, err = c.kube.Client.AppsV1().StatefulSets("default").Create(ctx, testenv.StatefulSet("cache", 2, nil), metav1.CreateOptions{})
	must(t, err)

	pods := c.kube.Scheduled(c.t, "app=database", 2)
	cids := map[string]string{}
	for i, want := range []string{"10.188.0.218/16", "10.188.0.219/16"} {
		ip, cid := c.add(conf, &pods[i])
		if ip != want {
			t.Fatalf("%s got %s, want %s", pods[i].Name, ip, want)
		}
		cids[pods[i].Name] = cid
	}
	cache := c.kube.Scheduled(c.t, "app=cache", 2)
	cacheIP := map[string]string{}
	for i := range cache {
		ip, cid := c.add(conf, &cache[i])
		cacheIP[cache[i].Name], cids[cache[i].Name] = ip, cid
	}

	// Scale both down to 1: the runtime deletes ordinal 1 (DEL runs).
	for _, name := range []string{"database", "cache"} {
		c.kube.ScaleStatefulSet(c.t, name, 1)
	}
	for _, p := range []corev1.Pod{pods[1], cache[1]} {
		c.kube.FinishTermination(c.t, p)
		c.del(conf, &p, cids[p.Name])
	}
	// Other pods come and go meanwhile and must not take ordinal 1's addresses.
	web := testenv.StatefulSet("other", 3, nil)
	_, err = c.kube.Client.AppsV1().StatefulSets("default").Create(ctx, web, metav1.CreateOptions{})
	must(t, err)
	for _, p := range c.kube.Scheduled(c.t, "app=other", 3) {
		if ip, _ := c.add(conf, &p); ip == cacheIP["cache-1"] || ip == "10.188.0.219/16" {
			t.Fatalf("%s took ordinal 1's address %s while it was scaled down", p.Name, ip)
		}
	}
	for _, name := range []string{"database", "cache"} {
		c.kube.ScaleStatefulSet(c.t, name, 2)
	}
	db1 := c.kube.Scheduled(c.t, "app=database", 2, pods[1].UID)[1]
	ip, cid := c.add(conf, &db1)
	if ip != "10.188.0.219/16" {
		t.Fatalf("database-1 after scale-up got %s", ip)
	}
	cids[db1.Name] = cid
	ca1 := c.kube.Scheduled(c.t, "app=cache", 2, cache[1].UID)[1]
	if ip, _ := c.add(conf, &ca1); ip != cacheIP["cache-1"] {
		t.Fatalf("sticky cache-1 after scale-up got %s, want %s", ip, cacheIP["cache-1"])
	}

	// Delete the StatefulSet (the runtime DELs its pods), re-create it under the
	// same name with another list: the new pods get the new addresses.
	bg := metav1.DeletePropagationBackground
	must(t, c.kube.Client.AppsV1().StatefulSets("default").Delete(ctx, "database", metav1.DeleteOptions{PropagationPolicy: &bg}))
	for _, p := range []corev1.Pod{pods[0], db1} {
		c.kube.FinishTermination(c.t, p)
		c.del(conf, &p, cids[p.Name])
	}
	ann2 := map[string]string{"kube-ipam.ip-pool": "10.188.0.228,10.188.0.229"}
	_, err = c.kube.Client.AppsV1().StatefulSets("default").Create(ctx, testenv.StatefulSet("database", 2, ann2), metav1.CreateOptions{})
	must(t, err)
	for i, p := range c.kube.Scheduled(c.t, "app=database", 2) {
		if ip, _ := c.add(conf, &p); ip != fmt.Sprintf("10.188.0.22%d/16", 8+i) {
			t.Fatalf("re-created StatefulSet pod %s got %s", p.Name, ip)
		}
	}
}

// TestConflictAndLookupFailures: a Deployment asking for a database pod's
// address is refused naming the holder; the pod lookup fails closed; the
// plugin needs RBAC "get pods" and nothing more.
func TestConflictAndLookupFailures(t *testing.T) {
	c := newCluster(t, "node-1")
	ctx := context.Background()
	conf := c.conf(c.kube.Kubeconfig, nil)
	_, err := c.kube.Client.AppsV1().StatefulSets("default").Create(ctx, testenv.StatefulSet("database-2", 1, map[string]string{"kube-ipam.ip": "10.188.0.219"}), metav1.CreateOptions{})
	must(t, err)
	db := c.kube.Scheduled(c.t, "app=database-2", 1)[0]
	c.add(conf, &db)

	one := int32(1)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "thief"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "thief"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "thief"}, Annotations: map[string]string{"kube-ipam.ip": "10.188.0.219"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "x", Image: "x"}}},
			},
		},
	}
	_, err = c.kube.Client.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{})
	must(t, err)
	thief := c.kube.Scheduled(c.t, "app=thief", 1)[0]
	r := c.cni("ADD", conf, &thief, "thief-1")
	if r.Code != 100 || !strings.Contains(r.Msg, "default/database-2-0") {
		t.Fatalf("conflicting Deployment pod: code %d %q, want 100 naming default/database-2-0", r.Code, r.Msg)
	}

	// Pod missing from the API: 102, never a random address.
	ghost := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "ghost", UID: "g"}, Spec: corev1.PodSpec{NodeName: "node-1"}}
	if r := c.cni("ADD", conf, &ghost, "ghost-1"); r.Code != 102 {
		t.Fatalf("missing pod: code %d %q", r.Code, r.Msg)
	}
	// Stale UID (the ADD is for a pod that was re-created): 102.
	stale := db
	stale.UID = "old-uid"
	if r := c.cni("ADD", conf, &stale, "stale-1"); r.Code != 102 || !strings.Contains(r.Msg, "re-created") {
		t.Fatalf("stale UID: code %d %q", r.Code, r.Msg)
	}

	// Least privilege: a service account without RBAC is refused (102); with a
	// ClusterRole allowing only "get pods" it works.
	_, err = c.kube.Client.CoreV1().ServiceAccounts("kube-system").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "kube-ipam"}}, metav1.CreateOptions{})
	must(t, err)
	exp := int64(3600)
	tok, err := c.kube.Client.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "kube-ipam", &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	must(t, err)
	saKC := filepath.Join(t.TempDir(), "sa.kubeconfig")
	must(t, os.WriteFile(saKC, []byte(fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: %q, insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: %q}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n", c.kube.Server, tok.Status.Token)), 0o600))
	saConf := c.conf(saKC, nil)
	web := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-a"}, Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "w", Image: "w"}}}}
	created, err := c.kube.Client.CoreV1().Pods("default").Create(ctx, &web, metav1.CreateOptions{})
	must(t, err)
	if r := c.cni("ADD", saConf, created, "web-a-1"); r.Code != 102 || !strings.Contains(r.Msg, "RBAC") {
		t.Fatalf("service account without RBAC: code %d %q", r.Code, r.Msg)
	}
	_, err = c.kube.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-ipam"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}},
	}, metav1.CreateOptions{})
	must(t, err)
	_, err = c.kube.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-ipam"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "kube-ipam"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "kube-system", Name: "kube-ipam"}},
	}, metav1.CreateOptions{})
	must(t, err)
	c.kube.WaitFor(t, "RBAC grant effective", 30*time.Second, func() (bool, error) {
		r := c.cni("ADD", saConf, created, "web-a-2")
		return r.Code == 0, nil
	})

	// API unreachable: code 11, nothing allocated.
	dead := c.conf(writeDeadKubeconfig(t), nil)
	if r := c.cni("ADD", dead, &db, "dead-1"); r.Code != 11 {
		t.Fatalf("API unreachable: code %d %q", r.Code, r.Msg)
	}
}

func writeDeadKubeconfig(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "dead.kubeconfig")
	must(t, os.WriteFile(p, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"), 0o600))
	return p
}
