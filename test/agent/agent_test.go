// Package agent tests the kube-ipam node agent as deployed: the real
// kube-ipam shim handing calls to a real agent process (kube-ipam-install
// --agent-only) on a real etcd, and the direct path (kube-ipam-direct)
// taking over when the agent is absent, stale, frozen, declining or killed
// mid-call. Every call's log line names the process that ran it, which is
// how each test tells the agent from the direct path.
package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"kubeipam/internal/config"
	"kubeipam/internal/plugin"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

const network = "agentnet"

type env struct {
	t       *testing.T
	dir     string
	shim    string
	install string
	etcd    *testenv.Etcd
	st      *store.Store
	logFile string
	socket  string
	agent   *exec.Cmd
	holdDir string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir()}
	e.shim = testenv.Binary(t, "kube-ipam")
	e.install = testenv.Binary(t, "kube-ipam-install")
	e.etcd = testenv.StartEtcd(t)
	cli := e.etcd.Client(t)
	e.st = store.New(cli, config.DefaultEtcdPrefix, network)
	e.logFile = filepath.Join(e.dir, "kube-ipam.log")
	e.socket = filepath.Join(e.dir, "run", "agent.sock")
	e.holdDir = filepath.Join(e.dir, "hold")
	if err := os.MkdirAll(e.holdDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(e.logFile)
			t.Logf("kube-ipam log:\n%s", b)
		}
	})
	return e
}

func (e *env) conf(extra map[string]any) []byte {
	ipam := map[string]any{
		"type": "kube-ipam", "podLookup": false,
		"etcdConfig": map[string]any{"etcdURL": strings.Join(e.etcd.Endpoints, ",")},
		"subnet":     "10.189.0.0/16", "rangeStart": "10.189.0.10", "rangeEnd": "10.189.3.250",
		"gateway": "10.189.0.1", "logFile": e.logFile, "logLevel": "debug", "timeout": "20s", "nodeName": "node-a",
	}
	for k, v := range extra {
		ipam[k] = v
	}
	b, err := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": network, "type": "macvlan", "ipam": ipam})
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// startAgent starts kube-ipam-install --agent-only (with extra flags) and
// waits until its socket answers. hold makes it wait after each claim
// commits (the fault hook of package plugin).
func (e *env) startAgent(hold bool, flags ...string) {
	e.t.Helper()
	cmd := exec.Command(e.install, append([]string{"--agent-only", "--agent-socket", e.socket, "--host-root", "/"}, flags...)...)
	cmd.Env = os.Environ()
	if hold {
		cmd.Env = append(cmd.Env, plugin.HoldAfterCommitEnv+"="+e.holdDir)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.agent = cmd
	e.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
		if e.t.Failed() {
			e.t.Logf("agent output:\n%s", out.String())
		}
	})
	waitFor(e.t, 20*time.Second, "the agent's socket to answer", func() error {
		c, err := net.Dial("unix", e.socket)
		if err == nil {
			c.Close()
		}
		return err
	})
}

type result struct {
	stdout string
	code   int
	pid    int // the process whose log line ended the call
}

func (r result) ips(t *testing.T) []string {
	t.Helper()
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("result %q: %v", r.stdout, err)
	}
	var out []string
	for _, ip := range res.IPs {
		addr, _, _ := strings.Cut(ip.Address, "/")
		out = append(out, addr)
	}
	return out
}

// run runs the shim with the agent socket (or "off").
func (e *env) run(verb, cid, socket string, conf []byte, cniArgs string) result {
	e.t.Helper()
	cmd := exec.Command(e.shim)
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+verb, "CNI_CONTAINERID="+cid, "CNI_NETNS=/var/run/netns/agent-test-"+cid,
		"CNI_IFNAME=net1", "CNI_PATH=/opt/cni/bin", "CNI_ARGS="+cniArgs, "KUBE_IPAM_AGENT="+socket)
	cmd.Stdin = bytes.NewReader(conf)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("%s %s: %v", verb, cid, err)
	}
	r.pid = e.lastPID(verb, cid)
	return r
}

// lastPID returns the pid of the last log line ending a call (ok or
// failed) of verb for cid.
func (e *env) lastPID(verb, cid string) int {
	b, _ := os.ReadFile(e.logFile)
	pid := 0
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, " verb="+verb+" ") || !strings.Contains(line, " container="+store.ShortID(cid)+" ") {
			continue
		}
		if !strings.Contains(line, "msg=ok ") && !strings.Contains(line, "msg=failed ") {
			continue
		}
		fmt.Sscanf(line[strings.Index(line, "pid=")+4:], "%d", &pid)
	}
	return pid
}

func (e *env) agentPID() int { return e.agent.Process.Pid }

// held returns the attachments of cid in the store.
func (e *env) held(cid string) []string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	snap, err := e.st.Snapshot(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var ips []string
	for _, a := range snap.Attachments {
		if a.ContainerID == cid {
			ips = append(ips, a.IPs...)
		}
	}
	return ips
}

func (e *env) attachments() int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	snap, err := e.st.Snapshot(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if len(snap.Problems) > 0 {
		e.t.Errorf("store problems: %+v", snap.Problems)
	}
	if len(snap.Records) != len(snap.Attachments) {
		e.t.Errorf("%d records for %d attachments", len(snap.Records), len(snap.Attachments))
	}
	return len(snap.Attachments)
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func requireRoot(t *testing.T) {
	// The agent's socket is root-only (mode 0600), as the runtime is.
	testenv.RequireRoot(t)
}

// TestServesAndMatchesDirect: ADD and DEL go through the agent (its pid on
// the log line), give the same answers as the direct path, byte for byte,
// successes and errors alike, and leave the same store.
func TestServesAndMatchesDirect(t *testing.T) {
	requireRoot(t)
	e := newEnv(t)
	e.startAgent(false)
	conf := e.conf(nil)

	viaAgent := e.run("ADD", "agent-1", e.socket, conf, "")
	direct := e.run("ADD", "direct-1", "off", conf, "")
	if viaAgent.code != 0 || direct.code != 0 {
		t.Fatalf("ADD: agent %+v, direct %+v", viaAgent, direct)
	}
	if viaAgent.pid != e.agentPID() {
		t.Errorf("ADD via the agent was logged by pid %d, the agent is %d", viaAgent.pid, e.agentPID())
	}
	if direct.pid == e.agentPID() || direct.pid == 0 {
		t.Errorf("ADD with KUBE_IPAM_AGENT=off was logged by pid %d (agent %d)", direct.pid, e.agentPID())
	}
	a, d := viaAgent.ips(t), direct.ips(t)
	if len(a) != 1 || len(d) != 1 || a[0] == d[0] {
		t.Fatalf("addresses: agent %v, direct %v", a, d)
	}
	// Same result document but for the address.
	if strings.Replace(viaAgent.stdout, a[0], "X", 1) != strings.Replace(direct.stdout, d[0], "X", 1) {
		t.Errorf("results differ beyond the address:\nagent:\n%s\ndirect:\n%s", viaAgent.stdout, direct.stdout)
	}
	if got := e.held("agent-1"); len(got) != 1 || got[0] != a[0] {
		t.Errorf("store holds %v for agent-1, the agent answered %v", got, a)
	}
	// A repeated ADD of the same container returns its address, whoever runs it.
	if again := e.run("ADD", "agent-1", "off", conf, ""); again.code != 0 || again.ips(t)[0] != a[0] {
		t.Errorf("repeated ADD directly: %+v, want %s", again, a[0])
	}

	// Errors: an address outside the subnet, asked for through CNI_ARGS.
	bad := "IgnoreUnknown=1;IP=10.200.0.5"
	ea := e.run("ADD", "bad-1", e.socket, conf, bad)
	ed := e.run("ADD", "bad-1", "off", conf, bad)
	if ea.code == 0 || ea.code != ed.code || ea.stdout != ed.stdout {
		t.Errorf("error answers differ:\nagent (exit %d):\n%s\ndirect (exit %d):\n%s", ea.code, ea.stdout, ed.code, ed.stdout)
	}
	if ea.pid != e.agentPID() {
		t.Errorf("the failing ADD via the agent was logged by pid %d, agent %d", ea.pid, e.agentPID())
	}

	for _, cid := range []string{"agent-1", "direct-1"} {
		if r := e.run("DEL", cid, e.socket, conf, ""); r.code != 0 || r.pid != e.agentPID() {
			t.Errorf("DEL %s via the agent: %+v (agent %d)", cid, r, e.agentPID())
		}
	}
	if n := e.attachments(); n != 0 {
		t.Errorf("%d attachments left after every DEL", n)
	}
}

// TestDirectWithoutAgent: no socket file, and a stale socket file nobody
// serves: every call runs directly and succeeds.
func TestDirectWithoutAgent(t *testing.T) {
	requireRoot(t)
	e := newEnv(t)
	conf := e.conf(nil)
	if r := e.run("ADD", "none-1", e.socket, conf, ""); r.code != 0 || r.pid == 0 {
		t.Fatalf("ADD with no agent socket: %+v", r)
	}
	// A stale socket: bound, then closed without unlinking (an agent killed).
	if err := os.MkdirAll(filepath.Dir(e.socket), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", e.socket)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(e.socket); err != nil {
		t.Fatalf("the stale socket file should exist: %v", err)
	}
	if r := e.run("ADD", "stale-1", e.socket, conf, ""); r.code != 0 {
		t.Fatalf("ADD with a stale socket: %+v", r)
	}
	// An agent starting over the stale file takes it over.
	e.startAgent(false)
	if r := e.run("ADD", "after-1", e.socket, conf, ""); r.code != 0 || r.pid != e.agentPID() {
		t.Fatalf("ADD once the agent replaced the stale socket: %+v (agent %d)", r, e.agentPID())
	}
	if n := e.attachments(); n != 3 {
		t.Errorf("%d attachments, want 3", n)
	}
}

// TestFrozenAgent: an agent that accepts connections but does not answer
// (SIGSTOP) costs a call at most wire.AcceptTimeout before the direct path
// runs it; the agent, thawed, never runs that call a second time.
func TestFrozenAgent(t *testing.T) {
	requireRoot(t)
	e := newEnv(t)
	e.startAgent(false)
	conf := e.conf(nil)
	if err := e.agent.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	r := e.run("ADD", "frozen-1", e.socket, conf, "")
	if r.code != 0 || r.pid == e.agentPID() {
		t.Fatalf("ADD with the agent frozen: %+v", r)
	}
	ip := r.ips(t)[0]
	if err := e.agent.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// The thawed agent reads the pending request, answers into a closed
	// connection and gets no Go: the next call through it proves it is
	// past that connection.
	if r2 := e.run("ADD", "thawed-1", e.socket, conf, ""); r2.code != 0 || r2.pid != e.agentPID() {
		t.Fatalf("ADD after the thaw: %+v (agent %d)", r2, e.agentPID())
	}
	b, _ := os.ReadFile(e.logFile)
	if n := strings.Count(string(b), "container=frozen-1 "); n == 0 {
		t.Fatal("no log line of frozen-1")
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "container=frozen-1 ") && strings.Contains(line, fmt.Sprintf("pid=%d ", e.agentPID())) {
			t.Errorf("the agent ran the call the direct path ran: %s", line)
		}
	}
	if got := e.held("frozen-1"); len(got) != 1 || got[0] != ip {
		t.Errorf("store holds %v for frozen-1, want [%s]", got, ip)
	}
	if n := e.attachments(); n != 2 {
		t.Errorf("%d attachments, want 2", n)
	}
}

// TestAgentKilledAfterCommit: the agent is killed after a claim committed
// and before it answered; the plugin process runs the call directly, which
// returns the committed address (a call is idempotent per container):
// nothing is lost, nothing is doubled.
func TestAgentKilledAfterCommit(t *testing.T) {
	requireRoot(t)
	e := newEnv(t)
	e.startAgent(true)
	conf := e.conf(nil)
	done := make(chan result, 1)
	go func() { done <- e.run("ADD", "killed-1", e.socket, conf, "") }()
	hold := filepath.Join(e.holdDir, "killed-1_net1")
	waitFor(t, 20*time.Second, "the agent to commit and hold", func() error {
		_, err := os.Stat(hold)
		return err
	})
	committed := e.held("killed-1")
	if len(committed) != 1 {
		t.Fatalf("held after the commit: %v", committed)
	}
	if err := e.agent.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.code != 0 {
		t.Fatalf("ADD after the agent was killed mid-call: %+v", r)
	}
	if got := r.ips(t); len(got) != 1 || got[0] != committed[0] {
		t.Errorf("the call answered %v, the store holds %v", got, committed)
	}
	if r.pid == e.agentPID() {
		t.Errorf("the answer came from the killed agent (pid %d)", r.pid)
	}
	if n := e.attachments(); n != 1 {
		t.Errorf("%d attachments, want 1", n)
	}
}

// TestBusyAgentTakesTheDirectPath: with --agent-max-in-flight calls
// running, the agent declines the next one and the plugin runs it itself;
// the call the agent holds still ends through the agent.
func TestBusyAgentTakesTheDirectPath(t *testing.T) {
	requireRoot(t)
	e := newEnv(t)
	e.startAgent(true, "--agent-max-in-flight", "1")
	conf := e.conf(nil)
	done := make(chan result, 1)
	go func() { done <- e.run("ADD", "busy-1", e.socket, conf, "") }()
	hold := filepath.Join(e.holdDir, "busy-1_net1")
	waitFor(t, 20*time.Second, "the agent to commit and hold busy-1", func() error {
		_, err := os.Stat(hold)
		return err
	})
	r2 := e.run("ADD", "busy-2", e.socket, conf, "")
	if r2.code != 0 || r2.pid == e.agentPID() {
		t.Fatalf("ADD with the agent's one slot taken: %+v (agent %d), want the direct path", r2, e.agentPID())
	}
	if err := os.Remove(hold); err != nil {
		t.Fatal(err)
	}
	r1 := <-done
	if r1.code != 0 || r1.pid != e.agentPID() {
		t.Fatalf("the held ADD: %+v (agent %d), want it answered by the agent", r1, e.agentPID())
	}
	if a, b := r1.ips(t)[0], r2.ips(t)[0]; a == b {
		t.Errorf("both calls got %s", a)
	}
	if n := e.attachments(); n != 2 {
		t.Errorf("%d attachments, want 2", n)
	}
}

// TestDeclinesWhatItCannotSee: a config naming a kubeconfig the agent does
// not see under its host root is declined, and the direct path answers it
// (here with its own error, identical to what it says without an agent).
func TestDeclinesWhatItCannotSee(t *testing.T) {
	requireRoot(t)
	e := newEnv(t)
	e.startAgent(false)
	conf := e.conf(map[string]any{"podLookup": true, "kubeConfig": filepath.Join(e.dir, "missing-kubeconfig")})
	args := "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"
	a := e.run("ADD", "invisible-1", e.socket, conf, args)
	d := e.run("ADD", "invisible-1", "off", conf, args)
	if a.code == 0 || a.code != d.code || a.stdout != d.stdout {
		t.Errorf("answers differ:\nwith the agent (exit %d):\n%s\nwithout (exit %d):\n%s", a.code, a.stdout, d.code, d.stdout)
	}
	if a.pid == e.agentPID() {
		t.Errorf("the agent ran a call whose kubeconfig it cannot see")
	}
}

// TestConcurrentThroughAgent: 50 ADDs at once, all served by the agent,
// distinct addresses, then 50 DELs; the store is consistent throughout.
func TestConcurrentThroughAgent(t *testing.T) {
	requireRoot(t)
	e := newEnv(t)
	e.startAgent(false)
	conf := e.conf(nil)
	const n = 50
	var wg sync.WaitGroup
	res := make([]result, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = e.run("ADD", fmt.Sprintf("many-%02d", i), e.socket, conf, "")
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for i, r := range res {
		if r.code != 0 {
			t.Fatalf("ADD many-%02d: %+v", i, r)
		}
		if r.pid != e.agentPID() {
			t.Errorf("ADD many-%02d ran in pid %d, not the agent %d", i, r.pid, e.agentPID())
		}
		ip := r.ips(t)[0]
		if j, dup := seen[ip]; dup {
			t.Errorf("%s given to many-%02d and many-%02d", ip, j, i)
		}
		seen[ip] = i
	}
	if got := e.attachments(); got != n {
		t.Errorf("%d attachments, want %d", got, n)
	}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := e.run("DEL", fmt.Sprintf("many-%02d", i), e.socket, conf, ""); r.code != 0 {
				t.Errorf("DEL many-%02d: %+v", i, r)
			}
		}()
	}
	wg.Wait()
	if got := e.attachments(); got != 0 {
		t.Errorf("%d attachments after the DELs", got)
	}
}

// TestStopFinishesCallsInFlight: SIGTERM removes the socket at once (new
// calls run directly) and lets a call in flight finish in the agent.
func TestStopFinishesCallsInFlight(t *testing.T) {
	requireRoot(t)
	e := newEnv(t)
	e.startAgent(true)
	conf := e.conf(nil)
	done := make(chan result, 1)
	go func() { done <- e.run("ADD", "inflight-1", e.socket, conf, "") }()
	hold := filepath.Join(e.holdDir, "inflight-1_net1")
	waitFor(t, 20*time.Second, "the agent to commit and hold", func() error {
		_, err := os.Stat(hold)
		return err
	})
	if err := e.agent.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the socket to be removed", func() error {
		if _, err := os.Stat(e.socket); err == nil {
			return errors.New("still there")
		}
		return nil
	})
	if r := e.run("ADD", "during-stop", e.socket, conf, ""); r.code != 0 || r.pid == e.agentPID() {
		t.Errorf("ADD while the agent stops: %+v", r)
	}
	if err := os.Remove(hold); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.code != 0 || r.pid != e.agentPID() {
		t.Errorf("the call in flight at SIGTERM: %+v (agent %d)", r, e.agentPID())
	}
	if err := e.agent.Wait(); err != nil {
		t.Errorf("agent exit: %v", err)
	}
	if n := e.attachments(); n != 2 {
		t.Errorf("%d attachments, want 2", n)
	}
}
