package controller

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"kubeipam/internal/testenv"
)

// logLine is one line of the controller's log (slog's text format).
type logLine map[string]string

// parseLog reads key=value pairs, values optionally quoted as Go strings.
func parseLog(text string) []logLine {
	var out []logLine
	kv := regexp.MustCompile(`([A-Za-z0-9_.]+)=("(?:[^"\\]|\\.)*"|\S*)`)
	for _, l := range strings.Split(text, "\n") {
		m := kv.FindAllStringSubmatch(l, -1)
		if len(m) == 0 {
			continue
		}
		line := logLine{}
		for _, p := range m {
			v := p[2]
			if strings.HasPrefix(v, `"`) {
				if u, err := strconv.Unquote(v); err == nil {
					v = u
				}
			}
			line[p[1]] = v
		}
		out = append(out, line)
	}
	return out
}

// passes are the controller's per-pass lines.
func (ctl *controller) passes() []logLine {
	var out []logLine
	for _, l := range parseLog(ctl.logText()) {
		if l["msg"] == "pass" {
			out = append(out, l)
		}
	}
	return out
}

func (ctl *controller) findPass(cond func(logLine) bool) logLine {
	for _, l := range ctl.passes() {
		if cond(l) {
			return l
		}
	}
	return nil
}

// The command line: --version, and a mistyped flag or a bad --log-level
// is an error message and exit 2, not a silent exit.
func TestCommandLine(t *testing.T) {
	bin := testenv.Binary(t, "kube-ipam-controller")
	run := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), errb.String(), code
	}
	if out, stderr, code := run("--version"); code != 0 || !regexp.MustCompile(`^kube-ipam-controller \S+\n$`).MatchString(out) {
		t.Errorf("--version: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if _, stderr, code := run("--grcae", "1s"); code != 2 || !strings.Contains(stderr, "unknown flag: --grcae") {
		t.Errorf("mistyped flag: exit %d, stderr %q", code, stderr)
	}
	if _, stderr, code := run("--config", "x", "--log-level", "loud"); code != 2 || !strings.Contains(stderr, `--log-level "loud": want debug, info, warn or error`) {
		t.Errorf("bad --log-level: exit %d, stderr %q", code, stderr)
	}
	if _, stderr, code := run("--config", "x", "--kube-api-qps", "0"); code != 2 || !strings.Contains(stderr, "--kube-api-qps") {
		t.Errorf("--kube-api-qps 0: exit %d, stderr %q", code, stderr)
	}
}

// Every pass is logged at info with its counts: a leak first seen (kept
// within its grace), then released; a StatefulSet's deleted pod kept for
// its ordinal. --log-level debug adds one line per decision; warn leaves
// out the passes that skipped nothing.
func TestPassLogs(t *testing.T) {
	c := newCluster(t, "node-1")
	ctl := c.startController("--log-level", "debug")
	web := c.pod("web", "node-1")
	webIP, _ := c.add(web)
	c.createSTS("db", 1)
	db := c.kube.Scheduled(t, "app=db", 1)[0]
	dbIP, dbCID := c.add(&db)
	c.forceDelete(web)
	c.forceDelete(&db)
	c.waitFreed("web's address reclaimed", 30*time.Second, webIP)
	// The StatefulSet controller re-created db-0 (another UID): its old
	// allocation is kept for it, every pass saying so.
	c.kube.WaitFor(t, "a pass keeping db-0's address for its StatefulSet", 30*time.Second, func() (bool, error) {
		return ctl.findPass(func(l logLine) bool {
			return l["keptStatefulSet"] == "1" && l["released"] == "0" && l["skipped"] == "0"
		}) != nil, nil
	})
	if h := c.holder(dbIP); h != dbCID {
		t.Fatalf("db-0's address %s now held by %q", dbIP, h)
	}
	first := ctl.findPass(func(l logLine) bool { return l["candidates"] == "1" && l["keptGrace"] == "1" && l["released"] == "0" })
	released := ctl.findPass(func(l logLine) bool { return l["released"] == "1" && l["freedIPs"] == "1" })
	if first == nil || released == nil {
		t.Fatalf("no pass line with the leak first seen (%v) or released (%v):\n%s", first, released, ctl.logText())
	}
	for _, k := range []string{"network", "attachments", "stickyRecords", "alive", "candidates", "released", "stickiesReleased",
		"freedIPs", "keptGrace", "keptStatefulSet", "keptChanged", "skipped", "duration"} {
		if _, ok := released[k]; !ok {
			t.Errorf("pass line lacks %s: %v", k, released)
		}
	}
	if d, err := time.ParseDuration(released["duration"]); err != nil || d <= 0 {
		t.Errorf("pass duration %q", released["duration"])
	}
	if released["level"] != "INFO" || released["network"] != "k8snet2" {
		t.Errorf("pass line %v", released)
	}
	text := ctl.logText()
	for _, want := range []string{
		`msg="leaked; within its grace period" network=k8snet2 owner=default/web reason="pod default/web no longer exists"`,
		`msg="released leaked allocation" network=k8snet2 pod=default/web`,
		`msg="kept: its StatefulSet still wants the ordinal" network=k8snet2 owner=default/db-0`,
		`msg=starting version=`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	ctl.stop()

	// At warn, passes that skipped nothing are not logged.
	quiet := c.startController("--log-level", "warn")
	c.kube.WaitFor(t, "two passes", 30*time.Second, func() (bool, error) {
		m, err := quiet.scrape()
		return m[`kube_ipam_reconcile_duration_seconds_count{network="k8snet2"}`] >= 2, err
	})
	if strings.Contains(quiet.logText(), "level=INFO") || strings.Contains(quiet.logText(), "level=DEBUG") {
		t.Fatalf("info lines at --log-level warn:\n%s", quiet.logText())
	}
}

// A controller whose StatefulSet lookups the API refuses (its RBAC lacks
// them) cannot decide a StatefulSet pod's allocation nor its ordinal's
// sticky record: the pass logs both as skipped, with the reason, at warn,
// and the address is kept.
func TestPassLogsSkipped(t *testing.T) {
	c := newCluster(t, "node-1")
	c.createSTS("db", 1)
	db := c.kube.Scheduled(t, "app=db", 1)[0]
	dbIP, dbCID := c.add(&db)
	c.forceDelete(&db)
	// Pods only: no StatefulSets.
	kc := c.restrictedKubeconfig("pods-only", rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}})
	ctl := c.startControllerWith(kc)
	var skipped logLine
	c.kube.WaitFor(t, "a pass skipping db-0's old allocation", 30*time.Second, func() (bool, error) {
		skipped = ctl.findPass(func(l logLine) bool { return l["skipped"] == "2" })
		return skipped != nil, nil
	})
	if skipped["level"] != "WARN" || !strings.HasPrefix(skipped["skipReasons"], "2 × ") || !strings.Contains(skipped["skipReasons"], "forbidden") {
		t.Fatalf("pass line %v", skipped)
	}
	if h := c.holder(dbIP); h != dbCID {
		t.Fatalf("undecided allocation %s freed (holder %q)", dbIP, h)
	}
	m, err := ctl.scrape()
	must(t, err)
	if g := m[`kube_ipam_gc_skipped{network="`+c.network+`"}`]; g != 2 {
		t.Fatalf("kube_ipam_gc_skipped = %v after passes skipping 2, want 2", g)
	}
}

// restrictedKubeconfig creates a ServiceAccount bound to a ClusterRole with
// only these rules, and a kubeconfig with a token for it.
func (c *cluster) restrictedKubeconfig(name string, rules ...rbacv1.PolicyRule) string {
	c.t.Helper()
	ctx := context.Background()
	cl := c.kube.Client
	_, err := cl.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	must(c.t, err)
	_, err = cl.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{})
	must(c.t, err)
	_, err = cl.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: "default"}}}, metav1.CreateOptions{})
	must(c.t, err)
	tok, err := cl.CoreV1().ServiceAccounts("default").CreateToken(ctx, name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	must(c.t, err)
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: c.kube.Server, InsecureSkipTLSVerify: true}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: name}
	cfg.CurrentContext = "test"
	path := filepath.Join(c.t.TempDir(), name+".kubeconfig")
	must(c.t, clientcmd.WriteToFile(*cfg, path))
	return path
}

// startControllerWith runs the controller with another kubeconfig (the
// flag given last wins).
func (c *cluster) startControllerWith(kubeconfig string, extra ...string) *controller {
	c.t.Helper()
	return c.startController(append([]string{"--kubeconfig", kubeconfig}, extra...)...)
}
