package testenv

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"kubeipam/internal/kubeapi"
	"kubeipam/internal/toolcache"
)

// KubeVersion is the Kubernetes release whose binaries hack/testbin.sh builds.
const KubeVersion = toolcache.KubeVersion

// Kube is a Kubernetes control plane (kube-apiserver, optionally
// kube-controller-manager and kube-scheduler) owned by one test. There is no
// kubelet: pods are created, owned and scheduled, but never run.
type Kube struct {
	Server     string // https://127.0.0.1:<port>
	Token      string // bearer token of a system:masters user
	Kubeconfig string // file with Server and Token, TLS verification off
	Config     *rest.Config
	Client     kubernetes.Interface
	Etcd       *Etcd
	Dir        string // temp dir: keys, certificates, process logs

	procs     []*proc // started processes, for WaitFor's liveness check
	apiserver *proc   // the kube-apiserver, for the faults of kube_faults.go
}

// KubeOptions selects the optional components of StartKube.
type KubeOptions struct {
	// ControllerManager runs the statefulset, replicaset, deployment,
	// garbagecollector and serviceaccount controllers.
	ControllerManager bool
	// Scheduler binds pods to nodes; add some with AddNode.
	Scheduler bool
	// Etcd is the storage to use; nil starts a private one.
	Etcd *Etcd
}

// KubeBinDir returns the directory of the Kubernetes binaries:
// $KUBE_IPAM_TESTBIN or the user cache directory that hack/testbin.sh fills
// by default.
func KubeBinDir() string { return toolcache.KubeBinDir() }

// KubeBinary returns the path of a binary in KubeBinDir, skipping the test
// (failing it in CI) when it has not been built.
func KubeBinary(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(KubeBinDir(), name)
	if _, err := os.Stat(p); err != nil {
		missing(t, "%s %s not built (%v): run hack/testbin.sh (about 10 minutes the first time)", name, KubeVersion, err)
	}
	return p
}

// StartKube starts a control plane on loopback and returns once the API
// server is ready (and, with a controller manager, its controllers run).
// Everything is stopped when the test ends: scheduler, controller manager,
// API server, then etcd, since an API server whose etcd is gone takes
// tens of seconds to give up.
func StartKube(t testing.TB, opts KubeOptions) *Kube {
	t.Helper()
	bins := map[string]string{"kube-apiserver": KubeBinary(t, "kube-apiserver")}
	if opts.ControllerManager {
		bins["kube-controller-manager"] = KubeBinary(t, "kube-controller-manager")
	}
	if opts.Scheduler {
		bins["kube-scheduler"] = KubeBinary(t, "kube-scheduler")
	}
	k := &Kube{Etcd: opts.Etcd}
	if k.Etcd == nil {
		k.Etcd = StartEtcd(t) // its cleanup, registered first, runs last
	}
	k.Dir = t.TempDir() // removed after the processes below are stopped
	k.Kubeconfig = filepath.Join(k.Dir, "kubeconfig")
	k.Token = rand.Text()
	k.startAPIServer(t, bins["kube-apiserver"])

	common := []string{"--kubeconfig=" + k.Kubeconfig, "--leader-elect=false", "--secure-port=0"}
	if bin := bins["kube-controller-manager"]; bin != "" {
		k.start(t, bin, append(common, "--use-service-account-credentials=false",
			"--controllers=statefulset,replicaset,deployment,garbagecollector,serviceaccount")...)
		// The serviceaccount controller creating default/default shows
		// that the controllers' informers have synced.
		k.WaitFor(t, "kube-controller-manager to create ServiceAccount default/default", 90*time.Second, func() (bool, error) {
			_, err := k.Client.CoreV1().ServiceAccounts("default").Get(t.Context(), "default", metav1.GetOptions{})
			return err == nil, err
		})
	}
	if bin := bins["kube-scheduler"]; bin != "" {
		k.start(t, bin, common...)
	}
	return k
}

func (k *Kube) startAPIServer(t testing.TB, bin string) {
	t.Helper()
	pub, key := filepath.Join(k.Dir, "sa.pub"), filepath.Join(k.Dir, "sa.key")
	writeRSAKeyPair(t, pub, key)
	tokens := filepath.Join(k.Dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(k.Token+",admin,admin-uid,system:masters\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--etcd-servers=" + strings.Join(k.Etcd.Endpoints, ","),
		"--bind-address=127.0.0.1", "--cert-dir=" + filepath.Join(k.Dir, "certs"),
		// A loopback advertise address is only accepted without the
		// endpoint reconciler; without one the server picks a host address,
		// which does not exist in a netns with only lo.
		"--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pub, "--service-account-signing-key-file=" + key,
		"--service-cluster-ip-range=10.96.0.0/24",
		"--token-auth-file=" + tokens, "--authorization-mode=RBAC",
		// Without it, pods need a default ServiceAccount to exist first.
		"--disable-admission-plugins=ServiceAccount",
	}
	if e := k.Etcd; e.CAFile != "" {
		args = append(args, "--etcd-cafile="+e.CAFile, "--etcd-certfile="+e.CertFile, "--etcd-keyfile="+e.KeyFile)
	}
	for attempt := 1; ; attempt++ {
		// The port is free only until freePorts returns: retry on a clash.
		port := freePorts(t, 1)[0]
		k.Server = fmt.Sprintf("https://127.0.0.1:%d", port)
		k.writeKubeconfig(t)
		p := k.start(t, bin, append(args, "--secure-port="+strconv.Itoa(port))...)
		err := k.poll(90*time.Second, func() (bool, error) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			_, err := k.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
			return err == nil, err
		})
		if err == nil {
			k.apiserver = p
			return
		}
		p.stop()
		k.procs = slices.DeleteFunc(k.procs, func(q *proc) bool { return q == p })
		if log, _ := os.ReadFile(p.log); attempt == 3 || !strings.Contains(string(log), "address already in use") {
			t.Fatalf("waiting for kube-apiserver /readyz: %v", err)
		}
	}
}

func (k *Kube) writeKubeconfig(t testing.TB) {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: k.Server, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: k.Token}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin"}
	cfg.CurrentContext = "test"
	err := clientcmd.WriteToFile(*cfg, k.Kubeconfig)
	if err == nil {
		k.Config, err = clientcmd.BuildConfigFromFlags("", k.Kubeconfig)
	}
	if err == nil {
		k.Config.QPS, k.Config.Burst = 200, 400 // client-go's default 5 QPS slows tests
		k.Client, err = kubernetes.NewForConfig(k.Config)
	}
	if err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
}

// AddNode registers a fake, Ready node with room for 110 pods (8 CPUs,
// 16Gi) and without the not-ready taint, so the scheduler binds pods to it.
func (k *Kube) AddNode(t testing.TB, name string) {
	t.Helper()
	ctx, nodes := t.Context(), k.Client.CoreV1().Nodes()
	n, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name,
		Labels: map[string]string{corev1.LabelHostname: name, corev1.LabelOSStable: "linux"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating node %s: %v", name, err)
	}
	res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("16Gi"), corev1.ResourcePods: resource.MustParse("110")}
	now := metav1.Now()
	n.Status.Capacity, n.Status.Allocatable = res, res
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
		Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}}
	if n, err = nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("updating status of node %s: %v", name, err)
	}
	// Admission taints new nodes not-ready; no node lifecycle controller
	// runs to lift (or re-add) it.
	n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == corev1.TaintNodeNotReady })
	if _, err = nodes.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("removing not-ready taint of node %s: %v", name, err)
	}
}

// WaitFor calls cond every 50ms until it returns true, and fails the test
// if that takes longer than timeout or a control-plane process exits.
// Errors from cond do not end the wait (objects may not exist yet); the
// last one is reported on timeout.
func (k *Kube) WaitFor(t testing.TB, desc string, timeout time.Duration, cond func() (bool, error)) {
	t.Helper()
	if err := k.poll(timeout, cond); err != nil {
		t.Fatalf("waiting for %s: %v", desc, err)
	}
}

func (k *Kube) poll(timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		for _, p := range k.procs {
			select {
			case <-p.exited:
				return fmt.Errorf("%s exited: %v (log %s)", p.name, p.cmd.ProcessState, p.log)
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v (last error: %v)", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// proc is a child process logging to a file, stopped when the test ends.
type proc struct {
	name, log string
	cmd       *exec.Cmd
	exited    <-chan struct{}
	stopped   bool // by us, as opposed to crashed
}

// start runs bin with its output in k.Dir/<name>.log (<name>-2.log, ... on
// restarts) and registers its shutdown.
func (k *Kube) start(t testing.TB, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: filepath.Base(bin)}
	var logf *os.File
	var err error
	for i := 1; logf == nil; i++ {
		p.log = filepath.Join(k.Dir, p.name+".log")
		if i > 1 {
			p.log = filepath.Join(k.Dir, fmt.Sprintf("%s-%d.log", p.name, i))
		}
		if logf, err = os.OpenFile(p.log, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatal(err)
		}
	}
	defer logf.Close() // the child has its own descriptor
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if p.exited, err = startPinned(p.cmd); err != nil {
		t.Fatalf("starting %s: %v", p.name, err)
	}
	k.procs = append(k.procs, p)
	t.Cleanup(func() {
		select {
		case <-p.exited:
			if !p.stopped {
				t.Errorf("%s exited before the end of the test: %v", p.name, p.cmd.ProcessState)
			}
		default:
		}
		p.stop()
		if t.Failed() {
			b, err := os.ReadFile(p.log)
			b = b[max(0, len(b)-4<<10):]
			t.Logf("%s log %s (last %d bytes, err=%v):\n%s", p.name, p.log, len(b), err, b)
		}
	})
	return p
}

// stop sends SIGTERM to the process (by PID), SIGKILL after 10s, and waits
// until it is reaped. It is idempotent.
func (p *proc) stop() {
	p.stopped = true
	_ = p.cmd.Process.Signal(syscall.SIGTERM) // fails harmlessly once reaped
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

func writeRSAKeyPair(t testing.TB, pubFile, keyFile string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err == nil {
		err = errors.Join(
			os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600),
			os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644))
	}
	if err != nil {
		t.Fatalf("writing service-account keys: %v", err)
	}
}

// NADCRD is the repository's NetworkAttachmentDefinition CRD, relative to
// ModuleRoot.
const NADCRD = "deploy/crds/network-attachment-definitions.yaml"

// InstallCRDs installs CustomResourceDefinitions from YAML files of the
// repository (paths relative to ModuleRoot, one CRD each), as deploy/
// ships them, and waits until they are served.
func (k *Kube) InstallCRDs(t testing.TB, files ...string) {
	t.Helper()
	api, err := kubeapi.NewClient(k.Kubeconfig, "testenv", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := kubeapi.InstallCRDs(ctx, api, os.DirFS(ModuleRoot(t)), files...); err != nil {
		t.Fatalf("installing %v: %v", files, err)
	}
}

// ServiceAccountKubeconfig writes a kubeconfig that authenticates as
// ServiceAccount namespace/name (which must exist) with a one-hour token,
// as the installer's node kubeconfig does.
func (k *Kube) ServiceAccountKubeconfig(t testing.TB, namespace, name string) string {
	t.Helper()
	exp := int64(3600)
	tok, err := k.Client.CoreV1().ServiceAccounts(namespace).CreateToken(context.Background(), name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token of ServiceAccount %s/%s: %v", namespace, name, err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: k.Server, InsecureSkipTLSVerify: true}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: name}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), namespace+"-"+name+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}
