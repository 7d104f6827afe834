package cli

// check, gc and release against a real kube-apiserver and etcd
// (internal/testenv), through kube-ipamctl's own client-go client.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

type kubeFixture struct {
	t    *testing.T
	kube *testenv.Kube
	conf string
	st   *store.Store
	next netip.Addr
}

func newKubeFixture(t *testing.T) *kubeFixture {
	t.Helper()
	k := testenv.StartKube(t, testenv.KubeOptions{})
	e := testenv.StartEtcd(t)
	f := &kubeFixture{t: t, kube: k, conf: filepath.Join(t.TempDir(), "10-kube-ipam.conf"), next: netip.MustParseAddr("10.188.0.10")}
	body := fmt.Sprintf(`{"cniVersion": "0.3.1", "name": "k8snet2", "type": "macvlan", "master": "eth0",
	  "ipam": {"type": "kube-ipam", "kubeConfig": %q, "etcdConfig": {"etcdURL": %q, "etcdPrefix": %q},
	           "subnet": "10.188.0.0/24", "rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.200", "releaseCooldown": "30s"}}`,
		k.Kubeconfig, e.ClientURL, prefix)
	if err := os.WriteFile(f.conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	nets, err := config.LoadNetworks(f.conf)
	if err != nil {
		t.Fatal(err)
	}
	f.st = store.New(e.Client(t), nets[0].Etcd.Prefix, nets[0].Name)
	return f
}

func (f *kubeFixture) run(args ...string) (string, string, int) {
	f.t.Helper()
	var out, errb bytes.Buffer
	app := &App{Out: &out, Err: &errb, Now: func() time.Time { return now }}
	code := app.Run(context.Background(), append([]string{"--config", f.conf}, args...))
	return out.String(), errb.String(), code
}

func (f *kubeFixture) pod(name string) *corev1.Pod {
	f.t.Helper()
	p, err := f.kube.Client.CoreV1().Pods("default").Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.PodSpec{NodeName: "worker-1", Containers: []corev1.Container{{Name: "c", Image: "c:v1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *kubeFixture) deletePod(p *corev1.Pod) {
	f.t.Helper()
	zero := int64(0)
	if err := f.kube.Client.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		f.t.Fatal(err)
	}
}

// claim commits p's allocation as the plugin's ADD does; a StatefulSet
// pod's (stsUID set) is a sticky address with its sticky record.
func (f *kubeFixture) claim(p *corev1.Pod, sts, stsUID string, ordinal int) string {
	f.t.Helper()
	ip := f.next.String()
	f.next = f.next.Next()
	cid := fmt.Sprintf("%s%s", strings.Repeat("c0", 4), string(p.UID)[:8])
	rec := store.Record{Network: "k8snet2", IP: ip, Kind: store.KindDynamic, IfName: "net1", ContainerID: cid,
		PodNamespace: p.Namespace, PodName: p.Name, PodUID: string(p.UID), Node: "worker-1", Created: now}
	c := &store.Claim{Attachment: store.Attachment{ContainerID: cid, IfName: "net1", IPs: []string{ip}, PodNamespace: p.Namespace,
		PodName: p.Name, PodUID: string(p.UID), Node: "worker-1", Created: now}}
	if stsUID != "" {
		rec.Kind, rec.StatefulSet, rec.StatefulSetUID, rec.Ordinal = store.KindSticky, sts, stsUID, ordinal
		c.NewSticky = &store.Sticky{Namespace: p.Namespace, StatefulSet: sts, StatefulSetUID: stsUID, Ordinal: ordinal, IfName: "net1", IPs: []string{ip}, Created: now}
	}
	c.Items = []store.ClaimItem{{Record: rec, Mode: store.ClaimFresh}}
	if ok, err := f.st.Commit(context.Background(), c); !ok || err != nil {
		f.t.Fatalf("claim for %s: %v %v", p.Name, ok, err)
	}
	return ip
}

func (f *kubeFixture) held(ip string) bool {
	f.t.Helper()
	st, err := f.st.State(context.Background(), netip.MustParseAddr(ip))
	if err != nil {
		f.t.Fatal(err)
	}
	return st.Record != nil
}

// leakedByCheck and freedByGC name what each command finds leaked as
// "attachment IP" or "sticky IP", sorted, so that they can be compared.
func leakedByCheck(t *testing.T, out string) []string {
	t.Helper()
	var rep CheckReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("check -o json: %v\n%s", err, out)
	}
	var l []string
	for _, p := range rep.Problems {
		if p.Kind != ProblemLeaked {
			continue
		}
		kind := "attachment"
		if strings.Contains(p.Key, "/sticky/") {
			kind = "sticky"
		}
		l = append(l, kind+" "+p.IP)
	}
	slices.Sort(l)
	return l
}

func candidatesOfGC(t *testing.T, out string) (cands, kept []string) {
	t.Helper()
	var rep GCReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("gc -o json: %v\n%s", err, out)
	}
	for _, c := range rep.Candidates {
		for _, ip := range c.IPs {
			cands = append(cands, c.Kind+" "+ip)
		}
	}
	for _, c := range rep.Kept {
		kept = append(kept, strings.Join(c.IPs, ","))
	}
	slices.Sort(cands)
	slices.Sort(kept)
	return cands, kept
}

// check and gc agree: the addresses of a StatefulSet's deleted pods are
// kept while the StatefulSet still wants their ordinals (check lists them
// as kept on purpose, not as leaked problems; gc keeps them; release
// refuses), and both find them leaked once it is scaled below them.
func TestCheckAndGCAgreeOnStatefulSet(t *testing.T) {
	f := newKubeFixture(t)
	ctx := context.Background()
	sts, err := f.kube.Client.AppsV1().StatefulSets("default").Create(ctx, testenv.StatefulSet("db", 2, nil), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// No controller manager runs: the test creates the StatefulSet's pods,
	// the plugin's allocations for them, then deletes the pods (their node
	// crashed; no CNI DEL).
	var dbIP []string
	for i := range 2 {
		p := f.pod(fmt.Sprintf("db-%d", i))
		dbIP = append(dbIP, f.claim(p, "db", string(sts.UID), i))
		f.deletePod(p)
	}
	web := f.pod("web")
	webIP := f.claim(web, "", "", 0)
	f.deletePod(web)
	liveIP := f.claim(f.pod("live"), "", "", 0)

	out, stderr, code := f.run("check")
	if code != 1 || !strings.Contains(stderr, "check found 1 inconsistency") {
		t.Fatalf("check: exit %d, %q\n%s", code, stderr, out)
	}
	for _, row := range [][]string{{ProblemLeaked, "k8snet2", webIP}, {KeptStatefulSetOrdinal, "k8snet2", dbIP[0]}, {KeptStatefulSetOrdinal, "k8snet2", dbIP[1]}} {
		if !hasRow(out, row...) {
			t.Errorf("check output lacks a row %q:\n%s", row, out)
		}
	}
	for _, want := range []string{"Kept on purpose (not problems, nothing to do):",
		"pod default/db-1 no longer exists; StatefulSet default/db (2 replica(s)) still wants ordinal 1: its re-created pod takes the address over"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	out, _, _ = f.run("check", "-o", "json")
	var rep CheckReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Kept) != 2 || rep.Kept[0].IP != dbIP[0] {
		t.Fatalf("check -o json: %v\n%s", err, out)
	}
	checkLeaked := leakedByCheck(t, out)
	out, stderr, code = f.run("gc", "--dry-run", "-o", "json")
	if code != 0 {
		t.Fatalf("gc --dry-run: exit %d, %q\n%s", code, stderr, out)
	}
	gcCands, gcKept := candidatesOfGC(t, out)
	if want := []string{"attachment " + webIP}; !slices.Equal(checkLeaked, want) || !slices.Equal(gcCands, want) {
		t.Fatalf("check finds %v leaked, gc %v; want both %v", checkLeaked, gcCands, want)
	}
	if !slices.Equal(gcKept, dbIP) {
		t.Fatalf("gc kept %v, want %v", gcKept, dbIP)
	}
	out, _, _ = f.run("gc", "--dry-run")
	if !strings.Contains(out, "Kept 2 allocation(s) of deleted pods whose StatefulSet still wants the ordinal") {
		t.Errorf("gc --dry-run table:\n%s", out)
	}
	if _, stderr, code := f.run("release", dbIP[0]); code != 1 || !strings.Contains(stderr, "still wants ordinal 0") {
		t.Fatalf("release of a wanted ordinal: exit %d, %q", code, stderr)
	}

	// Scaled to 1: ordinal 1's attachment and sticky record are leaked,
	// for check and gc alike.
	f.kube.ScaleStatefulSet(t, "db", 1)
	out, _, code = f.run("check", "-o", "json")
	checkLeaked = leakedByCheck(t, out)
	out, _, _ = f.run("gc", "--dry-run", "-o", "json")
	gcCands, gcKept = candidatesOfGC(t, out)
	want := []string{"attachment " + dbIP[1], "attachment " + webIP, "sticky " + dbIP[1]}
	slices.Sort(want)
	if code != 1 || !slices.Equal(checkLeaked, want) || !slices.Equal(gcCands, want) || !slices.Equal(gcKept, dbIP[:1]) {
		t.Fatalf("after scale-down: check (exit %d) %v, gc %v kept %v; want %v kept %v", code, checkLeaked, gcCands, gcKept, want, dbIP[:1])
	}
	out, stderr, code = f.run("gc")
	if code != 0 || !strings.Contains(out, "Freed 3 of 3 leaked allocation(s).") {
		t.Fatalf("gc: exit %d, %q\n%s", code, stderr, out)
	}
	for ip, want := range map[string]bool{webIP: false, dbIP[1]: false, dbIP[0]: true, liveIP: true} {
		if f.held(ip) != want {
			t.Errorf("%s held %v after gc, want %v", ip, !want, want)
		}
	}
	out, stderr, code = f.run("check")
	if code != 0 || !strings.Contains(out, "No inconsistencies") || !hasRow(out, KeptStatefulSetOrdinal, "k8snet2", dbIP[0]) || hasRow(out, KeptStatefulSetOrdinal, "k8snet2", dbIP[1]) {
		t.Fatalf("check after gc: exit %d, %q\n%s", code, stderr, out)
	}
}

// A gc pass that cannot decide every candidate says how many it skipped
// and why, in the table and in JSON, and exits 3; the next pass frees the
// rest. Two ways to fail a lookup: client-go's rate limiter refusing a
// request that would wait past --timeout (the partial passes that
// exited 0), and the API refusing it (no RBAC for the kubeconfig's user).
func TestGCSkippedExitsThree(t *testing.T) {
	f := newKubeFixture(t)
	var ips []string
	for i := range 3 {
		p := f.pod(fmt.Sprintf("gone-%d", i))
		ips = append(ips, f.claim(p, "", "", 0))
		f.deletePod(p)
	}
	count := func() (n int) {
		for _, ip := range ips {
			if f.held(ip) {
				n++
			}
		}
		return n
	}
	// One request's worth of tokens, then one every 1000 s: the first pod
	// GET passes, the other two would wait past --timeout.
	limited := []string{"--kube-api-qps", "0.001", "--kube-api-burst", "1"}
	out, stderr, code := f.run(append([]string{"gc"}, limited...)...)
	if code != 3 || !strings.Contains(stderr, "2 allocation(s) could not be decided or released and were kept") || !strings.Contains(stderr, "would exceed context deadline") {
		t.Fatalf("rate-limited gc: exit %d, stderr %q\n%s", code, stderr, out)
	}
	t.Logf("rate-limited gc, exit %d:\n%s%s", code, out, stderr)
	for _, want := range []string{"Freed 1 of 1 leaked allocation(s).", "Skipped 2 allocation(s), kept for now:\n  2 × ", "would exceed context deadline", "skipped: "} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if n := count(); n != 2 {
		t.Fatalf("%d addresses held after a pass that freed one", n)
	}
	out, _, code = f.run(append([]string{"gc", "-o", "json"}, limited...)...)
	var rep GCReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 3 {
		t.Fatalf("rate-limited gc -o json: exit %d, %v\n%s", code, err, out)
	}
	if rep.Complete || len(rep.Released) != 1 || len(rep.Skipped) != 1 || len(rep.SkipReasons) != 1 || rep.SkipReasons[0].Count != 1 ||
		!strings.Contains(rep.SkipReasons[0].Reason, "would exceed context deadline") || rep.Skipped[0].Skipped != rep.SkipReasons[0].Reason {
		t.Fatalf("rate-limited gc -o json:\n%s", out)
	}
	out, stderr, code = f.run("gc")
	if code != 0 || !strings.Contains(out, "Freed 1 of 1 leaked allocation(s).") || strings.Contains(out, "Skipped") || count() != 0 {
		t.Fatalf("gc: exit %d, %q, %d held\n%s", code, stderr, count(), out)
	}

	// A user the API refuses (a ServiceAccount without any RBAC).
	p := f.pod("gone-x")
	ip := f.claim(p, "", "", 0)
	f.deletePod(p)
	kc := f.serviceAccountKubeconfig("nobody")
	out, stderr, code = f.run("gc", "--kubeconfig", kc, "-o", "json")
	rep = GCReport{}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 3 || rep.Complete || len(rep.Skipped) != 1 ||
		!strings.Contains(rep.Skipped[0].Skipped, "forbidden") || !strings.Contains(stderr, "1 allocation(s) could not be decided") {
		t.Fatalf("gc as a user without RBAC: exit %d, %q\n%s", code, stderr, out)
	}
	out, _, code = f.run("check", "--kubeconfig", kc)
	if code != 0 || !strings.Contains(out, "Note: network k8snet2: 1 allocation(s) not checked for leaks, the Kubernetes API could not tell: ") || !strings.Contains(out, "forbidden") {
		t.Fatalf("check as a user without RBAC: exit %d\n%s", code, out)
	}
	if _, stderr, code := f.run("release", ip, "--kubeconfig", kc); code != 1 || !strings.Contains(stderr, "cannot check whether pod default/gone-x still exists") {
		t.Fatalf("release as a user without RBAC: exit %d, %q", code, stderr)
	}
	if !f.held(ip) {
		t.Fatal("freed although its owner could not be checked")
	}
}

// serviceAccountKubeconfig creates ServiceAccount default/name (no RBAC:
// the API refuses it everything) and a kubeconfig with a token for it.
func (f *kubeFixture) serviceAccountKubeconfig(name string) string {
	f.t.Helper()
	ctx := context.Background()
	sa, err := f.kube.Client.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	tok, err := f.kube.Client.CoreV1().ServiceAccounts("default").CreateToken(ctx, sa.Name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: f.kube.Server, InsecureSkipTLSVerify: true}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: name}
	cfg.CurrentContext = "test"
	path := filepath.Join(f.t.TempDir(), name+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		f.t.Fatal(err)
	}
	return path
}

// hasRow reports whether a line of a table starts with these fields.
func hasRow(out string, fields ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= len(fields) && slices.Equal(f[:len(fields)], fields) {
			return true
		}
	}
	return false
}
