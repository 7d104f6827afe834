package plugin

// Integration tests of the CNI verbs against a real etcd server. Pod lookups
// use client-go's fake clientset here; the real-apiserver variants live with
// the Kubernetes harness.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"kubeipam/internal/config"
	"kubeipam/internal/pod"
	"kubeipam/internal/pod/clientset"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

// env is one test's plugin wired to a real etcd and a fake pod API.
type env struct {
	t     *testing.T
	etcd  *testenv.Etcd
	cs    *fake.Clientset
	p     *Plugin
	now   time.Time
	mu    sync.Mutex
	ipam  map[string]any
	cniV  string
	dir   string
	podFn func(n *config.Network) (pod.Getter, error)
}

func newEnv(t *testing.T, e *testenv.Etcd) *env {
	t.Helper()
	if e == nil {
		e = testenv.StartEtcd(t)
	}
	v := &env{t: t, etcd: e, cs: fake.NewClientset(), now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), cniV: "0.3.1", dir: t.TempDir()}
	v.ipam = map[string]any{
		"name": "kube-subnet", "type": "kube-ipam",
		"etcdConfig": map[string]any{"etcdURL": strings.Join(e.Endpoints, ",")},
		"subnet":     "10.188.0.0/16", "rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.200",
		"gateway": "10.188.0.1", "routes": []any{map[string]any{"dst": "0.0.0.0/0"}},
		"logFile": filepath.Join(v.dir, "kube-ipam.log"), "logLevel": "debug",
		"timeout": "10s", "nodeName": "node-a",
	}
	v.p = &Plugin{
		Pods: func(n *config.Network) (pod.Getter, error) {
			if v.podFn != nil {
				return v.podFn(n)
			}
			return clientset.New(v.cs), nil
		},
		Now:  func() time.Time { v.mu.Lock(); defer v.mu.Unlock(); return v.now },
		Etcd: Default().Etcd,
		Kube: Default().Kube,
	}
	return v
}

func (v *env) advance(d time.Duration) { v.mu.Lock(); v.now = v.now.Add(d); v.mu.Unlock() }

func (v *env) conf(extra map[string]any) []byte {
	ipam := map[string]any{}
	for k, x := range v.ipam {
		ipam[k] = x
	}
	for k, x := range extra {
		if x == nil {
			delete(ipam, k)
		} else {
			ipam[k] = x
		}
	}
	top := map[string]any{"name": "k8snet2", "type": "macvlan", "master": "eth0", "ipam": ipam}
	if v.cniV != "" {
		top["cniVersion"] = v.cniV
	}
	b, _ := json.Marshal(top)
	return b
}

func (v *env) addPod(ns, name, uid string, ann map[string]string) {
	v.t.Helper()
	_ = v.cs.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
	_, err := v.cs.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: k8stypes.UID(uid), Annotations: ann},
	}, metav1.CreateOptions{})
	if err != nil {
		v.t.Fatal(err)
	}
}

func podArgs(ns, name string) string {
	return fmt.Sprintf("IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=x", ns, name)
}

// call runs one verb and returns stdout and the CNI error (nil on success).
func (v *env) call(verb, cid, ifname, cniArgs string, conf []byte) (string, *types.Error) {
	var out bytes.Buffer
	p := *v.p
	p.Out = &out
	args := &skel.CmdArgs{ContainerID: cid, Netns: "/var/run/netns/test", IfName: ifname, Args: cniArgs, Path: "/opt/cni/bin", StdinData: conf}
	var err error
	switch verb {
	case "ADD":
		err = p.Add(args)
	case "DEL":
		err = p.Del(args)
	case "CHECK":
		err = p.Check(args)
	case "GC":
		err = p.GC(args)
	case "STATUS":
		err = p.Status(args)
	}
	if err == nil {
		return out.String(), nil
	}
	te, ok := err.(*types.Error)
	if !ok {
		v.t.Fatalf("%s returned a %T, not a CNI error: %v", verb, err, err)
	}
	return out.String(), te
}

// add expects success and returns the addresses of the result.
func (v *env) add(cid, ifname, cniArgs string, conf []byte) []string {
	v.t.Helper()
	out, e := v.call("ADD", cid, ifname, cniArgs, conf)
	if e != nil {
		v.t.Fatalf("ADD %s/%s: code %d: %s", cid, ifname, e.Code, e.Msg)
	}
	var r struct {
		IPs []struct {
			Address string `json:"address"`
			Gateway string `json:"gateway"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		v.t.Fatalf("ADD result %q: %v", out, err)
	}
	var ips []string
	for _, ip := range r.IPs {
		ips = append(ips, ip.Address)
	}
	return ips
}

func (v *env) expectCode(verb, cid, ifname, cniArgs string, conf []byte, code uint, msgPart string) {
	v.t.Helper()
	_, e := v.call(verb, cid, ifname, cniArgs, conf)
	if e == nil {
		v.t.Fatalf("%s %s/%s succeeded, want code %d", verb, cid, ifname, code)
	}
	if e.Code != code || !strings.Contains(e.Msg, msgPart) {
		v.t.Fatalf("%s %s/%s: got code %d %q, want code %d containing %q", verb, cid, ifname, e.Code, e.Msg, code, msgPart)
	}
}

// expectCodeWithin is expectCode for a call that must end within d (a
// generous deadline: exceeding it means a bound is missing, not slowness).
func (v *env) expectCodeWithin(d time.Duration, verb, cid, ifname, cniArgs string, conf []byte, code uint, msgPart string) {
	v.t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, e := v.call(verb, cid, ifname, cniArgs, conf)
		switch {
		case e == nil:
			v.t.Errorf("%s %s/%s succeeded, want code %d", verb, cid, ifname, code)
		case e.Code != code || !strings.Contains(e.Msg, msgPart):
			v.t.Errorf("%s %s/%s: got code %d %q, want code %d containing %q", verb, cid, ifname, e.Code, e.Msg, code, msgPart)
		}
	}()
	select {
	case <-done:
		if v.t.Failed() {
			v.t.FailNow()
		}
	case <-time.After(d):
		v.t.Fatalf("%s %s/%s has not returned after %v", verb, cid, ifname, d)
	}
}

func (v *env) del(cid, ifname string, conf []byte) {
	v.t.Helper()
	if _, e := v.call("DEL", cid, ifname, "", conf); e != nil {
		v.t.Fatalf("DEL %s/%s: code %d: %s", cid, ifname, e.Code, e.Msg)
	}
}

// record reads the owner record of ip straight from etcd.
func (v *env) record(ip string) *store.Record {
	v.t.Helper()
	cli := v.etcd.Client(v.t)
	resp, err := cli.Get(context.Background(), "/kube-ipam/v1/networks/k8snet2/ip/", clientv3.WithPrefix())
	if err != nil {
		v.t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if strings.HasSuffix(string(kv.Key), "/r") {
			continue
		}
		var r store.Record
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			v.t.Fatalf("record %s: %v", kv.Key, err)
		}
		if r.IP == ip {
			return &r
		}
	}
	return nil
}

func (v *env) keyCount(prefix string) int64 {
	v.t.Helper()
	resp, err := v.etcd.Client(v.t).Get(context.Background(), "/kube-ipam/v1/networks/k8snet2/"+prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		v.t.Fatal(err)
	}
	return resp.Count
}

func TestSeedDynamicAndVersions(t *testing.T) {
	v := newEnv(t, nil)
	for i, ver := range []string{"", "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		v.cniV = ver
		out, e := v.call("ADD", fmt.Sprintf("c%d", i), "net1", "", v.conf(nil))
		if e != nil {
			t.Fatalf("cniVersion %q: code %d %s", ver, e.Code, e.Msg)
		}
		want := fmt.Sprintf("10.188.0.%d/16", 10+i)
		if !strings.Contains(out, want) || !strings.Contains(out, "10.188.0.1") {
			t.Fatalf("cniVersion %q: result %s lacks %s and gateway", ver, out, want)
		}
		legacy := ver == "" || ver == "0.1.0" || ver == "0.2.0"
		if strings.Contains(out, `"ip4"`) != legacy {
			t.Fatalf("cniVersion %q: legacy ip4 form = %v in %s", ver, !legacy, out)
		}
		if ver != "" && !strings.Contains(out, `"cniVersion": "`+ver+`"`) {
			t.Fatalf("result not in version %q: %s", ver, out)
		}
	}
	r := v.record("10.188.0.10")
	if r == nil || r.ContainerID != "c0" || r.IfName != "net1" || r.Kind != store.KindDynamic || r.Node != "node-a" || r.Network != "k8snet2" {
		t.Fatalf("owner record: %+v", r)
	}
}

func TestFixedIPConflictTakeoverAndLateDel(t *testing.T) {
	v := newEnv(t, nil)
	ann := map[string]string{pod.AnnotationIP: "10.188.0.219", pod.AnnotationNetmask: "255.255.0.0", pod.AnnotationGateway: "10.188.0.1"}
	v.addPod("default", "database-2-0", "uid-1", ann)
	conf := v.conf(nil)
	if got := v.add("old", "net1", podArgs("default", "database-2-0"), conf); len(got) != 1 || got[0] != "10.188.0.219/16" {
		t.Fatalf("fixed ADD got %v", got)
	}
	r := v.record("10.188.0.219")
	if r == nil || r.Kind != store.KindFixed || r.PodName != "database-2-0" || r.PodNamespace != "default" || r.PodUID != "uid-1" {
		t.Fatalf("fixed IP not registered with its owner: %+v", r)
	}

	// A different pod asking for the same address is refused, naming the holder.
	v.addPod("default", "intruder", "uid-x", map[string]string{pod.AnnotationIP: "10.188.0.219"})
	v.expectCode("ADD", "intr", "net1", podArgs("default", "intruder"), conf, CodeConflict, "default/database-2-0")
	if n := v.keyCount("att/intr/"); n != 0 {
		t.Fatalf("refused ADD left %d attachment keys", n)
	}

	// The pod is re-created (new UID, new container) before the old DEL arrives.
	v.addPod("default", "database-2-0", "uid-2", ann)
	if got := v.add("new", "net1", podArgs("default", "database-2-0"), conf); got[0] != "10.188.0.219/16" {
		t.Fatalf("re-created pod got %v", got)
	}
	if r := v.record("10.188.0.219"); r.ContainerID != "new" || r.PodUID != "uid-2" {
		t.Fatalf("takeover did not move the record: %+v", r)
	}
	v.del("old", "net1", conf) // the late DEL
	if r := v.record("10.188.0.219"); r == nil || r.ContainerID != "new" {
		t.Fatalf("late DEL of the old container freed the new pod's IP: %+v", r)
	}
	if _, e := v.call("CHECK", "new", "net1", "", conf); e != nil {
		t.Fatalf("CHECK of the new owner: %v", e)
	}
	v.expectCode("CHECK", "old", "net1", "", conf, CodeCheckMismatch, "no allocation")
	v.del("new", "net1", conf)
	if r := v.record("10.188.0.219"); r != nil {
		t.Fatalf("DEL of the owner left %+v", r)
	}
	// Now the intruder may have it: the address is free.
	if got := v.add("intr", "net1", podArgs("default", "intruder"), conf); got[0] != "10.188.0.219/16" {
		t.Fatalf("free fixed IP not granted: %v", got)
	}
}

func TestFixedIPValidation(t *testing.T) {
	v := newEnv(t, nil)
	conf := v.conf(nil)
	cases := []struct {
		ann  string
		code uint
		msg  string
	}{
		{"10.189.0.5", CodeOutOfRange, "outside every subnet"},
		{"10.188.0.0", CodeOutOfRange, "network address"},
		{"10.188.255.255", CodeOutOfRange, "broadcast"},
		{"10.188.0.1", CodeOutOfRange, "gateway"},
		{"10.188.0.300", CodeAnnotation, "kube-ipam.ip"},
		{"10.188.0.218, ", CodeAnnotation, "empty entry"},
		{"10.188.0.218,10.188.0.218", CodeOutOfRange, "listed twice"},
	}
	for i, c := range cases {
		name := fmt.Sprintf("p%d", i)
		v.addPod("default", name, "u"+name, map[string]string{pod.AnnotationIP: c.ann})
		v.expectCode("ADD", name, "net1", podArgs("default", name), conf, c.code, c.msg)
	}
	v.addPod("default", "badmask", "u", map[string]string{pod.AnnotationIP: "10.188.0.218", pod.AnnotationNetmask: "255.0.255.0"})
	v.expectCode("ADD", "bm", "net1", podArgs("default", "badmask"), conf, CodeAnnotation, "kube-ipam.netmask")
	if n := v.keyCount(""); n != 0 {
		t.Fatalf("refused ADDs wrote %d keys", n)
	}
	// IP= from the runtime that disagrees with the annotation is refused.
	v.addPod("default", "both", "u", map[string]string{pod.AnnotationIP: "10.188.0.218"})
	v.expectCode("ADD", "both", "net1", podArgs("default", "both")+";IP=10.188.0.220", conf, CodeRequestInvalid, "refusing")
	// CIDR-form annotation with IPv4 and a prefix length.
	v.addPod("default", "cidr", "u", map[string]string{pod.AnnotationIP: "10.188.0.218/24", pod.AnnotationNetmask: "255.255.0.0"})
	if got := v.add("cidr", "net1", podArgs("default", "cidr"), conf); got[0] != "10.188.0.218/24" {
		t.Fatalf("CIDR form: %v", got)
	}
}

func TestFixedInsideDynamicRangeNeverHandedOut(t *testing.T) {
	v := newEnv(t, nil)
	conf := v.conf(map[string]any{"rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.13", "releaseCooldown": "0s"})
	v.addPod("default", "db", "u1", map[string]string{pod.AnnotationIP: "10.188.0.11"})
	v.add("db", "net1", podArgs("default", "db"), conf)
	var got []string
	for i := 0; i < 3; i++ {
		got = append(got, v.add(fmt.Sprintf("d%d", i), "net1", "", conf)...)
	}
	if strings.Join(got, " ") != "10.188.0.10/16 10.188.0.12/16 10.188.0.13/16" {
		t.Fatalf("dynamic allocations %v", got)
	}
	v.expectCode("ADD", "d9", "net1", "", conf, CodeExhausted, "no free address")
	// Released fixed addresses are not reused dynamically either.
	v.del("db", "net1", conf)
	v.expectCode("ADD", "d9", "net1", "", conf, CodeExhausted, "no free address")
	// But the fixed pod gets it back.
	if got := v.add("db2", "net1", podArgs("default", "db"), conf); got[0] != "10.188.0.11/16" {
		t.Fatalf("fixed pod did not get its IP back: %v", got)
	}
}

func TestFixedBlock(t *testing.T) {
	v := newEnv(t, nil)
	conf := v.conf(map[string]any{"rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.20", "fixedStart": "10.188.0.10", "fixedEnd": "10.188.0.18"})
	// Dynamic allocation skips the fixed block.
	if got := v.add("d1", "net1", "", conf); got[0] != "10.188.0.19/16" {
		t.Fatalf("dynamic got %v, want the first address after the fixed block", got)
	}
	v.addPod("default", "in", "u", map[string]string{pod.AnnotationIP: "10.188.0.12"})
	v.add("in", "net1", podArgs("default", "in"), conf)
	v.addPod("default", "out", "u", map[string]string{pod.AnnotationIP: "10.188.0.100"})
	v.expectCode("ADD", "out", "net1", podArgs("default", "out"), conf, CodeOutOfRange, "fixed block")
}

func TestIdempotentAddDelAndInterfaces(t *testing.T) {
	v := newEnv(t, nil)
	conf := v.conf(nil)
	a := v.add("c1", "net1", "", conf)
	b := v.add("c1", "net1", "", conf)
	if a[0] != b[0] {
		t.Fatalf("repeated ADD gave %v then %v", a, b)
	}
	c := v.add("c1", "net2", "", conf)
	if c[0] == a[0] {
		t.Fatalf("second interface of one container got the same IP %v", c)
	}
	v.del("c1", "net1", conf)
	v.del("c1", "net1", conf)
	v.del("never-added", "net1", conf)
	if r := v.record(strings.TrimSuffix(c[0], "/16")); r == nil || r.IfName != "net2" {
		t.Fatalf("DEL of net1 touched net2's allocation: %+v", r)
	}
	if n := v.keyCount("att/c1/net1"); n != 0 {
		t.Fatalf("attachment of net1 still there")
	}
}

func TestCooldownAndLeastRecentlyReleased(t *testing.T) {
	v := newEnv(t, nil)
	conf := v.conf(map[string]any{"rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.12", "releaseCooldown": "1m"})
	for _, c := range []string{"a", "b", "c"} {
		v.add(c, "net1", "", conf)
	}
	v.del("b", "net1", conf) // .11 released first
	v.advance(10 * time.Second)
	v.del("a", "net1", conf) // .10 released later
	v.expectCode("ADD", "d", "net1", "", conf, types.ErrTryAgainLater, "cooldown")
	v.advance(55 * time.Second) // .11 has cooled, .10 has not
	if got := v.add("d", "net1", "", conf); got[0] != "10.188.0.11/16" {
		t.Fatalf("got %v, want the least recently released 10.188.0.11", got)
	}
	v.expectCode("ADD", "e", "net1", "", conf, types.ErrTryAgainLater, "cooldown")
	v.advance(10 * time.Second)
	if got := v.add("e", "net1", "", conf); got[0] != "10.188.0.10/16" {
		t.Fatalf("got %v", got)
	}
	v.expectCode("ADD", "f", "net1", "", conf, CodeExhausted, "no free address")
	if n := v.keyCount("rel/"); n != 0 {
		t.Fatalf("release log keeps %d entries for reused addresses", n)
	}
	// Fresh addresses are preferred over cooled released ones.
	conf2 := v.conf(map[string]any{"rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.14", "releaseCooldown": "0s"})
	v.del("e", "net1", conf2)
	if got := v.add("g", "net1", "", conf2); got[0] != "10.188.0.13/16" {
		t.Fatalf("got %v, want a never-used address first", got)
	}
}

func TestIPv6AndDualStack(t *testing.T) {
	v := newEnv(t, nil)
	v.cniV = "1.0.0"
	conf := v.conf(map[string]any{"subnet": nil, "rangeStart": nil, "rangeEnd": nil, "gateway": nil, "routes": nil,
		"ranges": []any{
			[]any{map[string]any{"subnet": "10.20.0.0/24"}},
			[]any{map[string]any{"subnet": "fd00:10::/64", "rangeStart": "fd00:10::100", "rangeEnd": "fd00:10::1ff"}},
		}})
	got := v.add("c1", "eth1", "", conf)
	if len(got) != 2 || got[0] != "10.20.0.2/24" || got[1] != "fd00:10::100/64" {
		t.Fatalf("dual-stack got %v", got)
	}
	v.addPod("db", "db-0", "u", map[string]string{pod.AnnotationIP: "fd00:10::218"})
	got = v.add("c2", "eth1", podArgs("db", "db-0"), conf)
	if len(got) != 2 || got[0] != "10.20.0.3/24" || got[1] != "fd00:10::218/64" {
		t.Fatalf("fixed IPv6 + dynamic IPv4 got %v", got)
	}
	v.addPod("db", "db-1", "u", map[string]string{pod.AnnotationIP: "fd00:10::218"})
	v.expectCode("ADD", "c3", "eth1", podArgs("db", "db-1"), conf, CodeConflict, "db/db-0")
}

func TestGCOnlyThisNodeAndInvalid(t *testing.T) {
	v := newEnv(t, nil)
	v.cniV = "1.1.0"
	conf := v.conf(nil)
	for _, c := range []string{"keep", "leak1", "leak2"} {
		v.add(c, "net1", "", conf)
	}
	other := v.conf(map[string]any{"nodeName": "node-b"})
	v.add("elsewhere", "net1", "", other)
	var m map[string]any
	_ = json.Unmarshal(conf, &m)
	m["cni.dev/valid-attachments"] = []any{map[string]any{"containerID": "keep", "ifname": "net1"}}
	gcConf, _ := json.Marshal(m)
	if _, e := v.call("GC", "", "", "", gcConf); e != nil {
		t.Fatalf("GC: %v", e)
	}
	for cid, want := range map[string]int64{"keep": 1, "leak1": 0, "leak2": 0, "elsewhere": 1} {
		if n := v.keyCount("att/" + cid + "/"); n != want {
			t.Fatalf("after GC attachment %s count %d, want %d", cid, n, want)
		}
	}
	if v.record("10.188.0.10") == nil || v.record("10.188.0.11") != nil || v.record("10.188.0.13") == nil {
		t.Fatal("GC freed the wrong addresses")
	}
}

func TestCheck(t *testing.T) {
	v := newEnv(t, nil)
	v.cniV = "1.0.0"
	conf := v.conf(nil)
	ips := v.add("c1", "net1", "", conf)
	withPrev := func(addrs ...string) []byte {
		var m map[string]any
		_ = json.Unmarshal(conf, &m)
		var l []any
		for _, a := range addrs {
			l = append(l, map[string]any{"address": a})
		}
		m["prevResult"] = map[string]any{"cniVersion": "1.0.0", "ips": l}
		b, _ := json.Marshal(m)
		return b
	}
	if _, e := v.call("CHECK", "c1", "net1", "", withPrev(ips[0])); e != nil {
		t.Fatalf("CHECK: %v", e)
	}
	v.expectCode("CHECK", "c1", "net1", "", withPrev("10.188.0.99/16"), CodeCheckMismatch, "prevResult")
	v.expectCode("CHECK", "nope", "net1", "", conf, CodeCheckMismatch, "no allocation")
}

func TestStatusAndEtcdDown(t *testing.T) {
	v := newEnv(t, nil)
	v.cniV = "1.1.0"
	conf := v.conf(map[string]any{"timeout": "2s"})
	if _, e := v.call("STATUS", "", "", "", conf); e != nil {
		t.Fatalf("STATUS: %v", e)
	}
	small := v.conf(map[string]any{"rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.10", "timeout": "2s"})
	v.add("c1", "net1", "", small)
	v.expectCode("STATUS", "", "", "", small, types.ErrPluginNotAvailable, "no free address")
	v.etcd.Stop(t)
	// A down etcd fails a call after the dial timeout (DialTimeout), not
	// after ipam.timeout: with a 60s timeout the ADD must still end well
	// within the 20s that expectCodeWithin allows.
	long := v.conf(map[string]any{"timeout": "60s"})
	endpoint := v.etcd.Endpoints[0]
	v.expectCodeWithin(20*time.Second, "ADD", "c2", "net1", "", long, types.ErrTryAgainLater, endpoint+" unreachable: no connection within 5s")
	// A timeout shorter than the dial timeout bounds the wait instead, less
	// the time kept for probing the endpoints; every verb waits the same way
	// (STATUS reports 50, the others 11).
	v.expectCodeWithin(20*time.Second, "STATUS", "", "", "", conf, types.ErrPluginNotAvailable, endpoint+" unreachable: no connection within 1.")
	v.expectCodeWithin(20*time.Second, "DEL", "c1", "net1", "", conf, types.ErrTryAgainLater, "connection refused")
	v.expectCodeWithin(20*time.Second, "CHECK", "c1", "net1", "", conf, types.ErrTryAgainLater, "unreachable")
	v.expectCodeWithin(20*time.Second, "GC", "", "", "", conf, types.ErrTryAgainLater, "unreachable")
	v.etcd.Restart(t)
	v.del("c1", "net1", conf)
	if v.record("10.188.0.10") != nil {
		t.Fatal("DEL after etcd came back did not free the address")
	}
}

func TestPodLookupFailsClosed(t *testing.T) {
	v := newEnv(t, nil)
	conf := v.conf(nil)
	// Missing pod: no fallback to a dynamic address.
	v.expectCode("ADD", "c1", "net1", podArgs("default", "ghost"), conf, CodePodLookup, "not found")
	// API unreachable: try again later.
	v.podFn = func(n *config.Network) (pod.Getter, error) {
		return pod.NewClient(writeKubeconfig(t, "https://127.0.0.1:1"), n.Timeout)
	}
	v.expectCode("ADD", "c1", "net1", podArgs("default", "db"), conf, types.ErrTryAgainLater, "Kubernetes API unreachable")
	// Unreadable kubeconfig (the production wiring).
	v.podFn = nil
	v.p.Pods = Default().Pods
	v.expectCode("ADD", "c1", "net1", podArgs("default", "db"), v.conf(map[string]any{"kubeConfig": "/nonexistent/kubeconfig"}), CodePodLookup, "/nonexistent/kubeconfig")
	// UID mismatch: the ADD is for a pod that no longer exists.
	v.p.Pods = func(*config.Network) (pod.Getter, error) { return clientset.New(v.cs), nil }
	v.addPod("default", "db", "uid-new", nil)
	v.expectCode("ADD", "c1", "net1", podArgs("default", "db")+";K8S_POD_UID=uid-old", conf, CodePodLookup, "re-created")
	if n := v.keyCount(""); n != 0 {
		t.Fatalf("failed lookups wrote %d keys", n)
	}
	// podLookup:false serves runtimes without Kubernetes.
	if got := v.add("c1", "net1", podArgs("default", "ghost"), v.conf(map[string]any{"podLookup": false})); len(got) != 1 {
		t.Fatalf("podLookup=false: %v", got)
	}
}

func writeKubeconfig(t *testing.T, server string) string {
	p := filepath.Join(t.TempDir(), "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`, server)
	if err := os.WriteFile(p, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEtcdTLS(t *testing.T) {
	e := testenv.StartEtcdTLS(t)
	v := newEnv(t, e)
	v.ipam["etcdConfig"] = map[string]any{
		"etcdURL":      strings.Join(e.Endpoints, ","),
		"etcdCertFile": e.CertFile, "etcdKeyFile": e.KeyFile, "etcdTrustedCAFileFile": e.CAFile,
	}
	if got := v.add("c1", "net1", "", v.conf(nil)); got[0] != "10.188.0.10/16" {
		t.Fatalf("ADD over TLS: %v", got)
	}
	v.ipam["etcdConfig"] = map[string]any{
		"etcdURL":      strings.Join(e.Endpoints, ","),
		"etcdCertFile": e.CertFile, "etcdKeyFile": e.KeyFile, "etcdTrustedCAFile": e.CAFile,
	}
	if got := v.add("c1", "net1", "", v.conf(nil)); got[0] != "10.188.0.10/16" {
		t.Fatalf("ADD with the etcdTrustedCAFile spelling: %v", got)
	}
	v.ipam["etcdConfig"] = map[string]any{
		"etcdURL":      strings.Join(e.Endpoints, ","),
		"etcdCertFile": e.CertFile, "etcdKeyFile": e.KeyFile, "etcdTrustedCAFileFile": "/nonexistent/ca.pem",
	}
	v.expectCode("ADD", "c2", "net1", "", v.conf(nil), types.ErrInvalidNetworkConfig, "/nonexistent/ca.pem")
}

func TestLogFileAppendedPrivateNoSecrets(t *testing.T) {
	v := newEnv(t, nil)
	conf := v.conf(nil)
	v.addPod("default", "db", "u", map[string]string{pod.AnnotationIP: "10.188.0.218", "secret-ish": "hunter2"})
	v.add("c1", "net1", podArgs("default", "db"), conf)
	v.del("c1", "net1", conf)
	path := v.ipam["logFile"].(string)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("log mode %v, want 0600", fi.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	s := string(b)
	if !strings.Contains(s, "verb=ADD") || !strings.Contains(s, "verb=DEL") || !strings.Contains(s, "10.188.0.218") {
		t.Fatalf("log lacks the ADD and DEL lines:\n%s", s)
	}
	if strings.Contains(s, "hunter2") {
		t.Fatal("log contains pod annotations other than kube-ipam's")
	}
}

func TestResultShape(t *testing.T) {
	v := newEnv(t, nil)
	v.cniV = "1.0.0"
	v.addPod("default", "db", "u", map[string]string{pod.AnnotationIP: "10.188.0.218", pod.AnnotationNetmask: "24", pod.AnnotationGateway: "10.188.0.254"})
	out, e := v.call("ADD", "c1", "net1", podArgs("default", "db"), v.conf(nil))
	if e != nil {
		t.Fatal(e)
	}
	var r current.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.188.0.218/24" || r.IPs[0].Gateway.String() != "10.188.0.254" || len(r.Routes) != 1 {
		t.Fatalf("result %s", out)
	}
}

func (v *env) addStsPod(ns, sts, stsUID string, ordinal int, ann map[string]string) string {
	v.t.Helper()
	name := fmt.Sprintf("%s-%d", sts, ordinal)
	_ = v.cs.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
	yes := true
	_, err := v.cs.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name, UID: k8stypes.UID(fmt.Sprintf("%s-pod-%d-%d", stsUID, ordinal, time.Now().UnixNano())), Annotations: ann,
			Labels:          map[string]string{pod.PodIndexLabel: fmt.Sprint(ordinal)},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: sts, UID: k8stypes.UID(stsUID), Controller: &yes}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		v.t.Fatal(err)
	}
	return name
}

func TestStickyStatefulSetIPs(t *testing.T) {
	v := newEnv(t, nil)
	conf := v.conf(map[string]any{"releaseCooldown": "0s"})
	name := v.addStsPod("db", "mysql", "sts-1", 0, nil)
	first := v.add("c1", "net1", podArgs("db", name), conf)
	if r := v.record(strings.TrimSuffix(first[0], "/16")); r == nil || r.Kind != store.KindSticky || r.StatefulSetUID != "sts-1" || r.Ordinal != 0 {
		t.Fatalf("sticky record: %+v", r)
	}
	v.del("c1", "net1", conf)
	// Other pods come and go; the released sticky address is not handed out.
	for i := 0; i < 5; i++ {
		if got := v.add(fmt.Sprintf("o%d", i), "net1", "", conf); got[0] == first[0] {
			t.Fatalf("sticky address %s handed out dynamically", got[0])
		}
	}
	// Re-created (new pod UID, new container, maybe another node): same address.
	v.addStsPod("db", "mysql", "sts-1", 0, nil)
	if got := v.add("c2", "net1", podArgs("db", name), conf); got[0] != first[0] {
		t.Fatalf("re-created ordinal 0 got %v, want %v", got, first)
	}
	// Even before the old container's DEL: takeover, and the late DEL frees nothing.
	v.addStsPod("db", "mysql", "sts-1", 0, nil)
	if got := v.add("c3", "net1", podArgs("db", name), conf); got[0] != first[0] {
		t.Fatalf("takeover got %v", got)
	}
	v.del("c2", "net1", conf)
	if r := v.record(strings.TrimSuffix(first[0], "/16")); r == nil || r.ContainerID != "c3" {
		t.Fatalf("late DEL freed the sticky address: %+v", r)
	}
	// A new StatefulSet reusing the name (new UID) does not inherit it.
	v.addStsPod("db", "mysql", "sts-2", 0, nil)
	if got := v.add("c4", "net1", podArgs("db", name), conf); got[0] == first[0] {
		t.Fatalf("a new StatefulSet inherited %v", got)
	}
	// Ordinal 1 gets its own sticky address.
	n1 := v.addStsPod("db", "mysql", "sts-1", 1, nil)
	if got := v.add("c5", "net1", podArgs("db", n1), conf); got[0] == first[0] {
		t.Fatal("two ordinals share an address")
	}
	// stickyStatefulSets=false: plain dynamic addresses.
	off := v.conf(map[string]any{"releaseCooldown": "0s", "stickyStatefulSets": false})
	n2 := v.addStsPod("db", "mysql", "sts-1", 2, nil)
	v.add("c6", "net1", podArgs("db", n2), off)
	if r := v.record(strings.TrimSuffix(v.add("c6", "net1", podArgs("db", n2), off)[0], "/16")); r.Kind != store.KindDynamic {
		t.Fatalf("sticky disabled but record kind %s", r.Kind)
	}
}

func TestOrdinalIPPoolAndPerNetworkAnnotations(t *testing.T) {
	v := newEnv(t, nil)
	conf := v.conf(nil)
	ann := map[string]string{pod.AnnotationIPPool: "10.188.0.218,10.188.0.219", pod.AnnotationNetmask: "255.255.0.0"}
	for ord, want := range []string{"10.188.0.218/16", "10.188.0.219/16"} {
		name := v.addStsPod("default", "database", "sts-a", ord, ann)
		if got := v.add(fmt.Sprintf("c%d", ord), "net1", podArgs("default", name), conf); got[0] != want {
			t.Fatalf("ordinal %d got %v, want %s", ord, got, want)
		}
	}
	n2 := v.addStsPod("default", "database", "sts-a", 2, ann)
	v.expectCode("ADD", "c2", "net1", podArgs("default", n2), conf, CodeAnnotation, "ordinal 2")
	v.addPod("default", "plain", "u", ann)
	v.expectCode("ADD", "p", "net1", podArgs("default", "plain"), conf, CodeAnnotation, "StatefulSet")

	// Per-network keys win over the legacy key for their network only.
	v.addPod("default", "multi", "u", map[string]string{
		pod.AnnotationIP: "10.188.0.230", pod.AnnotationIP + ".k8snet2": "10.188.0.231",
	})
	if got := v.add("m", "net1", podArgs("default", "multi"), conf); got[0] != "10.188.0.231/16" {
		t.Fatalf("per-network annotation: got %v", got)
	}
	var other map[string]any
	_ = json.Unmarshal(conf, &other)
	other["name"] = "k8snet3"
	otherConf, _ := json.Marshal(other)
	if got := v.add("m", "net2", podArgs("default", "multi"), otherConf); got[0] != "10.188.0.230/16" {
		t.Fatalf("legacy annotation on another network: got %v", got)
	}
}

func TestInvalidConfigIsLoggedToItsLogFile(t *testing.T) {
	v := newEnv(t, nil)
	bad := v.conf(map[string]any{"etcdConfig": nil})
	v.expectCode("ADD", "c1", "net1", "", bad, types.ErrInvalidNetworkConfig, "etcdConfig")
	b, _ := os.ReadFile(v.ipam["logFile"].(string))
	if !strings.Contains(string(b), "invalid network config") || !strings.Contains(string(b), "etcdConfig") {
		t.Fatalf("log file lacks the config error:\n%s", b)
	}
}

// A pod's new sandbox (same pod UID, new container ID) takes over the
// addresses its earlier sandbox still holds, dynamic ones too, in the same
// transaction that retires the earlier attachment: a pod retrying its
// sandbox never holds two addresses, and the earlier sandbox's late DEL
// frees nothing.
func TestNextSandboxOfThePodTakesOver(t *testing.T) {
	v := newEnv(t, nil)
	conf := v.conf(nil)
	v.addPod("web", "web-1", "uid-web-1", nil)
	args := podArgs("web", "web-1")
	first := v.add("sandbox-1", "net1", args, conf)
	second := v.add("sandbox-2", "net1", args, conf)
	if len(first) != 1 || !slices.Equal(first, second) {
		t.Fatalf("first sandbox got %v, second %v; want the same dynamic address", first, second)
	}
	if n := v.keyCount("att/"); n != 1 {
		t.Fatalf("%d attachments after the second sandbox, want 1", n)
	}
	if n := v.keyCount("pod/uid-web-1/net1/"); n != 1 {
		t.Fatalf("%d pod index entries, want 1", n)
	}
	ip := strings.Split(first[0], "/")[0]
	if r := v.record(ip); r == nil || r.ContainerID != "sandbox-2" || r.Kind != store.KindDynamic {
		t.Fatalf("record of %s = %+v, want dynamic, held by sandbox-2", ip, r)
	}
	v.del("sandbox-1", "net1", conf) // late DEL of the earlier sandbox
	if r := v.record(ip); r == nil || r.ContainerID != "sandbox-2" {
		t.Fatalf("late DEL of sandbox-1 freed %s (record %+v)", ip, r)
	}
	// Another interface of the same pod is a separate attachment.
	if other := v.add("sandbox-2", "net2", args, conf); slices.Equal(other, second) {
		t.Fatalf("net2 got %v, the same as net1", other)
	}
	// A re-created pod (new UID, same name) does not inherit a dynamic address.
	v.addPod("web", "web-1", "uid-web-1b", nil)
	if third := v.add("sandbox-3", "net1", args, conf); slices.Equal(third, second) {
		t.Fatalf("a re-created pod (new UID) inherited %v from the old one", third)
	}
	v.del("sandbox-2", "net1", conf)
	v.del("sandbox-2", "net2", conf)
	v.del("sandbox-3", "net1", conf)
	if n := v.keyCount("att/") + v.keyCount("pod/"); n != 0 {
		t.Fatalf("%d attachment or pod index keys left after every DEL", n)
	}
}

// An ADD that fails after its claim committed (here: its result cannot be
// written) releases the claim: a failed ADD holds nothing.
func TestFailedAddAfterTheClaimReleasesIt(t *testing.T) {
	v := newEnv(t, nil)
	conf := v.conf(nil)
	p := *v.p
	p.Out = failingWriter{}
	err := p.Add(&skel.CmdArgs{ContainerID: "broken-stdout", Netns: "/var/run/netns/test", IfName: "net1", Path: "/opt/cni/bin", StdinData: conf})
	te, ok := err.(*types.Error)
	if !ok || te.Code != types.ErrIOFailure {
		t.Fatalf("ADD with a broken stdout = %v, want code %d", err, types.ErrIOFailure)
	}
	if n := v.keyCount("att/") + v.keyCount("ip/"); n != 1 { // the released address's tombstone
		t.Fatalf("%d keys after the failed ADD, want only the released address's tombstone", n)
	}
	if n := v.keyCount("att/"); n != 0 {
		t.Fatal("the failed ADD left its attachment")
	}
	// The tombstone makes the address cool down like any released one.
	if got := v.add("next", "net1", "", conf); len(got) != 1 {
		t.Fatalf("next ADD got %v", got)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, fmt.Errorf("stdout closed") }

// A gateway the pod could not reach on its prefix is refused before
// anything is claimed (code 103, the key named).
func TestUnreachableGatewayRefused(t *testing.T) {
	v := newEnv(t, nil)
	conf := v.conf(nil)
	for _, tc := range []struct {
		name string
		ann  map[string]string
		key  string
	}{
		{"gateway outside the subnet", map[string]string{"kube-ipam.ip": "10.188.0.231", "kube-ipam.netmask": "255.255.0.0", "kube-ipam.gateway": "10.189.0.1"}, "kube-ipam.gateway"},
		{"per-network gateway outside", map[string]string{"kube-ipam.ip": "10.188.0.232", "kube-ipam.gateway.k8snet2": "10.189.0.1"}, "kube-ipam.gateway.k8snet2"},
		{"gateway is the pod's address", map[string]string{"kube-ipam.ip": "10.188.0.233", "kube-ipam.gateway": "10.188.0.233"}, "kube-ipam.gateway"},
		{"netmask cuts off the subnet's gateway", map[string]string{"kube-ipam.ip": "10.188.0.234", "kube-ipam.netmask": "30"}, "kube-ipam.netmask"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v.addPod("db", "p", "uid-p", tc.ann)
			v.expectCode("ADD", "gw-"+tc.ann["kube-ipam.ip"], "net1", podArgs("db", "p"), conf, CodeAnnotation, tc.key)
			if n := v.keyCount(""); n != 0 {
				t.Fatalf("%d keys written by a refused ADD", n)
			}
		})
	}
	// Inside the subnet it is accepted and returned.
	v.addPod("db", "p", "uid-p", map[string]string{"kube-ipam.ip": "10.188.0.235", "kube-ipam.netmask": "16", "kube-ipam.gateway": "10.188.0.254"})
	out, e := v.call("ADD", "gw-ok", "net1", podArgs("db", "p"), conf)
	if e != nil || !strings.Contains(out, `"10.188.0.254"`) {
		t.Fatalf("ADD = %s, %v; want the annotation's gateway", out, e)
	}
}

// A frozen etcd (SIGSTOP) fails an ADD with code 11 saying what was seen,
// not with a guess about the URL, and within the dial timeout.
func TestFrozenEtcdIsCode11(t *testing.T) {
	e := testenv.StartEtcd(t)
	v := newEnv(t, e)
	conf := v.conf(nil)
	e.Freeze(t)
	defer e.Thaw(t)
	v.expectCodeWithin(20*time.Second, "ADD", "frozen", "net1", "", conf, types.ErrTryAgainLater, "accepts TCP connections but sent no answer")
	e.Thaw(t)
	if n := v.keyCount(""); n != 0 {
		t.Fatalf("%d keys after an ADD that failed on a frozen etcd", n)
	}
	v.add("frozen", "net1", "", conf) // the retry succeeds
}
