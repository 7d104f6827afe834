package bench

// BenchmarkAdd runs the real kube-ipam binary, one process per ADD as a
// container runtime does, against a real etcd, and Debian's host-local
// binary on the same machine in the same run. Its scenario runs once per
// benchmark run (the b.N == 1 call); the framework's ramp-up calls with a
// larger b.N reuse that result, so `-benchtime 1x` and the default agree.
//
// Each plugin is a column (addPlugin: binary, environment, config); every
// column runs the same phases and is costed the same way: its processes'
// time and CPU (rusage), their peak RSS (through the meter bench/rusage),
// its start-up alone, and, for a plugin that writes to etcd, the etcd writes
// and lost claim races per ADD.
//
// The micro-benchmarks at the end time the pure allocation rules of
// internal/ipam in-process.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
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

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
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
	startupRuns       = 50  // runs of each binary that only start and exit
	meteredAdds       = 100 // ADDs at inFlight under the RSS meter (bench/rusage)
	etcdPuts          = 200
	warmupAdds        = 5    // unmeasured ADDs per binary first (page cache)
	fillFraction      = 0.99 // share of the /16 claimed before the full-pool phase
	// etcd's default --max-txn-ops; two puts (record, attachment) per address.
	txnOps    = 128
	fillers   = 8 // concurrent fill transactions
	ifName    = "net1"
	perAddMax = 2 * time.Minute // a single ADD process taking longer is a hang
	fillSeed  = 20260101        // fixed so that every run fills the same gaps
	// etcdWritesMetric is etcd's count of committed raft proposals: one per
	// write request (a Put, a DeleteRange, or a Txn with a write in either
	// branch, whether its compare held or not); reads and read-only Txns are
	// not proposals. etcd_mvcc_txn_total is not it: it counts read-only
	// Txns and misses a Txn whose failed compare only read. calibrateWrites
	// checks this on every run.
	etcdWritesMetric = "etcd_server_proposals_committed_total"
)

// sample is one ADD process.
type sample struct {
	cid    string
	dur    time.Duration // fork/exec to exit, as the runtime waits for it
	cpu    time.Duration // user + system CPU of the process
	maxRSS int64         // peak resident set of the process, bytes (metered phase only)
	ip     netip.Addr
	err    error
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

// rssMB is the nearest-rank percentile q of the processes' peak RSS, in MB
// (2^20 bytes); q = 1 is the largest.
func (p phase) rssMB(q float64) float64 {
	if len(p.samples) == 0 {
		return math.NaN()
	}
	r := make([]int64, len(p.samples))
	for i, s := range p.samples {
		r[i] = s.maxRSS
	}
	slices.Sort(r)
	i := int(math.Ceil(q*float64(len(r)))) - 1
	return float64(r[max(i, 0)]) / (1 << 20)
}

func (p phase) p50() float64        { return pct(p.durations(), 0.50) }
func (p phase) p99() float64        { return pct(p.durations(), 0.99) }
func (p phase) addsPerSec() float64 { return float64(len(p.samples)) / p.wall.Seconds() }

const (
	kipam    = "kube-ipam"
	kipamTLS = "kube-ipam-tls" // the same binary, etcd over TLS with a client certificate
	// The same two through the node agent (the shim hands each call to
	// it); the two above run the plugin in each ADD's process (the shim
	// execs kube-ipam-direct), as a node without the agent does.
	kipamAgent    = "kube-ipam-agent"
	kipamAgentTLS = "kube-ipam-agent-tls"
	hostLocal     = "host-local"
	// baseline is the column every ratio divides by.
	baseline = hostLocal
)

// addPlugin is one column of BenchmarkAdd: a CNI IPAM binary run one
// process per call, with its environment and network config. Adding a
// column is one entry in (*env).plugins.
type addPlugin struct {
	name  string   // column header and metric name
	short string   // its abbreviation in the ratio columns
	bin   string   // path of the binary the runtime executes
	env   []string // "K=V" set on every call beside the CNI_ variables
	// conf is the network config of one phase: network is its name (also
	// host-local's directory), subnet its /16, logFile kube-ipam's log.
	conf func(network, subnet, logFile string) []byte
	// etcd and cli are the store the plugin writes to; nil for a plugin
	// without one (host-local). With one, its records are checked after the
	// 50-in-flight phase and etcd's own count of write proposals around it
	// gives the writes per ADD.
	etcd *testenv.Etcd
	cli  *clientv3.Client
	// fullAdds is the number of sequential ADDs on the 99 % /16; 0 skips
	// that phase (it needs a fill in the plugin's store format).
	fullAdds int
	// debugLog: the config logs at debug level to logFile, whose "ms"
	// field is the time inside the plugin.
	debugLog bool
	// agent, when set, runs the calls (env points the shim at it).
	agent *nodeAgent
}

// addColumn is what one plugin measured.
type addColumn struct {
	conc, seqEmpty, seqFull phase
	metered                 phase   // ADDs at inFlight under the RSS meter
	startup                 phase   // CNI_COMMAND=VERSION only
	writes                  float64 // etcd write proposals during conc; NaN without etcd
	races, maxRaces         int     // claim races lost in conc (records' lostRaces): total, most by one ADD
	inPlugin                map[string][]int
	// agentCPU is the node agent's CPU during conc per successful ADD
	// (NaN without an agent): the plugin processes' rusage leaves it out.
	agentCPU float64
}

// writesPerAdd is etcd writes per successful ADD at inFlight.
func (c *addColumn) writesPerAdd() float64 {
	return c.writes / float64(len(c.conc.succeeded().samples))
}

// racesPerAdd is claim races lost per successful ADD at inFlight.
func (c *addColumn) racesPerAdd() float64 {
	if math.IsNaN(c.writes) {
		return math.NaN()
	}
	return float64(c.races) / float64(len(c.conc.succeeded().samples))
}

// results is everything the table shows.
type results struct {
	plugins []string          // column order
	short   map[string]string // column -> its abbreviation in ratio headers
	cols    map[string]*addColumn
	// startOnly: binaries whose ADDs this benchmark does not run (they need
	// a Kubernetes API; BenchmarkKubeStores runs them), only started.
	startOnly     map[string]phase
	startOnlyName []string
	etcdPut       phase // single puts from this process
	meterFloor    int64 // peak RSS the meter reports for /bin/true, bytes
	agentPeakRSS  int64 // the node agent's VmHWM at the end, bytes
	fillN, poolN  int
	fillTime      time.Duration
}

var addScenario scenario[results]

func BenchmarkAdd(b *testing.B) {
	r := addScenario.result(b, runScenario, printTable)
	report := func(name string, f func(b *testing.B)) { reportMetrics(b, name, f) }
	for _, pl := range r.plugins {
		c := r.cols[pl]
		report(fmt.Sprintf("concurrent%d/%s", inFlight, pl), func(b *testing.B) {
			b.ReportMetric(c.conc.addsPerSec(), "adds/s")
			b.ReportMetric(c.conc.p50(), "p50-ms")
			b.ReportMetric(c.conc.p99(), "p99-ms")
			b.ReportMetric(c.conc.cpuP50(), "cpu-p50-ms")
			b.ReportMetric(c.metered.rssMB(0.5), "peak-rss-p50-MB")
			b.ReportMetric(c.metered.rssMB(1), "peak-rss-max-MB")
			if !math.IsNaN(c.agentCPU) {
				b.ReportMetric(c.agentCPU, "agent-cpu-ms/add")
				b.ReportMetric(float64(r.agentPeakRSS)/(1<<20), "agent-peak-rss-MB")
			}
			if !math.IsNaN(c.writes) {
				b.ReportMetric(c.writesPerAdd(), "etcd-writes/add")
				b.ReportMetric(c.racesPerAdd(), "races-lost/add")
			}
		})
	}
	for _, pl := range r.plugins {
		e := r.cols[pl].seqEmpty
		report("sequential-empty16/"+pl, func(b *testing.B) {
			b.ReportMetric(e.p50(), "p50-ms")
			b.ReportMetric(e.p99(), "p99-ms")
			b.ReportMetric(e.cpuP50(), "cpu-p50-ms")
		})
	}
	for _, pl := range r.plugins {
		e, f := r.cols[pl].seqEmpty, r.cols[pl].seqFull
		if len(f.samples) == 0 {
			continue
		}
		report("sequential-full99/"+pl, func(b *testing.B) {
			b.ReportMetric(f.p50(), "p50-ms")
			b.ReportMetric(f.p99(), "p99-ms")
			b.ReportMetric(f.p50()/e.p50(), "full/empty-p50")
		})
	}
	for _, pl := range r.plugins {
		s := r.cols[pl].startup
		report("process-start/"+pl, func(b *testing.B) { b.ReportMetric(s.p50(), "p50-ms") })
	}
	for _, name := range r.startOnlyName {
		s := r.startOnly[name]
		report("process-start/"+name, func(b *testing.B) { b.ReportMetric(s.p50(), "p50-ms") })
	}
	h := r.cols[baseline]
	for _, pl := range r.plugins {
		if pl == baseline {
			continue
		}
		c := r.cols[pl]
		report("ratio-"+pl+"/"+baseline, func(b *testing.B) {
			b.ReportMetric(c.conc.addsPerSec()/h.conc.addsPerSec(), "adds/s-ratio")
			b.ReportMetric(c.conc.p50()/h.conc.p50(), "p50-ratio")
			b.ReportMetric(c.conc.p99()/h.conc.p99(), "p99-ratio")
			b.ReportMetric(c.seqEmpty.p50()/h.seqEmpty.p50(), "seq-p50-ratio")
			b.ReportMetric(c.seqEmpty.cpuP50()/h.seqEmpty.cpuP50(), "cpu-p50-ratio")
			b.ReportMetric(c.metered.rssMB(1)/h.metered.rssMB(1), "peak-rss-max-ratio")
			b.ReportMetric(c.startup.p50()/h.startup.p50(), "start-p50-ratio")
		})
	}
}

// env is the scenario's shared setup.
type env struct {
	b       *testing.B
	ctx     context.Context
	etcd    *testenv.Etcd
	cli     *clientv3.Client
	etcdTLS *testenv.Etcd // kipamTLS's store
	cliTLS  *clientv3.Client
	agent   *nodeAgent // the agent columns' node agent
	cni     *cniRunner
	dir     string
	meter   string // bench/rusage, built for this run
}

// plugins are the columns, in table order; the baseline must be one.
func (e *env) plugins() []*addPlugin {
	kubeIPAM := testenv.Binary(e.b, "kube-ipam")
	direct := []string{"KUBE_IPAM_AGENT=off"} // never a node agent this run did not start
	return []*addPlugin{
		{name: kipam, short: "ki", bin: kubeIPAM, env: direct, conf: kubeIPAMConf(e.etcd, false),
			etcd: e.etcd, cli: e.cli, fullAdds: sequentialAdds, debugLog: true},
		// Every ADD process makes its own TLS handshake, as deployed.
		{name: kipamTLS, short: "ki-tls", bin: kubeIPAM, env: direct, conf: kubeIPAMConf(e.etcdTLS, true),
			etcd: e.etcdTLS, cli: e.cliTLS, debugLog: true},
		// The agent keeps its etcd connections warm between calls.
		{name: kipamAgent, short: "ki-ag", bin: kubeIPAM, env: e.agent.env(), conf: kubeIPAMConf(e.etcd, false),
			etcd: e.etcd, cli: e.cli, fullAdds: sequentialAdds, debugLog: true, agent: e.agent},
		{name: kipamAgentTLS, short: "ki-ag-tls", bin: kubeIPAM, env: e.agent.env(), conf: kubeIPAMConf(e.etcdTLS, true),
			etcd: e.etcdTLS, cli: e.cliTLS, debugLog: true, agent: e.agent},
		{name: hostLocal, short: "hl", bin: filepath.Join(e.cni.path, "host-local"),
			conf: hostLocalConf(e.dir), fullAdds: hostLocalFullAdds},
	}
}

// kubeIPAMConf is kube-ipam's config on etcd (with tls, the guide's key
// names for the client certificate). Debug level logs the claim races an
// ADD lost and, at info, its time inside the plugin.
func kubeIPAMConf(etcd *testenv.Etcd, tls bool) func(network, subnet, logFile string) []byte {
	return func(network, subnet, logFile string) []byte {
		etcdConfig := map[string]any{"etcdURL": strings.Join(etcd.Endpoints, ",")}
		if tls {
			etcdConfig["etcdCertFile"], etcdConfig["etcdKeyFile"], etcdConfig["etcdTrustedCAFileFile"] = etcd.CertFile, etcd.KeyFile, etcd.CAFile
		}
		return mustJSON(map[string]any{"cniVersion": "0.3.1", "name": network, "type": "macvlan",
			"ipam": map[string]any{"type": "kube-ipam", "etcdConfig": etcdConfig,
				"subnet": subnet, "logFile": logFile, "logLevel": "debug",
				"podLookup": false, "releaseCooldown": "30s"}})
	}
}

// hostLocalConf keeps each network's reservations in dir/<network>.
func hostLocalConf(dir string) func(network, subnet, logFile string) []byte {
	return func(network, subnet, _ string) []byte {
		return mustJSON(map[string]any{"cniVersion": "0.3.1", "name": network,
			"ipam": map[string]any{"type": "host-local", "subnet": subnet, "dataDir": dir}})
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps of strings and bools: cannot fail
	}
	return b
}

// Phases; each plugin has its own /16 per phase, so no phase sees another's
// state: 10.<100+5i+k>.0.0/16 for the i-th column and the k-th phase.
var phaseNames = []string{"warm", "conc", "empty", "full", "rss"}

func subnetOf(col int, ph string) string {
	return fmt.Sprintf("10.%d.0.0/16", 100+len(phaseNames)*col+slices.Index(phaseNames, ph))
}

// network names a plugin's network in one phase (etcd prefix, host-local
// directory, log file).
func network(pl, ph string) string { return "bench-" + ph + "-" + pl }

func runScenario(b *testing.B) *results {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	e := &env{b: b, ctx: ctx, dir: b.TempDir()}
	e.cni = newCNIRunner(ctx, testenv.CNIPluginDir(b))
	e.etcd = testenv.StartEtcd(b)
	e.cli = e.etcd.Client(b)
	e.etcdTLS = testenv.StartEtcdTLS(b)
	e.cliTLS = e.etcdTLS.Client(b)
	e.meter = e.buildMeter()
	e.agent = e.startAgent()
	plugins := e.plugins()
	if len(plugins) > 25 || !slices.ContainsFunc(plugins, func(p *addPlugin) bool { return p.name == baseline }) {
		b.Fatalf("BenchmarkAdd needs the %s column and at most 25 columns (subnets)", baseline)
	}
	r := &results{cols: map[string]*addColumn{}, short: map[string]string{}, startOnly: map[string]phase{}}
	for _, p := range plugins {
		r.plugins = append(r.plugins, p.name)
		r.short[p.name] = p.short
		r.cols[p.name] = &addColumn{writes: math.NaN(), agentCPU: math.NaN(), inPlugin: map[string][]int{}}
	}
	e.calibrateWrites(e.etcd)
	e.calibrateWrites(e.etcdTLS)

	// Warm-up: first exec of each binary pays for reading it from disk.
	for i, p := range plugins {
		ph := e.run(p, i, "warm", warmupAdds, 1)
		e.mustOK(p.name+" warm-up", ph, subnetOf(i, "warm"), nil)
	}
	// Context for the ADD times: what starting each binary alone costs, and
	// what one etcd write costs here (the WAL fsync every claim waits for).
	for _, p := range plugins {
		r.cols[p.name].startup = e.runStartup(p.name, p.bin, p.env, startupRuns)
	}
	wb := filepath.Join(whereaboutsDir(b), "whereabouts")
	r.startOnlyName = []string{whereabouts}
	r.startOnly[whereabouts] = e.runStartup(whereabouts, wb, nil, startupRuns)
	r.etcdPut = e.timePuts(etcdPuts)

	// 1. Concurrent: 500 ADDs, 50 in flight, fresh container IDs. etcd
	// counts the writes; nothing else writes to it meanwhile.
	for i, p := range plugins {
		c, what := r.cols[p.name], p.name+" concurrent"
		var (
			before    float64
			agentCPU0 time.Duration
		)
		if p.etcd != nil {
			before = e.etcdWrites(p.etcd)
		}
		if p.agent != nil {
			agentCPU0 = e.agentCPU(p.agent)
		}
		c.conc = e.run(p, i, "conc", concurrentAdds, inFlight)
		if p.etcd != nil {
			c.writes = e.etcdWrites(p.etcd) - before
		}
		if p.agent != nil {
			used := e.agentCPU(p.agent) - agentCPU0
			c.agentCPU = float64(used.Microseconds()) / 1000 / float64(len(c.conc.succeeded().samples))
		}
		e.mustOK(what, c.conc, subnetOf(i, "conc"), nil)
		e.checkStore(what, p, "conc", c.conc)
		if p.etcd != nil {
			c.races, c.maxRaces = e.lostRaces(p, "conc")
		}
	}

	// 2. Sequential on an empty /16.
	for i, p := range plugins {
		c := r.cols[p.name]
		c.seqEmpty = e.run(p, i, "empty", sequentialAdds, 1)
		e.mustOK(p.name+" sequential empty", c.seqEmpty, subnetOf(i, "empty"), nil)
	}

	// 2b. Peak RSS: ADDs at inFlight again, each started through the meter
	// (bench/rusage), apart from the timed phases so that those stay
	// unchanged by it.
	r.meterFloor = e.meterFloor()
	for i, p := range plugins {
		c, what := r.cols[p.name], p.name+" metered"
		c.metered = e.runMetered(p, i, "rss", meteredAdds, inFlight)
		e.mustOK(what, c.metered, subnetOf(i, "rss"), nil)
		e.checkStore(what, p, "rss", c.metered)
	}

	// 3. Sequential on a /16 filled to 99 % at random positions, written in
	// the plugin's store format.
	for i, p := range plugins {
		if p.fullAdds == 0 {
			continue
		}
		subnet, net := subnetOf(i, "full"), network(p.name, "full")
		var gaps map[netip.Addr]bool
		if p.etcd != nil {
			fillStart := time.Now()
			gaps, r.fillN, r.poolN = e.fillKubeIPAM(p.cli, net, subnet)
			r.fillTime = time.Since(fillStart)
		} else {
			gaps = e.fillHostLocal(net, subnet)
		}
		c := r.cols[p.name]
		c.seqFull = e.run(p, i, "full", p.fullAdds, 1)
		e.mustOK(p.name+" sequential 99% full", c.seqFull, subnet, gaps)
	}

	rss, err := e.agent.peakRSS()
	if err != nil {
		b.Fatalf("the node agent's peak RSS: %v", err)
	}
	r.agentPeakRSS = rss
	for _, p := range plugins {
		if p.debugLog {
			for _, ph := range phaseNames[1:] {
				if p.fullAdds > 0 || ph != "full" {
					r.cols[p.name].inPlugin[ph] = scanLogMs(b, e.logFile(p.name, ph))
				}
			}
		}
	}
	return r
}

// agentCPU is the node agent's CPU time so far.
func (e *env) agentCPU(a *nodeAgent) time.Duration {
	e.b.Helper()
	d, err := a.cpu()
	if err != nil {
		e.b.Fatalf("the node agent's CPU time: %v", err)
	}
	return d
}

// runStartup times n sequential runs of bin that do no work
// (CNI_COMMAND=VERSION, no config), i.e. exec plus the runtime's and
// packages' init until the plugin's main answers, and the exit.
func (e *env) runStartup(name, bin string, extraEnv []string, n int) phase {
	e.b.Helper()
	p := phase{samples: make([]sample, n)}
	start := time.Now()
	for i := range n {
		cmd := exec.CommandContext(e.ctx, bin)
		cmd.Env = append(append(slices.Clip(e.cni.baseEnv), extraEnv...), "CNI_COMMAND=VERSION")
		t := time.Now()
		out, err := cmd.CombinedOutput()
		p.samples[i].dur = time.Since(t)
		if err != nil || !bytes.Contains(out, []byte("supportedVersions")) {
			e.b.Fatalf("%s with CNI_COMMAND=VERSION: %v\n%s", name, err, out)
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

// etcdWrites reads etcdWritesMetric from the server's own /metrics (on its
// client URL, with the client certificate when it requires one).
func (e *env) etcdWrites(etcd *testenv.Etcd) float64 {
	e.b.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	if etcd.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(etcd.CertFile, etcd.KeyFile)
		if err != nil {
			e.b.Fatal(err)
		}
		ca, err := os.ReadFile(etcd.CAFile)
		if err != nil {
			e.b.Fatal(err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(ca) {
			e.b.Fatalf("%s holds no PEM certificate", etcd.CAFile)
		}
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}}
	}
	req, err := http.NewRequestWithContext(e.ctx, http.MethodGet, etcd.ClientURL+"/metrics", nil)
	if err != nil {
		e.b.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		e.b.Fatalf("etcd metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e.b.Fatalf("etcd metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		e.b.Fatalf("etcd metrics: %v", err)
	}
	v, err := metricValue(families[etcdWritesMetric])
	if err != nil {
		e.b.Fatalf("etcd metrics: %s: %v", etcdWritesMetric, err)
	}
	return v
}

// calibrateWrites checks that etcdWritesMetric counts exactly the write
// requests: a Put and a Txn whose compare fails (its else branch only
// reads) count one each; a Get and a read-only Txn count nothing.
func (e *env) calibrateWrites(etcd *testenv.Etcd) {
	e.b.Helper()
	cli := e.cli
	if etcd == e.etcdTLS {
		cli = e.cliTLS
	}
	key := "/bench-calibrate/" + strconv.FormatUint(rand.Uint64(), 16)
	before := e.etcdWrites(etcd)
	if _, err := cli.Put(e.ctx, key, "1"); err != nil {
		e.b.Fatal(err)
	}
	lost, err := cli.Txn(e.ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, "2")).Else(clientv3.OpGet(key)).Commit()
	if err != nil || lost.Succeeded {
		e.b.Fatalf("calibration txn: succeeded %v, %v", lost != nil && lost.Succeeded, err)
	}
	if _, err := cli.Get(e.ctx, key); err != nil {
		e.b.Fatal(err)
	}
	if _, err := cli.Txn(e.ctx).If(clientv3.Compare(clientv3.Value(key), "=", "1")).Then(clientv3.OpGet(key)).Commit(); err != nil {
		e.b.Fatal(err)
	}
	if d := e.etcdWrites(etcd) - before; d != 2 {
		e.b.Fatalf("%s rose by %v for one Put, one losing write Txn, one Get and one read-only Txn, want 2: it does not count write requests on this etcd (%s)",
			etcdWritesMetric, d, etcdVersion())
	}
}

// lostRaces sums the claim races the ADDs of a phase lost, as their records
// say (lostRaces), and the most one ADD lost.
func (e *env) lostRaces(p *addPlugin, ph string) (total, most int) {
	e.b.Helper()
	base := keyBase(network(p.name, ph)) + "ip/4/"
	resp, err := p.cli.Get(e.ctx, base, clientv3.WithPrefix())
	if err != nil {
		e.b.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if strings.Contains(strings.TrimPrefix(string(kv.Key), base), "/") {
			continue // a released address's tombstone
		}
		var rec store.Record
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			e.b.Fatalf("record %s: %v", kv.Key, err)
		}
		total += rec.LostRaces
		most = max(most, rec.LostRaces)
	}
	return total, most
}

func (e *env) logFile(pl, ph string) string {
	return filepath.Join(e.dir, network(pl, ph)+".log")
}

// run starts n ADD processes of the i-th plugin in phase ph, par at a time,
// each with a fresh container ID, and times each from start to exit.
func (e *env) run(p *addPlugin, i int, ph string, n, par int) phase {
	return e.runVia(p, p.bin, nil, i, ph, n, par)
}

// runVia is run with bin executed instead of the plugin's binary, with
// extraEnv (the meter, which then runs the plugin).
func (e *env) runVia(p *addPlugin, bin string, extraEnv []string, i int, ph string, n, par int) phase {
	c := *e.cni
	c.baseEnv = append(append(slices.Clip(c.baseEnv), p.env...), extraEnv...)
	conf := p.conf(network(p.name, ph), subnetOf(i, ph), e.logFile(p.name, ph))
	return c.batch(bin, "ADD", conf, n, par, func(k int) cniCall {
		return cniCall{cid: fmt.Sprintf("%s-%s-%05d-%08x", p.name, ph, k, rand.Uint32())}
	})
}

// buildMeter builds bench/rusage (static, as small as a Go program gets).
func (e *env) buildMeter() string {
	e.b.Helper()
	out := filepath.Join(e.dir, "rusage")
	cmd := exec.CommandContext(e.ctx, "go", "build", "-trimpath", "-o", out, "./bench/rusage")
	cmd.Dir = testenv.ModuleRoot(e.b)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		e.b.Fatalf("building the RSS meter bench/rusage: %v\n%s", err, msg)
	}
	return out
}

// meterEnv makes the meter run bin and write each call's peak RSS into dir.
func meterEnv(bin, dir string) []string {
	return []string{"BENCH_RUSAGE_BIN=" + bin, "BENCH_RUSAGE_DIR=" + dir}
}

// readMeter is the peak RSS, in bytes, the meter wrote for container cid.
func readMeter(dir, cid string) (int64, error) {
	data, err := os.ReadFile(filepath.Join(dir, cid))
	if err != nil {
		return 0, fmt.Errorf("RSS meter: %v", err)
	}
	kib, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil || kib <= 0 {
		return 0, fmt.Errorf("RSS meter wrote %q for %s", data, cid)
	}
	return kib << 10, nil
}

// runMetered is run with each process started by the meter, which records
// its peak RSS into the samples.
func (e *env) runMetered(p *addPlugin, i int, ph string, n, par int) phase {
	e.b.Helper()
	dir := filepath.Join(e.dir, "rusage-"+network(p.name, ph))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.b.Fatal(err)
	}
	got := e.runVia(p, e.meter, meterEnv(p.bin, dir), i, ph, n, par)
	for k := range got.samples {
		s := &got.samples[k]
		if s.err == nil {
			s.maxRSS, s.err = readMeter(dir, s.cid)
		}
	}
	return got
}

// meterFloor is the peak RSS the meter reports for /bin/true: no process it
// meters can show less (the exec replaces the meter's own memory).
func (e *env) meterFloor() int64 {
	e.b.Helper()
	dir := filepath.Join(e.dir, "rusage-floor")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.b.Fatal(err)
	}
	cmd := exec.CommandContext(e.ctx, e.meter)
	cmd.Env = append(meterEnv("/bin/true", dir), "CNI_CONTAINERID=floor")
	if msg, err := cmd.CombinedOutput(); err != nil {
		e.b.Fatalf("RSS meter on /bin/true: %v\n%s", err, msg)
	}
	rss, err := readMeter(dir, "floor")
	if err != nil {
		e.b.Fatal(err)
	}
	return rss
}

// mustOK fails the benchmark unless every ADD exited 0 with a distinct
// address of subnet (and, when allowed is set, one of those addresses).
func (e *env) mustOK(what string, p phase, subnet string, allowed map[netip.Addr]bool) {
	e.b.Helper()
	if errs, _, _ := addErrors(p, subnet, allowed); len(errs) > 0 {
		e.b.Fatalf("%s: %d of %d ADDs wrong; first ones:\n%s", what, len(errs), len(p.samples), strings.Join(errs[:min(len(errs), 10)], "\n"))
	}
}

// checkStore: etcd holds exactly one record and one attachment per ADD,
// each naming the container that got the address; host-local one file per
// ADD.
func (e *env) checkStore(what string, p *addPlugin, ph string, got phase) {
	e.b.Helper()
	if p.etcd != nil {
		if err := etcdRecordErrors(e.ctx, p.cli, config.DefaultEtcdPrefix, network(p.name, ph), got); err != nil {
			e.b.Fatalf("%s: %v", what, err)
		}
		return
	}
	e.checkHostLocalDir(what, network(p.name, ph), len(got.samples))
}

// keyBase is the store's prefix of one network (see internal/store).
func keyBase(network string) string {
	return keyBaseAt(config.DefaultEtcdPrefix, network)
}

func ipKey(network string, a netip.Addr) string {
	return keyBase(network) + "ip/4/" + hex.EncodeToString(a.AsSlice())
}

func (e *env) checkHostLocalDir(what, network string, want int) {
	e.b.Helper()
	n, err := hostLocalReservations(filepath.Join(e.dir, network))
	if err != nil {
		e.b.Fatal(err)
	}
	if n != want {
		e.b.Fatalf("%s: host-local's data dir holds %d reservations after %d ADDs", what, n, want)
	}
}

func (e *env) count(cli *clientv3.Client, prefix string) int {
	e.b.Helper()
	resp, err := cli.Get(e.ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
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
func (e *env) fillKubeIPAM(cli *clientv3.Client, network, subnet string) (map[netip.Addr]bool, int, int) {
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
				if _, err := cli.Txn(e.ctx).Then(ops...).Commit(); err != nil {
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
	if n := e.count(cli, keyBase(network)+"ip/4/"); n != len(used) {
		e.b.Fatalf("fill of %s: %d address keys, want %d", network, n, len(used))
	}
	if n := e.count(cli, keyBase(network)+"att/"); n != len(used) {
		e.b.Fatalf("fill of %s: %d attachment keys, want %d", network, n, len(used))
	}
	st := store.New(cli, config.DefaultEtcdPrefix, network)
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

// fillHostLocal reserves the same positions in host-local's data dir of
// network (one file per address, as host-local writes them) and returns the
// free ones.
func (e *env) fillHostLocal(network, subnet string) map[netip.Addr]bool {
	e.b.Helper()
	used, free, all := pool(e.b, subnet)
	dir := filepath.Join(e.dir, network)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.b.Fatal(err)
	}
	for i, a := range used {
		if err := os.WriteFile(filepath.Join(dir, a.String()), fmt.Appendf(nil, "fill%060x\r\n%s", i, ifName), 0o644); err != nil {
			e.b.Fatal(err)
		}
	}
	e.checkHostLocalDir("host-local fill", network, len(used))
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

// metricValue is the value of a family's single series (gauge or counter:
// etcd exports its proposal counts as gauges).
func metricValue(mf *dto.MetricFamily) (float64, error) {
	if mf == nil {
		return 0, fmt.Errorf("not exported")
	}
	if len(mf.Metric) != 1 {
		return 0, fmt.Errorf("%d series, want 1", len(mf.Metric))
	}
	switch m := mf.Metric[0]; {
	case m.Gauge != nil:
		return m.Gauge.GetValue(), nil
	case m.Counter != nil:
		return m.Counter.GetValue(), nil
	}
	return 0, fmt.Errorf("type %v, want a gauge or a counter", mf.GetType())
}

var okMsRe = regexp.MustCompile(`level=INFO msg=ok .* ms=(\d+)`)

// scanLogMs reads the time each ADD spent inside the plugin from kube-ipam's
// log (its "ms" field, whole milliseconds), sorted.
func scanLogMs(tb testing.TB, path string) (ms []int) {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if m := okMsRe.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			ms = append(ms, n)
		}
	}
	slices.Sort(ms)
	return ms
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

// printTable: one column per plugin, then each plugin's ratio to the
// baseline; "-" where a plugin has no such figure.
func printTable(r *results) {
	var others []string
	for _, pl := range r.plugins {
		if pl != baseline {
			others = append(others, pl)
		}
	}
	t := &table{nameW: 36}
	head := []string{}
	for _, pl := range r.plugins {
		head = append(head, pl)
		t.widths = append(t.widths, max(10, len(pl)))
	}
	for _, pl := range others {
		h := r.short[pl] + "/" + r.short[baseline]
		head = append(head, h)
		t.widths = append(t.widths, max(7, len(h)))
	}
	t.text("\nkube-ipam benchmark (same machine, same run: %d CPUs, %s, one process per ADD)", runtime.NumCPU(), etcdVersion())
	t.row("metric", head...)
	// row prints f of every column, rounded to prec, and, when ratio is
	// set, each plugin's figure over the baseline's.
	row := func(name string, prec int, ratio bool, f func(c *addColumn) float64) {
		var cells []string
		for _, pl := range r.plugins {
			cells = append(cells, num(f(r.cols[pl]), prec))
		}
		for _, pl := range others {
			v := "-"
			if ratio {
				v = num(f(r.cols[pl])/f(r.cols[baseline]), 2)
			}
			cells = append(cells, v)
		}
		t.row(name, cells...)
	}
	full := func(f func(c *addColumn) float64) func(c *addColumn) float64 {
		return func(c *addColumn) float64 {
			if len(c.seqFull.samples) == 0 {
				return math.NaN()
			}
			return f(c)
		}
	}
	row(fmt.Sprintf("ADDs/s, %d in flight", inFlight), 1, true, func(c *addColumn) float64 { return c.conc.addsPerSec() })
	row(fmt.Sprintf("p50 ms, %d in flight", inFlight), 1, true, func(c *addColumn) float64 { return c.conc.p50() })
	row(fmt.Sprintf("p99 ms, %d in flight", inFlight), 1, true, func(c *addColumn) float64 { return c.conc.p99() })
	row("p50 ms sequential, empty /16", 1, true, func(c *addColumn) float64 { return c.seqEmpty.p50() })
	row("p50 ms sequential, 99% /16", 1, true, full(func(c *addColumn) float64 { return c.seqFull.p50() }))
	row("p99 ms sequential, 99% /16", 1, true, full(func(c *addColumn) float64 { return c.seqFull.p99() }))
	row("ratio full/empty (p50 sequential)", 2, false, full(func(c *addColumn) float64 { return c.seqFull.p50() / c.seqEmpty.p50() }))
	row("p50 ms process start only", 1, true, func(c *addColumn) float64 { return c.startup.p50() })
	row("p50 CPU ms per ADD, sequential", 1, true, func(c *addColumn) float64 { return c.seqEmpty.cpuP50() })
	row(fmt.Sprintf("p50 CPU ms per ADD, %d in flight", inFlight), 1, true, func(c *addColumn) float64 { return c.conc.cpuP50() })
	row(fmt.Sprintf("+ agent CPU ms per ADD (mean), %d in flight", inFlight), 1, false, func(c *addColumn) float64 { return c.agentCPU })
	row(fmt.Sprintf("peak RSS MB per ADD p50, %d in flight", inFlight), 1, true, func(c *addColumn) float64 { return c.metered.rssMB(0.5) })
	row(fmt.Sprintf("peak RSS MB per ADD max, %d in flight", inFlight), 1, true, func(c *addColumn) float64 { return c.metered.rssMB(1) })
	row(fmt.Sprintf("etcd writes per ADD, %d in flight", inFlight), 2, false, func(c *addColumn) float64 { return c.writesPerAdd() })
	row(fmt.Sprintf("claim races lost per ADD, %d in flight", inFlight), 2, false, func(c *addColumn) float64 { return c.racesPerAdd() })
	t.text("ratio = plugin / %s (ADDs/s: higher is better for the plugin; ms and MB: lower is).", baseline)
	t.text("%s: against a second etcd that requires a client certificate (every ADD process makes its own", kipamTLS)
	t.text("  TLS handshake, as deployed); %s uses plain HTTP.", kipam)
	t.text("%d ADDs with %d in flight; %d sequential ADDs per pool (host-local on the 99%% pool: %d);",
		concurrentAdds, inFlight, sequentialAdds, hostLocalFullAdds)
	t.text("99%% = %d of %d addresses claimed at random positions (written in %v), the %d gaps never used.",
		r.fillN, r.poolN, r.fillTime.Round(time.Millisecond), r.poolN-r.fillN)
	t.text("process start: CNI_COMMAND=VERSION, exec to exit (p50 of %d); the shim hands only ADD and DEL to the agent,", startupRuns)
	t.text("  so for every kube-ipam column this is the shim and the kube-ipam-direct it execs. CPU: user + system (rusage).")
	t.text("peak RSS: %d more ADDs per plugin, %d in flight, each run by the meter bench/rusage (maxrss, goal ≤ 40 MB;", meteredAdds, inFlight)
	t.text("  the meter reports %.1f MB for /bin/true, the floor of what it can report).", float64(r.meterFloor)/(1<<20))
	t.text("%s, %s: the shim hands each call to one node agent (kube-ipam-install --agent-only), which keeps its", kipamAgent, kipamAgentTLS)
	t.text("  etcd connections warm; its own CPU is the '+ agent' row (/proc, over the %d-in-flight phase), its peak RSS", inFlight)
	t.text("  %.1f MB for the whole run (both columns); %s and %s set KUBE_IPAM_AGENT=off (the shim execs kube-ipam-direct).", float64(r.agentPeakRSS)/(1<<20), kipam, kipamTLS)
	t.text("etcd writes: the change in etcd's %s over the phase", etcdWritesMetric)
	t.text("  (Put, DeleteRange, or Txn with a write, whether its compare held or not) / successful ADDs (goal ≤ 1.05);")
	t.text("  claim races lost: the records' lostRaces, summed / successful ADDs.")
	var starts []string
	for _, name := range r.startOnlyName {
		starts = append(starts, fmt.Sprintf("%s %.1f ms", name, r.startOnly[name].p50()))
	}
	if len(starts) > 0 {
		t.text("process start only (ADDs not run here: BenchmarkKubeStores runs them), p50: %s.", strings.Join(starts, ", "))
	}
	for _, pl := range r.plugins {
		c := r.cols[pl]
		if len(c.inPlugin) == 0 {
			continue
		}
		t.text("%s: most claim races lost by one ADD %d; time inside the plugin (its log), p50: %.0f ms with %d in flight, %.0f ms sequential empty, %s ms sequential 99%%.",
			pl, c.maxRaces, medianInt(c.inPlugin["conc"]), inFlight, medianInt(c.inPlugin["empty"]), num(medianInt(c.inPlugin["full"]), 0))
	}
	t.text("one etcd put from this process: p50 %.1f ms.", r.etcdPut.p50())
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
