package bench

import (
	"bytes"
	"net"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"kubeipam/internal/testenv"
)

// nodeAgent is the node agent the agent columns' shim hands its calls to:
// kube-ipam-install --agent-only on a socket of this run, as the DaemonSet
// runs it (one agent serves every network of the node, so both agent
// columns share it). Its own CPU and peak RSS are read from /proc, since
// the rusage of the plugin processes does not include them.
type nodeAgent struct {
	socket string
	cmd    *exec.Cmd
	out    bytes.Buffer
}

func (e *env) startAgent() *nodeAgent {
	e.b.Helper()
	a := &nodeAgent{socket: filepath.Join(e.dir, "agent.sock")}
	a.cmd = exec.Command(testenv.Binary(e.b, "kube-ipam-install"), "--agent-only", "--agent-socket", a.socket, "--host-root", "/")
	a.cmd.Stdout, a.cmd.Stderr = &a.out, &a.out
	if err := a.cmd.Start(); err != nil {
		e.b.Fatalf("starting the node agent: %v", err)
	}
	e.b.Cleanup(func() {
		a.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { a.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			a.cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("unix", a.socket)
		if err == nil {
			c.Close()
			return a
		}
		if a.cmd.ProcessState != nil || time.Now().After(deadline) {
			e.b.Fatalf("the node agent's socket %s never answered: %v\n%s", a.socket, err, a.out.String())
		}
		time.Sleep(20 * time.Millisecond) // polling a condition: the socket answers
	}
}

// env is what the shim needs to use this agent.
func (a *nodeAgent) env() []string { return []string{"KUBE_IPAM_AGENT=" + a.socket} }

// cpu is the agent's user + system time so far.
func (a *nodeAgent) cpu() (time.Duration, error) { return procCPU(a.cmd.Process.Pid) }

// peakRSS is the agent's VmHWM in bytes.
func (a *nodeAgent) peakRSS() (int64, error) {
	kb, err := procStatusKB(a.cmd.Process.Pid, "VmHWM")
	return kb << 10, err
}
