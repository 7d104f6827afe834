package bench

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
func (a *nodeAgent) cpu() (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", a.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: state is the 3rd field of stat, utime the 14th.
	rest := string(data[bytes.LastIndexByte(data, ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", a.cmd.Process.Pid, data)
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %v", a.cmd.Process.Pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// clockTicks is USER_HZ, the unit of /proc's times: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// peakRSS is the agent's VmHWM in bytes.
func (a *nodeAgent) peakRSS() (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmHWM %q: %v", v, err)
			}
			return kib << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", a.cmd.Process.Pid)
}
