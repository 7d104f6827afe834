// Package lab_test runs `make lab`'s scenario as a test: the seed's
// architecture on real kubelet nodes (containerd + runc, one network
// namespace per node), the seed's manifests applied with kubectl, and the
// seed's verification (sections 4 and 5) replayed; then the lab is taken
// down and the test checks that nothing is left behind.
package lab_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kubeipam/internal/lab"
	"kubeipam/internal/testenv"
)

// logWriter streams the lab's output into the test log as it happens.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestLabReplaysTheSeed(t *testing.T) {
	testenv.RequireRoot(t)
	for _, c := range []string{"containerd", "ctr", "runc", "nsenter", "conntrack"} {
		if _, err := exec.LookPath(c); err != nil {
			testenv.Missing(t, "%s not installed (hack/deps.sh installs containerd, runc, conntrack)", c)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		testenv.Missing(t, "/bin/busybox missing (apt-get install busybox-static)")
	}
	for _, b := range []string{"kubelet", "kube-proxy", "kubectl", "kube-apiserver"} {
		testenv.KubeBinary(t, b)
	}
	for _, b := range []string{"flanneld", "flannel"} {
		if _, err := os.Stat(filepath.Join(lab.LabBinDir(), b)); err != nil {
			testenv.Missing(t, "%s not built (%v): run hack/labbin.sh", b, err)
		}
	}
	root := testenv.ModuleRoot(t)
	bin := filepath.Dir(testenv.Binary(t, "kube-ipam"))
	for _, b := range append([]string{"kube-ipam-lab-pause"}, lab.ImageBinaries...) {
		if p := testenv.Binary(t, b); filepath.Dir(p) != bin {
			t.Fatalf("%s and kube-ipam are in different directories", b)
		}
	}
	if _, err := os.Stat(filepath.Join(bin, "multus-cni")); err != nil {
		// The seed's "type": "multus-cni"; make build makes this copy.
		if err := os.Symlink(filepath.Join(bin, "kube-multus"), filepath.Join(bin, "multus-cni")); err != nil {
			t.Fatal(err)
		}
	}
	dir, err := os.MkdirTemp("", "kube-ipam-lab-test-")
	if err != nil {
		t.Fatal(err)
	}
	// A lab of its own beside a `make lab` that may be running: other
	// names, another underlay, another directory.
	opts := lab.DefaultOptions(root)
	opts.Dir, opts.Name, opts.RepoBin = dir, "kitest", bin
	opts.Underlay = netip.MustParsePrefix("172.30.211.0/24")
	opts.CNIBin = testenv.CNIPluginDir(t)
	opts.Out = logWriter{t}
	before := hostSnapshot()

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, opts)
	if l != nil {
		t.Cleanup(func() { down(t, l, dir, before) })
	} else {
		os.RemoveAll(dir)
	}
	if err != nil {
		t.Fatal(err)
	}
	results, err := l.Replay(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var sum bytes.Buffer
	if failed := lab.Summary(&sum, results); failed > 0 {
		t.Errorf("%d of the replay's checks failed:\n%s", failed, sum.String())
	}
	// Deleting the pods through the API runs every CNI DEL: kube-ipam must
	// hold nothing afterwards, and its store must be consistent.
	if err := l.DeleteWorkloads(ctx); err != nil {
		t.Fatal(err)
	}
	ipamctl := func(args ...string) (string, error) {
		b, err := l.IPAMCtl(ctx, args...)
		return string(b), err
	}
	out, err := ipamctl("list", "-o", "json")
	var held []map[string]any
	if err == nil {
		err = json.Unmarshal([]byte(out), &held)
	}
	if err != nil || len(held) > 0 {
		t.Errorf("after every pod was deleted, kube-ipamctl list says (%v):\n%s", err, out)
	}
	if out, err := ipamctl("check"); err != nil {
		t.Errorf("kube-ipamctl check after the pods were deleted (%v):\n%s", err, out)
	}
	// The replay must have covered the seed's sections, not stopped early.
	for _, want := range []string{"database-2-0 net1 is 10.188.0.219/16", "database-1-0 net1 is 10.188.0.218/16",
		"pings 10.188.0.219", "database-2-0 pings 10.188.0.218", "outsider has no net1", "database-2-0 moved to another node",
		"curl the NodePort", "dropped by the tier policy", "over eth0 (flannel)", "registered to the new database-2-0"} {
		if !strings.Contains(sum.String(), want) {
			t.Errorf("the replay has no check %q:\n%s", want, sum.String())
		}
	}
}

// snapshot is what must be the same before the lab and after its Down.
type snapshot struct{ netns, links, sysctls string }

func hostSnapshot() snapshot {
	out := func(args ...string) string {
		b, _ := exec.Command(args[0], args[1:]...).Output()
		return string(b)
	}
	var sys []string
	for _, s := range []string{"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"} {
		b, _ := os.ReadFile("/proc/sys/" + s)
		sys = append(sys, s+"="+strings.TrimSpace(string(b)))
	}
	return snapshot{
		netns:   filterLines(out("ip", "netns", "list"), "kitest"),
		links:   filterLines(out("ip", "-o", "link", "show"), "kitest"),
		sysctls: strings.Join(sys, " "),
	}
}

func filterLines(s, sub string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func down(t *testing.T, l *lab.Lab, dir string, before snapshot) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := l.Down(ctx); err != nil {
		t.Errorf("lab down: %v", err)
	}
	after := hostSnapshot()
	if after != before {
		t.Errorf("the host changed:\nbefore %+v\nafter  %+v", before, after)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("lab dir %s is still there", dir)
		os.RemoveAll(dir)
	}
	for _, n := range l.Nodes() {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/memory", n.Cgroup)); err == nil {
			t.Errorf("cgroup %s is still there", n.Cgroup)
		}
	}
}
