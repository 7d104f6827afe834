package lab

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Where the pod-start benchmark's CPU goes: each phase of a variant (scale
// up until all Ready, scale down until all gone and free) is bracketed by
// two samples of the CPU time every component of the lab has used so far,
// and the difference, divided by N, is that component's CPU per pod. On a
// 2-core machine that runs the whole cluster, a pod's start waits for CPU
// more than for anything else, so this tells which part of the net1 chain
// (or of the cluster) a variant makes pay.

// The components a sample is split into. CNI plugins are not daemons: the
// runtime (containerd) execs them and waits for them, so their CPU, with
// everything they exec in turn (kube-multus' delegates: macvlan, the
// kube-ipam shim, kube-tier, whereabouts), is containerd's children's CPU
// (cutime + cstime of /proc/<pid>/stat).
const (
	cpuCNI        = "CNI plugins (containerd's children)"
	cpuContainerd = "containerd"
	cpuAgent      = "kube-ipam agent (kube-ipam-install)"
	cpuController = "kube-ipam-controller"
	cpuHost       = "whole machine"
	cpuRest       = "rest (shims, runc, pods, kernel, this benchmark)"
)

// cpuSample is the CPU each process had used when sampled, by PID (a
// process that exits between two samples loses what it used after the
// first; the lab's daemons and the agent run throughout), and the
// machine's busy time.
type cpuSample struct {
	procs map[string]procCPUTime // "<pid>" or "<pid>/children"
	host  time.Duration
}

type procCPUTime struct {
	component string
	cpu       time.Duration
}

// sampleCPU samples the lab's daemons (by the state file's PIDs), the
// agent and controller processes of its pods (by command), and the
// machine.
func (l *Lab) sampleCPU() cpuSample {
	s := cpuSample{procs: map[string]procCPUTime{}}
	s.host, _ = hostBusy()
	for _, p := range l.state.Procs {
		if !l.alive(p) {
			continue
		}
		self, children, err := procTimes(p.PID)
		if err != nil {
			continue
		}
		c := l.component(p.Name)
		key := strconv.Itoa(p.PID)
		s.procs[key] = procCPUTime{c, self}
		if c == cpuContainerd {
			s.procs[key+"/children"] = procCPUTime{cpuCNI, children}
		}
	}
	for comp, bin := range map[string]string{cpuAgent: "kube-ipam-install", cpuController: "kube-ipam-controller"} {
		for _, pid := range pidsWhere(func(args []string) bool { return filepath.Base(args[0]) == bin }) {
			if self, _, err := procTimes(pid); err == nil {
				s.procs[strconv.Itoa(pid)] = procCPUTime{comp, self}
			}
		}
	}
	return s
}

// component names a lab daemon's part of the cluster: its name without
// the node ("node2-kubelet" is a kubelet).
func (l *Lab) component(daemon string) string {
	for _, n := range l.state.Nodes {
		if rest, ok := strings.CutPrefix(daemon, n.Name+"-"); ok {
			return rest
		}
	}
	return daemon
}

// cpuDelta is the CPU each component used between two samples, with the
// whole machine's and the rest (the machine's less every component's).
func cpuDelta(before, after cpuSample) map[string]time.Duration {
	d := map[string]time.Duration{}
	var named time.Duration
	for key, a := range after.procs {
		used := a.cpu - before.procs[key].cpu
		if used < 0 { // a PID reused by another process: only its own time
			used = a.cpu
		}
		d[a.component] += used
		named += used
	}
	d[cpuHost] = after.host - before.host
	d[cpuRest] = max(0, d[cpuHost]-named)
	return d
}

// procTimes reads utime + stime (the process's own CPU) and cutime +
// cstime (its children's, once waited for) from /proc/<pid>/stat, in clock
// ticks of 1/100 s (USER_HZ is 100 on every Linux architecture Go
// supports).
func procTimes(pid int) (self, children time.Duration, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: utime, stime, cutime, cstime are the 12th to 15th.
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	if len(f) < 15 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %q", pid, data)
	}
	var t [4]int64
	for i := range t {
		if t[i], err = strconv.ParseInt(f[11+i], 10, 64); err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/stat: %v", pid, err)
		}
	}
	return ticks(t[0] + t[1]), ticks(t[2] + t[3]), nil
}

func ticks(n int64) time.Duration { return time.Duration(n) * 10 * time.Millisecond }

// hostBusy is the machine's CPU time spent on anything but idle and
// iowait, over all cores, from the first line of /proc/stat.
func hostBusy() (time.Duration, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: %q", line)
	}
	var busy int64
	for i, v := range f[1:9] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %v", err)
		}
		busy += n
	}
	return ticks(busy), nil
}

// cpuComponents lists the components of the results, the largest first
// (by the sum over variants and phases), with the whole machine and the
// rest last.
func cpuComponents(rs []BenchResult) []string {
	sum := map[string]time.Duration{}
	for _, r := range rs {
		for c, d := range r.CPUUp {
			sum[c] += d
		}
		for c, d := range r.CPUDown {
			sum[c] += d
		}
	}
	var cs []string
	for c := range sum {
		if c != cpuHost && c != cpuRest {
			cs = append(cs, c)
		}
	}
	sort.Slice(cs, func(i, j int) bool {
		if sum[cs[i]] != sum[cs[j]] {
			return sum[cs[i]] > sum[cs[j]]
		}
		return cs[i] < cs[j]
	})
	for _, c := range []string{cpuRest, cpuHost} {
		if _, ok := sum[c]; ok {
			cs = append(cs, c)
		}
	}
	return cs
}

// median is the middle value (the mean of the two middle ones for an
// even count); zero for none.
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
