package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Down removes the lab: pods are deleted through the API while the
// kubelets run (the only way every CNI DEL runs, so kube-ipam frees the
// addresses and kube-multus its caches), then nodes, control plane, etcds,
// mounts, cgroups, namespaces and links; the host's sysctls are restored and
// the lab dir removed. It carries on past errors and returns them all, with
// anything it found left behind.
func (l *Lab) Down(ctx context.Context) error {
	var errs []error
	fail := func(err error) {
		if err != nil {
			errs = append(errs, err)
			l.logf("  %v", err)
		}
	}
	st := l.state
	api := l.procNamed("kube-apiserver")
	if st.APIUp && api != nil && l.alive(*api) {
		l.logf("deleting workloads and pods through the API (every CNI DEL runs) ...")
		fail(l.DeleteWorkloads(ctx))
		fail(l.deleteAll(ctx, "kube-ipam"))
	}
	for i := len(st.Nodes) - 1; i >= 0; i-- {
		n := st.Nodes[i]
		l.logf("stopping %s ...", n.Name)
		for _, d := range []string{"flanneld", "kube-proxy", "kubelet"} {
			if p := l.procNamed(n.Name + "-" + d); p != nil {
				l.stop(*p, 10*time.Second)
			}
		}
		if p := l.procNamed(n.Name + "-containerd"); p != nil {
			if l.alive(*p) {
				l.removeContainers(ctx, n)
			}
			l.stop(*p, 10*time.Second)
		}
		for _, pid := range shimsOf(n.sock()) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	l.logf("stopping the control plane and the etcds ...")
	for _, name := range []string{"kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd-kube-ipam", "etcd-kubernetes"} {
		if p := l.procNamed(name); p != nil {
			l.stop(*p, 20*time.Second)
		}
	}
	for i := len(st.Procs) - 1; i >= 0; i-- { // anything else, newest first
		if p := st.Procs[i]; l.alive(p) {
			l.stop(p, 10*time.Second)
		}
	}
	l.logf("removing mounts, cgroups, namespaces and links ...")
	fail(unmountUnder(st.Options.Dir))
	for _, n := range st.Nodes {
		for _, err := range removeCgroupRoot(n.Cgroup) {
			fail(err)
		}
		if _, err := os.Stat("/run/netns/" + n.NetNS); err == nil {
			_, err := run(ctx, "ip", "netns", "del", n.NetNS)
			fail(err)
		}
	}
	if st.Host.Bridge {
		if _, err := os.Stat("/sys/class/net/" + l.bridge()); err == nil {
			_, err := run(ctx, "ip", "link", "del", l.bridge())
			fail(err)
		}
	}
	for s, v := range st.Host.Sysctls {
		if b, err := os.ReadFile("/proc/sys/" + s); err == nil && strings.TrimSpace(string(b)) != v {
			fail(os.WriteFile("/proc/sys/"+s, []byte(v), 0o644))
		}
	}
	// Host directories the lab, kubelet and containerd created, only when no
	// other kubelet or containerd (another lab's, say) runs here: the empty
	// mount points of the node directories may be in use by another lab's
	// node namespaces, and kubelet's sockets by another kubelet. Pod network
	// namespaces lived in the nodes' mount namespaces, gone now.
	if others := runtimesRunning(); len(others) > 0 {
		l.logf("  other kubelets or containerds run here (pids %v): host directories kept", others)
	} else {
		for _, d := range hostDirs {
			if st.Host.Dirs[d] {
				continue
			}
			if slices.Contains(kubeletDirs, d) {
				fail(os.RemoveAll(d))
			} else {
				removeEmptyTree(d)
			}
		}
	}
	left := l.leftovers()
	if len(left) == 0 {
		fail(os.RemoveAll(st.Options.Dir))
	} else {
		fail(fmt.Errorf("left behind (%s kept for inspection): %s", st.Options.Dir, strings.Join(left, "; ")))
	}
	l.logf("lab down")
	return errors.Join(errs...)
}

func (l *Lab) procNamed(name string) *Proc {
	for i := len(l.state.Procs) - 1; i >= 0; i-- {
		if l.state.Procs[i].Name == name {
			return &l.state.Procs[i]
		}
	}
	return nil
}

// DeleteWorkloads deletes the workloads and pods of the default namespace
// (the seed's) through the API and waits until the pods are gone, i.e.
// until every CNI DEL has run. kube-ipam itself keeps running.
func (l *Lab) DeleteWorkloads(ctx context.Context) error { return l.deleteAll(ctx, "default") }

func (l *Lab) deleteAll(ctx context.Context, ns string) error {
	kc := []string{l.kube("kubectl"), "--kubeconfig", l.opts.Kubeconfig(), "-n", ns}
	if _, err := run(ctx, append(kc, "delete", "deploy,sts,ds,rs,job", "--all", "--wait=false")...); err != nil {
		l.logf("  %v", err)
	}
	if _, err := run(ctx, append(kc, "delete", "pods", "--all", "--grace-period=1", "--timeout=90s")...); err != nil {
		l.logf("  %v", err)
	}
	cs, err := l.client()
	if err != nil {
		return err
	}
	return poll(ctx, 90*time.Second, "pods in "+ns+" deleted", func() (bool, string, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		var left []string
		for _, p := range pods.Items {
			left = append(left, p.Namespace+"/"+p.Name)
		}
		return len(left) == 0, strings.Join(left, ", "), nil
	})
}

// removeContainers kills and deletes whatever the kubelet left in a node's
// containerd (no CNI DEL for these: that is why pods go through the API).
func (l *Lab) removeContainers(ctx context.Context, n Node) {
	ctr := []string{"ctr", "-a", n.sock(), "-n", "k8s.io"}
	out, _ := run(ctx, append(ctr, "tasks", "ls", "-q")...)
	for _, id := range strings.Fields(out) {
		_, _ = run(ctx, append(ctr, "tasks", "kill", "-s", "SIGKILL", id)...)
		_, _ = run(ctx, append(ctr, "tasks", "delete", "-f", id)...)
	}
	// What is left are mostly sandboxes of deleted pods that kubelet stopped
	// (CNI DEL done) but had not garbage-collected yet.
	out, _ = run(ctx, append(ctr, "containers", "ls", "-q")...)
	if ids := strings.Fields(out); len(ids) > 0 {
		l.logf("  %s: removing %d stopped container(s) kubelet had not garbage-collected yet", n.Name, len(ids))
		for _, id := range ids {
			_, _ = run(ctx, append(ctr, "containers", "delete", id)...)
		}
	}
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil
	}
	defer f.Close()
	var ms []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		mp := strings.ReplaceAll(fields[1], `\040`, " ")
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			ms = append(ms, mp)
		}
	}
	slices.SortFunc(ms, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return ms
}

func unmountUnder(dir string) error {
	var errs []error
	for _, m := range mountsUnder(dir) {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("umount %s: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

// removeEmptyTree removes dir if it holds nothing but empty directories
// (another runtime on this machine may be using it otherwise).
func removeEmptyTree(dir string) {
	var dirs []string
	files := 0
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		} else {
			files++
		}
		return nil
	})
	if files > 0 {
		return
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.Remove(dirs[i])
	}
}

// runtimesRunning lists the PIDs of kubelets, containerds and shims still
// running on this machine (another lab's, or the machine's own).
func runtimesRunning() []int {
	return pidsWhere(func(args []string) bool {
		switch c := filepath.Base(args[0]); {
		case c == "kubelet", c == "containerd", strings.HasPrefix(c, "containerd-shim"):
			return true
		}
		return false
	})
}

// leftovers lists what Down could not remove.
func (l *Lab) leftovers() []string {
	var left []string
	for _, p := range l.state.Procs {
		if l.alive(p) {
			left = append(left, fmt.Sprintf("process %s (pid %d)", p.Name, p.PID))
		}
	}
	for _, n := range l.state.Nodes {
		if _, err := os.Stat("/run/netns/" + n.NetNS); err == nil {
			left = append(left, "netns "+n.NetNS)
		}
		for _, pid := range shimsOf(n.sock()) {
			left = append(left, fmt.Sprintf("containerd shim pid %d", pid))
		}
	}
	for _, m := range mountsUnder(l.opts.Dir) {
		left = append(left, "mount "+m)
	}
	if l.state.Host.Bridge {
		if _, err := os.Stat("/sys/class/net/" + l.bridge()); err == nil {
			left = append(left, "link "+l.bridge())
		}
	}
	return left
}
