package testenv

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestEtcdCluster: three members in their own namespaces elect a leader;
// a cut leader is replaced and, restored, rejoins; a frozen, then a killed
// and restarted member catches up; a client in ClientNS sees one store
// throughout. Cleanup leaves no process and no namespace behind.
func TestEtcdCluster(t *testing.T) {
	RequireRoot(t)
	var pids []int
	var paths []string
	t.Run("cluster", func(t *testing.T) {
		c := StartEtcdCluster(t, 3)
		for i := range c.Members {
			pids = append(pids, c.PID(i))
			paths = append(paths, c.Members[i].NS.Path())
		}
		paths = append(paths, c.ClientNS.Path(), c.HubNS.Path())
		cli := c.Client(t)
		// A request sent on a connection to a member that was then cut
		// hangs until its deadline: short attempts, as a client would.
		put := func(k string) {
			t.Helper()
			err := poll(20*time.Second, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				_, err := cli.Put(ctx, k, "v")
				return err
			})
			if err != nil {
				t.Fatalf("put %s: %v", k, err)
			}
		}
		put("a")

		// The members are not reachable from the test's own namespace.
		if out, err := exec.Command("ping", "-c", "1", "-W", "1", c.Members[0].IP).CombinedOutput(); err == nil {
			t.Errorf("member reachable from the host namespace:\n%s", out)
		}

		old := c.Leader()
		start := time.Now()
		c.Cut(t, old)
		// Packets are dropped, not refused: a connection attempt times out.
		if out, err := RunIn(c.ClientNS, "", "timeout", "2", "bash", "-c", "exec 3<>/dev/tcp/"+c.Members[old].IP+"/2379"); err == nil || strings.Contains(out, "refused") {
			t.Errorf("connecting to a cut member: %v %s", err, out)
		}
		nl := c.WaitLeader(t, 15*time.Second, old)
		t.Logf("member %d cut: member %d leads after %v", old, nl, time.Since(start).Round(time.Millisecond))
		put("b")
		c.Restore(t, old)
		c.WaitConverged(t, 30*time.Second)

		c.Freeze(t, old)
		put("c")
		c.Thaw(t, old)
		c.WaitConverged(t, 30*time.Second)

		c.Kill(t, old)
		if err := syscall.Kill(pids[old], 0); err == nil {
			t.Errorf("killed member %d still exists", pids[old])
		}
		put("d")
		c.Restart(t, old)
		pids = append(pids, c.PID(old))
		c.WaitConverged(t, 30*time.Second)
		r, err := cli.Get(context.Background(), "", clientv3.WithPrefix())
		if err != nil || r.Count != 4 {
			t.Fatalf("keys after the faults: %v %v", r, err)
		}
	})
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("etcd member pid %d still exists after cleanup", pid)
		}
	}
	for _, p := range paths {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("netns %s not removed: %v", p, err)
		}
	}
}
