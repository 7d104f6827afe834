package meta

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"kubeipam/internal/netattach"
	"kubeipam/internal/tier"
)

// The test binary doubles as a fake delegate plugin: linked as "fake" into
// a bin dir, it logs each call (verb, env, stdin) to the file named by the
// config's "log" key and answers as the config says.
func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == "fake" {
		os.Exit(fakeDelegate())
	}
	os.Exit(m.Run())
}

type fakeCall struct {
	Verb, IfName, Args, Path, Netns, Name, Version string
	CacheExisted                                   bool
	Stdin                                          map[string]any
}

func fakeDelegate() int {
	stdin, _ := io.ReadAll(os.Stdin)
	var conf map[string]any
	_ = json.Unmarshal(stdin, &conf)
	str := func(k string) string { s, _ := conf[k].(string); return s }
	verb := os.Getenv("CNI_COMMAND")
	if verb == "VERSION" {
		fmt.Print(`{"cniVersion":"1.1.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}`)
		return 0
	}
	call := fakeCall{Verb: verb, IfName: os.Getenv("CNI_IFNAME"), Args: os.Getenv("CNI_ARGS"), Path: os.Getenv("CNI_PATH"),
		Netns: os.Getenv("CNI_NETNS"), Name: str("name"), Version: str("cniVersion"), Stdin: conf}
	if p := str("expectCache"); p != "" {
		_, err := os.Stat(p)
		call.CacheExisted = err == nil
	}
	if f, err := os.OpenFile(str("log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
		b, _ := json.Marshal(call)
		_, _ = f.Write(append(b, '\n'))
		f.Close()
	}
	if slices.Contains(strings.Split(str("failOn"), ","), verb) {
		code, _ := conf["failCode"].(float64)
		fmt.Printf(`{"cniVersion":%q,"code":%d,"msg":"fake %s failed on %s","details":"d"}`, call.Version, int(code), call.Name, verb)
		return 1
	}
	if verb == "ADD" {
		addr := str("addr")
		switch v := call.Version; {
		case v == "" || strings.HasPrefix(v, "0.1") || strings.HasPrefix(v, "0.2"):
			fmt.Printf(`{"cniVersion":%q,"ip4":{"ip":%q}}`, v, addr)
		case strings.HasPrefix(v, "0.3") || strings.HasPrefix(v, "0.4"):
			fmt.Printf(`{"cniVersion":%q,"interfaces":[{"name":%q}],"ips":[{"version":"4","address":%q,"interface":0}]}`, v, call.IfName, addr)
		default:
			fmt.Printf(`{"cniVersion":%q,"interfaces":[{"name":%q}],"ips":[{"address":%q,"interface":0}]}`, v, call.IfName, addr)
		}
	}
	return 0
}

type env struct {
	t                *testing.T
	bin, cniDir, log string
	p                *Plugin
	out              bytes.Buffer
	stderr           bytes.Buffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, bin: t.TempDir(), cniDir: filepath.Join(t.TempDir(), "multus"), log: filepath.Join(t.TempDir(), "calls")}
	if err := os.Symlink(self, filepath.Join(e.bin, "fake")); err != nil {
		t.Fatal(err)
	}
	e.p = Default()
	e.p.Out, e.p.Stderr = &e.out, &e.stderr
	e.p.NewKube = func(string, time.Duration) (Kube, error) {
		return nil, errors.New("unexpected use of the Kubernetes API")
	}
	e.p.ReadinessPoll, e.p.ReadinessTimeout = 10*time.Millisecond, 200*time.Millisecond
	return e
}

// conf builds a meta config around delegates (maps get the fake type and
// the log path unless they say otherwise).
func (e *env) conf(metaVersion string, extra map[string]any, delegates ...map[string]any) []byte {
	var ds []any
	for _, d := range delegates {
		d = overlay(d, map[string]any{"type": "fake", "log": e.log, "expectCache": CachePath(e.cniDir, "c1"), "addr": "10.99.0.1/24"})
		ds = append(ds, d)
	}
	m := overlay(map[string]any{"cniVersion": metaVersion, "name": "multus-demo", "type": "multus-cni",
		"cniDir": e.cniDir, "binDir": e.bin, "delegates": ds, "logToStderr": true, "logLevel": "debug"}, extra)
	b, _ := json.Marshal(m)
	return b
}

// overlay overlays b onto a copy of a... except keys a already has.
func overlay(a, b map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range b {
		out[k] = v
	}
	for k, v := range a {
		out[k] = v
	}
	return out
}

func (e *env) args(conf []byte, ifname, cniArgs string) *skel.CmdArgs {
	// Our own namespace stands in for the pod's: the tests use interface
	// names that do not exist in it.
	return &skel.CmdArgs{ContainerID: "c1", Netns: "/proc/self/ns/net", IfName: ifname, Args: cniArgs,
		Path: "/opt/cni/bin:/usr/lib/cni", StdinData: conf}
}

func (e *env) calls() []fakeCall {
	e.t.Helper()
	f, err := os.Open(e.log)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	var out []fakeCall
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var c fakeCall
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, c)
	}
	_ = os.Remove(e.log)
	return out
}

func seq(calls []fakeCall) string {
	var s []string
	for _, c := range calls {
		s = append(s, c.Verb+" "+c.Name+" "+c.IfName)
	}
	return strings.Join(s, ", ")
}

func code(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

const kubeletArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=db;K8S_POD_NAME=database-2-0;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u2"

func TestAddDel(t *testing.T) {
	e := newEnv(t)
	conf := e.conf("1.0.0", nil,
		map[string]any{"name": "k8snet1", "cniVersion": "0.4.0", "addr": "10.244.1.5/24", "masterplugin": true},
		map[string]any{"name": "k8snet2", "addr": "10.188.0.219/16"},
		map[string]any{"name": "k8snet3", "addr": "10.189.0.9/16", "cniVersion": "0.4.0"})
	if err := e.p.Add(e.args(conf, "kmt0", kubeletArgs)); err != nil {
		t.Fatalf("ADD: %v\n%s", err, e.stderr.String())
	}
	calls := e.calls()
	if got := seq(calls); got != "ADD k8snet1 kmt0, ADD k8snet2 net1, ADD k8snet3 net2" {
		t.Fatalf("calls: %s", got)
	}
	if !regexp.MustCompile(`msg=ok .*verb=ADD .* ms=[0-9]+`).MatchString(e.stderr.String()) {
		t.Errorf("no ADD line with its time (ms=) in the log:\n%s", e.stderr.String())
	}
	for _, c := range calls {
		if !c.CacheExisted {
			t.Errorf("%s ran before the scratch cache was written", c.Name)
		}
		if !strings.HasPrefix(c.Path, e.bin+":/opt/cni/bin:/usr/lib/cni") {
			t.Errorf("CNI_PATH %q", c.Path)
		}
		if !strings.HasPrefix(c.Args, "IgnoreUnknown=true;K8S_POD_NAMESPACE=db;K8S_POD_NAME=database-2-0;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u2;IgnoreUnknown=1;") {
			t.Errorf("CNI_ARGS %q", c.Args)
		}
		if c.Stdin["masterplugin"] != nil && c.Name != "k8snet1" {
			t.Error("masterplugin leaked")
		}
	}
	// cniVersion: own when given, else inherited from the meta config.
	if calls[0].Version != "0.4.0" || calls[1].Version != "1.0.0" || calls[2].Version != "0.4.0" || calls[0].Stdin["masterplugin"] != true {
		t.Errorf("versions %s %s %s", calls[0].Version, calls[1].Version, calls[2].Version)
	}
	// The master's result, converted to the meta config's version.
	var res map[string]any
	if err := json.Unmarshal(e.out.Bytes(), &res); err != nil {
		t.Fatalf("result %q: %v", e.out.String(), err)
	}
	r, err := current.NewResultFromResult(mustResult(t, e.out.Bytes()))
	if err != nil || res["cniVersion"] != "1.0.0" || len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.244.1.5/24" {
		t.Fatalf("result %s (%v)", e.out.String(), err)
	}
	if _, err := os.Stat(filepath.Join(e.cniDir, "results", "k8snet2-c1-net1")); err != nil {
		t.Errorf("libcni result cache: %v", err)
	}

	// CHECK reaches every delegate.
	if err := e.p.Check(e.args(conf, "kmt0", kubeletArgs)); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if got := seq(e.calls()); got != "CHECK k8snet1 kmt0, CHECK k8snet2 net1, CHECK k8snet3 net2" {
		t.Errorf("CHECK calls: %s", got)
	}

	// A duplicate ADD changes nothing (multus would tear down the live eth0).
	dup := e.args(conf, "lo", kubeletArgs)
	if err := e.p.Add(dup); code(err) != CodeIfaceExists {
		t.Fatalf("duplicate ADD: %v", err)
	}
	if len(e.calls()) != 0 {
		t.Error("a delegate ran on a duplicate ADD")
	}

	// DEL in reverse, then the cache is gone; a second DEL falls back to
	// the configuration and still succeeds.
	if err := e.p.Del(e.args(conf, "kmt0", kubeletArgs)); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if got := seq(e.calls()); got != "DEL k8snet3 net2, DEL k8snet2 net1, DEL k8snet1 kmt0" {
		t.Errorf("DEL calls: %s", got)
	}
	if _, err := os.Stat(CachePath(e.cniDir, "c1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cache left: %v", err)
	}
	if err := e.p.Del(e.args(conf, "kmt0", kubeletArgs)); err != nil {
		t.Fatalf("repeated DEL: %v", err)
	}
	if got := seq(e.calls()); got != "DEL k8snet3 net2, DEL k8snet2 net1, DEL k8snet1 kmt0" {
		t.Errorf("repeated DEL (no cache) calls: %s", got)
	}
}

func mustResult(t *testing.T, b []byte) types.Result {
	t.Helper()
	r, err := current.NewResult(b)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestResultVersions(t *testing.T) {
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		e := newEnv(t)
		conf := e.conf(v, nil, map[string]any{"name": "k8snet1", "addr": "10.244.1.5/24"})
		if err := e.p.Add(e.args(conf, "kmt0", "")); err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		var m map[string]any
		_ = json.Unmarshal(e.out.Bytes(), &m)
		if m["cniVersion"] != v || m["ips"] == nil {
			t.Errorf("meta %s: result %s", v, e.out.String())
		}
	}
	// The seed's case with a 0.1.0-era meta config: legacy result.
	e := newEnv(t)
	conf := e.conf("0.2.0", nil, map[string]any{"name": "k8snet1", "addr": "10.244.1.5/24", "cniVersion": "1.0.0"})
	if err := e.p.Add(e.args(conf, "kmt0", "")); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.out.String(), `"ip4"`) {
		t.Errorf("0.2.0 result %s", e.out.String())
	}
}

func TestAddFailureRollsBackAndKeepsCode(t *testing.T) {
	e := newEnv(t)
	conf := e.conf("1.0.0", nil,
		map[string]any{"name": "k8snet1", "addr": "10.244.1.5/24"},
		map[string]any{"name": "k8snet2", "addr": "10.188.0.219/16"},
		map[string]any{"name": "k8snet3", "failOn": "ADD", "failCode": 11})
	err := e.p.Add(e.args(conf, "kmt0", kubeletArgs))
	if code(err) != 11 {
		t.Fatalf("want the delegate's code 11, got %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "db/database-2-0/u2:k8snet3") || !strings.Contains(msg, "fake k8snet3 failed on ADD") {
		t.Errorf("message %q", msg)
	}
	if got := seq(e.calls()); got != "ADD k8snet1 kmt0, ADD k8snet2 net1, ADD k8snet3 net2, DEL k8snet3 net2, DEL k8snet2 net1, DEL k8snet1 kmt0" {
		t.Errorf("calls: %s", got)
	}
	if _, err := os.Stat(CachePath(e.cniDir, "c1")); err != nil {
		t.Errorf("the cache must stay for the runtime's DEL: %v", err)
	}
	if e.out.Len() != 0 {
		t.Errorf("stdout on failure: %s", e.out.String())
	}
}

func TestDelContinuesAndJoinsErrors(t *testing.T) {
	e := newEnv(t)
	conf := e.conf("1.0.0", nil,
		map[string]any{"name": "k8snet1", "failOn": "DEL", "failCode": 5},
		map[string]any{"name": "k8snet2", "failOn": "DEL", "failCode": 11},
		map[string]any{"name": "k8snet3"})
	err := e.p.Del(e.args(conf, "kmt0", ""))
	if code(err) != 11 || !strings.Contains(err.Error(), "fake k8snet2 failed on DEL / ") || !strings.Contains(err.Error(), "fake k8snet1 failed on DEL") {
		t.Fatalf("DEL error: %v", err)
	}
	if got := seq(e.calls()); got != "DEL k8snet3 net2, DEL k8snet2 net1, DEL k8snet1 kmt0" {
		t.Errorf("calls: %s", got)
	}
	// A missing namespace is no reason to skip a delegate.
	a := e.args(conf, "kmt0", "")
	a.Netns = "/var/run/netns/gone-" + fmt.Sprint(time.Now().UnixNano())
	_ = e.p.Del(a)
	if got := seq(e.calls()); got != "DEL k8snet3 net2, DEL k8snet2 net1, DEL k8snet1 kmt0" {
		t.Errorf("calls with a missing netns: %s", got)
	}
}

func TestDelCorruptCacheFallsBack(t *testing.T) {
	e := newEnv(t)
	conf := e.conf("1.0.0", nil, map[string]any{"name": "k8snet1"}, map[string]any{"name": "k8snet2"})
	if err := os.MkdirAll(e.cniDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(CachePath(e.cniDir, "c1"), []byte("[{\"Name\":\"k8s"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.p.Del(e.args(conf, "kmt0", "")); err != nil {
		t.Fatal(err)
	}
	if got := seq(e.calls()); got != "DEL k8snet2 net1, DEL k8snet1 kmt0" {
		t.Errorf("calls: %s", got)
	}
	if _, err := os.Stat(CachePath(e.cniDir, "c1")); !errors.Is(err, os.ErrNotExist) {
		t.Error("corrupt cache left behind")
	}
	// retryDeleteOnError keeps the cache while a delegate fails.
	conf = e.conf("1.0.0", map[string]any{"retryDeleteOnError": true},
		map[string]any{"name": "k8snet1"}, map[string]any{"name": "k8snet2", "failOn": "DEL", "failCode": 11})
	_ = WriteCache(e.cniDir, "c1", []CacheEntry{{Name: "k8snet1", Bytes: []byte(`{"name":"k8snet1","type":"fake"}`), IfName: "kmt0"}})
	if err := e.p.Del(e.args(conf, "kmt0", "")); err != nil {
		t.Fatalf("cached delegate only: %v", err)
	}
	_ = WriteCache(e.cniDir, "c1", []CacheEntry{{Name: "k8snet2", Bytes: []byte(fmt.Sprintf(`{"name":"k8snet2","type":"fake","log":%q,"failOn":"DEL","failCode":11}`, e.log)), IfName: "net1"}})
	if err := e.p.Del(e.args(conf, "kmt0", "")); code(err) != 11 {
		t.Fatalf("want 11: %v", err)
	}
	if _, err := os.Stat(CachePath(e.cniDir, "c1")); err != nil {
		t.Error("retryDeleteOnError: cache removed after a failed DEL")
	}
}

func TestSelection(t *testing.T) {
	e := newEnv(t)
	conf := e.conf("1.0.0", map[string]any{"kubeconfig": "/nonexistent/kubeconfig"},
		map[string]any{"name": "k8snet1", "addr": "10.244.1.5/24"},
		map[string]any{"name": "k8snet2", "kubeMultus": map[string]any{"attach": map[string]any{"namespaces": []string{"db", "web"}}}},
		map[string]any{"name": "k8snet3", "kubeMultus": map[string]any{"attach": map[string]any{"podSelector": "tier in (db)"}}})
	k := &fakeKube{pods: map[string]*Pod{
		"db/database-2-0": {UID: "u2", Labels: map[string]string{"tier": "db"}},
		"web/web-1":       {Labels: map[string]string{"tier": "web"}},
		"batch/web-1":     {Labels: map[string]string{"tier": "batch"}},
	}}
	e.p.NewKube = func(kc string, _ time.Duration) (Kube, error) {
		if kc != "/nonexistent/kubeconfig" {
			t.Errorf("kubeconfig %q", kc)
		}
		return k, nil
	}
	run := func(args string) (string, error) {
		_ = os.RemoveAll(e.cniDir)
		err := e.p.Add(e.args(conf, "kmt0", args))
		return seq(e.calls()), err
	}
	if got, err := run(kubeletArgs); err != nil || got != "ADD k8snet1 kmt0, ADD k8snet2 net1, ADD k8snet3 net2" {
		t.Errorf("db pod: %s %v", got, err)
	}
	if got, err := run("K8S_POD_NAMESPACE=web;K8S_POD_NAME=web-1"); err != nil || got != "ADD k8snet1 kmt0, ADD k8snet2 net1" {
		t.Errorf("web pod: %s %v", got, err)
	}
	if got, err := run("K8S_POD_NAMESPACE=batch;K8S_POD_NAME=web-1"); err != nil || got != "ADD k8snet1 kmt0" {
		t.Errorf("batch pod: %s %v", got, err)
	}
	if k.reads != 3 {
		t.Errorf("%d pod reads, want one per ADD", k.reads)
	}
	// The API is down: fail with 11, attach nothing.
	if got, err := run("K8S_POD_NAMESPACE=db;K8S_POD_NAME=other"); code(err) != types.ErrTryAgainLater || got != "" {
		t.Errorf("API down: %s %v", got, err)
	}
	// Not a Kubernetes pod: refuse to guess.
	if got, err := run(""); code(err) != types.ErrInvalidEnvironmentVariables || got != "" {
		t.Errorf("no pod args: %s %v", got, err)
	}
	// DEL of the batch pod (net1/net2 never attached) only needs the cache.
	_, _ = run("K8S_POD_NAMESPACE=batch;K8S_POD_NAME=web-1")
	if err := e.p.Del(e.args(conf, "kmt0", "K8S_POD_NAMESPACE=batch;K8S_POD_NAME=web-1")); err != nil {
		t.Fatal(err)
	}
	if got := seq(e.calls()); got != "DEL k8snet1 kmt0" {
		t.Errorf("DEL: %s", got)
	}
}

func TestUnselectedNoticeOnce(t *testing.T) {
	e := newEnv(t)
	conf := e.conf("1.0.0", nil, map[string]any{"name": "k8snet1"}, map[string]any{"name": "k8snet2"})
	for i := range 2 {
		if err := e.p.Add(e.args(conf, "kmt0", "")); err != nil {
			t.Fatal(err)
		}
		_ = e.p.Del(e.args(conf, "kmt0", ""))
		if n := strings.Count(e.stderr.String(), "every pod on this node gets it"); n != 1 {
			t.Fatalf("after ADD %d the notice appears %d times:\n%s", i+1, n, e.stderr.String())
		}
	}
}

func TestDropArgs(t *testing.T) {
	e := newEnv(t)
	conf := e.conf("1.0.0", nil,
		map[string]any{"name": "k8snet1", "kubeMultus": map[string]any{"dropArgs": []string{"IP"}}},
		map[string]any{"name": "k8snet2"})
	if err := e.p.Add(e.args(conf, "kmt0", kubeletArgs+";IP=10.188.0.219")); err != nil {
		t.Fatal(err)
	}
	calls := e.calls()
	if strings.Contains(calls[0].Args, "IP=") || !strings.HasSuffix(calls[1].Args, ";IP=10.188.0.219") {
		t.Errorf("args %q / %q", calls[0].Args, calls[1].Args)
	}
	if calls[0].Stdin["kubeMultus"] != nil {
		t.Error("extension reached the delegate")
	}
}

func TestGCAndStatusReachEveryDelegate(t *testing.T) {
	e := newEnv(t)
	conf := e.conf("1.1.0", nil, map[string]any{"name": "k8snet1"}, map[string]any{"name": "k8snet2"})
	if err := e.p.Add(e.args(conf, "kmt0", "")); err != nil {
		t.Fatal(err)
	}
	_ = e.calls()
	// A stale container's scratch cache, to be collected.
	_ = WriteCache(e.cniDir, "stale", []CacheEntry{{Name: "k8snet1", Bytes: []byte(`{"name":"k8snet1","type":"fake"}`), IfName: "eth0"}})
	var m map[string]any
	_ = json.Unmarshal(conf, &m)
	m["cni.dev/valid-attachments"] = []map[string]string{{"containerID": "c1", "ifname": "kmt0"}}
	gcConf, _ := json.Marshal(m)
	if err := e.p.GC(&skel.CmdArgs{StdinData: gcConf, Path: "/opt/cni/bin"}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	calls := e.calls()
	if got := seq(calls); got != "GC k8snet1 , GC k8snet2 " {
		t.Fatalf("GC calls: %s", got)
	}
	for _, c := range calls {
		va, _ := json.Marshal(c.Stdin["cni.dev/valid-attachments"])
		want := map[string]string{"k8snet1": `[{"containerID":"c1","ifname":"kmt0"}]`, "k8snet2": `[{"containerID":"c1","ifname":"net1"}]`}[c.Name]
		if string(va) != want {
			t.Errorf("%s got valid attachments %s, want %s", c.Name, va, want)
		}
	}
	if _, err := os.Stat(CachePath(e.cniDir, "stale")); !errors.Is(err, os.ErrNotExist) {
		t.Error("stale scratch cache kept")
	}
	if _, err := os.Stat(CachePath(e.cniDir, "c1")); err != nil {
		t.Error("valid scratch cache removed")
	}
	if err := e.p.GC(&skel.CmdArgs{StdinData: conf, Path: "/opt/cni/bin"}); code(err) != types.ErrInvalidNetworkConfig {
		t.Fatalf("GC without the valid-attachments list: %v", err)
	}
	if err := e.p.Status(&skel.CmdArgs{StdinData: conf, Path: "/opt/cni/bin"}); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	if got := seq(e.calls()); got != "STATUS k8snet1 , STATUS k8snet2 " {
		t.Fatalf("STATUS calls: %s", got)
	}
	bad := e.conf("1.1.0", nil, map[string]any{"name": "k8snet1"}, map[string]any{"name": "k8snet2", "failOn": "STATUS", "failCode": 50})
	if err := e.p.Status(&skel.CmdArgs{StdinData: bad, Path: "/opt/cni/bin"}); code(err) != 50 {
		t.Fatalf("STATUS of a failing secondary: %v", err)
	}
}

func TestReadiness(t *testing.T) {
	e := newEnv(t)
	ready := filepath.Join(t.TempDir(), "ready")
	conf := e.conf("1.1.0", map[string]any{"readinessindicatorfile": ready}, map[string]any{"name": "k8snet1"})
	if err := e.p.Add(e.args(conf, "kmt0", "")); code(err) != types.ErrTryAgainLater {
		t.Fatalf("ADD without readiness: %v", err)
	}
	if err := e.p.Status(&skel.CmdArgs{StdinData: conf, Path: "/x"}); code(err) != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS without readiness: %v", err)
	}
	e.p.ReadinessTimeout, e.p.ReadinessPoll = time.Hour, time.Hour // a wait would hang the test
	start := time.Now()
	if err := e.p.Del(e.args(conf, "kmt0", "")); err != nil || time.Since(start) > 20*time.Second {
		t.Fatalf("DEL must not wait for readiness: %v after %v", err, time.Since(start))
	}
	_ = os.WriteFile(ready, nil, 0o600)
	e.p.ReadinessTimeout, e.p.ReadinessPoll = 200*time.Millisecond, 10*time.Millisecond
	if err := e.p.Add(e.args(conf, "kmt0", "")); err != nil {
		t.Fatal(err)
	}
}

func TestMissingDelegateBinary(t *testing.T) {
	e := newEnv(t)
	conf := e.conf("1.0.0", nil, map[string]any{"name": "k8snet1", "type": "no-such-plugin"})
	if err := e.p.Add(e.args(conf, "kmt0", "")); code(err) != CodeDelegateExec {
		t.Fatalf("missing plugin: %v", err)
	}
	two := e.conf("1.0.0", nil, map[string]any{"name": "k8snet1"}, map[string]any{"name": "k8snet2"})
	if err := e.p.Add(e.args(two, "net1", "")); code(err) != types.ErrInvalidEnvironmentVariables {
		t.Fatalf("CNI_IFNAME net1 with a secondary network: %v", err)
	}
	if err := e.p.Add(e.args([]byte(`{"name":"x"}`), "kmt0", "")); code(err) != types.ErrInvalidNetworkConfig {
		t.Fatalf("no delegates: %v", err)
	}
	if err := e.p.Add(e.args(e.conf("1.0.0", nil, map[string]any{"name": "k8snet1"}), "kmt0", "BROKEN")); code(err) != types.ErrInvalidEnvironmentVariables {
		t.Fatalf("bad CNI_ARGS: %v", err)
	}
}

// fakeKube stands in for the API in these pure tests of the call flow
// (test/meta runs the real thing against a kube-apiserver). A pod missing
// from pods is an unreachable API.
type fakeKube struct {
	pods     map[string]*Pod
	nads     map[string]*netattach.NAD
	reads    int
	statuses map[string]string
	events   []Event
}

func (k *fakeKube) Pod(_ context.Context, ns, name string) (*Pod, error) {
	k.reads++
	if p, ok := k.pods[ns+"/"+name]; ok {
		return p, nil
	}
	return nil, &tier.UnavailableError{Err: errors.New("dial tcp 127.0.0.1:6443: connection refused")}
}

func (k *fakeKube) NAD(_ context.Context, ns, name string) (*netattach.NAD, error) {
	if n, ok := k.nads[ns+"/"+name]; ok {
		return n, nil
	}
	return nil, &NotFoundError{What: "NetworkAttachmentDefinition " + ns + "/" + name}
}

func (k *fakeKube) SetNetworkStatus(_ context.Context, ns, name, _, value string) error {
	if k.statuses == nil {
		k.statuses = map[string]string{}
	}
	k.statuses[ns+"/"+name] = value
	return nil
}

func (k *fakeKube) Event(_ context.Context, e Event) error {
	k.events = append(k.events, e)
	return nil
}

// nadOf is a NetworkAttachmentDefinition whose config is a fake delegate.
func (e *env) nadOf(ns, name string, conf map[string]any) *netattach.NAD {
	conf = overlay(conf, map[string]any{"cniVersion": "1.1.0", "type": "fake", "log": e.log, "addr": "10.188.0.9/16"})
	b, _ := json.Marshal(conf)
	n := &netattach.NAD{}
	n.Namespace, n.Name, n.Spec.Config = ns, name, string(b)
	return n
}

func TestKubernetesModeAnnotation(t *testing.T) {
	e := newEnv(t)
	conf := e.conf("1.0.0", map[string]any{"kubeconfig": "/k"},
		map[string]any{"name": "k8snet1", "addr": "10.244.1.5/24"},
		map[string]any{"name": "k8snet2"})
	k := &fakeKube{pods: map[string]*Pod{"db/database-2-0": {UID: "u2", Annotations: map[string]string{
		netattach.NetworksAnnotation: `[{"name":"db-net","ips":["10.188.0.219/16"],"mac":"02:00:00:00:00:19","cni-args":{"x":"y"}},{"name":"other","namespace":"shared","interface":"data0"}]`}}},
		nads: map[string]*netattach.NAD{
			"db/db-net":     e.nadOf("db", "db-net", map[string]any{"capabilities": map[string]any{"ips": true, "mac": true}, "addr": "10.188.0.219/16"}),
			"shared/other":  e.nadOf("shared", "other", map[string]any{"name": "other-net"}),
			"db/unselected": e.nadOf("db", "unselected", nil),
		}}
	e.p.NewKube = func(string, time.Duration) (Kube, error) { return k, nil }
	if err := e.p.Add(e.args(conf, "kmt0", kubeletArgs)); err != nil {
		t.Fatal(err)
	}
	calls := e.calls()
	// The guide's delegates keep net1; the annotation's networks follow.
	if got := seq(calls); got != "ADD k8snet1 kmt0, ADD k8snet2 net1, ADD db-net net2, ADD other-net data0" {
		t.Fatalf("calls: %s", got)
	}
	db := calls[2]
	rc, _ := db.Stdin["runtimeConfig"].(map[string]any)
	if ips, _ := rc["ips"].([]any); len(ips) != 1 || ips[0] != "10.188.0.219/16" || rc["mac"] != "02:00:00:00:00:19" {
		t.Errorf("runtimeConfig: %v", db.Stdin["runtimeConfig"])
	}
	if !strings.Contains(db.Args, ";IP=10.188.0.219/16") || !strings.Contains(db.Args, ";MAC=02:00:00:00:00:19") {
		t.Errorf("CNI_ARGS: %s", db.Args)
	}
	if args, _ := db.Stdin["args"].(map[string]any); args == nil || args["cni"].(map[string]any)["x"] != "y" {
		t.Errorf("cni-args: %v", db.Stdin["args"])
	}
	if strings.Contains(calls[1].Args, "IP=") || calls[1].Stdin["runtimeConfig"] != nil {
		t.Errorf("a request leaked to another network: %s %v", calls[1].Args, calls[1].Stdin["runtimeConfig"])
	}
	st, err := netattach.Decode(k.statuses["db/database-2-0"])
	if err != nil || len(st) != 4 {
		t.Fatalf("network-status %q: %v", k.statuses["db/database-2-0"], err)
	}
	want := []string{"k8snet1 kmt0 10.244.1.5 true", "k8snet2 net1 10.99.0.1 false", "db/db-net net2 10.188.0.219 false", "shared/other data0 10.188.0.9 false"}
	for i, s := range st {
		if got := fmt.Sprintf("%s %s %s %v", s.Name, s.Interface, strings.Join(s.IPs, ","), s.Default); got != want[i] {
			t.Errorf("status[%d] = %s, want %s", i, got, want[i])
		}
	}
	if len(k.events) != 4 || k.events[2].Reason != ReasonAdded || k.events[2].Message != "Add net2 [10.188.0.219/16] from db/db-net" ||
		k.events[2].UID != "u2" || k.events[2].Warning {
		t.Errorf("events: %+v", k.events)
	}
	// GC reaches the NAD networks too (from the scratch caches, with the
	// bytes they were attached with), each with its own attachments.
	var m map[string]any
	_ = json.Unmarshal(conf, &m)
	m["cni.dev/valid-attachments"] = []map[string]string{{"containerID": "c1", "ifname": "kmt0"}}
	m["cniVersion"] = "1.1.0"
	gcConf, _ := json.Marshal(m)
	if err := e.p.GC(&skel.CmdArgs{StdinData: gcConf, Path: "/opt/cni/bin"}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	gc := e.calls()
	var gcNets []string
	for _, c := range gc {
		if c.Verb == "GC" {
			va, _ := json.Marshal(c.Stdin["cni.dev/valid-attachments"])
			gcNets = append(gcNets, c.Name+" "+string(va))
		}
	}
	if want := []string{`k8snet2 [{"containerID":"c1","ifname":"net1"}]`, `db-net [{"containerID":"c1","ifname":"net2"}]`, `other-net [{"containerID":"c1","ifname":"data0"}]`}; !slices.Equal(gcNets[1:], want) {
		t.Errorf("GC reached %q, want k8snet1 then %q", gcNets, want)
	}
	// DEL needs no API: the requests are replayed from the cache, in
	// reverse order.
	e.p.NewKube = func(string, time.Duration) (Kube, error) { return nil, errors.New("DEL used the API") }
	if err := e.p.Del(e.args(conf, "kmt0", kubeletArgs)); err != nil {
		t.Fatal(err)
	}
	calls = e.calls()
	if got := seq(calls); got != "DEL other-net data0, DEL db-net net2, DEL k8snet2 net1, DEL k8snet1 kmt0" {
		t.Fatalf("DEL: %s", got)
	}
	if !strings.Contains(calls[1].Args, "IP=10.188.0.219/16") {
		t.Errorf("DEL without the requested address: %s", calls[1].Args)
	}
}

func TestKubernetesModeErrors(t *testing.T) {
	e := newEnv(t)
	conf := e.conf("1.0.0", map[string]any{"kubeconfig": "/k", "namespaceIsolation": true},
		map[string]any{"name": "k8snet1"})
	k := &fakeKube{pods: map[string]*Pod{}, nads: map[string]*netattach.NAD{
		"db/db-net":  e.nadOf("db", "db-net", nil),
		"db/attach":  e.nadOf("db", "attach", map[string]any{"kubeMultus": map[string]any{"attach": map[string]any{"namespaces": []string{"db"}}}}),
		"db/badjson": nadBad("{"),
	}}
	e.p.NewKube = func(string, time.Duration) (Kube, error) { return k, nil }
	for _, c := range []struct {
		annotation, uid, want string
		code                  uint
		reason                string
	}{
		{`missing`, "u2", "cannot find NetworkAttachmentDefinition missing in namespace db", CodeNetwork, ReasonNoNetwork},
		{`web/db-net`, "u2", "namespaceIsolation", CodeNetwork, ReasonAddFailed},
		{`default/missing`, "u2", "cannot find", CodeNetwork, ReasonNoNetwork},
		{`[{"name":"db-net","ips":["10.188.0.300"]}]`, "u2", `"10.188.0.300" is not an address`, CodeNetwork, ReasonAddFailed},
		{`attach`, "u2", "pods select this network with their k8s.v1.cni.cncf.io/networks annotation", CodeNetwork, ReasonAddFailed},
		{`badjson`, "u2", "spec.config", CodeNetwork, ReasonAddFailed},
		{`db-net@kmt0`, "u2", "CNI_IFNAME kmt0 is also the interface name", types.ErrInvalidEnvironmentVariables, ReasonAddFailed},
		{`db-net@net5, db-net@net5`, "u2", "interface net5 is asked for twice", CodeNetwork, ReasonAddFailed},
		{`db-net`, "other-uid", "refusing its annotations", CodePodLookup, ReasonAddFailed},
	} {
		_ = os.RemoveAll(e.cniDir)
		k.events, k.statuses = nil, nil
		k.pods["db/database-2-0"] = &Pod{UID: c.uid, Annotations: map[string]string{netattach.NetworksAnnotation: c.annotation}}
		err := e.p.Add(e.args(conf, "kmt0", kubeletArgs))
		if code(err) != c.code || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: want code %d with %q, got %d: %v", c.annotation, c.code, c.want, code(err), err)
		}
		if got := seq(e.calls()); got != "" {
			t.Errorf("%s: attached %s", c.annotation, got)
		}
		if len(k.statuses) != 0 {
			t.Errorf("%s: network-status written", c.annotation)
		}
		if len(k.events) != 1 || !k.events[0].Warning || k.events[0].Reason != c.reason || !strings.Contains(k.events[0].Message, fmt.Sprintf("CNI error %d: ", c.code)) {
			t.Errorf("%s: events %+v", c.annotation, k.events)
		}
	}
	// The API is down: code 11, no Event attempted.
	delete(k.pods, "db/database-2-0")
	k.events = nil
	if err := e.p.Add(e.args(conf, "kmt0", kubeletArgs)); code(err) != types.ErrTryAgainLater || len(k.events) != 0 {
		t.Errorf("API down: %v, events %+v", err, k.events)
	}
}

func nadBad(config string) *netattach.NAD {
	n := &netattach.NAD{}
	n.Namespace, n.Name, n.Spec.Config = "db", "badjson", config
	return n
}

func TestClusterNetworkModes(t *testing.T) {
	e := newEnv(t)
	confDir := t.TempDir()
	write := func(name string, m map[string]any) string {
		m = overlay(m, map[string]any{"cniVersion": "1.0.0", "type": "fake", "log": e.log, "addr": "10.244.1.5/24"})
		b, _ := json.Marshal(m)
		p := filepath.Join(confDir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flannel := write("10-flannel.conf", map[string]any{"name": "cbr0"})
	write("20-extra.conf", map[string]any{"name": "extra", "addr": "10.77.0.2/24"})
	mk := func(extra map[string]any) []byte {
		m := overlay(extra, map[string]any{"cniVersion": "1.0.0", "name": "multus-cni-network", "type": "kube-multus",
			"cniDir": e.cniDir, "binDir": e.bin, "confDir": confDir, "logToStderr": true, "logLevel": "debug"})
		b, _ := json.Marshal(m)
		return b
	}
	// Without a kubeconfig: files only (a path, then a name in confDir).
	conf := mk(map[string]any{"clusterNetwork": flannel, "defaultNetworks": []string{"extra"}})
	if err := e.p.Add(e.args(conf, "kmt0", kubeletArgs)); err != nil {
		t.Fatal(err)
	}
	if got := seq(e.calls()); got != "ADD cbr0 kmt0, ADD extra net1" {
		t.Fatalf("calls: %s", got)
	}
	// DEL without a scratch cache (lost on reboot) still reaches the
	// cluster network and defaultNetworks, resolved from the config now.
	if err := os.Remove(CachePath(e.cniDir, "c1")); err != nil {
		t.Fatal(err)
	}
	if err := e.p.Del(e.args(conf, "kmt0", kubeletArgs)); err != nil {
		t.Fatal(err)
	}
	if got := seq(e.calls()); got != "DEL extra net1, DEL cbr0 kmt0" {
		t.Fatalf("DEL without a cache: %s", got)
	}
	// A pod of a system namespace gets only the cluster network.
	_ = os.RemoveAll(e.cniDir)
	if err := e.p.Add(e.args(conf, "kmt0", "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns")); err != nil {
		t.Fatal(err)
	}
	if got := seq(e.calls()); got != "ADD cbr0 kmt0" {
		t.Fatalf("system namespace: %s", got)
	}
	// A missing network names the key and where it looked.
	_ = os.RemoveAll(e.cniDir)
	err := e.p.Add(e.args(mk(map[string]any{"clusterNetwork": "nope"}), "kmt0", kubeletArgs))
	if code(err) != CodeNetwork || !strings.Contains(err.Error(), `clusterNetwork "nope"`) || !strings.Contains(err.Error(), confDir) {
		t.Fatalf("missing cluster network: %v", err)
	}
	// With a kubeconfig: a NAD in multusNamespace wins over the file of
	// that name, and names the network namespace/name.
	k := &fakeKube{pods: map[string]*Pod{"db/database-2-0": {UID: "u2"}}, nads: map[string]*netattach.NAD{
		"kube-system/cbr0": e.nadOf("kube-system", "cbr0", map[string]any{"name": "cbr0", "addr": "10.244.9.9/24"})}}
	e.p.NewKube = func(string, time.Duration) (Kube, error) { return k, nil }
	_ = os.RemoveAll(e.cniDir)
	if err := e.p.Add(e.args(mk(map[string]any{"clusterNetwork": "cbr0", "defaultNetworks": []string{"extra"}, "kubeconfig": "/k"}), "kmt0", kubeletArgs)); err != nil {
		t.Fatal(err)
	}
	st, _ := netattach.Decode(k.statuses["db/database-2-0"])
	if got := seq(e.calls()); got != "ADD cbr0 kmt0, ADD extra net1" || len(st) != 2 || st[0].Name != "kube-system/cbr0" ||
		st[0].IPs[0] != "10.244.9.9" || !st[0].Default || st[1].Name != "extra" {
		t.Fatalf("NAD cluster network: %s %+v", got, st)
	}
}
