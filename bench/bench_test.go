package bench

// BenchmarkAdd runs the real kube-ipam binary, one process per ADD as a
// container runtime does, against a real etcd, and Debian's host-local
// binary on the same machine in the same run. Its scenario runs once per
// benchmark run (the b.N == 1 call); the framework's ramp-up calls with a
// larger b.N reuse that result, so `-benchtime 1x` and the default agree.
//
// The micro-benchmarks at the end time the pure allocation rules of
// internal/ipam in-process.

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"kubeipam/internal/config"
	"kubeipam/internal/ipam"
	"kubeipam/internal/store"
	"kubeipam/internal/testenv"
)

const (
	concurrentAdds = 500 // ADD processes in the concurrent phase
	inFlight       = 50  // of which this many run at once
	sequentialAdds = 200 // ADDs one at a time, per sequential phase
	// host-local reads every reservation file on each ADD (~1 s at 99 % of a
	// /16 on 2 cores), so its full-pool phase is shorter.
	hostLocalFullAdds = 40
	startupRuns       = 50 // runs of each binary that only start and exit
	etcdPuts          = 200
	warmupAdds        = 5    // unmeasured ADDs per binary first (page cache)
	fillFraction      = 0.99 // share of the /16 claimed before the full-pool phase
	// etcd's default --max-txn-ops; two puts (record, attachment) per address.
	txnOps    = 128
	fillers   = 8 // concurrent fill transactions
	ifName    = "net1"
	perAddMax = 2 * time.Minute // a single ADD process taking longer is a hang
	fillSeed  = 20260101        // fixed so that every run fills the same gaps
)

// Subnets: one /16 per phase and plugin, so no phase sees another's state.
const (
	warmKI, warmHL   = "10.59.0.0/16", "10.66.0.0/16"
	concKI, concHL   = "10.60.0.0/16", "10.61.0.0/16"
	emptyKI, emptyHL = "10.63.0.0/16", "10.65.0.0/16"
	fullKI, fullHL   = "10.62.0.0/16", "10.64.0.0/16"
	// kube-ipam against an etcd that requires client certificates, as
	// deployed (every ADD process pays the TLS handshake).
	warmTLS, concTLS, emptyTLS = "10.67.0.0/16", "10.68.0.0/16", "10.69.0.0/16"
)

// sample is one ADD process.
type sample struct {
	cid string
	dur time.Duration // fork/exec to exit, as the runtime waits for it
	cpu time.Duration // user + system CPU of the process
	ip  netip.Addr
	err error
}

// phase is one measured batch of ADDs.
type phase struct {
	samples []sample
	wall    time.Duration
}

func (p phase) durations() []time.Duration {
	d := make([]time.Duration, len(p.samples))
	for i, s := range p.samples {
		d[i] = s.dur
	}
	slices.Sort(d)
	return d
}

// pct is the nearest-rank percentile of sorted durations, in milliseconds.
func pct(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return float64(sorted[max(i, 0)]) / float64(time.Millisecond)
}

// cpuP50 is the median CPU time of one process, in milliseconds.
func (p phase) cpuP50() float64 {
	d := make([]time.Duration, len(p.samples))
	for i, s := range p.samples {
		d[i] = s.cpu
	}
	slices.Sort(d)
	return pct(d, 0.5)
}

func (p phase) p50() float64        { return pct(p.durations(), 0.50) }
func (p phase) p99() float64        { return pct(p.durations(), 0.99) }
func (p phase) addsPerSec() float64 { return float64(len(p.samples)) / p.wall.Seconds() }

// results is everything the table shows.
type results struct {
	conc, seqEmpty, seqFull map[string]phase // by plugin
	startup                 map[string]phase // process start and exit only, by plugin
	etcdPut                 phase            // single puts from this process
	fillN, poolN            int
	fillTime                time.Duration
	races, maxRaces         int // kube-ipam claim races lost, concurrent phase: total, most by one ADD
	// kube-ipam's own "ms" log field (time inside the plugin), by phase
	inPlugin map[string][]int
}

const (
	kipam     = "kube-ipam"
	kipamTLS  = "kube-ipam-tls" // the same binary, etcd over TLS with a client certificate
	hostLocal = "host-local"
)

var addScenario scenario[results]

func BenchmarkAdd(b *testing.B) {
	r := addScenario.result(b, runScenario, printTable)
	report := func(name string, f func(b *testing.B)) { reportMetrics(b, name, f) }
	for _, pl := range []string{kipam, kipamTLS, hostLocal} {
		c := r.conc[pl]
		report(fmt.Sprintf("concurrent%d/%s", inFlight, pl), func(b *testing.B) {
			b.ReportMetric(c.addsPerSec(), "adds/s")
			b.ReportMetric(c.p50(), "p50-ms")
			b.ReportMetric(c.p99(), "p99-ms")
		})
	}
	for _, pl := range []string{kipam, kipamTLS, hostLocal} {
		e := r.seqEmpty[pl]
		report("sequential-empty16/"+pl, func(b *testing.B) {
			b.ReportMetric(e.p50(), "p50-ms")
			b.ReportMetric(e.p99(), "p99-ms")
			b.ReportMetric(e.cpuP50(), "cpu-p50-ms")
		})
	}
	for _, pl := range []string{kipam, hostLocal} {
		e, f := r.seqEmpty[pl], r.seqFull[pl]
		report("sequential-full99/"+pl, func(b *testing.B) {
			b.ReportMetric(f.p50(), "p50-ms")
			b.ReportMetric(f.p99(), "p99-ms")
			b.ReportMetric(f.p50()/e.p50(), "full/empty-p50")
		})
	}
	for _, pl := range []string{kipam, hostLocal} {
		report("process-start/"+pl, func(b *testing.B) {
			b.ReportMetric(r.startup[pl].p50(), "p50-ms")
		})
	}
	report("ratio-kube-ipam/host-local", func(b *testing.B) {
		b.ReportMetric(r.conc[kipam].addsPerSec()/r.conc[hostLocal].addsPerSec(), "adds/s-ratio")
		b.ReportMetric(r.conc[kipam].p50()/r.conc[hostLocal].p50(), "p50-ratio")
		b.ReportMetric(r.conc[kipam].p99()/r.conc[hostLocal].p99(), "p99-ratio")
	})
	report("ratio-kube-ipam-tls/host-local", func(b *testing.B) {
		b.ReportMetric(r.conc[kipamTLS].addsPerSec()/r.conc[hostLocal].addsPerSec(), "adds/s-ratio")
		b.ReportMetric(r.seqEmpty[kipamTLS].p50()/r.seqEmpty[hostLocal].p50(), "seq-p50-ratio")
	})
}

// env is the scenario's shared setup.
type env struct {
	b        *testing.B
	ctx      context.Context
	etcd     *testenv.Etcd
	cli      *clientv3.Client
	etcdTLS  *testenv.Etcd // kipamTLS's store
	cliTLS   *clientv3.Client
	bins     map[string]string
	cni      *cniRunner
	dir      string
	logFiles map[string]string // kube-ipam log file per phase
}

func runScenario(b *testing.B) *results {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	e := &env{b: b, ctx: ctx, dir: b.TempDir(), logFiles: map[string]string{}}
	e.cni = newCNIRunner(ctx, testenv.CNIPluginDir(b))
	e.etcd = testenv.StartEtcd(b)
	e.cli = e.etcd.Client(b)
	e.etcdTLS = testenv.StartEtcdTLS(b)
	e.cliTLS = e.etcdTLS.Client(b)
	e.bins = map[string]string{
		kipam:     testenv.Binary(b, "kube-ipam"),
		kipamTLS:  testenv.Binary(b, "kube-ipam"),
		hostLocal: filepath.Join(e.cni.path, "host-local"),
	}
	r := &results{conc: map[string]phase{}, seqEmpty: map[string]phase{}, seqFull: map[string]phase{},
		startup: map[string]phase{}, inPlugin: map[string][]int{}}

	// Warm-up: first exec of each binary pays for reading it from disk.
	for _, pl := range []string{kipam, kipamTLS, hostLocal} {
		subnet := map[string]string{kipam: warmKI, kipamTLS: warmTLS, hostLocal: warmHL}[pl]
		p := e.run(pl, "warm", subnet, warmupAdds, 1)
		e.mustOK(pl+" warm-up", p, subnet, nil)
	}
	// Context for the ADD times: what starting the binary alone costs, and
	// what one etcd write costs here (the WAL fsync every claim waits for).
	for _, pl := range []string{kipam, hostLocal} {
		r.startup[pl] = e.runStartup(pl, startupRuns)
	}
	r.etcdPut = e.timePuts(etcdPuts)

	// 1. Concurrent: 500 ADDs, 50 in flight, fresh container IDs.
	r.conc[kipam] = e.run(kipam, "conc", concKI, concurrentAdds, inFlight)
	e.mustOK("kube-ipam concurrent", r.conc[kipam], concKI, nil)
	e.checkEtcd("kube-ipam concurrent", "bench-conc", r.conc[kipam])
	r.conc[hostLocal] = e.run(hostLocal, "conc", concHL, concurrentAdds, inFlight)
	e.mustOK("host-local concurrent", r.conc[hostLocal], concHL, nil)
	e.checkHostLocalDir("host-local concurrent", "conc", concurrentAdds)
	r.conc[kipamTLS] = e.run(kipamTLS, "conc-tls", concTLS, concurrentAdds, inFlight)
	e.mustOK("kube-ipam concurrent, TLS", r.conc[kipamTLS], concTLS, nil)
	if err := etcdRecordErrors(e.ctx, e.cliTLS, config.DefaultEtcdPrefix, "bench-conc-tls", r.conc[kipamTLS]); err != nil {
		b.Fatalf("kube-ipam concurrent, TLS: %v", err)
	}

	// 2. Sequential on an empty /16.
	r.seqEmpty[kipam] = e.run(kipam, "empty", emptyKI, sequentialAdds, 1)
	e.mustOK("kube-ipam sequential empty", r.seqEmpty[kipam], emptyKI, nil)
	r.seqEmpty[hostLocal] = e.run(hostLocal, "empty", emptyHL, sequentialAdds, 1)
	e.mustOK("host-local sequential empty", r.seqEmpty[hostLocal], emptyHL, nil)
	r.seqEmpty[kipamTLS] = e.run(kipamTLS, "empty-tls", emptyTLS, sequentialAdds, 1)
	e.mustOK("kube-ipam sequential empty, TLS", r.seqEmpty[kipamTLS], emptyTLS, nil)

	// 3. Sequential on a /16 filled to 99 % at random positions.
	fillStart := time.Now()
	gapsKI, nFill, nPool := e.fillKubeIPAM("bench-full", fullKI)
	r.fillN, r.poolN, r.fillTime = nFill, nPool, time.Since(fillStart)
	gapsHL := e.fillHostLocal("full", fullHL)
	r.seqFull[kipam] = e.run(kipam, "full", fullKI, sequentialAdds, 1)
	e.mustOK("kube-ipam sequential 99% full", r.seqFull[kipam], fullKI, gapsKI)
	r.seqFull[hostLocal] = e.run(hostLocal, "full", fullHL, hostLocalFullAdds, 1)
	e.mustOK("host-local sequential 99% full", r.seqFull[hostLocal], fullHL, gapsHL)

	r.races, r.maxRaces, r.inPlugin["conc"] = scanLog(b, e.logFiles["conc"])
	_, _, r.inPlugin["empty"] = scanLog(b, e.logFiles["empty"])
	_, _, r.inPlugin["full"] = scanLog(b, e.logFiles["full"])
	return r
}

// runStartup times n sequential runs of pl that only start and exit 0
// (kube-ipam's "version"; host-local without CNI_COMMAND prints its about
// text), i.e. exec plus the runtime's and packages' init.
func (e *env) runStartup(pl string, n int) phase {
	e.b.Helper()
	var args []string
	if pl == kipam {
		args = []string{"version"}
	}
	p := phase{samples: make([]sample, n)}
	start := time.Now()
	for i := range n {
		cmd := exec.CommandContext(e.ctx, e.bins[pl], args...)
		cmd.Env = e.cni.baseEnv
		t := time.Now()
		out, err := cmd.CombinedOutput()
		p.samples[i].dur = time.Since(t)
		if err != nil {
			e.b.Fatalf("%s %v: %v\n%s", pl, args, err, out)
		}
	}
	p.wall = time.Since(start)
	return p
}

// timePuts times n sequential single-key puts from this process.
func (e *env) timePuts(n int) phase {
	e.b.Helper()
	p := phase{samples: make([]sample, n)}
	start := time.Now()
	for i := range n {
		t := time.Now()
		if _, err := e.cli.Put(e.ctx, fmt.Sprintf("/bench-put/%04d", i), "x"); err != nil {
			e.b.Fatal(err)
		}
		p.samples[i].dur = time.Since(t)
	}
	p.wall = time.Since(start)
	return p
}

// conf is the network config handed to pl on stdin.
func (e *env) conf(pl, tag, subnet string) []byte {
	var v map[string]any
	switch pl {
	case kipam, kipamTLS:
		logFile := filepath.Join(e.dir, "kube-ipam-"+tag+".log")
		e.logFiles[tag] = logFile
		etcdConfig := map[string]any{"etcdURL": strings.Join(e.etcd.Endpoints, ",")}
		if pl == kipamTLS {
			// The guide's key names.
			etcdConfig = map[string]any{"etcdURL": strings.Join(e.etcdTLS.Endpoints, ","),
				"etcdCertFile": e.etcdTLS.CertFile, "etcdKeyFile": e.etcdTLS.KeyFile, "etcdTrustedCAFileFile": e.etcdTLS.CAFile}
		}
		// debug logs the number of claim races lost, when there were any.
		v = map[string]any{"cniVersion": "0.3.1", "name": "bench-" + tag, "type": "macvlan",
			"ipam": map[string]any{"type": "kube-ipam",
				"etcdConfig": etcdConfig,
				"subnet":     subnet, "logFile": logFile, "logLevel": "debug",
				"podLookup": false, "releaseCooldown": "30s"}}
	case hostLocal:
		v = map[string]any{"cniVersion": "0.3.1", "name": "hl-" + tag,
			"ipam": map[string]any{"type": "host-local", "subnet": subnet, "dataDir": e.hostLocalDir(tag)}}
	}
	b, err := json.Marshal(v)
	if err != nil {
		e.b.Fatal(err)
	}
	return b
}

func (e *env) hostLocalDir(tag string) string { return filepath.Join(e.dir, "host-local-"+tag) }

// run starts n ADD processes of pl, par at a time, each with a fresh
// container ID, and times each from start to exit.
func (e *env) run(pl, tag, subnet string, n, par int) phase {
	return e.cni.batch(e.bins[pl], "ADD", e.conf(pl, tag, subnet), n, par, func(i int) cniCall {
		return cniCall{cid: fmt.Sprintf("%s-%s-%05d-%08x", pl, tag, i, rand.Uint32())}
	})
}

// mustOK fails the benchmark unless every ADD exited 0 with a distinct
// address of subnet (and, when allowed is set, one of those addresses).
func (e *env) mustOK(what string, p phase, subnet string, allowed map[netip.Addr]bool) {
	e.b.Helper()
	if errs, _, _ := addErrors(p, subnet, allowed); len(errs) > 0 {
		e.b.Fatalf("%s: %d of %d ADDs wrong; first ones:\n%s", what, len(errs), len(p.samples), strings.Join(errs[:min(len(errs), 10)], "\n"))
	}
}

// keyBase is the store's prefix of one network (see internal/store).
func keyBase(network string) string {
	return keyBaseAt(config.DefaultEtcdPrefix, network)
}

func ipKey(network string, a netip.Addr) string {
	return keyBase(network) + "ip/4/" + hex.EncodeToString(a.AsSlice())
}

// checkEtcd: etcd holds exactly one record and one attachment per ADD, each
// naming the container that got the address.
func (e *env) checkEtcd(what, network string, p phase) {
	e.b.Helper()
	if err := etcdRecordErrors(e.ctx, e.cli, config.DefaultEtcdPrefix, network, p); err != nil {
		e.b.Fatalf("%s: %v", what, err)
	}
}

func (e *env) checkHostLocalDir(what, tag string, want int) {
	e.b.Helper()
	n, err := hostLocalReservations(filepath.Join(e.hostLocalDir(tag), "hl-"+tag))
	if err != nil {
		e.b.Fatal(err)
	}
	if n != want {
		e.b.Fatalf("%s: host-local's data dir holds %d reservations after %d ADDs", what, n, want)
	}
}

func (e *env) count(prefix string) int {
	e.b.Helper()
	resp, err := e.cli.Get(e.ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		e.b.Fatal(err)
	}
	return int(resp.Count)
}

// pool lists, ascending, the addresses kube-ipam hands out dynamically on a
// subnet with the defaults (rangeStart/rangeEnd/gateway unset), and splits
// them at random (fixed seed) into fillFraction used and the rest free.
func pool(b *testing.B, subnet string) (used []netip.Addr, free map[netip.Addr]bool, all int) {
	b.Helper()
	n := parseNet(b, subnet, "")
	var addrs []netip.Addr
	for _, iv := range ipam.DynamicIntervals(n, 0) {
		for a := iv.Lo; ; a = a.Next() {
			addrs = append(addrs, a)
			if a == iv.Hi {
				break
			}
		}
	}
	r := rand.New(rand.NewPCG(fillSeed, 0))
	r.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	nUsed := int(math.Round(fillFraction * float64(len(addrs))))
	used = addrs[:nUsed]
	free = map[netip.Addr]bool{}
	for _, a := range addrs[nUsed:] {
		free[a] = true
	}
	slices.SortFunc(used, netip.Addr.Compare)
	return used, free, len(addrs)
}

// fillKubeIPAM claims fillFraction of the network's pool directly in etcd,
// in the store's format (record + attachment per address, as a dynamic ADD
// writes them), in transactions of txnOps operations. No cursor is written:
// the gaps were never used. It returns the free addresses.
func (e *env) fillKubeIPAM(network, subnet string) (map[netip.Addr]bool, int, int) {
	e.b.Helper()
	used, free, all := pool(e.b, subnet)
	start := time.Now()
	now := time.Now().UTC()
	per := txnOps / 2
	batches := make(chan []int)
	errc := make(chan error, fillers)
	var wg sync.WaitGroup
	for range fillers {
		wg.Go(func() {
			for idx := range batches {
				ops := make([]clientv3.Op, 0, 2*len(idx))
				for _, i := range idx {
					a := used[i]
					cid := fmt.Sprintf("fill%060x", i)
					rec, _ := json.Marshal(store.Record{Network: network, IP: a.String(), Kind: store.KindDynamic,
						IfName: ifName, ContainerID: cid, Node: "bench-node", Created: now})
					att, _ := json.Marshal(store.Attachment{ContainerID: cid, IfName: ifName,
						IPs: []string{a.String()}, Node: "bench-node", Created: now})
					ops = append(ops, clientv3.OpPut(ipKey(network, a), string(rec)),
						clientv3.OpPut(keyBase(network)+"att/"+cid+"/"+ifName, string(att)))
				}
				if _, err := e.cli.Txn(e.ctx).Then(ops...).Commit(); err != nil {
					select {
					case errc <- err:
					default:
					}
					return
				}
			}
		})
	}
	go func() {
		defer close(batches)
		for lo := 0; lo < len(used); lo += per {
			idx := make([]int, 0, per)
			for i := lo; i < min(lo+per, len(used)); i++ {
				idx = append(idx, i)
			}
			select {
			case batches <- idx:
			case <-e.ctx.Done():
				return
			}
		}
	}()
	wg.Wait()
	select {
	case err := <-errc:
		e.b.Fatalf("filling %s: %v", network, err)
	default:
	}

	// Verify the fill with raw counts and with the store's own readers.
	if n := e.count(keyBase(network) + "ip/4/"); n != len(used) {
		e.b.Fatalf("fill of %s: %d address keys, want %d", network, n, len(used))
	}
	if n := e.count(keyBase(network) + "att/"); n != len(used) {
		e.b.Fatalf("fill of %s: %d attachment keys, want %d", network, n, len(used))
	}
	st := store.New(e.cli, config.DefaultEtcdPrefix, network)
	seen, from := 0, used[0]
	last := lastOfPrefix(netip.MustParsePrefix(subnet))
	for {
		got, full, err := st.Used(e.ctx, from, last, 512)
		if err != nil {
			e.b.Fatal(err)
		}
		for _, a := range got {
			if free[a] {
				e.b.Fatalf("fill of %s: store reads %s as used but it is one of the gaps", network, a)
			}
		}
		seen += len(got)
		if !full {
			break
		}
		from = got[len(got)-1].Next()
	}
	if seen != len(used) {
		e.b.Fatalf("fill of %s: the store's Used() reads %d claimed addresses, want %d", network, seen, len(used))
	}
	for _, i := range []int{0, len(used) / 2, len(used) - 1} {
		s, err := st.State(e.ctx, used[i])
		if err != nil || s.Record == nil || s.Record.IP != used[i].String() {
			e.b.Fatalf("fill of %s: store.State(%s) = %+v, %v", network, used[i], s, err)
		}
		att, err := st.Attachment(e.ctx, s.Record.ContainerID, ifName)
		if err != nil || att == nil || len(att.IPs) != 1 || att.IPs[0] != used[i].String() {
			e.b.Fatalf("fill of %s: store.Attachment(%s) = %+v, %v", network, s.Record.ContainerID, att, err)
		}
	}
	pctFull := 100 * float64(len(used)) / float64(all)
	if pctFull < 98.99 || pctFull > 99.01 {
		e.b.Fatalf("fill of %s is %.3f %%, want 99 %%", network, pctFull)
	}
	e.b.Logf("filled %s: %d of %d addresses claimed (%.2f %%), %d never-used gaps, in %v",
		network, len(used), all, pctFull, len(free), time.Since(start).Round(time.Millisecond))
	if len(free) != all-len(used) {
		e.b.Fatalf("fill of %s: %d gaps + %d used != %d", network, len(free), len(used), all)
	}
	return free, len(used), all
}

func lastOfPrefix(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// fillHostLocal reserves the same positions in host-local's data dir (one
// file per address, as host-local writes them) and returns the free ones.
func (e *env) fillHostLocal(tag, subnet string) map[netip.Addr]bool {
	e.b.Helper()
	used, free, all := pool(e.b, subnet)
	dir := filepath.Join(e.hostLocalDir(tag), "hl-"+tag)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.b.Fatal(err)
	}
	for i, a := range used {
		if err := os.WriteFile(filepath.Join(dir, a.String()), fmt.Appendf(nil, "fill%060x\r\n%s", i, ifName), 0o644); err != nil {
			e.b.Fatal(err)
		}
	}
	e.checkHostLocalDir("host-local fill", tag, len(used))
	e.b.Logf("filled host-local %s: %d of %d addresses reserved", subnet, len(used), all)
	return free
}

func parseNet(tb testing.TB, subnet, extra string) *config.Network {
	tb.Helper()
	n, err := config.Parse(fmt.Appendf(nil, `{"cniVersion":"0.3.1","name":"m","ipam":{"type":"kube-ipam",
		"etcdConfig":{"etcdURL":"http://127.0.0.1:2379"},"subnet":%q,"podLookup":false%s}}`, subnet, extra))
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

var (
	racesRe = regexp.MustCompile(`msg="claim races lost".* count=(\d+)`)
	okMsRe  = regexp.MustCompile(`level=INFO msg=ok .* ms=(\d+)`)
)

// scanLog reads kube-ipam's log: total claim races lost and the time each
// ADD spent inside the plugin (its "ms" field, whole milliseconds).
func scanLog(tb testing.TB, path string) (races, maxRaces int, ms []int) {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if m := racesRe.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			races += n
			maxRaces = max(maxRaces, n)
		}
		if m := okMsRe.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			ms = append(ms, n)
		}
	}
	slices.Sort(ms)
	return races, maxRaces, ms
}

func medianInt(s []int) float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	return float64(s[(len(s)+1)/2-1])
}

func etcdVersion() string {
	bin := os.Getenv("KUBE_IPAM_TEST_ETCD")
	if bin == "" {
		bin = "/usr/bin/etcd"
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "etcd ?"
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return "etcd " + strings.TrimSpace(strings.TrimPrefix(line, "etcd Version:"))
}

func printTable(r *results) {
	k, h := kipam, hostLocal
	t := &table{nameW: 34, widths: []int{10, 12, 8}}
	t.text("\nkube-ipam benchmark (same machine, same run: %d CPUs, %s, one process per ADD)", runtime.NumCPU(), etcdVersion())
	t.row("metric", "kube-ipam", "host-local", "ratio")
	row := func(name string, a, b float64) { t.row(name, num(a, 1), num(b, 1), num(a/b, 2)) }
	row(fmt.Sprintf("ADDs/s, %d in flight", inFlight), r.conc[k].addsPerSec(), r.conc[h].addsPerSec())
	row(fmt.Sprintf("p50 ms, %d in flight", inFlight), r.conc[k].p50(), r.conc[h].p50())
	row(fmt.Sprintf("p99 ms, %d in flight", inFlight), r.conc[k].p99(), r.conc[h].p99())
	row("p50 ms sequential, empty /16", r.seqEmpty[k].p50(), r.seqEmpty[h].p50())
	row("p50 ms sequential, 99% /16", r.seqFull[k].p50(), r.seqFull[h].p50())
	row("p99 ms sequential, 99% /16", r.seqFull[k].p99(), r.seqFull[h].p99())
	t.row("ratio full/empty (p50 sequential)",
		num(r.seqFull[k].p50()/r.seqEmpty[k].p50(), 2), num(r.seqFull[h].p50()/r.seqEmpty[h].p50(), 2))
	row("p50 ms process start only", r.startup[k].p50(), r.startup[h].p50())
	row("p50 CPU ms per ADD process", r.seqEmpty[k].cpuP50(), r.seqEmpty[h].cpuP50())
	kt := r.conc[kipamTLS]
	t.row(fmt.Sprintf("TLS: ADDs/s, %d in flight", inFlight), num(kt.addsPerSec(), 1), num(r.conc[h].addsPerSec(), 1), num(kt.addsPerSec()/r.conc[h].addsPerSec(), 2))
	t.row("TLS: p50 ms sequential, empty /16", num(r.seqEmpty[kipamTLS].p50(), 1), num(r.seqEmpty[h].p50(), 1), num(r.seqEmpty[kipamTLS].p50()/r.seqEmpty[h].p50(), 2))
	t.row("TLS: p50 CPU ms per ADD process", num(r.seqEmpty[kipamTLS].cpuP50(), 1), num(r.seqEmpty[h].cpuP50(), 1), num(r.seqEmpty[kipamTLS].cpuP50()/r.seqEmpty[h].cpuP50(), 2))
	t.text("ratio = kube-ipam / host-local (ADDs/s: higher is better for kube-ipam; ms: lower is).")
	t.text("TLS rows: kube-ipam against a second etcd that requires a client certificate (every ADD process")
	t.text("  makes its own TLS handshake, as deployed); the other kube-ipam rows use plain HTTP.")
	t.text("%d ADDs with %d in flight; %d sequential ADDs per pool (host-local on the 99%% pool: %d);",
		concurrentAdds, inFlight, sequentialAdds, hostLocalFullAdds)
	t.text("99%% = %d of %d addresses claimed at random positions (written in %v), the %d gaps never used.",
		r.fillN, r.poolN, r.fillTime.Round(time.Millisecond), r.poolN-r.fillN)
	t.text("kube-ipam: %d claim races lost with %d in flight (%.2f per ADD, at most %d by one ADD); time inside the plugin (its log), p50:",
		r.races, inFlight, float64(r.races)/float64(concurrentAdds), r.maxRaces)
	t.text("  %.0f ms with %d in flight, %.0f ms sequential empty, %.0f ms sequential 99%%; one etcd put from here: p50 %.1f ms.",
		medianInt(r.inPlugin["conc"]), inFlight, medianInt(r.inPlugin["empty"]), medianInt(r.inPlugin["full"]), r.etcdPut.p50())
	fmt.Print(t.String())
}

// ---- micro-benchmarks of the pure rules (internal/ipam) ----
//
// `make bench` passes -benchtime 1x for BenchmarkAdd, which would time a
// single call here; so each b.Loop iteration makes `inner` calls and ns/op
// is reported per call.

func perCall(b *testing.B, inner int, f func()) {
	b.Helper()
	for b.Loop() {
		for range inner {
			f()
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*inner), "ns/op")
}

// window returns the pool of a /16 and a window of up to 512 "used" keys
// from its start, taking each address with probability density (fixed
// seed); density 0 gives no keys (an empty pool).
func window(b *testing.B, density float64) ([]ipam.Interval, []netip.Addr) {
	b.Helper()
	ivs := ipam.DynamicIntervals(parseNet(b, "10.62.0.0/16", ""), 0)
	r := rand.New(rand.NewPCG(1, 2))
	var used []netip.Addr
	for a := ivs[0].Lo; density > 0 && len(used) < 512; a = a.Next() {
		if r.Float64() < density {
			used = append(used, a)
		}
	}
	return ivs, used
}

// BenchmarkFree is the allocator's per-window search: up to 64 free
// candidates in a 512-key window of used addresses.
func BenchmarkFree(b *testing.B) {
	for _, c := range []struct {
		name    string
		density float64
		want    int // candidates expected, -1 for "some"
	}{{"empty", 0, 64}, {"used99pct", 0.99, -1}, {"used100pct", 1, 0}} {
		b.Run(c.name, func(b *testing.B) {
			ivs, used := window(b, c.density)
			var limit netip.Addr // the last key of a full window
			if len(used) > 0 {
				limit = used[len(used)-1]
			}
			got := ipam.Free(ivs, ivs[0].Lo, used, limit, 64)
			if (c.want >= 0 && len(got) != c.want) || (c.want < 0 && len(got) == 0) {
				b.Fatalf("Free found %d candidates, want %d", len(got), c.want)
			}
			perCall(b, 500, func() { ipam.Free(ivs, ivs[0].Lo, used, limit, 64) })
		})
	}
}

func BenchmarkDynamicIntervals(b *testing.B) {
	for _, c := range []struct{ name, subnet, extra string }{
		{"single16", "10.62.0.0/16", ""},
		{"fixedBlock", "10.62.0.0/16", `,"fixedStart":"10.62.10.0","fixedEnd":"10.62.20.255"`},
	} {
		b.Run(c.name, func(b *testing.B) {
			n := parseNet(b, c.subnet, c.extra)
			perCall(b, 20000, func() { ipam.DynamicIntervals(n, 0) })
		})
	}
}

// BenchmarkCooled is the release-log check of one attempt (32 entries).
func BenchmarkCooled(b *testing.B) {
	now := time.Now()
	base := netip.MustParseAddr("10.62.0.10")
	var entries []ipam.Released
	for i := range 32 {
		entries = append(entries, ipam.Released{IP: base, At: now.Add(time.Duration(i-16) * 2 * time.Second)})
		base = base.Next()
	}
	perCall(b, 20000, func() { ipam.Cooled(entries, now, 30*time.Second) })
}

// BenchmarkConfigParse is the per-ADD parse of the network config.
func BenchmarkConfigParse(b *testing.B) {
	data := []byte(`{"cniVersion":"0.3.1","name":"benchnet","type":"macvlan","ipam":{"type":"kube-ipam",
		"etcdConfig":{"etcdURL":"http://127.0.0.1:2379"},"subnet":"10.60.0.0/16","logFile":"/tmp/kube-ipam.log",
		"podLookup":false,"releaseCooldown":"30s","nodeName":"n1"}}`)
	if _, err := config.Parse(data); err != nil {
		b.Fatal(err)
	}
	perCall(b, 1000, func() { _, _ = config.Parse(data) })
}
