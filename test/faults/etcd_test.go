package faults

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kubeipam/internal/testenv"
)

const (
	frozenNetwork = "frozen"
	frozenTimeout = 6 * time.Second // ipam.timeout
	frozenWorkers = 8
	// A failure must come by the call's deadline; this much more is
	// process start-up and exit on a loaded machine.
	deadlineSlack = 1500 * time.Millisecond
)

// outage is one fault of the store, from when it began to when etcd
// answered again.
type outage struct {
	name     string
	at, back time.Time
}

// overlaps reports whether r ran during o.
func (o outage) overlaps(r *result) bool { return r.start.Before(o.back) && r.end.After(o.at) }

// TestEtcdFrozenAndKilled: a steady stream of ADDs (dynamic, and fixed
// through IP=) and DELs of the real binary against a real single-member
// etcd that is frozen (SIGSTOP) and killed (SIGKILL), for less and for
// more than the call's timeout. Every failure is CNI code 11
// (JSON on stdout, non-zero exit) and comes by the deadline; after a failed
// ADD whose deadline outlived the outage the store holds nothing for it (no
// attachment, no record naming the container); every failed call retried
// afterwards succeeds; every successful ADD is stored; `check` is clean.
func TestEtcdFrozenAndKilled(t *testing.T) {
	bin := testenv.Binary(t, "kube-ipam")
	ctlBin := testenv.Binary(t, "kube-ipamctl")
	e := testenv.StartEtcd(t)
	dir := t.TempDir()
	logFile := filepath.Join(dir, "kube-ipam.log")
	conf := netConf(frozenNetwork, map[string]any{
		"etcdConfig": map[string]any{"etcdURL": strings.Join(e.Endpoints, ",")}, "podLookup": false,
		"subnet": "10.189.0.0/16", "rangeStart": "10.189.0.10", "rangeEnd": "10.189.31.250",
		"releaseCooldown": "0s", "timeout": frozenTimeout.String(), "logFile": logFile, "nodeName": "node-1",
	})
	confFile := filepath.Join(dir, "10-frozen.conf")
	if err := os.WriteFile(confFile, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("kube-ipam log (tail):\n%s", tail(string(b), 6000))
		}
	})
	cli := e.Client(t)
	p := newPlugin(t, bin, nil, conf)

	// Each iteration: ADD a new container (one in five asks for a fixed
	// address with IP=); three in ten successful ADDs are DELeted again.
	l := startLoad(t, p, frozenWorkers, func(l *load, seq int64) {
		cid := fmt.Sprintf("fz-%05d", seq)
		args := "IgnoreUnknown=1"
		if seq%5 == 0 {
			args += fmt.Sprintf(";IP=10.189.%d.%d", 64+seq/256, seq%256)
		}
		if r := l.run(call{verb: "ADD", cid: cid, args: args}); r.ok() && rand.Float64() < 0.3 {
			l.run(call{verb: "DEL", cid: cid, args: args})
		}
	})
	start := time.Now()
	l.waitOK(t, 60, start, 60*time.Second)

	var outages []outage
	fault := func(name string, length time.Duration, do, undo func()) {
		o := outage{name: name, at: time.Now()}
		do()
		hold(length)
		undo()
		o.back = time.Now()
		outages = append(outages, o)
		l.waitOK(t, 30, o.back, 60*time.Second)
	}
	freeze, thaw := func() { e.Freeze(t) }, func() { e.Thaw(t) }
	kill, restart := func() { e.Stop(t) }, func() { e.Restart(t) }
	fault("frozen 2s (< timeout)", 2*time.Second, freeze, thaw)
	fault(fmt.Sprintf("frozen %v (> timeout)", frozenTimeout+2*time.Second), frozenTimeout+2*time.Second, freeze, thaw)
	// A few times, as a kill lands mid-claim only by chance: killed at once,
	// and frozen a moment first (requests pile up unanswered, some applied).
	for range 3 {
		fault("killed, restarted at once", 0, kill, restart)
		fault("frozen 300ms, killed, restarted", 300*time.Millisecond, freeze, func() { kill(); restart() })
	}
	fault(fmt.Sprintf("killed, down %v (> timeout)", frozenTimeout+2*time.Second), frozenTimeout+2*time.Second, kill, restart)
	l.stopAndWait()
	took := time.Since(start)
	results := l.snapshot()

	var bad problems
	v := readStore(t, cli, frozenNetwork)
	var failed []*result
	lateClaims := 0
	for _, r := range results {
		if r.ok() {
			continue
		}
		failed = append(failed, r)
		if r.code != 11 {
			bad.add("failure is not code 11", "%s", r)
		}
		if r.dur() > frozenTimeout+deadlineSlack {
			bad.add("failure after the call's timeout", "%s (timeout %v)", r, frozenTimeout)
		}
		if r.verb != "ADD" {
			continue
		}
		held := v.heldBy(r.cid, "net1")
		if held == "" {
			continue
		}
		// Contract: etcd answered again within the call's deadline, so the
		// failed ADD must have removed what it may have claimed.
		backInTime := true
		for _, o := range outages {
			if o.overlaps(r) && !o.back.Before(r.start.Add(frozenTimeout)) {
				backInTime = false
			}
		}
		if backInTime {
			bad.add("failed ADD left a claim though etcd answered again within its deadline", "%s: store holds %s", r, held)
		} else {
			lateClaims++
			t.Logf("failed ADD whose deadline passed during the outage, claim applied later: %s: store holds %s", r, held)
		}
	}
	for _, o := range outages {
		var fails latencies
		okDuring := 0
		var example *result
		for _, r := range results {
			if !o.overlaps(r) {
				continue
			}
			if r.ok() {
				okDuring++
			} else {
				fails = append(fails, r.dur())
				example = r
			}
		}
		firstOK := time.Duration(-1)
		for _, r := range results {
			if r.ok() && r.startsAfter(o.back) && (firstOK < 0 || r.end.Sub(o.back) < firstOK) {
				firstOK = r.end.Sub(o.back)
			}
		}
		t.Logf("%s: %d calls in flight or started succeeded, %d failed (latency %v); first success %v after etcd answered again",
			o.name, okDuring, len(fails), fails, firstOK.Round(time.Millisecond))
		if example != nil {
			t.Logf("    e.g. %s", example)
		}
	}

	// Retry every failed call, as the runtime does.
	retried := map[string]*result{}
	for _, r := range failed {
		r2 := p.run(call{verb: r.verb, cid: r.cid, args: r.args})
		if !r2.ok() {
			bad.add("retry of a failed call failed", "%s, retried: %s", r, r2)
		}
		retried[r.verb+" "+r.cid] = r2
	}
	// What must be held now: every container whose last successful call was
	// ADD (calls of one container are sequential: ADD, maybe DEL, retries
	// after both); no address twice.
	live, deleted := map[string][]string{}, map[string]bool{}
	for _, r := range append(results, valuesOf(retried)...) {
		switch {
		case !r.ok():
		case r.verb == "DEL":
			delete(live, r.cid)
			deleted[r.cid] = true
		case !deleted[r.cid]:
			live[r.cid] = r.ips
		}
	}
	v = readStore(t, cli, frozenNetwork)
	for cid := range deleted {
		if held := v.heldBy(cid, "net1"); held != "" {
			bad.add("a successful DEL left something", "DEL %s: %s", cid, held)
		}
	}
	owner := map[string]string{}
	n := len(live)
	for cid, ips := range live {
		if msg := v.stored(cid, "net1", ips); msg != "" {
			bad.add("a successful ADD is not stored", "ADD %s: %s", cid, msg)
		}
		for _, ip := range ips {
			if o, dup := owner[ip]; dup {
				bad.add("duplicate: one address held by two containers", "%s: %s and %s", ip, o, cid)
			}
			owner[ip] = cid
		}
	}
	if len(v.atts) != n {
		bad.add("attachments beside the successful ADDs'", "%d attachments, %d containers hold addresses", len(v.atts), n)
	}
	t.Logf("%d calls in %v (%d failed, all retried; %d failed ADDs whose claim etcd applied after their deadline); %d containers hold addresses",
		len(results), took.Round(100*time.Millisecond), len(failed), lateClaims, n)
	bad.report(t)
	check(t, ctlBin, nil, confFile)
}

func valuesOf(m map[string]*result) []*result {
	var out []*result
	for _, r := range m {
		out = append(out, r)
	}
	return out
}

// TestFailedAddAfterClaim: an ADD whose claim committed but that fails
// afterwards (its resolvConf vanished between the check before the claim
// and the result) while etcd is frozen, or killed and restarted, and
// answers again within the call's deadline: the ADD fails, and the store
// holds nothing for its container; the same ADD retried succeeds. The
// plugin's after-commit hook holds it at the moment in between.
func TestFailedAddAfterClaim(t *testing.T) {
	bin := testenv.Binary(t, "kube-ipam")
	e := testenv.StartEtcd(t)
	dir := t.TempDir()
	resolv := filepath.Join(dir, "resolv.conf")
	logFile := filepath.Join(dir, "kube-ipam.log")
	conf := netConf("rollback", map[string]any{
		"etcdConfig": map[string]any{"etcdURL": strings.Join(e.Endpoints, ",")}, "podLookup": false,
		"subnet": "10.191.0.0/24", "resolvConf": resolv, "timeout": frozenTimeout.String(),
		"logFile": logFile, "logLevel": "debug", "nodeName": "node-1",
	})
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("kube-ipam log (tail):\n%s", tail(string(b), 6000))
		}
	})
	cli := e.Client(t)
	p := newPlugin(t, bin, nil, conf)
	p.hold = newHoldDir(t)
	writeResolv := func() {
		t.Helper()
		if err := os.WriteFile(resolv, []byte("nameserver 10.191.0.53\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range []struct {
		name        string
		fault, undo func()
	}{
		{"etcd healthy", func() {}, func() {}},
		{"etcd frozen 1s", func() { e.Freeze(t) }, func() { e.Thaw(t) }},
		{"etcd killed, back after 1s", func() { e.Stop(t) }, func() { e.Restart(t) }},
	} {
		writeResolv()
		cid := fmt.Sprintf("rb-%d", i)
		held, proceed := make(chan struct{}), make(chan struct{})
		done := make(chan *result, 1)
		go func() {
			done <- p.run(call{verb: "ADD", cid: cid, args: "IgnoreUnknown=1", kill: holdAfterCommit, onHold: func() {
				close(held)
				<-proceed
			}})
		}()
		var r *result
		select {
		case <-held:
			// Claimed: the result can no longer be built, and etcd fails.
			if err := os.Remove(resolv); err != nil {
				t.Fatal(err)
			}
			c.fault()
			close(proceed)
			hold(time.Second)
			c.undo()
			r = <-done
		case r = <-done:
			t.Fatalf("%s: ADD ended without its after-commit hold (%s): %s", c.name, holdEnv, r)
		}
		if r.ok() {
			t.Errorf("%s: ADD succeeded without its resolvConf: %s", c.name, r)
		} else {
			t.Logf("%s: %s", c.name, r)
		}
		if held := readStore(t, cli, "rollback").heldBy(cid, "net1"); held != "" {
			t.Errorf("%s: the ADD failed after its claim, etcd answered again within its deadline, but the store holds %s", c.name, held)
		}
		writeResolv()
		if r2 := p.run(call{verb: "ADD", cid: cid, args: "IgnoreUnknown=1"}); !r2.ok() {
			t.Errorf("%s: retry: %s", c.name, r2)
		}
	}
}
