package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Result is one check of the replay.
type Result struct {
	Check  string `json:"check"`
	Passed bool   `json:"passed"`
	Detail string `json:"detail,omitempty"`
}

// Addresses of the seed's database pods on net1.
const (
	DB1IP = "10.188.0.218"
	DB2IP = "10.188.0.219"
)

type replay struct {
	l       *Lab
	ctx     context.Context
	out     io.Writer
	results []Result
}

func (r *replay) section(title string) { fmt.Fprintf(r.out, "\n== %s ==\n", title) }

// kubectl runs kubectl as the seed does (from the examples directory, so
// `kubectl apply -f db.yaml` is literally that), printing the command and its
// output.
func (r *replay) kubectl(args ...string) (string, error) {
	fmt.Fprintf(r.out, "# kubectl %s\n", strings.Join(args, " "))
	ctx, cancel := context.WithTimeout(r.ctx, 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.l.kube("kubectl"), args...)
	cmd.Dir = r.l.opts.Examples
	cmd.Env = append(os.Environ(), "KUBECONFIG="+r.l.opts.Kubeconfig())
	b, err := cmd.CombinedOutput()
	out := string(b)
	fmt.Fprint(r.out, indent(out))
	return out, err
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ") + "\n"
}

func (r *replay) check(name string, ok bool, detailf string, args ...any) bool {
	res := Result{Check: name, Passed: ok}
	if !ok {
		res.Detail = fmt.Sprintf(detailf, args...)
	}
	r.results = append(r.results, res)
	if ok {
		fmt.Fprintf(r.out, "PASS  %s\n", name)
	} else {
		fmt.Fprintf(r.out, "FAIL  %s: %s\n", name, res.Detail)
	}
	return ok
}

// Replay applies the seed's manifests (section 3) and runs the seed's
// verification (sections 4 and 5) with the seed's commands, printing them as
// the seed does. It returns every check; the error is only for a replay that
// could not run at all.
func (l *Lab) Replay(ctx context.Context) ([]Result, error) {
	out := l.opts.Out
	if out == nil {
		out = io.Discard
	}
	r := &replay{l: l, ctx: ctx, out: out}
	cs, err := l.client()
	if err != nil {
		return nil, err
	}

	if l.opts.KubernetesStore() {
		r.section("2. kube-ipam on every node (charts/kube-ipam with store: kubernetes: installer DaemonSet, controller, CRDs)")
		o, err := r.kubectl("get", "crd", "-l", "app.kubernetes.io/part-of=kube-ipam")
		r.check("the IPAllocation and IPSticky CRDs are installed", err == nil && strings.Contains(o, "ipallocations.ipam.kube-ipam.io") &&
			strings.Contains(o, "ipstickies.ipam.kube-ipam.io"), "%v", err)
	} else {
		r.section("2. kube-ipam on every node (charts/kube-ipam: installer DaemonSet and controller)")
	}
	r.kubectl("-n", "kube-ipam", "get", "daemonset,deployment")
	ds, err := cs.AppsV1().DaemonSets("kube-ipam").Get(ctx, "kube-ipam-node", metav1.GetOptions{})
	r.check(fmt.Sprintf("the installer runs on all %d nodes", len(l.state.Nodes)),
		err == nil && int(ds.Status.NumberReady) == len(l.state.Nodes), "%v", dsStatus(ds, err))
	o, err := r.kubectl(IPAMCtl("networks")...)
	r.check("kube-ipamctl networks lists k8snet2 (10.188.0.0/16)", err == nil && strings.Contains(o, "k8snet2") &&
		strings.Contains(o, "10.188.0.0/16"), "%v", err)

	manifests := []string{"db.yaml", "web.yaml", "web-svc.yaml", "web-ingress.yaml"}
	if l.opts.NADs() {
		r.section("3. Create the database network and the pods (deploy/examples/nad: the NAD way)")
		r.kubectl("get", "crd", "network-attachment-definitions.k8s.cni.cncf.io")
		nad, err := l.NADManifest()
		if r.check("deploy/examples/nad/db-net.yaml rendered for the lab's etcd", err == nil, "%v", err) {
			_, err = r.kubectl("apply", "-f", nad)
			r.check("kubectl apply -f db-net.yaml (NetworkAttachmentDefinition db-net)", err == nil, "%v", err)
		}
		manifests = []string{"nad/db.yaml", "nad/web.yaml", "web-svc.yaml", "web-ingress.yaml"}
	} else {
		r.section("3. Create the pods (deploy/examples: the seed's manifests, corrected)")
	}
	for _, f := range manifests {
		_, err := r.kubectl("apply", "-f", f)
		r.check("kubectl apply -f "+f, err == nil, "%v", err)
	}
	fmt.Fprintln(out, "(the lab has no ingress controller: web-ingress is stored, the NodePort below serves users)")
	_, err = r.kubectl("run", "outsider", "--image="+BusyboxImage, "--labels=app=outsider", "--restart=Never", "--", "sleep", "86400")
	r.check("a pod outside the tier (app=outsider) created", err == nil, "%v", err)
	want := map[string]string{"database-1-0": "", "database-2-0": "", "outsider": ""}
	webPods, err := r.waitReady(cs, want, 2)
	if !r.check("every pod Running and Ready", err == nil, "%v", err) {
		r.kubectl("get", "pod", "-o", "wide")
		r.kubectl("get", "events", "--sort-by=.lastTimestamp")
		return r.results, nil
	}
	r.kubectl("get", "pod", "-o", "wide")
	web := webPods[0]

	r.section("4.1 Users reach the web tier through the Service")
	r.kubectl("get", "service")
	svc, err := cs.CoreV1().Services("default").Get(ctx, "web-svc", metav1.GetOptions{})
	if r.check("web-svc is a NodePort Service", err == nil && len(svc.Spec.Ports) == 1 && svc.Spec.Ports[0].NodePort > 0, "%v", err) {
		node := l.state.Nodes[0]
		url := fmt.Sprintf("http://%s:%d", node.IP, svc.Spec.Ports[0].NodePort)
		fmt.Fprintf(out, "# curl %s\n", url)
		body, err := httpGet(ctx, url)
		fmt.Fprint(out, indent(body))
		r.check("curl the NodePort (kube-proxy, nftables mode) returns the web page",
			err == nil && strings.Contains(body, "Welcome to the kube-ipam lab"), "%v", err)
	}

	r.section("4.2 The web pod reaches the database by its fixed IP")
	r.net1("database-2-0", DB2IP)
	r.ping(web, DB2IP, true)

	r.section("4.3 Database pods reach each other by their fixed IPs")
	r.net1("database-1-0", DB1IP)
	r.ping("database-2-0", DB1IP, true)

	r.section("Tier security: a pod outside the tier")
	out1, _ := r.kubectl("exec", "outsider", "--", "ip", "address")
	why := "kube-multus attach selector"
	if l.opts.NADs() {
		why = "it asks for no network"
	}
	r.check("outsider has no net1 ("+why+")", strings.Contains(out1, "eth0") && !strings.Contains(out1, "net1"),
		"its interfaces: %s", strings.TrimSpace(out1))
	r.ping("outsider", DB2IP, false)
	if ip, node := r.webAcross(cs, "outsider"); ip != "" {
		fmt.Fprintf(out, "(outsider is still on the cluster network: it reaches a web pod on %s through flannel's vxlan)\n", node)
		o, err := r.kubectl("exec", "outsider", "--", "wget", "-qO-", "http://"+ip)
		r.check("outsider reaches a web pod on another node over eth0 (flannel)", err == nil && strings.Contains(o, "Welcome"), "%v", err)
	}

	r.section("Tier security: the database pods' net1 policy")
	who := "kube-multus"
	if l.opts.NADs() {
		who = "kube-tier, chained after macvlan in the NAD,"
	}
	fmt.Fprintf(out, "(%s put an nftables table into each database pod: net1 accepts ping and tcp/3306 from 10.188.0.0/16 and drops the rest;\n", who)
	fmt.Fprintln(out, " nothing listens on 3306 in the lab, so an allowed connection is refused by the pod, a dropped one times out)")
	o, _ = r.kubectl("exec", web, "--", "nc", "-w", "2", DB2IP, "3306")
	r.check("web to database-2 tcp/3306 reaches the pod (refused: nothing listens)", strings.Contains(o, "refused"), "nc said %q", strings.TrimSpace(o))
	o, _ = r.kubectl("exec", web, "--", "nc", "-w", "2", DB2IP, "22")
	r.check("web to database-2 tcp/22 is dropped by the tier policy (timed out)", strings.Contains(o, "timed out"), "nc said %q", strings.TrimSpace(o))

	r.section("5.1 Delete the database pod")
	old, err := cs.CoreV1().Pods("default").Get(ctx, "database-2-0", metav1.GetOptions{})
	if !r.check("database-2-0 exists", err == nil, "%v", err) {
		return r.results, nil
	}
	fmt.Fprintf(out, "(cordon %s first, so the scheduler must place the new database-2-0 on another node)\n", old.Spec.NodeName)
	r.kubectl("cordon", old.Spec.NodeName)
	_, err = r.kubectl("delete", "pod", "database-2-0")
	r.check("kubectl delete pod database-2-0", err == nil, "%v", err)
	r.kubectl("get", "pod", "-o", "wide")
	_, err = r.waitReady(cs, map[string]string{"database-2-0": string(old.UID)}, 2)
	r.kubectl("uncordon", old.Spec.NodeName)
	if !r.check("database-2-0 re-created and Ready", err == nil, "%v", err) {
		r.kubectl("get", "events", "--sort-by=.lastTimestamp")
		return r.results, nil
	}

	r.section("5.2 The re-created pod keeps its IP")
	r.kubectl("get", "pod", "-o", "wide")
	now, err := cs.CoreV1().Pods("default").Get(ctx, "database-2-0", metav1.GetOptions{})
	newNode := ""
	if err == nil {
		newNode = now.Spec.NodeName
	}
	r.check("database-2-0 moved to another node", newNode != "" && newNode != old.Spec.NodeName,
		"was on %s, now on %q (%v)", old.Spec.NodeName, newNode, err)
	r.net1("database-2-0", DB2IP)
	r.ping(web, DB2IP, true)

	r.section("The pod's network-status and Events (written by " + l.metaPlugin() + ")")
	r.networkStatus(now)

	r.section("The registry: who holds 10.188.0.219 (kube-ipamctl in a controller pod, as deploy/README.md shows)")
	o, err = r.kubectl(IPAMCtl("who-has", DB2IP)...)
	var holders []struct {
		Pod, Kind, Node string
		PodUID          types.UID
	}
	b := []byte(o)
	if err == nil {
		b, err = l.IPAMCtl(ctx, "who-has", DB2IP, "-o", "json")
		if err == nil {
			err = json.Unmarshal(b, &holders)
		}
	}
	r.check("kube-ipamctl who-has: 10.188.0.219 is registered to the new database-2-0 only",
		err == nil && now != nil && len(holders) == 1 && holders[0].PodUID == now.UID && holders[0].Node == now.Spec.NodeName,
		"%v: %s", err, strings.TrimSpace(string(b)))

	r.webhookRefuses(now)

	if l.opts.KubernetesStore() {
		r.section("The registry in the Kubernetes API: one IPAllocation per address")
		o, err = r.kubectl("get", "ipallocations")
		rows := tableRows(o)
		for _, want := range []struct{ ip, pod, node string }{{DB1IP, "default/database-1-0", ""}, {DB2IP, "default/database-2-0", newNode}} {
			var got []string
			ok := false
			for _, row := range rows {
				if row["ADDRESS"] != want.ip {
					continue
				}
				got = append(got, fmt.Sprint(row))
				ok = row["STATE"] == "held" && row["POD"] == want.pod && row["NETWORK"] == "k8snet2" && row["KIND"] == "fixed" &&
					(want.node == "" || row["NODE"] == want.node)
			}
			where := ""
			if want.node != "" {
				where = " on " + want.node
			}
			r.check(fmt.Sprintf("kubectl get ipallocations: IPAllocation %s is held by %s%s", want.ip, want.pod, where),
				err == nil && ok && len(got) == 1, "%v: rows %q", err, got)
		}
	}
	return r.results, nil
}

// networkStatus shows and checks the re-created database-2-0's
// k8s.v1.cni.cncf.io/network-status annotation (net1 with the fixed
// address) and its AddedInterface Event.
func (r *replay) networkStatus(pod *corev1.Pod) {
	o, err := r.kubectl("get", "pod", "database-2-0", "-o", `jsonpath={.metadata.annotations.k8s\.v1\.cni\.cncf\.io/network-status}`)
	var st []struct {
		Name, Interface string
		IPs             []string
		Default         bool
	}
	if err == nil {
		err = json.Unmarshal([]byte(strings.TrimSpace(o)), &st)
	}
	ok := false
	for _, s := range st {
		if s.Interface == "net1" && slices.Equal(s.IPs, []string{DB2IP}) && !s.Default {
			ok = true
		}
	}
	r.check("network-status of database-2-0 lists net1 with "+DB2IP, err == nil && ok && len(st) == 2 && st[0].Default, "%v: %+v", err, st)
	if pod == nil {
		return
	}
	o, err = r.kubectl("get", "events", "--field-selector", "involvedObject.uid="+string(pod.UID), "--sort-by=.lastTimestamp")
	r.check("an AddedInterface Event says net1 got "+DB2IP+"/16", err == nil && strings.Contains(o, "AddedInterface") &&
		strings.Contains(o, "Add net1 ["+DB2IP+"/16]"), "%v", err)
}

// metaPlugin names the lab's meta plugin.
func (l *Lab) metaPlugin() string {
	switch {
	case l.opts.UpstreamMultus():
		return "upstream multus " + MultusVersion
	case l.opts.NADs():
		return "kube-multus in Kubernetes mode"
	}
	return "kube-multus in delegates mode"
}

// tableRows reads kubectl's table output: one map per row, keyed by the
// column headers (columns are found by the headers' positions, so empty
// cells stay empty).
func tableRows(out string) []map[string]string {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) < 2 {
		return nil
	}
	header := lines[0]
	var starts []int
	var names []string
	for i := 0; i < len(header); i++ {
		if header[i] != ' ' && (i == 0 || header[i-1] == ' ') {
			starts = append(starts, i)
			end := strings.IndexByte(header[i:], ' ')
			if end < 0 {
				end = len(header) - i
			}
			names = append(names, header[i:i+end])
		}
	}
	var rows []map[string]string
	for _, line := range lines[1:] {
		row := map[string]string{}
		for c, start := range starts {
			if start >= len(line) {
				break
			}
			end := len(line)
			if c+1 < len(starts) && starts[c+1] < end {
				end = starts[c+1]
			}
			row[names[c]] = strings.TrimSpace(line[start:end])
		}
		rows = append(rows, row)
	}
	return rows
}

func dsStatus(ds *appsv1.DaemonSet, err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%d of %d installer pods ready", ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
}

// IPAMCtl is the kubectl command line that runs kube-ipamctl args in a
// controller pod, with the network configs the controller reads: the
// mounted ConfigMap's directory (the guide's 00-multus.conf, or in the NAD
// modes the database network's conflist).
func IPAMCtl(args ...string) []string {
	return append([]string{"-n", "kube-ipam", "exec", "deploy/kube-ipam-controller", "--",
		"kube-ipamctl", "--config", "/etc/kube-ipam/config"}, args...)
}

// IPAMCtl runs kube-ipamctl in a controller pod and returns its stdout.
func (l *Lab) IPAMCtl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, l.kube("kubectl"), append([]string{"--kubeconfig", l.opts.Kubeconfig()}, IPAMCtl(args...)...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("kube-ipamctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// webAcross returns the eth0 IP and node of a web pod on another node than
// pod's, or of any web pod if they share one.
func (r *replay) webAcross(cs kubernetes.Interface, pod string) (string, string) {
	p, err := cs.CoreV1().Pods("default").Get(r.ctx, pod, metav1.GetOptions{})
	if err != nil {
		return "", ""
	}
	webs, err := cs.CoreV1().Pods("default").List(r.ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil || len(webs.Items) == 0 {
		return "", ""
	}
	best := webs.Items[0]
	for _, w := range webs.Items {
		if w.Spec.NodeName != p.Spec.NodeName && w.Status.PodIP != "" {
			best = w
		}
	}
	return best.Status.PodIP, best.Spec.NodeName
}

var inet = regexp.MustCompile(`inet (\S+) .* (\S+)$`)

// net1 runs the seed's `kubectl exec <pod> -- ip address` and checks net1.
func (r *replay) net1(pod, ip string) {
	out, err := r.kubectl("exec", pod, "--", "ip", "address")
	found := ""
	for _, line := range strings.Split(out, "\n") {
		if m := inet.FindStringSubmatch(strings.TrimSpace(line)); m != nil && m[2] == "net1" {
			found = m[1]
		}
	}
	r.check(fmt.Sprintf("%s net1 is %s/16", pod, ip), err == nil && found == ip+"/16", "net1 has %q (%v)", found, err)
}

// ping runs the seed's ping from pod, expecting it to succeed or not.
func (r *replay) ping(pod, ip string, reach bool) {
	if reach {
		// A fresh macvlan neighbour can cost the first echo; the seed's
		// ping ran until ^C, this one sends 3.
		out, err := r.kubectl("exec", pod, "--", "ping", "-c", "3", "-W", "2", ip)
		r.check(fmt.Sprintf("%s pings %s", pod, ip), err == nil && !strings.Contains(out, " 100% packet loss"), "%v", err)
		return
	}
	out, err := r.kubectl("exec", pod, "--", "ping", "-c", "2", "-W", "2", ip)
	r.check(fmt.Sprintf("%s cannot reach %s", pod, ip), err != nil && !strings.Contains(out, "bytes from"), "ping succeeded")
}

// waitReady waits until the named pods (with a UID other than the one
// given, if any) and webReplicas pods labelled app=web are Running and
// Ready; it returns the web pods' names.
func (r *replay) waitReady(cs kubernetes.Interface, want map[string]string, webReplicas int) ([]string, error) {
	var web []string
	err := poll(r.ctx, 3*time.Minute, "pods Ready", func() (bool, string, error) {
		pods, err := cs.CoreV1().Pods("default").List(r.ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		web = web[:0]
		seen := map[string]bool{}
		var waiting []string
		for _, p := range pods.Items {
			ready := p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status != corev1.ConditionTrue {
					ready = false
				}
			}
			if old, ok := want[p.Name]; ok && (old == "" || types.UID(old) != p.UID) {
				if ready {
					seen[p.Name] = true
				} else {
					waiting = append(waiting, fmt.Sprintf("%s %s", p.Name, podState(p)))
				}
			}
			if p.Labels["app"] == "web" && ready {
				web = append(web, p.Name)
			}
		}
		for name := range want {
			if !seen[name] && !slices.ContainsFunc(waiting, func(w string) bool { return strings.HasPrefix(w, name+" ") }) {
				waiting = append(waiting, name+" not created yet")
			}
		}
		if len(web) < webReplicas {
			waiting = append(waiting, fmt.Sprintf("%d/%d web pods ready", len(web), webReplicas))
		}
		slices.Sort(waiting)
		return len(waiting) == 0, strings.Join(waiting, "; "), nil
	})
	slices.Sort(web)
	return web, err
}

// podState is the reason a pod is not ready yet, as kubectl would show it.
func podState(p corev1.Pod) string {
	for _, c := range p.Status.ContainerStatuses {
		if c.State.Waiting != nil {
			return c.State.Waiting.Reason + " " + c.State.Waiting.Message
		}
	}
	if p.Spec.NodeName == "" {
		return "Pending (not scheduled)"
	}
	return string(p.Status.Phase)
}

func httpGet(ctx context.Context, url string) (string, error) {
	var body string
	err := poll(ctx, 45*time.Second, "GET "+url, func() (bool, string, error) {
		c := &http.Client{Timeout: 3 * time.Second}
		resp, err := c.Get(url)
		if err != nil {
			return false, err.Error(), nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.StatusCode == 200, resp.Status, nil
	})
	return body, err
}

// conflictingStatefulSet asks for database-2-0's fixed address.
const conflictingStatefulSet = `apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: database-3
  namespace: default
spec:
  selector:
    matchLabels:
      app: database-3
  serviceName: database-3
  template:
    metadata:
      labels:
        app: database-3
      annotations:
        kube-ipam.ip: "` + DB2IP + `"
    spec:
      containers:
      - name: database-3c
        image: ` + BusyboxImage + `
        command: ["sleep", "infinity"]
`

// webhookRefuses: the validating webhook (served by the controller, with
// the certificate it made itself) refuses at `kubectl apply` a second
// StatefulSet asking for the address database-2-0 holds, naming the holder.
func (r *replay) webhookRefuses(holder *corev1.Pod) {
	r.section("The admission webhook: another StatefulSet asking for " + DB2IP + " is refused at kubectl apply")
	f := filepath.Join(r.l.opts.Dir, "database-3.yaml")
	if err := os.WriteFile(f, []byte(conflictingStatefulSet), 0o644); err != nil {
		r.check("database-3.yaml written", false, "%v", err)
		return
	}
	o, err := r.kubectl("apply", "-f", f)
	want := []string{`admission webhook "validate.kube-ipam.io" denied the request`, DB2IP, "is already held", "default/database-2"}
	ok := err != nil
	for _, w := range want {
		ok = ok && strings.Contains(o, w)
	}
	uid := ""
	if holder != nil {
		uid = string(holder.UID)
	}
	r.check("kubectl apply of StatefulSet database-3 asking for "+DB2IP+" is refused naming its holder database-2",
		ok, "err %v, output %q (want %q; holder uid %s)", err, strings.TrimSpace(o), want, uid)
	if err == nil {
		_, _ = r.kubectl("delete", "-f", f, "--wait=false")
	}
}
