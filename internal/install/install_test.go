package install

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"kubeipam/internal/pki"
)

// validConf is the seed's 10-multus.conf as deploy/configmap.yaml adapts it:
// the kube-ipam network reads the installer's kubeconfig and etcd files.
const validConf = `{
  "cniVersion": "0.3.1",
  "name": "multus-demo",
  "type": "kube-multus",
  "kubeconfig": "/etc/cni/net.d/kube-ipam.d/kubeconfig",
  "delegates": [
    {"name": "k8snet1", "type": "flannel", "masterplugin": true,
     "delegate": {"isDefaultGateway": true, "bridge": "docker0", "mtu": 1400}},
    {"name": "k8snet2", "type": "macvlan", "master": "eth0",
     "ipam": {
       "type": "kube-ipam",
       "kubeConfig": "/etc/cni/net.d/kube-ipam.d/kubeconfig",
       "etcdConfig": {
         "etcdURL": "https://192.168.1.50:2379",
         "etcdCertFile": "/etc/cni/net.d/kube-ipam.d/etcd/tls.crt",
         "etcdKeyFile": "/etc/cni/net.d/kube-ipam.d/etcd/tls.key",
         "etcdTrustedCAFileFile": "/etc/cni/net.d/kube-ipam.d/etcd/ca.crt"
       },
       "subnet": "10.188.0.0/16", "rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.200",
       "gateway": "10.188.0.1"
     },
     "kubeMultus": {"attach": {"podSelector": "tier in (web,db)"}}}
  ]
}`

// env is a fake node (host/) and a fake installer pod (image bin dir,
// mounted ConfigMap, Secret and service-account files) in a temp dir.
type env struct {
	t                      *testing.T
	root, host             string
	binSrc, confSrc, etcd  string
	token, ca              string
	o                      Options
	kubeMultus, kubeIPAMBi []byte
	kubeIPAMDirect         []byte
	kubeTier               []byte
}

func newEnv(t *testing.T) *env {
	t.Helper()
	root := t.TempDir()
	e := &env{t: t, root: root, host: filepath.Join(root, "host")}
	e.binSrc = filepath.Join(root, "image", "bin")
	e.confSrc = filepath.Join(root, "configmap", "00-multus.conf")
	e.etcd = filepath.Join(root, "secret")
	sa := filepath.Join(root, "sa")
	e.token, e.ca = filepath.Join(sa, "token"), filepath.Join(sa, "ca.crt")
	e.kubeIPAMBi = []byte("#!/bin/sh\necho kube-ipam\n")
	e.kubeIPAMDirect = []byte("#!/bin/sh\necho kube-ipam-direct\n")
	e.kubeMultus = []byte("#!/bin/sh\necho kube-multus\n")
	e.kubeTier = []byte("#!/bin/sh\necho kube-tier\n")
	caPEM, certPEM, keyPEM := testPKI(t)
	for p, c := range map[string][]byte{
		filepath.Join(e.binSrc, "kube-ipam"):        e.kubeIPAMBi,
		filepath.Join(e.binSrc, "kube-ipam-direct"): e.kubeIPAMDirect,
		filepath.Join(e.binSrc, "kube-multus"):      e.kubeMultus,
		filepath.Join(e.binSrc, "kube-tier"):        e.kubeTier,
		e.confSrc:                                   []byte(validConf),
		filepath.Join(e.etcd, "ca.crt"):             caPEM,
		filepath.Join(e.etcd, "tls.crt"):            certPEM,
		filepath.Join(e.etcd, "tls.key"):            keyPEM,
		e.token:                                     []byte("token-1\n"),
		e.ca:                                        caPEM,
	} {
		e.write(p, c, 0o755)
	}
	o := Defaults()
	o.BinSourceDir = e.binSrc
	o.BinDir = filepath.Join(e.host, "opt/cni/bin")
	o.ConfigSource = e.confSrc
	o.ConfDir = filepath.Join(e.host, "etc/cni/net.d")
	o.Kubeconfig = filepath.Join(e.host, "etc/cni/net.d/kube-ipam.d/kubeconfig")
	o.TokenFile, o.CAFile = e.token, e.ca
	o.KubeServer = "https://10.96.0.1:443"
	o.EtcdCertSource = e.etcd
	o.EtcdCertDir = filepath.Join(e.host, "etc/cni/net.d/kube-ipam.d/etcd")
	o.HostRoot = e.host
	o.Once = true
	o.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.o = o
	return e
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (e *env) write(p string, c []byte, mode fs.FileMode) {
	e.t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(p, c, mode); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) pass() (*Result, error) {
	e.t.Helper()
	in, err := New(e.o)
	if err != nil {
		e.t.Fatal(err)
	}
	return in.Pass()
}

// hostFiles lists every file under host/ (relative paths).
func (e *env) hostFiles() []string {
	e.t.Helper()
	var out []string
	_ = filepath.WalkDir(e.host, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(e.host, p)
			out = append(out, rel)
		}
		return nil
	})
	slices.Sort(out)
	return out
}

func testPKI(t *testing.T) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	ca, err := pki.NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue(pki.Leaf{CN: "kube-ipam", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	return ca.CertPEM, client.CertPEM, client.KeyPEM
}

func mode(t *testing.T, p string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

func read(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPassInstallsEverything(t *testing.T) {
	e := newEnv(t)
	res, err := e.pass()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"etc/cni/net.d/00-multus.conf",
		"etc/cni/net.d/kube-ipam.d/00-multus.conf.sha256",
		"etc/cni/net.d/kube-ipam.d/etcd/ca.crt",
		"etc/cni/net.d/kube-ipam.d/etcd/tls.crt",
		"etc/cni/net.d/kube-ipam.d/etcd/tls.key",
		"etc/cni/net.d/kube-ipam.d/kubeconfig",
		"opt/cni/bin/kube-ipam",
		"opt/cni/bin/kube-ipam-direct",
		"opt/cni/bin/kube-multus",
		"opt/cni/bin/kube-tier",
		"opt/cni/bin/multus-cni",
	}
	if got := e.hostFiles(); !slices.Equal(got, want) {
		t.Fatalf("host files:\n got %q\nwant %q", got, want)
	}
	if len(res.Changed) != len(want) {
		t.Errorf("changed %q", res.Changed)
	}
	// The config comes last (the runtime may use it as soon as it exists),
	// then the record of what was written.
	if n := len(res.Changed); filepath.Base(res.Changed[n-2]) != "00-multus.conf" || filepath.Base(res.Changed[n-1]) != "00-multus.conf.sha256" {
		t.Errorf("config not written last: %q", res.Changed)
	}
	for rel, m := range map[string]fs.FileMode{
		"opt/cni/bin/kube-ipam":                  0o755,
		"opt/cni/bin/kube-ipam-direct":           0o755,
		"opt/cni/bin/kube-multus":                0o755,
		"opt/cni/bin/kube-tier":                  0o755,
		"opt/cni/bin/multus-cni":                 0o755,
		"etc/cni/net.d/00-multus.conf":           0o644,
		"etc/cni/net.d/kube-ipam.d/kubeconfig":   0o600,
		"etc/cni/net.d/kube-ipam.d/etcd/tls.key": 0o600,
		"etc/cni/net.d/kube-ipam.d/etcd/tls.crt": 0o644,
		"etc/cni/net.d/kube-ipam.d/etcd/ca.crt":  0o644,
		"etc/cni/net.d/kube-ipam.d":              fs.ModeDir | 0o700,
		"etc/cni/net.d/kube-ipam.d/etcd":         fs.ModeDir | 0o700,
	} {
		if got := mode(t, filepath.Join(e.host, rel)); got != m {
			t.Errorf("%s: mode %v, want %v", rel, got, m)
		}
	}
	if !bytes.Equal(read(t, filepath.Join(e.host, "opt/cni/bin/multus-cni")), e.kubeMultus) ||
		!bytes.Equal(read(t, filepath.Join(e.host, "opt/cni/bin/kube-ipam")), e.kubeIPAMBi) ||
		!bytes.Equal(read(t, filepath.Join(e.host, "opt/cni/bin/kube-ipam-direct")), e.kubeIPAMDirect) ||
		!bytes.Equal(read(t, filepath.Join(e.host, "opt/cni/bin/kube-tier")), e.kubeTier) {
		t.Error("binary content differs from the image's")
	}
	if got := read(t, filepath.Join(e.host, "etc/cni/net.d/00-multus.conf")); string(got) != validConf {
		t.Error("config content differs from the ConfigMap's")
	}
	if !bytes.Equal(read(t, filepath.Join(e.host, "etc/cni/net.d/kube-ipam.d/etcd/tls.key")), read(t, filepath.Join(e.etcd, "tls.key"))) {
		t.Error("etcd key differs from the Secret's")
	}
	kc, err := clientcmd.LoadFromFile(e.o.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.NewDefaultClientConfig(*kc, nil).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if rc.Host != "https://10.96.0.1:443" || rc.BearerToken != "token-1" || !bytes.Equal(rc.CAData, read(t, e.ca)) {
		t.Errorf("kubeconfig: host %q token %q CA %d bytes", rc.Host, rc.BearerToken, len(rc.CAData))
	}
}

func TestPassIsIdempotentAndFollowsChanges(t *testing.T) {
	e := newEnv(t)
	in, err := New(e.o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Pass(); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(e.o.BinDir, "kube-multus")
	ino := func(p string) uint64 {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	before := ino(bin)
	res, err := in.Pass()
	if err != nil || len(res.Changed) != 0 {
		t.Fatalf("second pass: changed %q, err %v", res.Changed, err)
	}
	// A fresh installer (a restarted pod) hashes the files anew and still
	// writes nothing.
	if res, err := e.pass(); err != nil || len(res.Changed) != 0 {
		t.Fatalf("pass of a new installer: changed %v, err %v", res, err)
	}
	if ino(bin) != before {
		t.Error("an identical binary was rewritten")
	}

	// kubelet rotates the projected token: only the kubeconfig changes.
	e.write(e.token, []byte("token-2"), 0o644)
	res, err = in.Pass()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Changed, []string{e.o.Kubeconfig}) {
		t.Fatalf("after token rotation changed %q", res.Changed)
	}
	if !bytes.Contains(read(t, e.o.Kubeconfig), []byte("token: token-2")) {
		t.Errorf("kubeconfig not rewritten:\n%s", read(t, e.o.Kubeconfig))
	}

	// A new image: new binaries replace the old ones by rename.
	e.write(filepath.Join(e.binSrc, "kube-multus"), []byte("#!/bin/sh\necho v2\n"), 0o755)
	res, err = in.Pass()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{bin, filepath.Join(e.o.BinDir, "multus-cni")}; !slices.Equal(res.Changed, want) {
		t.Fatalf("after an image update changed %q, want %q", res.Changed, want)
	}
	if ino(bin) == before {
		t.Error("binary replaced in place, not renamed over")
	}

	// Someone chmods the kubeconfig: only the mode is restored.
	if err := os.Chmod(e.o.Kubeconfig, 0o644); err != nil {
		t.Fatal(err)
	}
	kcIno := ino(e.o.Kubeconfig)
	if res, err = in.Pass(); err != nil || !slices.Equal(res.Changed, []string{e.o.Kubeconfig}) {
		t.Fatalf("after chmod changed %q err %v", res.Changed, err)
	}
	if mode(t, e.o.Kubeconfig) != 0o600 || ino(e.o.Kubeconfig) != kcIno {
		t.Errorf("kubeconfig mode %v, rewritten %v", mode(t, e.o.Kubeconfig), ino(e.o.Kubeconfig) != kcIno)
	}
}

func TestReplacesLinksAndRemovesStaleTemps(t *testing.T) {
	e := newEnv(t)
	bin := e.o.BinDir
	// multus-cni as docs/kube-multus.md's manual install leaves it (a hard
	// link), an old symlink for kube-ipam, and a temp file of a crashed run.
	e.write(filepath.Join(bin, "kube-multus"), []byte("old"), 0o755)
	if err := os.Link(filepath.Join(bin, "kube-multus"), filepath.Join(bin, "multus-cni")); err != nil {
		t.Fatal(err)
	}
	e.write(filepath.Join(e.root, "elsewhere"), []byte("elsewhere"), 0o755)
	if err := os.Symlink(filepath.Join(e.root, "elsewhere"), filepath.Join(bin, "kube-ipam")); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(bin, ".kube-ipam.tmp-12345")
	e.write(stale, []byte("partial"), 0o600)
	foreign := filepath.Join(bin, ".other.tmp-1")
	e.write(foreign, []byte("not ours"), 0o600)
	if _, err := e.pass(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temp file kept: %v", err)
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Errorf("a file that is not ours was touched: %v", err)
	}
	if m := mode(t, filepath.Join(bin, "kube-ipam")); !m.IsRegular() {
		t.Errorf("symlink not replaced by a file: %v", m)
	}
	if string(read(t, filepath.Join(e.root, "elsewhere"))) != "elsewhere" {
		t.Error("wrote through the symlink")
	}
	if !bytes.Equal(read(t, filepath.Join(bin, "multus-cni")), e.kubeMultus) {
		t.Error("multus-cni not updated")
	}
	entries, _ := os.ReadDir(bin)
	for _, d := range entries {
		if strings.Contains(d.Name(), tempInfix) && d.Name() != filepath.Base(foreign) {
			t.Errorf("temp file left behind: %s", d.Name())
		}
	}
}

// A bad ConfigMap must never reach the node: the pass fails with the
// parser's reason and the node keeps the config it had.
func TestBadConfigIsNeverInstalled(t *testing.T) {
	cases := []struct{ name, conf, want string }{
		{"not JSON", `{"name": `, "not a JSON object"},
		{"multus kubernetes mode", strings.Replace(validConf, `"kubeconfig"`, `"clusterNetwork": "x", "kubeconfig"`, 1), "kube-multus would refuse it"},
		{"tier policy typo", strings.Replace(validConf, `"podSelector"`, `"podSelektor"`, 1), `unknown field "podSelektor"`},
		{"bad label selector", strings.Replace(validConf, `tier in (web,db)`, `tier in (`, 1), "kube-multus would refuse it"},
		{"kube-ipam bad subnet", strings.Replace(validConf, `"10.188.0.0/16"`, `"10.188.0.0/33"`, 1), "kube-ipam would refuse it"},
		{"range outside subnet", strings.Replace(validConf, `"rangeEnd": "10.188.0.200"`, `"rangeEnd": "10.189.0.200"`, 1), "kube-ipam would refuse it"},
		{"no etcd", strings.Replace(validConf, `"etcdURL": "https://192.168.1.50:2379"`, `"etcdURL": ""`, 1), "etcdURL is empty"},
		// Without a kubeconfig (delegates mode only: no
		// NetworkAttachmentDefinitions), the config must have a network.
		{"no kube-ipam network", strings.NewReplacer(`"type": "kube-ipam"`, `"type": "host-local"`, `"kubeconfig": "/etc/cni/net.d/kube-ipam.d/kubeconfig",`, ``,
			`,
     "kubeMultus": {"attach": {"podSelector": "tier in (web,db)"}}`, ``).Replace(validConf), `no plugin with "ipam": {"type": "kube-ipam"}`},
		{"delegate without type", strings.Replace(validConf, `"type": "flannel", `, ``, 1), `missing "type"`},
		{"missing etcd file", strings.Replace(validConf, `etcd/tls.key`, `etcd/client.key`, 1), "etcdKeyFile /etc/cni/net.d/kube-ipam.d/etcd/client.key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// A fresh node: nothing at all is written.
			e := newEnv(t)
			e.write(e.confSrc, []byte(c.conf), 0o644)
			_, err := e.pass()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to contain %q", err, c.want)
			}
			if !strings.Contains(err.Error(), "refusing to install network config") {
				t.Errorf("error does not say the config was refused: %v", err)
			}
			if got := e.hostFiles(); slices.Contains(got, "etc/cni/net.d/00-multus.conf") {
				t.Errorf("bad config installed on a fresh node: %q", got)
			}
			// A node with the good config keeps it.
			e.write(e.confSrc, []byte(validConf), 0o644)
			if _, err := e.pass(); err != nil {
				t.Fatal(err)
			}
			e.write(e.confSrc, []byte(c.conf), 0o644)
			if _, err := e.pass(); err == nil {
				t.Fatal("bad config accepted on the second pass")
			}
			if got := read(t, filepath.Join(e.o.ConfDir, "00-multus.conf")); string(got) != validConf {
				t.Error("the node's good config was replaced")
			}
		})
	}
}

func TestCheckConfigFileKinds(t *testing.T) {
	conflist := `{"cniVersion": "1.0.0", "name": "k8snet2", "plugins": [{"type": "macvlan", "master": "eth0",
	  "ipam": {"type": "kube-ipam", "etcdConfig": {"etcdURL": "http://127.0.0.1:2379"}, "subnet": "10.10.0.0/24"}}]}`
	single := `{"cniVersion": "0.3.1", "name": "k8snet2", "type": "macvlan", "master": "eth0",
	  "ipam": {"type": "kube-ipam", "etcdConfig": {"etcdURL": "http://127.0.0.1:2379"}, "subnet": "10.10.0.0/24"}}`
	for _, c := range []struct{ conf, name, wantErr string }{
		{conflist, "10-k8snet2.conflist", ""},
		{conflist, "10-k8snet2.conf", "name it *.conflist"},
		{single, "10-k8snet2.conf", ""},
		{single, "10-k8snet2.json", ""},
		{single, "10-k8snet2.conflist", "must be named *.conf"},
		{single, "10-k8snet2.yaml", "only loads .conf, .conflist, .json"},
		{validConf, "00-multus.conf", ""},
	} {
		got, err := CheckConfig([]byte(c.conf), c.name)
		if c.wantErr == "" {
			if err != nil || len(got.Networks) != 1 || got.Networks[0].Name != "k8snet2" {
				t.Errorf("%s: %v %+v", c.name, err, got)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("%s: err %v, want %q", c.name, err, c.wantErr)
		}
	}
	c, err := CheckConfig([]byte(validConf), "00-multus.conf")
	if err != nil {
		t.Fatal(err)
	}
	if c.Meta == nil || len(c.Meta.Delegates) != 2 {
		t.Fatalf("meta %+v", c.Meta)
	}
	var keys []string
	for _, f := range c.Files {
		keys = append(keys, f.Key+"="+f.Path)
	}
	want := []string{
		"kubeconfig=/etc/cni/net.d/kube-ipam.d/kubeconfig",
		`network "k8snet2" ipam.kubeConfig=/etc/cni/net.d/kube-ipam.d/kubeconfig`,
		`network "k8snet2" ipam.etcdConfig.etcdCertFile=/etc/cni/net.d/kube-ipam.d/etcd/tls.crt`,
		`network "k8snet2" ipam.etcdConfig.etcdKeyFile=/etc/cni/net.d/kube-ipam.d/etcd/tls.key`,
		`network "k8snet2" ipam.etcdConfig.etcdTrustedCAFileFile=/etc/cni/net.d/kube-ipam.d/etcd/ca.crt`,
	}
	if !slices.Equal(keys, want) {
		t.Errorf("referenced files\n got %q\nwant %q", keys, want)
	}
}

func TestBadSourcesLeaveTheNodeUntouched(t *testing.T) {
	otherCA, otherCert, _ := testPKI(t)
	cases := []struct {
		name  string
		setup func(e *env)
		want  string
	}{
		{"missing binary", func(e *env) { os.Remove(filepath.Join(e.binSrc, "kube-ipam")) }, "binary"},
		{"missing direct binary", func(e *env) { os.Remove(filepath.Join(e.binSrc, "kube-ipam-direct")) }, filepath.Join("image", "bin", "kube-ipam-direct") + ": file does not exist"},
		{"binary not executable", func(e *env) { os.Chmod(filepath.Join(e.binSrc, "kube-ipam"), 0o644) }, "not executable"},
		{"key does not match cert", func(e *env) { e.write(filepath.Join(e.etcd, "tls.crt"), otherCert, 0o644) }, "not a matching certificate and key"},
		{"secret without ca.crt", func(e *env) { os.Remove(filepath.Join(e.etcd, "ca.crt")) }, "the Secret needs the keys ca.crt, tls.crt and tls.key"},
		{"bad CA", func(e *env) { e.write(filepath.Join(e.etcd, "ca.crt"), []byte("junk"), 0o644) }, "holds no PEM certificate"},
		{"no token", func(e *env) { os.Remove(e.token) }, "automountServiceAccountToken"},
		{"empty token", func(e *env) { e.write(e.token, []byte("\n"), 0o644) }, "token is empty"},
		{"bad SA CA", func(e *env) { e.write(e.ca, otherCA[:20], 0o644) }, "no PEM certificate"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			c.setup(e)
			_, err := e.pass()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
			if got := e.hostFiles(); len(got) != 0 {
				t.Errorf("files written before the failure: %q", got)
			}
		})
	}
}

// TestDirectBinaryLandsBeforeTheShim: kube-ipam (the shim) execs
// kube-ipam-direct beside it whenever the agent does not take a call, so the
// node must never hold a kube-ipam without its kube-ipam-direct: the pass
// writes kube-ipam-direct first (fresh node and image update, in both
// modes), and when kube-ipam-direct cannot be written, kube-ipam is not
// written either.
func TestDirectBinaryLandsBeforeTheShim(t *testing.T) {
	for _, ipamOnly := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "ipam-only"}[ipamOnly], func(t *testing.T) {
			e := newEnv(t)
			e.o.IPAMOnly = ipamOnly
			direct, shim := filepath.Join(e.o.BinDir, "kube-ipam-direct"), filepath.Join(e.o.BinDir, "kube-ipam")
			before := func(what string, changed []string) {
				t.Helper()
				d, s := slices.Index(changed, direct), slices.Index(changed, shim)
				if d < 0 || s < 0 || d > s {
					t.Errorf("%s: written %q, want kube-ipam-direct before kube-ipam", what, changed)
				}
			}
			in, err := New(e.o)
			if err != nil {
				t.Fatal(err)
			}
			res, err := in.Pass()
			if err != nil {
				t.Fatal(err)
			}
			before("fresh node", res.Changed)
			// A new release: both binaries change.
			e.write(filepath.Join(e.binSrc, "kube-ipam"), []byte("#!/bin/sh\necho kube-ipam v2\n"), 0o755)
			e.write(filepath.Join(e.binSrc, "kube-ipam-direct"), []byte("#!/bin/sh\necho kube-ipam-direct v2\n"), 0o755)
			if res, err = in.Pass(); err != nil {
				t.Fatal(err)
			}
			before("image update", res.Changed)
			if len(res.Changed) != 2 {
				t.Errorf("image update wrote %q, want the two binaries", res.Changed)
			}

			// kube-ipam-direct cannot be written (a non-empty directory
			// in its place): the pass fails there, kube-ipam stays away.
			e = newEnv(t)
			e.o.IPAMOnly = ipamOnly
			e.write(filepath.Join(e.o.BinDir, "kube-ipam-direct", "in-the-way"), []byte("x"), 0o644)
			_, err = e.pass()
			if err == nil || !strings.Contains(err.Error(), "installing "+filepath.Join(e.o.BinDir, "kube-ipam-direct")) {
				t.Fatalf("pass with kube-ipam-direct blocked: %v", err)
			}
			if _, err := os.Lstat(filepath.Join(e.o.BinDir, "kube-ipam")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("kube-ipam installed without kube-ipam-direct (lstat: %v)", err)
			}
		})
	}
}

func TestWithoutKubeconfigAndEtcdTLS(t *testing.T) {
	e := newEnv(t)
	// Plain-http etcd and no pod lookups: no kubeconfig, no TLS files.
	plain := `{"cniVersion": "0.3.1", "name": "multus-demo", "type": "kube-multus", "delegates": [
	  {"name": "k8snet1", "type": "flannel"},
	  {"name": "k8snet2", "type": "macvlan", "master": "eth0", "ipam": {"type": "kube-ipam", "podLookup": false,
	    "etcdConfig": {"etcdURL": "http://127.0.0.1:2379"}, "subnet": "10.188.0.0/16"}}]}`
	e.write(e.confSrc, []byte(plain), 0o644)
	e.o.Kubeconfig, e.o.EtcdCertSource, e.o.MultusAlias = "", "", ""
	if _, err := e.pass(); err != nil {
		t.Fatalf("%v\n%s", err, plain)
	}
	want := []string{"etc/cni/net.d/00-multus.conf", "etc/cni/net.d/kube-ipam.d/00-multus.conf.sha256", "opt/cni/bin/kube-ipam", "opt/cni/bin/kube-ipam-direct", "opt/cni/bin/kube-multus", "opt/cni/bin/kube-tier"}
	if got := e.hostFiles(); !slices.Equal(got, want) {
		t.Fatalf("host files %q, want %q", got, want)
	}
}

// The kubeconfig the config names must exist: a config pointing at a path
// the installer does not write is refused, not installed to fail every ADD.
func TestConfigNamingAFileNotWritten(t *testing.T) {
	e := newEnv(t)
	e.o.Kubeconfig = filepath.Join(e.host, "etc/cni/net.d/kube-ipam.d/other-kubeconfig")
	_, err := e.pass()
	if err == nil || !strings.Contains(err.Error(), "names files that do not exist on the node: kubeconfig /etc/cni/net.d/kube-ipam.d/kubeconfig") {
		t.Fatalf("err = %v", err)
	}
	if slices.Contains(e.hostFiles(), "etc/cni/net.d/00-multus.conf") {
		t.Error("config installed")
	}
	// Files outside the mounted directories are not checked.
	e = newEnv(t)
	e.write(e.confSrc, []byte(strings.ReplaceAll(validConf, "/etc/cni/net.d/kube-ipam.d/kubeconfig", "/etc/kubernetes/kube.kubeconfig")), 0o644)
	if _, err := e.pass(); err != nil {
		t.Fatal(err)
	}
}

func TestWarnsWhenAnotherConfigSortsFirst(t *testing.T) {
	e := newEnv(t)
	e.write(filepath.Join(e.o.ConfDir, "00-aaa.conflist"), []byte(`{}`), 0o644)
	res, err := e.pass()
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "00-aaa.conflist sorts before 00-multus.conf") {
		t.Errorf("warnings %q", res.Warnings)
	}
	if first, _ := FirstConfig(e.o.ConfDir); first != "00-aaa.conflist" {
		t.Errorf("FirstConfig = %q", first)
	}
}

// waitRunning polls cond until it holds while Run keeps running (its
// result comes on done): Run returning first, or 10 s passing, fails the
// test.
func waitRunning(t *testing.T, done <-chan error, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		select {
		case err := <-done:
			t.Fatalf("Run returned %v while waiting for %s", err, what)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// stopRun cancels Run's context (SIGTERM) and fails the test unless Run
// then returns nil within 10 s.
func stopRun(t *testing.T, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop")
	}
}

func TestRunLoopAndShutdown(t *testing.T) {
	e := newEnv(t)
	e.o.Once = false
	e.o.Interval = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, e.o) }()
	conf := filepath.Join(e.o.ConfDir, "00-multus.conf")
	waitRunning(t, done, "the first install", func() bool { b, _ := os.ReadFile(conf); return string(b) == validConf })
	// The ConfigMap changes (kubelet swaps the mounted file): re-installed.
	changed := strings.Replace(validConf, `"rangeEnd": "10.188.0.200"`, `"rangeEnd": "10.188.0.150"`, 1)
	e.write(e.confSrc, []byte(changed), 0o644)
	waitRunning(t, done, "the changed config", func() bool { b, _ := os.ReadFile(conf); return string(b) == changed })
	// SIGTERM: exit 0, nothing removed.
	stopRun(t, cancel, done)
	if len(e.hostFiles()) != 11 {
		t.Errorf("files after shutdown: %q", e.hostFiles())
	}

	// A bad config while running ends the loop with the error (the pod
	// restarts and shows it), and the node keeps the last good config.
	e.o.Interval = 10 * time.Millisecond
	done2 := make(chan error, 1)
	go func() { done2 <- Run(t.Context(), e.o) }()
	time.Sleep(50 * time.Millisecond)
	e.write(e.confSrc, []byte(`{"name": "broken"}`), 0o644)
	select {
	case err := <-done2:
		if err == nil || !strings.Contains(err.Error(), "refusing to install") {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not fail on a bad config")
	}
	if b, _ := os.ReadFile(conf); string(b) != changed {
		t.Error("the last good config was replaced")
	}
}

func TestOptions(t *testing.T) {
	o := Defaults()
	if err := FlagSet(&o).Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	o = Defaults()
	fs := FlagSet(&o)
	if err := fs.Parse([]string{"--bin-dir=/b", "--conf-dir=/c", "--config=/cm/10-multus.conf", "--kubeconfig=", "--etcd-cert-source=", "--interval=30s", "--once", "--binaries=kube-ipam"}); err != nil {
		t.Fatal(err)
	}
	if o.BinDir != "/b" || o.ConfDir != "/c" || o.configName() != "10-multus.conf" || o.Kubeconfig != "" || o.EtcdCertSource != "" ||
		o.Interval != 30*time.Second || !o.Once || !slices.Equal(o.Binaries, []string{"kube-ipam"}) {
		t.Errorf("parsed %+v", o)
	}
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "--multus-alias needs kube-multus") {
		t.Errorf("Validate = %v", err)
	}
	bad := Defaults()
	bad.BinDir, bad.ConfigName, bad.Interval = "", "a/b.conf", 0
	err := bad.Validate()
	for _, want := range []string{"--bin-dir is required", `--config-name "a/b.conf"`, "--interval must be positive"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want %q", err, want)
		}
	}
	o = Defaults()
	o.KubeServer = ""
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := New(o); err == nil || !strings.Contains(err.Error(), "--kube-server") {
		t.Errorf("New without a server: %v", err)
	}
}

func TestServerFromEnv(t *testing.T) {
	for _, c := range []struct{ host, port, want string }{
		{"10.96.0.1", "443", "https://10.96.0.1:443"},
		{"fd00::1", "6443", "https://[fd00::1]:6443"},
	} {
		got, err := ServerFromEnv(func(k string) string {
			return map[string]string{"KUBERNETES_SERVICE_HOST": c.host, "KUBERNETES_SERVICE_PORT": c.port}[k]
		})
		if err != nil || got != c.want {
			t.Errorf("%s: %q %v", c.host, got, err)
		}
	}
	if _, err := Kubeconfig("http://x:80", []byte("x"), "t"); err == nil {
		t.Error("http server accepted")
	}
}

func TestKubeconfigIsDeterministic(t *testing.T) {
	ca, _, _ := testPKI(t)
	a, err := Kubeconfig("https://10.96.0.1:443", ca, "tok\n")
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		b, _ := Kubeconfig("https://10.96.0.1:443", ca, "tok")
		if !bytes.Equal(a, b) {
			t.Fatalf("kubeconfig differs between renders:\n%s\n%s", a, b)
		}
	}
}
