package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Sysctls kubelet changes on the (shared) host kernel: recorded at Up and
// restored by Down.
var hostSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// Host directories kubelet and containerd may create outside the lab dir.
// Children before parents: Down removes them in this order.
var hostDirs = []string{
	"/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/opt/containerd",
	"/run/containerd", "/var/lib/cni/results", "/var/lib/cni",
	"/opt/cni/bin", "/opt/cni", "/etc/cni/net.d", "/etc/cni", "/run/flannel",
}

// kubeletDirs may be removed with their contents (kubelet's sockets and
// checkpoints) when no other kubelet or containerd runs; every other host
// directory only when empty.
var kubeletDirs = []string{"/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/opt/containerd", "/run/containerd"}

// NodeDirs are the directories a real node has to itself and the lab's
// nodes, sharing one filesystem, would otherwise share: inside each node's
// mount namespace they are bind mounts of <node dir>/fs/<name>. So the
// installer DaemonSet's hostPath volumes, the CNI defaults (/opt/cni/bin,
// /etc/cni/net.d, /var/lib/cni), flannel's /run/flannel/subnet.env, the
// kube-ipam node agent's socket in /run/kube-ipam and the plugins' logs in
// /var/log are per node, as on separate machines, and one config serves
// every node.
var NodeDirs = []string{"/opt/cni/bin", "/etc/cni/net.d", "/var/lib/cni", "/run/flannel", "/run/kube-ipam", "/var/log"}

// FS is where node n's private copy of a NodeDirs entry lives.
func (n Node) FS(dir string) string {
	return filepath.Join(n.Dir, "fs", strings.ReplaceAll(strings.Trim(dir, "/"), "/", "-"))
}

// nodeNamespaces gives every node a mount namespace with its NodeDirs and a
// UTS namespace whose hostname is the node's name (kube-ipam records the
// node by hostname, as on a real node). Both are pinned by bind mounts under
// <Dir>/ns, a private mount, so they outlive the commands that made them.
func (l *Lab) nodeNamespaces(ctx context.Context) error {
	nsDir := filepath.Join(l.opts.Dir, "ns")
	if err := os.MkdirAll(nsDir, 0o755); err != nil {
		return err
	}
	for _, c := range [][]string{{"mount", "--bind", nsDir, nsDir}, {"mount", "--make-private", nsDir}} {
		if _, err := run(ctx, c...); err != nil {
			return err
		}
	}
	for _, d := range NodeDirs {
		if err := os.MkdirAll(d, 0o755); err != nil { // the mount points
			return err
		}
	}
	for _, n := range l.state.Nodes {
		for _, f := range []string{n.mntNS(), n.utsNS()} {
			if err := os.WriteFile(f, nil, 0o644); err != nil {
				return err
			}
		}
		// slave: mounts the host makes later still reach the node; the
		// node's own (pod volumes, sandbox namespaces) stay in it.
		if _, err := run(ctx, "unshare", "--mount="+n.mntNS(), "--uts="+n.utsNS(), "--propagation", "slave", "true"); err != nil {
			return err
		}
		cmds := [][]string{{"hostname", n.Name}}
		for _, d := range NodeDirs {
			if err := os.MkdirAll(n.FS(d), 0o755); err != nil {
				return err
			}
			cmds = append(cmds, []string{"mount", "--bind", n.FS(d), d})
		}
		for _, c := range cmds {
			if _, err := run(ctx, append([]string{"nsenter", "--mount=" + n.mntNS(), "--uts=" + n.utsNS(), "--"}, c...)...); err != nil {
				return err
			}
		}
	}
	return nil
}

func recordHost() host {
	h := host{Sysctls: map[string]string{}, Dirs: map[string]bool{}}
	for _, s := range hostSysctls {
		if b, err := os.ReadFile("/proc/sys/" + s); err == nil {
			h.Sysctls[s] = strings.TrimSpace(string(b))
		}
	}
	for _, d := range hostDirs {
		_, err := os.Stat(d)
		h.Dirs[d] = err == nil
	}
	return h
}

func names(dir string) []string {
	es, _ := os.ReadDir(dir)
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// preflight names every missing prerequisite at once, with how to get it.
func (l *Lab) preflight() error {
	o := l.opts
	var missing []string
	need := func(path, hint string) {
		if _, err := os.Stat(path); err != nil {
			missing = append(missing, fmt.Sprintf("%s (%s)", path, hint))
		}
	}
	for _, c := range []struct{ name, pkg string }{
		{"nsenter", "util-linux"}, {"ip", "iproute2"}, {"containerd", "containerd"}, {"ctr", "containerd"},
		{"containerd-shim-runc-v2", "containerd"}, {"runc", "runc"}, {"etcd", "etcd-server"}, {"nft", "nftables"},
		{"conntrack", "conntrack"},
	} {
		if _, err := exec.LookPath(c.name); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", c.name, c.pkg))
		}
	}
	need("/bin/busybox", "apt-get install busybox-static")
	for _, b := range append([]string{"kube-ipam-lab-pause"}, ImageBinaries...) {
		need(filepath.Join(o.RepoBin, b), "make build")
	}
	for _, f := range []string{"namespace.yaml", "rbac.yaml", "configmap.yaml", "daemonset.yaml", "controller.yaml"} {
		need(filepath.Join(o.Deploy, f), "deploy/ of this repository")
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"} {
		need(filepath.Join(o.KubeBin, b), "hack/testbin.sh")
	}
	for _, b := range []string{"flanneld", "flannel"} {
		need(filepath.Join(o.LabBin, b), "hack/labbin.sh")
	}
	for _, b := range []string{"bridge", "host-local", "macvlan", "loopback", "portmap"} {
		need(filepath.Join(o.CNIBin, b), "apt-get install containernetworking-plugins")
	}
	for _, f := range []string{"db.yaml", "web.yaml", "web-svc.yaml", "web-ingress.yaml"} {
		need(filepath.Join(o.Examples, f), "deploy/examples of this repository")
	}
	if len(missing) > 0 {
		return fmt.Errorf("lab prerequisites missing:\n  %s", strings.Join(missing, "\n  "))
	}
	if out, err := exec.Command("busybox", "--list").Output(); err != nil || !strings.Contains(string(out), "httpd") {
		return fmt.Errorf("/bin/busybox has no httpd applet: install busybox-static")
	}
	return nil
}

func (l *Lab) bridge() string { return l.opts.Name + "0" }

// network lays out the underlay: a bridge in the root namespace with the
// host's address, and per node a namespace whose eth0 (a veth) is on it.
// The pod networks between nodes are flannel's (vxlan over eth0).
func (l *Lab) network(ctx context.Context) error {
	o := l.opts
	br, bits := l.bridge(), o.Underlay.Bits()
	if _, err := os.Stat("/sys/class/net/" + br); err == nil {
		return fmt.Errorf("interface %s exists already: a lab left behind? run `kube-ipam-lab down`, or delete it", br)
	}
	l.state.Host.Bridge = true
	if err := l.saveState(); err != nil {
		return err
	}
	for _, c := range [][]string{
		{"ip", "link", "add", br, "type", "bridge"},
		{"ip", "addr", "add", fmt.Sprintf("%s/%d", o.HostIP(), bits), "dev", br},
		{"ip", "link", "set", br, "up"},
	} {
		if _, err := run(ctx, c...); err != nil {
			return err
		}
	}
	ip := o.Underlay.Addr()
	for range 10 {
		ip = ip.Next()
	}
	for i := 1; i <= o.Nodes; i++ {
		ip = ip.Next()
		n := Node{
			Name: fmt.Sprintf("node%d", i), NetNS: fmt.Sprintf("%s-node%d", o.Name, i), IP: ip,
			Dir:    filepath.Join(o.Dir, fmt.Sprintf("node%d", i)),
			Cgroup: fmt.Sprintf("/%s-node%d", o.Name, i),
		}
		l.state.Nodes = append(l.state.Nodes, n)
		if err := l.saveState(); err != nil {
			return err
		}
		hostEnd, nodeEnd := fmt.Sprintf("%s-n%d", o.Name, i), fmt.Sprintf("%s-e%d", o.Name, i)
		in := func(args ...string) []string { return append([]string{"ip", "-n", n.NetNS}, args...) }
		cmds := [][]string{
			{"ip", "netns", "add", n.NetNS},
			{"ip", "link", "add", hostEnd, "type", "veth", "peer", "name", nodeEnd},
			{"ip", "link", "set", hostEnd, "master", br, "up"},
			{"ip", "link", "set", nodeEnd, "netns", n.NetNS},
			in("link", "set", nodeEnd, "name", "eth0"),
			in("addr", "add", fmt.Sprintf("%s/%d", n.IP, bits), "dev", "eth0"),
			in("link", "set", "lo", "up"),
			in("link", "set", "eth0", "up"),
			in("route", "add", "default", "via", o.HostIP().String()),
			{"ip", "netns", "exec", n.NetNS, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		}
		for _, c := range cmds {
			if _, err := run(ctx, c...); err != nil {
				return err
			}
		}
		if err := os.MkdirAll(n.Dir, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// cgroupHierarchies are the v1 hierarchies kubelet's cgroupfs driver uses
// (every one but the unified v2 mount, unless withUnified: kubelet creates
// its tree there too, so removal covers it).
func cgroupHierarchies(withUnified bool) []string {
	var out []string
	for _, e := range names("/sys/fs/cgroup") {
		if e == "unified" && !withUnified {
			continue
		}
		p := filepath.Join("/sys/fs/cgroup", e)
		if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
			out = append(out, p)
		}
	}
	return out
}

// makeCgroupRoot creates a node's cgroupRoot in every hierarchy; kubelet
// refuses to start without it, and a cpuset cgroup is unusable until it has
// cpus and mems.
func makeCgroupRoot(root string) error {
	for _, h := range cgroupHierarchies(false) {
		d := filepath.Join(h, root)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if filepath.Base(h) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(h, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(d, f), v, 0o644); err != nil {
					return fmt.Errorf("%s: %w", filepath.Join(d, f), err)
				}
			}
		}
	}
	return nil
}

// removeCgroupRoot removes a node's cgroup trees depth-first. Directories
// still holding tasks stay (and are reported).
func removeCgroupRoot(root string) []error {
	var errs []error
	for _, h := range cgroupHierarchies(true) {
		top := filepath.Join(h, root)
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !os.IsNotExist(err) {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

func addrPort(a netip.Addr, port int) string { return netip.AddrPortFrom(a, uint16(port)).String() }
