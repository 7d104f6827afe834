package cli

// kube-ipamctl run as in a pod (kubectl exec into the controller's): no
// --kubeconfig, ipam.kubeConfig a node path that does not exist, and the
// pod's service-account identity. client-go's rest.InClusterConfig reads
// the token and CA at fixed paths, so the built binary runs in a private
// mount namespace (unshare(1)) where a tmpfs over /run holds them; the
// namespace dies with the process.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubeipam/internal/store"
	"kubeipam/internal/store/kubestore/kubestoretest"
	"kubeipam/internal/testenv"
)

// inClusterConf: k8snet2 in etcd, k8snet4 in the Kubernetes API store,
// both with an ipam.kubeConfig that does not exist in the "pod".
const inClusterConf = `{"cniVersion": "0.3.1", "name": "multus-cni-network", "type": "multus-cni",
  "delegates": [
    {"name": "k8snet2", "type": "macvlan", "master": "eth0",
     "ipam": {"type": "kube-ipam", "kubeConfig": "/nonexistent/kubeconfig",
              "etcdConfig": {"etcdURL": %q, "etcdPrefix": %q},
              "subnet": "10.188.0.0/24", "rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.250"}},
    {"cniVersion": "0.3.1", "name": "k8snet4", "type": "macvlan", "master": "eth0",
     "ipam": {"type": "kube-ipam", "kubeConfig": "/nonexistent/kubeconfig", "store": "kubernetes",
              "subnet": "10.190.0.0/24"}}
  ]
}`

// saTokenDir is where a pod's service-account files are mounted.
const saTokenDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func TestInCluster(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("TestInCluster needs root (a mount namespace for the service-account token) and CI is set")
		}
		t.Skip("needs root: runs kube-ipamctl in a private mount namespace with a service-account token at " + saTokenDir)
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("unshare(1) (util-linux, hack/deps.sh): %v", err)
	}
	if _, err := os.Stat("/var/run/secrets"); err == nil {
		t.Skip("/var/run/secrets exists: this runs in a pod already, whose identity the test would hide")
	}
	bin := testenv.Binary(t, "kube-ipamctl")
	k, api := kubestoretest.Start(t, "kube-ipamctl-incluster-test")
	ctx := context.Background()

	// The pod's identity: ServiceAccount default/kube-ipamctl, bound to
	// cluster-admin, with a token from the TokenRequest API.
	if _, err := k.Client.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "kube-ipamctl"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-ipamctl-test"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "default", Name: "kube-ipamctl"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	exp := int64(3600)
	tok, err := k.Client.CoreV1().ServiceAccounts("default").CreateToken(ctx, "kube-ipamctl",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The API server's self-signed certificate (with its CA) is the pod's
	// ca.crt: the in-cluster client verifies the server with it.
	ca, err := os.ReadFile(filepath.Join(k.Dir, "certs", "apiserver.crt"))
	if err != nil {
		t.Fatal(err)
	}
	sa := t.TempDir()
	for name, body := range map[string][]byte{"token": []byte(tok.Status.Token), "ca.crt": ca, "namespace": []byte("default")} {
		if err := os.WriteFile(filepath.Join(sa, name), body, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	u, err := url.Parse(k.Server)
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "00-multus.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, inClusterConf, k.Etcd.ClientURL, prefix), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{bin, sa, conf} {
		// The tmpfs over /run would hide them.
		if real, _ := filepath.EvalSymlinks(p); strings.HasPrefix(real, "/run/") {
			t.Fatalf("%s is under /run, which the test's mount namespace hides", p)
		}
	}

	// On etcd: web-0 exists in the API, gone-0 does not (leaked).
	f := &fixture{t: t, cli: k.Etcd.Client(t)}
	web, err := k.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-0"},
		Spec: corev1.PodSpec{NodeName: "worker-1", Containers: []corev1.Container{{Name: "c", Image: "c:v1"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f.commit(alloc{network: "k8snet2", ns: "default", pod: "web-0", uid: string(web.UID), cid: cid(1), ifname: "net1", node: "worker-1",
		kind: store.KindDynamic, ips: []string{"10.188.0.10"}, created: time.Now().Add(-time.Hour)})
	f.commit(alloc{network: "k8snet2", ns: "default", pod: "gone-0", uid: "uid-gone-0", cid: cid(2), ifname: "net1", node: "worker-1",
		kind: store.KindDynamic, ips: []string{"10.188.0.11"}, created: time.Now().Add(-time.Hour)})

	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(),
		"KUBERNETES_SERVICE_HOST=" + u.Hostname(), "KUBERNETES_SERVICE_PORT=" + u.Port()}
	// inPod runs kube-ipamctl with the token mounted.
	inPod := func(args ...string) (string, string, int) {
		t.Helper()
		script := `set -e
mount -t tmpfs -o size=1m,mode=0755 kube-ipamctl-test /run
mkdir -p ` + saTokenDir + `
cp "$1/token" "$1/ca.crt" "$1/namespace" ` + saTokenDir + `/
shift
exec "$@"`
		return runBin(t, env, unshare, append([]string{"--mount", "--propagation", "private", "sh", "-c", script, "sh", sa, bin, "--config", conf}, args...)...)
	}

	// check: the leaked address is found through the pod's identity.
	out, stderr, code := inPod("check", "-o", "json")
	var rep CheckReport
	if err := json.Unmarshal([]byte(out), &rep); code != 1 || err != nil {
		t.Fatalf("check in the pod: exit %d (%v), stderr %q\n%s", code, err, stderr, out)
	}
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemLeaked || rep.Problems[0].IP != "10.188.0.11" || len(rep.Notes) != 0 {
		t.Errorf("check in the pod: want one leaked 10.188.0.11 and no note, got %+v", rep)
	}
	// gc --dry-run agrees; gc frees it.
	if out, stderr, code := inPod("gc", "--dry-run"); code != 0 || !strings.Contains(out, "default/gone-0") || strings.Contains(out, "web-0") {
		t.Errorf("gc --dry-run in the pod: exit %d, stderr %q\n%s", code, stderr, out)
	}
	if out, stderr, code := inPod("gc"); code != 0 || !strings.Contains(out, "Freed 1 of 1") {
		t.Errorf("gc in the pod: exit %d, stderr %q\n%s", code, stderr, out)
	}
	if st, err := f.store("k8snet2").State(ctx, netip.MustParseAddr("10.188.0.11")); err != nil || st.Record != nil {
		t.Errorf("10.188.0.11 after gc in the pod: %+v, %v", st.Record, err)
	}
	// reserve and list on the Kubernetes API store.
	if out, stderr, code := inPod("reserve", "10.190.0.99", "--network", "k8snet4", "--note", "router VIP"); code != 0 || !strings.Contains(out, "reserved 10.190.0.99 on network k8snet4") {
		t.Fatalf("reserve in the pod: exit %d, stderr %q\n%s", code, stderr, out)
	}
	if out, stderr, code := inPod("list", "--network", "k8snet4"); code != 0 || !strings.Contains(out, "10.190.0.99") || !strings.Contains(out, "(router VIP)") {
		t.Errorf("list in the pod: exit %d, stderr %q\n%s", code, stderr, out)
	}
	st, err := (&kubeStore{api: api}).store("k8snet4").State(ctx, netip.MustParseAddr("10.190.0.99"))
	if err != nil || st.Record == nil || st.Record.ContainerID != ReservationID(netip.MustParseAddr("10.190.0.99")) {
		t.Errorf("the reservation in the API: %+v, %v", st, err)
	}

	// The mount stayed in the namespace that died with the process.
	if _, err := os.Stat("/var/run/secrets"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/var/run/secrets on the host after the runs: %v", err)
	}

	// KUBERNETES_SERVICE_HOST set but no token mounted: gc needs the API
	// and says which three places it looked at.
	_, stderr, code = runBin(t, env, bin, "--config", conf, "gc")
	for _, w := range []string{"no --kubeconfig given", "ipam.kubeConfig /nonexistent/kubeconfig does not exist", "no in-cluster configuration", "token"} {
		if code != 3 || !strings.Contains(stderr, w) {
			t.Errorf("gc outside a pod: exit %d, stderr %q; want 3 and %q", code, stderr, w)
		}
	}
}

// runBin runs a command with env and returns stdout, stderr and the exit
// status.
func runBin(t *testing.T, env []string, name string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return out.String(), errb.String(), ee.ExitCode()
	}
	t.Fatalf("%s %q: %v\nstderr: %s", name, args, err, errb.String())
	return "", "", -1
}
