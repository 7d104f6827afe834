// Package e2e runs the real kube-ipam binary the way container runtimes do:
// as separate processes, through libcni, under the real macvlan plugin, in
// real network namespaces, against a real etcd.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

// run invokes the binary once as a runtime would.
func run(bin, verb, cid, ifname string, stdin []byte, extraEnv ...string) (stdout []byte, exitErr error) {
	cmd := exec.Command(bin)
	cmd.Env = append([]string{
		"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + cid, "CNI_NETNS=/var/run/netns/e2e",
		"CNI_NETNS_OVERRIDE=1", "CNI_IFNAME=" + ifname, "CNI_PATH=/opt/cni/bin", "PATH=" + os.Getenv("PATH"),
	}, extraEnv...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil && errb.Len() > 0 {
		err = fmt.Errorf("%w (stderr: %s)", err, errb.String())
	}
	return out.Bytes(), err
}

func netConf(t *testing.T, e *testenv.Etcd, name string, ipam map[string]any) []byte {
	base := map[string]any{
		"type": "kube-ipam", "etcdConfig": map[string]any{"etcdURL": strings.Join(e.Endpoints, ",")},
		"logFile": filepath.Join(t.TempDir(), "kube-ipam.log"),
	}
	for k, v := range ipam {
		base[k] = v
	}
	b, _ := json.Marshal(map[string]any{"cniVersion": "0.3.1", "name": name, "type": "macvlan", "ipam": base})
	return b
}

func TestConcurrentBinaryAdds(t *testing.T) {
	bin := testenv.Binary(t, "kube-ipam")
	e := testenv.StartEtcd(t)
	const total, inFlight = 500, 50
	conf := netConf(t, e, "burst", map[string]any{"subnet": "10.70.0.0/22", "rangeStart": "10.70.0.10", "rangeEnd": "10.70.3.250", "podLookup": false})
	lo, hi := netip.MustParseAddr("10.70.0.10"), netip.MustParseAddr("10.70.3.250")

	ips := make([]string, total)
	errs := make([]error, total)
	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	for i := range total {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out, err := run(bin, "ADD", fmt.Sprintf("burst-%04d", i), "net1", conf)
			if err != nil {
				errs[i] = err
				return
			}
			var r current.Result
			if err := json.Unmarshal(out, &r); err != nil || len(r.IPs) != 1 {
				errs[i] = fmt.Errorf("bad result %q: %v", out, err)
				return
			}
			ips[i] = r.IPs[0].Address.IP.String()
		}()
	}
	wg.Wait()
	owner := map[string]int{}
	for i, ip := range ips {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %v", i, errs[i])
		}
		a := netip.MustParseAddr(ip)
		if a.Compare(lo) < 0 || a.Compare(hi) > 0 {
			t.Fatalf("ADD %d got %s outside %s-%s", i, ip, lo, hi)
		}
		if j, dup := owner[ip]; dup {
			t.Fatalf("IP %s given to ADD %d and ADD %d", ip, j, i)
		}
		owner[ip] = i
	}
	// Every record in etcd names the container that got the address.
	cli := e.Client(t)
	resp, err := cli.Get(context.Background(), "/kube-ipam/v1/networks/burst/ip/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != total {
		t.Fatalf("%d records in etcd, want %d", len(resp.Kvs), total)
	}
	for _, kv := range resp.Kvs {
		var r store.Record
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("burst-%04d", owner[r.IP]); r.ContainerID != want || r.IfName != "net1" {
			t.Fatalf("record of %s names %s/%s, want %s/net1", r.IP, r.ContainerID, r.IfName, want)
		}
	}
	// And concurrent DELs free everything.
	for i := range total {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := run(bin, "DEL", fmt.Sprintf("burst-%04d", i), "net1", conf); err != nil {
				errs[i] = err
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("DEL %d: %v", i, err)
		}
	}
	resp, err = cli.Get(context.Background(), "/kube-ipam/v1/networks/burst/att/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Fatalf("after DEL: %d attachments left (%v)", resp.Count, err)
	}
}

func TestBinaryErrorsAreCNIJSON(t *testing.T) {
	bin := testenv.Binary(t, "kube-ipam")
	e := testenv.StartEtcd(t)
	cases := []struct {
		name  string
		stdin string
		code  float64
	}{
		{"garbage", "{not json", 0},
		{"no ipam", `{"cniVersion":"0.3.1","name":"x"}`, 7},
		{"no etcdConfig", `{"cniVersion":"0.3.1","name":"x","ipam":{"type":"kube-ipam","subnet":"10.1.0.0/16"}}`, 7},
		{"empty etcdURL", `{"cniVersion":"0.3.1","name":"x","ipam":{"type":"kube-ipam","etcdConfig":{"etcdURL":""},"subnet":"10.1.0.0/16"}}`, 7},
		{"bad netmask", "", 103},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			stdin := []byte(c.stdin)
			var env []string
			if c.name == "bad netmask" {
				kc := podAPI(t, map[string]string{"kube-ipam.ip": "10.71.0.218", "kube-ipam.netmask": "255"})
				stdin = netConf(t, e, "errs", map[string]any{"subnet": "10.71.0.0/16", "kubeConfig": kc})
				env = []string{"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=database-2-0"}
			}
			out, err := run(bin, "ADD", "c1", "net1", stdin, env...)
			if err == nil {
				t.Fatalf("ADD succeeded: %s", out)
			}
			if strings.Contains(err.Error(), "panic") || strings.Contains(err.Error(), "goroutine") {
				t.Fatalf("plugin panicked: %v", err)
			}
			var m map[string]any
			if jerr := json.Unmarshal(out, &m); jerr != nil {
				t.Fatalf("stdout is not a CNI error: %q", out)
			}
			if c.code != 0 && m["code"] != c.code {
				t.Fatalf("code %v, want %v: %s", m["code"], c.code, out)
			}
			if msg, _ := m["msg"].(string); msg == "" {
				t.Fatalf("error without message: %s", out)
			}
		})
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "kube-ipam ") {
		t.Fatalf("--version: %q %v", out, err)
	}
	ver, err := run(bin, "VERSION", "", "", []byte(`{"cniVersion":"1.1.0"}`))
	if err != nil || !strings.Contains(string(ver), `"0.1.0"`) || !strings.Contains(string(ver), `"1.1.0"`) {
		t.Fatalf("VERSION: %s %v", ver, err)
	}
}

// TestBinaryEtcdDownFailsFast: with etcd down, ADD and DEL answer code 11
// naming the endpoint as unreachable after the 5s dial timeout, not after
// ipam.timeout (60s here). The 20s deadline on the process is the guard: a
// missing dial bound shows up as a killed plugin, not as a timing check.
func TestBinaryEtcdDownFailsFast(t *testing.T) {
	bin := testenv.Binary(t, "kube-ipam")
	e := testenv.StartEtcd(t)
	conf := netConf(t, e, "down", map[string]any{"subnet": "10.72.0.0/16", "timeout": "60s"})
	if out, err := run(bin, "ADD", "c0", "net1", conf); err != nil {
		t.Fatalf("ADD with etcd up: %v %s", err, out)
	}
	e.Stop(t)
	for _, verb := range []string{"ADD", "DEL"} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, bin)
		cmd.Env = []string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=c1", "CNI_NETNS=/var/run/netns/e2e",
			"CNI_NETNS_OVERRIDE=1", "CNI_IFNAME=net1", "CNI_PATH=/opt/cni/bin"}
		cmd.Stdin = bytes.NewReader(conf)
		start := time.Now()
		out, err := cmd.Output()
		took := time.Since(start)
		expired := ctx.Err() != nil
		cancel()
		if expired {
			t.Fatalf("%s with etcd down still running after 20s (ipam.timeout 60s): the dial timeout is not applied", verb)
		}
		var res struct {
			Code uint   `json:"code"`
			Msg  string `json:"msg"`
		}
		if err == nil || json.Unmarshal(out, &res) != nil {
			t.Fatalf("%s with etcd down: %v %q", verb, err, out)
		}
		if res.Code != 11 || !strings.Contains(res.Msg, e.Endpoints[0]+" unreachable") || !strings.Contains(res.Msg, "connection refused") {
			t.Fatalf("%s with etcd down: code %d %q, want 11 naming %s unreachable (connection refused)", verb, res.Code, res.Msg, e.Endpoints[0])
		}
		t.Logf("%s: code 11 after %v: %s", verb, took.Round(time.Millisecond), res.Msg)
	}
}

// podAPI starts a real kube-apiserver holding pod default/database-2-0 with
// the given annotations, and returns its kubeconfig.
func podAPI(t *testing.T, ann map[string]string) string {
	k := testenv.StartKube(t, testenv.KubeOptions{})
	_, err := k.Client.CoreV1().Pods("default").Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "database-2-0", Annotations: ann},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "db", Image: "db:v1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return k.Kubeconfig
}

// TestMacvlanFixedIPInNetns: the real macvlan plugin, with kube-ipam as its
// IPAM, puts the pod's annotated fixed IP on net1 inside a pod namespace; the
// address answers pings from a peer on the same segment; DEL frees it.
func TestMacvlanFixedIPInNetns(t *testing.T) {
	testenv.RequireRoot(t)
	pluginDir := testenv.CNIPluginDir(t)
	bin := testenv.Binary(t, "kube-ipam")
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("ping not installed (apt-get install iputils-ping)")
	}
	e := testenv.StartEtcd(t)
	kc := podAPI(t, map[string]string{"kube-ipam.ip": "10.188.0.219", "kube-ipam.netmask": "255.255.0.0", "kube-ipam.gateway": "10.188.0.1"})

	// The macvlan parent is a veth whose other end sits in a "peer" namespace
	// on the same segment. The plugin runs in the test's namespace so that it
	// reaches etcd and the API on loopback; only the veth end lives there.
	peer, parent := testenv.SegmentPeer(t, "kim", "10.188.0.250/16")
	podNS := testenv.NewNS(t)

	// "" is how real multus runs the seed's delegate, which has no
	// cniVersion: as 0.1.0, passed on by macvlan to its IPAM.
	for _, ver := range []string{"", "0.3.1", "1.0.0"} {
		t.Run("cniVersion "+ver, func(t *testing.T) {
			conf := map[string]any{
				"name": "k8snet2", "type": "macvlan", "master": parent, "mode": "bridge",
				"ipam": map[string]any{
					"name": "kube-subnet", "type": "kube-ipam", "kubeConfig": kc,
					"etcdConfig": map[string]any{"etcdURL": strings.Join(e.Endpoints, ",")},
					"subnet":     "10.188.0.0/16", "rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.200", "gateway": "10.188.0.1",
					"logFile": filepath.Join(t.TempDir(), "kube-ipam.log"), "logLevel": "debug",
				},
			}
			if ver != "" {
				conf["cniVersion"] = ver
			}
			logFile := conf["ipam"].(map[string]any)["logFile"].(string)
			t.Cleanup(func() {
				if t.Failed() {
					b, _ := os.ReadFile(logFile)
					t.Logf("kube-ipam log:\n%s", b)
				}
			})
			raw, _ := json.Marshal(conf)
			netconf, err := libcni.NetworkPluginConfFromBytes(raw)
			if err != nil {
				t.Fatal(err)
			}
			cni := libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(bin), pluginDir}, t.TempDir(), nil)
			rt := &libcni.RuntimeConf{
				ContainerID: "db2-v" + strings.ReplaceAll(ver, ".", ""), NetNS: podNS.Path(), IfName: "net1",
				Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "database-2-0"}},
			}
			res, err := cni.AddNetwork(context.Background(), netconf, rt)
			if err != nil {
				t.Fatalf("ADD through macvlan: %v", err)
			}
			r, err := current.NewResultFromResult(res)
			if err != nil || len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.188.0.219/16" {
				t.Fatalf("result %+v (%v)", res, err)
			}
			have := testenv.IPv4Addrs(t, podNS, "net1")
			if len(have) != 1 || have[0] != "10.188.0.219/16" {
				t.Fatalf("net1 in the pod namespace has %v, want 10.188.0.219/16", have)
			}
			// Real traffic: the peer reaches the fixed address over the segment.
			if err := testenv.Ping(peer, "10.188.0.219", 3*time.Second); err != nil {
				t.Fatalf("from the peer: %v", err)
			}
			if err := cni.CheckNetwork(context.Background(), netconf, rt); err != nil && ver == "1.0.0" {
				t.Fatalf("CHECK: %v", err)
			}
			if err := cni.DelNetwork(context.Background(), netconf, rt); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			resp, err := e.Client(t).Get(context.Background(), "/kube-ipam/v1/networks/k8snet2/ip/4/0abc00db", clientv3.WithCountOnly())
			if err != nil || resp.Count != 0 {
				t.Fatalf("fixed IP still claimed after DEL (count %d, %v)", resp.Count, err)
			}
			_ = podNS.Do(func(ns.NetNS) error {
				if _, err := netlink.LinkByName("net1"); err == nil {
					t.Error("net1 still exists after DEL")
				}
				return nil
			})
		})
	}
}
