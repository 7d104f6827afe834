package meta

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubeipam/internal/kubeapi"
	"kubeipam/internal/meta"
	"kubeipam/internal/netattach"
	"kubeipam/internal/testenv"
)

// kubernetesMode turns the node config into the NAD way of the guide: the
// cluster network (the bridge standing in for flannel) is a file named by
// clusterNetwork, and the database network (the seed's macvlan + kube-ipam,
// taking fixed addresses from the networks annotation's "ips") becomes the
// conflist of NetworkAttachmentDefinition db/db-net, returned in *nadConf.
// Only pods that ask for db-net get net1.
func kubernetesMode(t *testing.T, nadConf *string) func(map[string]any) {
	confDir := t.TempDir()
	return func(conf map[string]any) {
		ds := conf["delegates"].([]any)
		cluster, db := ds[0].(map[string]any), ds[1].(map[string]any)
		cluster["cniVersion"] = "0.3.1"
		b, _ := json.Marshal(cluster)
		file := filepath.Join(confDir, "10-cbr0.conf")
		if err := os.WriteFile(file, b, 0o644); err != nil {
			t.Fatal(err)
		}
		delete(conf, "delegates")
		conf["clusterNetwork"] = file
		conf["confDir"] = confDir
		delete(db, "name")
		delete(db, "masterplugin")
		db["capabilities"] = map[string]any{"ips": true}
		list := map[string]any{"cniVersion": "0.3.1", "name": "db-net", "plugins": []any{db}}
		b, _ = json.Marshal(list)
		*nadConf = string(b)
	}
}

func (c *cluster) createNAD(namespace, name, config string) {
	c.t.Helper()
	api, err := kubeapi.NewClient(c.kube.Kubeconfig, "test", 30*time.Second)
	if err != nil {
		c.t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
		"metadata": map[string]any{"namespace": namespace, "name": name}, "spec": map[string]any{"config": config}})
	resp, err := api.Do(context.Background(), kubeapi.Request{Method: "POST",
		Path: "/apis/k8s.cni.cncf.io/v1/namespaces/" + namespace + "/network-attachment-definitions", Body: body})
	if err != nil || resp.Code != 201 {
		c.t.Fatalf("creating NAD %s/%s: %v %v", namespace, name, err, resp.Status())
	}
}

func (c *cluster) networkStatus(namespace, name string) []netattach.Status {
	c.t.Helper()
	p, err := c.kube.Client.CoreV1().Pods(namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	v, ok := p.Annotations[netattach.NetworkStatusAnnotation]
	if !ok {
		return nil
	}
	st, err := netattach.Decode(v)
	if err != nil {
		c.t.Fatal(err)
	}
	return st
}

// events are "Type Reason: Message" of the pod's Events from kube-multus.
func (c *cluster) events(namespace, name string) []string {
	c.t.Helper()
	l, err := c.kube.Client.CoreV1().Events(namespace).List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		c.t.Fatal(err)
	}
	var out []string
	for _, e := range l.Items {
		if e.Source.Component == meta.EventComponent {
			out = append(out, e.Type+" "+e.Reason+": "+e.Message)
		}
	}
	return out
}

func (c *cluster) createAnnotatedPod(namespace, name, networks string) {
	c.t.Helper()
	c.apiPod(namespace, name, nil, map[string]string{netattach.NetworksAnnotation: networks})
}

// TestKubernetesModeNAD runs the guide's database network as a
// NetworkAttachmentDefinition with a real kube-apiserver: the databases ask
// for it with a fixed address, the web pod without, an outsider not at all.
func TestKubernetesModeNAD(t *testing.T) {
	var nadConf string
	c := newClusterAPI(t, 1, kubernetesMode(t, &nadConf))
	c.kube.InstallCRDs(t, testenv.NADCRD)
	n := c.nodes[0]
	c.apiPod("db", "database-1-0", nil, nil) // the namespace
	c.createNAD("db", "db-net", nadConf)

	c.createAnnotatedPod("db", "database-2-0", `[{"name":"db-net","ips":["10.188.0.219/16"]}]`)
	c.createAnnotatedPod("web", "web-0", "db/db-net")
	db := c.mustPod(n, "db", "database-2-0", "")
	web := c.mustPod(n, "web", "web-0", "")
	outsider := c.mustPod(n, "batch", "batch-0", "")

	if as, _ := db.addrs("net1"); len(as) != 1 || as[0] != "10.188.0.219/16" {
		t.Fatalf("database-2 net1 %v, want the annotation's 10.188.0.219/16", as)
	}
	webIP := web.net1IP(t)
	if !inRange(webIP, 10, 200) {
		t.Fatalf("web net1 %s outside the dynamic range", webIP)
	}
	if err := web.pingEventually("10.188.0.219"); err != nil {
		t.Fatal(err)
	}
	if _, err := outsider.addrs("net1"); err == nil {
		t.Fatal("a pod without the annotation got net1")
	}
	if c.attachments(outsider.cid) != 0 {
		t.Fatal("kube-ipam allocated for a pod that asked for no database network")
	}

	// network-status, as multus writes it: the cluster network (default),
	// then db/db-net with the fixed address.
	st := c.networkStatus("db", "database-2-0")
	if len(st) != 2 || st[0].Interface != "eth0" || !st[0].Default || len(st[0].IPs) != 1 ||
		st[1].Name != "db/db-net" || st[1].Interface != "net1" || !slices.Equal(st[1].IPs, []string{"10.188.0.219"}) || st[1].Default || st[1].Mac == "" {
		t.Fatalf("database-2 network-status %+v", st)
	}
	if st := c.networkStatus("batch", "batch-0"); len(st) != 1 || st[0].Interface != "eth0" {
		t.Fatalf("outsider network-status %+v", st)
	}
	if ev := c.events("db", "database-2-0"); !slices.Contains(ev, "Normal AddedInterface: Add net1 [10.188.0.219/16] from db/db-net") {
		t.Fatalf("database-2 events %q", ev)
	}

	// A second pod asking for the held address: kube-ipam's conflict,
	// code and holder, reaches the runtime and the pod's Events; nothing
	// stays attached.
	c.createAnnotatedPod("db", "intruder", `[{"name":"db-net","ips":["10.188.0.219/16"]}]`)
	p, err := c.newPod(n, "db", "intruder", "")
	if err == nil || !strings.Contains(err.Error(), "database-2-0") {
		t.Fatalf("conflicting fixed address: %v", err)
	}
	if _, err := p.addrs("eth0"); err == nil {
		t.Error("eth0 left attached after the failed ADD")
	}
	ev := c.events("db", "intruder")
	if len(ev) != 1 || !strings.HasPrefix(ev[0], "Warning "+meta.ReasonAddFailed+": CNI error ") || !strings.Contains(ev[0], "database-2-0") {
		t.Fatalf("intruder events %q", ev)
	}

	// A missing NetworkAttachmentDefinition: code 123, NoNetworkFound.
	c.createAnnotatedPod("web", "lost", "db/nope")
	if _, err := c.newPod(n, "web", "lost", ""); cniCode(err) != meta.CodeNetwork || !strings.Contains(err.Error(), "cannot find NetworkAttachmentDefinition nope in namespace db") {
		t.Fatalf("missing NAD: %d %v", cniCode(err), err)
	}
	if ev := c.events("web", "lost"); len(ev) != 1 || !strings.HasPrefix(ev[0], "Warning NoNetworkFound: CNI error 123: ") {
		t.Fatalf("missing NAD events %q", ev)
	}

	// The pod was deleted and re-created under the same name: the old
	// sandbox's ADD must not read the new pod's annotations.
	c.deleteAPIPod("web", "web-0")
	c.createAnnotatedPod("web", "web-0", "db/db-net")
	stale := &pod{name: "web-0", namespace: "web", netns: testenv.NewNS(t), node: n, cid: "cid" + hexID(8)}
	stale.args = slices.Clone(web.args)
	t.Cleanup(func() { _ = c.del(stale) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.cni().AddNetwork(ctx, c.netconf(n.conf), stale.rt()); cniCode(err) != meta.CodePodLookup || !strings.Contains(err.Error(), "re-created") {
		t.Fatalf("stale UID: %d %v", cniCode(err), err)
	}

	// DEL frees the fixed address; the runtime needs no API for it.
	if err := c.del(db); err != nil {
		t.Fatal(err)
	}
	if h := c.holder("10.188.0.219"); h != "" {
		t.Fatalf(".219 still held by %s after DEL", h)
	}
	// network-status stays after DEL, as multus v4 leaves it: the pod is
	// going away, and the next sandbox's ADD rewrites it.
	if st := c.networkStatus("db", "database-2-0"); len(st) != 2 {
		t.Fatalf("network-status after DEL %+v", st)
	}
}

// TestKubernetesModeRBAC: kube-multus with the plugin's own ServiceAccount
// and only the get-pods role (kube-ipam-multus missing) fails the ADD with
// a message naming the missing RBAC, and attaches nothing.
func TestKubernetesModeRBAC(t *testing.T) {
	var nadConf string
	c := newClusterAPI(t, 1, kubernetesMode(t, &nadConf))
	c.kube.InstallCRDs(t, testenv.NADCRD)
	ctx := context.Background()
	cs := c.kube.Client
	_, _ = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-ipam"}}, metav1.CreateOptions{})
	if _, err := cs.CoreV1().ServiceAccounts("kube-ipam").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "plugin"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	role := `{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"get-pods"},"rules":[{"apiGroups":[""],"resources":["pods"],"verbs":["get"]}]}`
	binding := `{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"get-pods"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"get-pods"},"subjects":[{"kind":"ServiceAccount","name":"plugin","namespace":"kube-ipam"}]}`
	api, err := kubeapi.NewClient(c.kube.Kubeconfig, "test", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for path, body := range map[string]string{"/apis/rbac.authorization.k8s.io/v1/clusterroles": role, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings": binding} {
		if resp, err := api.Do(ctx, kubeapi.Request{Method: "POST", Path: path, Body: []byte(body)}); err != nil || resp.Code != 201 {
			t.Fatalf("POST %s: %v %v", path, err, resp.Status())
		}
	}
	kc := c.kube.ServiceAccountKubeconfig(t, "kube-ipam", "plugin")
	var conf map[string]any
	n := c.nodes[0]
	_ = json.Unmarshal(n.conf, &conf)
	conf["kubeconfig"] = kc
	limited := *n
	limited.conf, _ = json.Marshal(conf)
	c.apiPod("db", "database-1-0", nil, nil)
	c.createNAD("db", "db-net", nadConf)
	c.createAnnotatedPod("db", "database-2-0", "db-net")
	p, err := c.newPod(&limited, "db", "database-2-0", "")
	if cniCode(err) != meta.CodePodLookup || !strings.Contains(err.Error(), "RBAC") || !strings.Contains(err.Error(), "network-attachment-definitions") {
		t.Fatalf("without kube-ipam-multus: %d %v", cniCode(err), err)
	}
	if _, err := p.addrs("eth0"); err == nil {
		t.Error("eth0 attached although the NAD could not be read")
	}
}

// TestKubernetesModeNADLookup: namespace isolation and a NAD whose config
// is not JSON, against the real API server; neither attaches anything.
func TestKubernetesModeNADLookup(t *testing.T) {
	var nadConf string
	tweak := kubernetesMode(t, &nadConf)
	c := newClusterAPI(t, 1, func(conf map[string]any) {
		tweak(conf)
		conf["namespaceIsolation"] = true
		conf["globalNamespaces"] = "shared"
	})
	c.kube.InstallCRDs(t, testenv.NADCRD)
	n := c.nodes[0]
	for _, ns := range []string{"db", "shared"} {
		c.apiPod(ns, "placeholder", nil, nil)
	}
	c.createNAD("db", "db-net", nadConf)
	c.createNAD("shared", "db-net", nadConf)
	c.createNAD("db", "broken", `{"cniVersion": "0.3.1", "plugins": [`)
	for _, tc := range []struct{ ns, pod, networks, want string }{
		{"web", "web-0", "db/db-net", "namespaceIsolation"},
		{"db", "db-0", "broken", "NetworkAttachmentDefinition db/broken: spec.config"},
	} {
		c.createAnnotatedPod(tc.ns, tc.pod, tc.networks)
		p, err := c.newPod(n, tc.ns, tc.pod, "")
		if cniCode(err) != meta.CodeNetwork || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s/%s (%s): want code 123 with %q, got %d: %v", tc.ns, tc.pod, tc.networks, tc.want, cniCode(err), err)
		}
		if _, err := p.addrs("eth0"); err == nil {
			t.Errorf("%s/%s: eth0 attached", tc.ns, tc.pod)
		}
		if c.attachments(p.cid) != 0 {
			t.Errorf("%s/%s: kube-ipam allocated", tc.ns, tc.pod)
		}
	}
	// Its own namespace and a global one are allowed.
	c.createAnnotatedPod("db", "db-1", "db-net")
	c.createAnnotatedPod("web", "web-1", "shared/db-net")
	if ip := c.mustPod(n, "db", "db-1", "").net1IP(t); !inRange(ip, 10, 200) {
		t.Errorf("db-1 net1 %s", ip)
	}
	if ip := c.mustPod(n, "web", "web-1", "").net1IP(t); ip == "" {
		t.Error("web-1 has no net1 from the global namespace's NAD")
	}
}
