package bench

// BenchmarkMemberLoss measures kube-ipam on a 3-member etcd while a member
// is lost: each member runs in its own network namespace (testenv's
// StartEtcdCluster), the real binary in a client namespace on the same
// bridge, one process per ADD, 8 in flight throughout. The leader is cut
// off (its packets dropped) for 8 s and restored; then both followers are
// cut off (quorum lost) for the call's timeout and more. It prints ADD/s
// before, during and after the member loss, the time to a new leader and
// to the first ADD that succeeds after the cut, the longest an ADD waited
// while the leader was cut off, and how fast ADDs fail without quorum.
// test/faults asserts the same scenario's contracts; this only measures.
// It needs root (namespaces) and skips otherwise. Like BenchmarkAdd, the
// scenario runs once (the b.N == 1 call).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"kubeipam/internal/testenv"
)

const (
	lossWorkers = 8               // ADD processes in flight
	lossPhase   = 4 * time.Second // length of a throughput window
	lossTimeout = 8 * time.Second // ipam.timeout
)

// lossOp is one ADD process.
type lossOp struct {
	start, end time.Time
	code       int // 0 success, the CNI error code, -1 no CNI answer
}

type lossResults struct {
	before, during, after1, after2 float64 // ADD/s
	elected, firstOK, maxWaitCut   time.Duration
	quorumFails                    []time.Duration
	quorumOK, quorumOther          int
	healed                         time.Duration
}

var lossScenario scenario[lossResults]

func BenchmarkMemberLoss(b *testing.B) {
	r := lossScenario.result(b, runMemberLoss, printLoss)
	report := func(name string, f func(b *testing.B)) { reportMetrics(b, name, f) }
	report("before", func(b *testing.B) { b.ReportMetric(r.before, "adds/s") })
	report("leader-cut", func(b *testing.B) {
		b.ReportMetric(r.during, "adds/s")
		b.ReportMetric(lossMs(r.elected), "election-ms")
		b.ReportMetric(lossMs(r.firstOK), "first-ok-ms")
		b.ReportMetric(lossMs(r.maxWaitCut), "max-wait-ms")
	})
	report("after-restore", func(b *testing.B) { b.ReportMetric(r.after1, "adds/s") })
	report("after-restore-later", func(b *testing.B) { b.ReportMetric(r.after2, "adds/s") })
	report("quorum-lost", func(b *testing.B) {
		b.ReportMetric(lossMs(lossPct(r.quorumFails, 0.5)), "fail-p50-ms")
		b.ReportMetric(lossMs(lossPct(r.quorumFails, 1)), "fail-max-ms")
	})
}

func lossMs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func lossPct(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func runMemberLoss(b *testing.B) *lossResults {
	testenv.RequireRoot(b)
	bin := testenv.Binary(b, "kube-ipam")
	c := testenv.StartEtcdCluster(b, 3)
	conf, _ := json.Marshal(map[string]any{"cniVersion": "0.3.1", "name": "loss", "type": "macvlan", "master": "eth0",
		"ipam": map[string]any{"type": "kube-ipam", "podLookup": false,
			"etcdConfig": map[string]any{"etcdURL": strings.Join(c.Endpoints, ",")},
			"subnet":     "10.190.0.0/16", "rangeStart": "10.190.0.10", "rangeEnd": "10.190.255.250",
			"timeout": lossTimeout.String(), "logFile": filepath.Join(b.TempDir(), "kube-ipam.log"), "nodeName": "node-1"}})

	var (
		mu   sync.Mutex
		ops  []lossOp
		seq  atomic.Int64
		wg   sync.WaitGroup
		stop = make(chan struct{})
	)
	for range lossWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				op := lossADD(b, bin, c.ClientNS, conf, fmt.Sprintf("ml-%06d", seq.Add(1)))
				mu.Lock()
				ops = append(ops, op)
				mu.Unlock()
			}
		}()
	}
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	b.Cleanup(stopLoad)
	wait := func(d time.Duration) { <-time.After(d) } // a phase's length

	wait(2 * time.Second) // warm-up: page cache, first connections
	before0 := time.Now()
	wait(lossPhase)
	leader := c.Leader()
	if leader < 0 {
		b.Fatal("no etcd leader")
	}
	cutAt := time.Now()
	c.Cut(b, leader)
	c.WaitLeader(b, 30*time.Second, leader)
	elected := time.Since(cutAt)
	wait(max(0, 2*lossPhase-time.Since(cutAt)))
	c.Restore(b, leader)
	restoredAt := time.Now()
	wait(2 * lossPhase)
	afterEnd := time.Now()

	leader = c.WaitLeader(b, 30*time.Second)
	var cut []int
	for i := range c.Members {
		if i != leader {
			c.Cut(b, i)
			cut = append(cut, i)
		}
	}
	lost := time.Now() // ADDs started from here on cannot succeed
	wait(lossTimeout + 2*time.Second)
	stopLoad()
	for _, i := range cut {
		c.Restore(b, i)
	}
	healAt := time.Now()
	c.WaitLeader(b, 30*time.Second)

	r := &lossResults{elected: elected, healed: time.Since(healAt), firstOK: -1}
	rate := func(from, to time.Time) float64 {
		n := 0
		for _, o := range ops {
			if o.code == 0 && !o.end.Before(from) && o.end.Before(to) {
				n++
			}
		}
		return float64(n) / to.Sub(from).Seconds()
	}
	r.before, r.during = rate(before0, cutAt), rate(cutAt, restoredAt)
	r.after1, r.after2 = rate(restoredAt, restoredAt.Add(lossPhase)), rate(restoredAt.Add(lossPhase), afterEnd)
	for _, o := range ops {
		if !o.end.Before(cutAt) && o.start.Before(restoredAt) {
			end := o.end
			if end.After(restoredAt) {
				end = restoredAt
			}
			start := o.start
			if start.Before(cutAt) {
				start = cutAt
			}
			r.maxWaitCut = max(r.maxWaitCut, end.Sub(start))
			if o.code == 0 && !o.start.Before(cutAt) && (r.firstOK < 0 || o.end.Sub(cutAt) < r.firstOK) {
				r.firstOK = o.end.Sub(cutAt)
			}
		}
		if !o.start.Before(lost) {
			switch o.code {
			case 0:
				r.quorumOK++
			case 11:
				r.quorumFails = append(r.quorumFails, o.end.Sub(o.start))
			default:
				r.quorumOther++
			}
		}
	}
	return r
}

// lossADD runs one ADD of the binary inside netns.
func lossADD(b *testing.B, bin string, netns ns.NetNS, conf []byte, cid string) lossOp {
	cmd := exec.Command(bin)
	cmd.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + cid, "CNI_NETNS=/var/run/netns/" + cid,
		"CNI_NETNS_OVERRIDE=1", "CNI_IFNAME=net1", "CNI_PATH=/opt/cni/bin", "PATH=" + os.Getenv("PATH")}
	cmd.Stdin = bytes.NewReader(conf)
	var out bytes.Buffer
	cmd.Stdout = &out
	op := lossOp{start: time.Now(), code: -1}
	p, err := testenv.StartProcess(cmd, netns)
	if err != nil {
		b.Error(err)
		op.end = time.Now()
		return op
	}
	ws := p.Wait()
	op.end = time.Now()
	if ws.Exited() && ws.ExitStatus() == 0 {
		op.code = 0
		return op
	}
	var e struct {
		Code int `json:"code"`
	}
	if json.Unmarshal(out.Bytes(), &e) == nil && e.Code != 0 {
		op.code = e.Code
	}
	return op
}

func printLoss(r *lossResults) {
	d := func(x time.Duration) string { return x.Round(10 * time.Millisecond).String() }
	fmt.Printf(`
kube-ipam on a 3-member etcd (each member in its own network namespace), %d ADDs in flight, ipam.timeout %v

| phase | ADD/s | |
|---|---|---|
| before | %.1f | |
| leader cut off (8 s) | %.1f | new leader after %s; first ADD started after the cut succeeded after %s; longest wait of an ADD while cut off %s |
| first %v after the restore | %.1f | |
| next %v | %.1f | |
| quorum lost | %d ok | %d failed with code 11 (p50 %s, max %s), %d with another code; a leader %s after the restore |

`, lossWorkers, lossTimeout, r.before, r.during, d(r.elected), d(r.firstOK), d(r.maxWaitCut),
		lossPhase, r.after1, lossPhase, r.after2, r.quorumOK, len(r.quorumFails), d(lossPct(r.quorumFails, 0.5)), d(lossPct(r.quorumFails, 1)), r.quorumOther, d(r.healed))
}
