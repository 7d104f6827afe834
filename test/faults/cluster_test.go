package faults

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kubeipam/internal/testenv"
)

const (
	clusterNetwork = "cluster"
	clusterTimeout = 8 * time.Second // ipam.timeout
	clusterWorkers = 8
	// An ADD in flight when a member is cut off fails over or fails with 11
	// within this long, or within failoverAfterLeader of etcd having a leader
	// again when its election itself takes longer (a loaded machine: the
	// plugin cannot commit anything before there is a leader).
	failoverBound       = 5 * time.Second
	failoverAfterLeader = 2 * time.Second
	phase               = 4 * time.Second // length of the throughput windows
)

// TestEtcdClusterMemberLoss: a 3-member etcd, each member in its own network
// namespace, the plugin in a client namespace on the same bridge, ADDs kept
// 8 in flight throughout.
//
//   - Leader cut off (its packets dropped both ways): ADDs continue; none in
//     flight waits more than 5 s after the cut, or 2 s after the new leader
//     when the election takes longer (it fails over to the other members or
//     fails with 11); every failure is code 11.
//   - Restored: the members agree again.
//   - Quorum lost (both followers cut off): every ADD fails with 11 within
//     the call's timeout (plus process start-up); none started after the
//     loss succeeds.
//   - Restored: every failed ADD retried with its container ID succeeds; the
//     members agree (same leader, applied index and HashKV); every
//     successful ADD is stored; `check` is clean.
//
// It logs ADD/s before, during and after the member loss, the time to a
// new leader and to the first successful ADD after the cut, and the
// failure latencies.
func TestEtcdClusterMemberLoss(t *testing.T) {
	testenv.RequireRoot(t)
	bin := testenv.Binary(t, "kube-ipam")
	ctlBin := testenv.Binary(t, "kube-ipamctl")
	c := testenv.StartEtcdCluster(t, 3)
	dir := t.TempDir()
	logFile := filepath.Join(dir, "kube-ipam.log")
	conf := netConf(clusterNetwork, map[string]any{
		"etcdConfig": map[string]any{"etcdURL": strings.Join(c.Endpoints, ",")}, "podLookup": false,
		"subnet": "10.190.0.0/16", "rangeStart": "10.190.0.10", "rangeEnd": "10.190.255.250",
		"timeout": clusterTimeout.String(), "logFile": logFile, "logLevel": "debug", "nodeName": "node-1",
	})
	confFile := filepath.Join(dir, "10-cluster.conf")
	if err := os.WriteFile(confFile, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("kube-ipam log (tail):\n%s", tail(string(b), 6000))
		}
	})
	cli := c.Client(t)
	p := newPlugin(t, bin, c.ClientNS, conf)
	var bad problems

	l := startLoad(t, p, clusterWorkers, func(l *load, seq int64) {
		l.run(call{verb: "ADD", cid: fmt.Sprintf("cl-%05d", seq), args: "IgnoreUnknown=1"})
	})
	start := time.Now()
	l.waitOK(t, 20, start, 60*time.Second) // warm: page cache, first connections
	before0 := time.Now()
	hold(phase)

	// The leader is cut off.
	leader := c.Leader()
	if leader < 0 {
		t.Fatal("no leader before the cut")
	}
	termBefore := maxTerm(c)
	cutLeader, cutAt := leader, time.Now()
	c.Cut(t, leader)
	newLeader := c.WaitLeader(t, 30*time.Second, leader)
	elected := time.Since(cutAt)
	hold(max(0, 2*phase-time.Since(cutAt)))
	c.Restore(t, leader)
	restoredAt := time.Now()
	rejoinLeader := c.WaitLeader(t, 30*time.Second)
	rejoined := time.Since(restoredAt)
	hold(max(0, time.Second-time.Since(restoredAt)))
	rejoining := c.Status() // is the restored member caught up a second later?
	hold(max(0, 2*phase-time.Since(restoredAt)))
	afterEnd := time.Now()
	termAfter := maxTerm(c)

	// Quorum lost: both followers cut off, the leader still reachable.
	leader = c.WaitLeader(t, 30*time.Second)
	lossAt := time.Now()
	var cut []int
	for i := range c.Members {
		if i != leader {
			c.Cut(t, i)
			cut = append(cut, i)
		}
	}
	lost := time.Now() // no commit is possible from here on
	hold(clusterTimeout + 2*time.Second)
	l.stopAndWait() // every ADD of the loss ends before the restore
	for _, i := range cut {
		c.Restore(t, i)
	}
	restored2 := time.Now()
	c.WaitLeader(t, 30*time.Second)
	healed := time.Since(restored2)
	results := l.snapshot()

	// Leader cut: every ADD that ran across it, and across its restore.
	cutBound := max(failoverBound, elected+failoverAfterLeader)
	restoreBound := max(failoverBound, rejoined+failoverAfterLeader)
	var waitedCut, waitedRestore latencies
	firstOK := time.Duration(-1)
	var worst *result
	for _, r := range results {
		if r.end.Before(cutAt) || !r.start.Before(afterEnd) {
			continue
		}
		if r.start.Before(restoredAt) {
			w := minTime(r.end, restoredAt).Sub(maxTime(r.start, cutAt))
			waitedCut = append(waitedCut, w)
			if w > cutBound {
				bad.add(fmt.Sprintf("an ADD in flight while the leader was cut off waited more than %v", cutBound.Round(time.Millisecond)), "%s, %v of it with the leader cut off", r, w.Round(time.Millisecond))
				worst = r
			}
		}
		if r.end.After(restoredAt) && r.start.Before(restoredAt.Add(phase)) {
			w := r.end.Sub(maxTime(r.start, restoredAt))
			waitedRestore = append(waitedRestore, w)
			if w > restoreBound {
				bad.add(fmt.Sprintf("an ADD in flight when the cut-off member was restored waited more than %v", restoreBound.Round(time.Millisecond)), "%s, %v of it after the restore", r, w.Round(time.Millisecond))
				worst = r
			}
		}
		if !r.ok() && r.code != 11 {
			bad.add("failure during the leader cut or its restore is not code 11", "%s", r)
		}
		if r.ok() && r.startsAfter(cutAt) && (firstOK < 0 || r.end.Sub(cutAt) < firstOK) {
			firstOK = r.end.Sub(cutAt)
		}
	}
	if worst != nil {
		t.Logf("kube-ipam log of the last ADD that waited too long (%s):\n%s", worst, logOf(logFile, worst.cid))
		for i, s := range rejoining {
			if s != nil {
				t.Logf("1 s after the restore, member m%d: leader %x, raft term %d, index %d, applied %d", i, s.Leader, s.RaftTerm, s.RaftIndex, s.RaftApplied)
			}
		}
	}
	if firstOK < 0 || cutAt.Add(firstOK).After(restoredAt) {
		bad.add("no ADD succeeded while the leader was cut off", "ADDs did not continue on the other members")
	}
	before := measure("before", results, before0, cutAt)
	during := measure("leader cut off", results, cutAt, restoredAt)
	after := measure(fmt.Sprintf("first %v after the restore", phase), results, restoredAt, restoredAt.Add(phase))
	after2 := measure(fmt.Sprintf("next %v", afterEnd.Sub(restoredAt.Add(phase)).Round(100*time.Millisecond)), results, restoredAt.Add(phase), afterEnd)
	t.Logf("leader m%d cut off: m%d elected after %v; first ADD started after the cut succeeded %v after it; time ADDs waited with the leader cut off: %v",
		cutLeader, newLeader, elected.Round(time.Millisecond), firstOK.Round(time.Millisecond), waitedCut)
	t.Logf("m%d restored: m%d leads %v later; raft term %d before the cut, %d after the restore; time ADDs in flight at the restore or started within %v of it waited after it: %v",
		cutLeader, rejoinLeader, rejoined.Round(time.Millisecond), termBefore, termAfter, phase, waitedRestore)
	for _, w := range []window{before, during, after, after2} {
		t.Logf("%v", w)
	}

	// Quorum lost.
	var lossFails latencies
	var failed []*result
	for _, r := range results {
		if r.end.Before(lossAt) {
			if !r.ok() && !r.end.Before(cutAt) && r.start.Before(restoredAt) {
				failed = append(failed, r) // failed during the leader cut: retried too
			}
			continue
		}
		if r.ok() {
			if r.startsAfter(lost) {
				bad.add("an ADD succeeded without quorum", "%s", r)
			}
			continue
		}
		failed = append(failed, r)
		lossFails = append(lossFails, r.dur())
		if r.code != 11 {
			bad.add("failure without quorum is not code 11", "%s", r)
		}
		if r.dur() > clusterTimeout+deadlineSlack {
			bad.add("failure without quorum after the call's timeout", "%s (timeout %v)", r, clusterTimeout)
		}
	}
	if len(lossFails) == 0 {
		bad.add("no ADD ran while quorum was lost", "")
	}
	t.Logf("quorum lost: %d ADDs failed, latency %v; a leader again %v after the restore", len(lossFails), lossFails, healed.Round(time.Millisecond))

	// Restored: every failed ADD is retried.
	v := readStore(t, cli, clusterNetwork)
	late := 0
	var retries []*result
	for _, r := range failed {
		if v.heldBy(r.cid, "net1") != "" {
			late++ // applied after the ADD gave up; its retry returns it
		}
		r2 := p.run(call{verb: "ADD", cid: r.cid, args: r.args})
		if !r2.ok() {
			bad.add("retry after the restore failed", "%s, retried: %s", r, r2)
		}
		retries = append(retries, r2)
	}
	c.WaitConverged(t, 60*time.Second)
	v = readStore(t, cli, clusterNetwork)
	owner := map[string]string{}
	n := 0
	for _, r := range append(results, retries...) {
		if !r.ok() {
			continue
		}
		n++
		if msg := v.stored(r.cid, "net1", r.ips); msg != "" {
			bad.add("a successful ADD is not stored", "%s: %s", r, msg)
		}
		for _, ip := range r.ips {
			if o, dup := owner[ip]; dup {
				bad.add("duplicate: one address given to two containers", "%s: %s and %s", ip, o, r.cid)
			}
			owner[ip] = r.cid
		}
	}
	if len(v.atts) != n {
		bad.add("attachments beside the successful ADDs'", "%d attachments for %d successful ADDs", len(v.atts), n)
	}
	t.Logf("%d ADDs in %v; %d failed ADDs retried after the restore (%d of their claims had been applied after they failed); the members agree",
		len(results), time.Since(start).Round(100*time.Millisecond), len(failed), late)
	bad.report(t)
	check(t, ctlBin, c.ClientNS, confFile)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// logOf returns the lines of the plugin's log about container cid.
func logOf(logFile, cid string) string {
	b, err := os.ReadFile(logFile)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "container="+cid+" ") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// maxTerm is the highest raft term the members answering report.
func maxTerm(c *testenv.EtcdCluster) int64 {
	var term int64
	for _, s := range c.Status() {
		if s != nil {
			term = max(term, s.RaftTerm)
		}
	}
	return term
}
