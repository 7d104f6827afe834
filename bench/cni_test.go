package bench

// Shared by the benchmarks that run CNI plugin binaries: one process per
// call as a container runtime does, timed from start to exit, and the checks
// of what the ADDs got and what the stores hold afterwards.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"kubeipam/internal/store"
)

// cniRunner runs CNI plugin binaries, one process per call.
type cniRunner struct {
	ctx     context.Context
	baseEnv []string      // this process's environment without CNI_ variables
	path    string        // CNI_PATH
	max     time.Duration // a call taking longer is killed (a hang)
}

func newCNIRunner(ctx context.Context, cniPath string) *cniRunner {
	c := &cniRunner{ctx: ctx, path: cniPath, max: perAddMax}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CNI_") {
			c.baseEnv = append(c.baseEnv, kv)
		}
	}
	return c
}

// cniCall is one call's container ID and CNI_ARGS ("" for none).
type cniCall struct{ cid, args string }

// batch makes n calls of verb ("ADD" or "DEL") to bin, par at a time;
// call(i) names the i-th call's container. The phase's wall time runs from
// the first start to the last exit.
func (c *cniRunner) batch(bin, verb string, conf []byte, n, par int, call func(i int) cniCall) phase {
	out := make([]sample, n)
	idx := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range par {
		wg.Go(func() {
			for i := range idx {
				out[i] = c.exec(bin, verb, conf, call(i))
			}
		})
	}
	for i := range n {
		idx <- i
	}
	close(idx)
	wg.Wait()
	return phase{samples: out, wall: time.Since(start)}
}

// exec runs one call. An ADD must print a result with one IP, which the
// sample records.
func (c *cniRunner) exec(bin, verb string, conf []byte, call cniCall) sample {
	ctx, cancel := context.WithTimeout(c.ctx, c.max)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = append(slices.Clip(c.baseEnv),
		"CNI_COMMAND="+verb, "CNI_CONTAINERID="+call.cid,
		"CNI_NETNS=/var/run/netns/bench-"+call.cid, "CNI_NETNS_OVERRIDE=1",
		"CNI_IFNAME="+ifName, "CNI_PATH="+c.path)
	if call.args != "" {
		cmd.Env = append(cmd.Env, "CNI_ARGS="+call.args)
	}
	cmd.Stdin = bytes.NewReader(conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	s := sample{cid: call.cid, dur: time.Since(start)}
	if cmd.ProcessState != nil {
		s.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		s.err = fmt.Errorf("%v; stdout %q; stderr %q", err, stdout.String(), stderr.String())
		return s
	}
	if verb != "ADD" {
		return s
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || len(res.IPs) != 1 {
		s.err = fmt.Errorf("want a result with one IP, got %q (%v)", stdout.String(), err)
		return s
	}
	p, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil {
		s.err = fmt.Errorf("result address %q: %v", res.IPs[0].Address, err)
		return s
	}
	s.ip = p.Addr()
	return s
}

// addErrors lists what is wrong with a phase's ADDs: failures, addresses
// outside subnet, an address given twice, and (when allowed is set) one
// that is not allowed. It also counts the failed ADDs and the duplicates.
func addErrors(p phase, subnet string, allowed map[netip.Addr]bool) (errs []string, failed, dups int) {
	pfx := netip.MustParsePrefix(subnet)
	seen := map[netip.Addr]string{}
	for _, s := range p.samples {
		switch {
		case s.err != nil:
			failed++
			errs = append(errs, fmt.Sprintf("ADD %s: %v", s.cid, s.err))
		case !pfx.Contains(s.ip):
			errs = append(errs, fmt.Sprintf("ADD %s got %s, outside %s", s.cid, s.ip, subnet))
		case seen[s.ip] != "":
			dups++
			errs = append(errs, fmt.Sprintf("DUPLICATE: %s given to both %s and %s", s.ip, seen[s.ip], s.cid))
		case allowed != nil && !allowed[s.ip]:
			errs = append(errs, fmt.Sprintf("ADD %s got %s, which the fill had already claimed", s.cid, s.ip))
		}
		if s.err == nil {
			seen[s.ip] = s.cid
		}
	}
	return errs, failed, dups
}

// okPerSec is the successful calls per second of wall time.
func (p phase) okPerSec() float64 {
	n := 0
	for _, s := range p.samples {
		if s.err == nil {
			n++
		}
	}
	return float64(n) / p.wall.Seconds()
}

// succeeded is the phase's successful calls.
func (p phase) succeeded() phase {
	q := phase{wall: p.wall}
	for _, s := range p.samples {
		if s.err == nil {
			q.samples = append(q.samples, s)
		}
	}
	return q
}

// failures counts the calls that failed and returns the first error.
func (p phase) failures() (int, error) {
	n, first := 0, error(nil)
	for _, s := range p.samples {
		if s.err != nil {
			n++
			first = cmp.Or(first, fmt.Errorf("%s: %w", s.cid, s.err))
		}
	}
	return n, first
}

// keyBaseAt is the etcd store's prefix of one network under prefix (see
// internal/store).
func keyBaseAt(prefix, network string) string {
	return prefix + "/v1/networks/" + network + "/"
}

// etcdRecordErrors checks that etcd holds, under prefix, exactly one record
// and one attachment per successful ADD of p (none for an empty phase, as
// after the DELs: tombstones of released addresses do not count), each
// record naming the container that got its address.
func etcdRecordErrors(ctx context.Context, cli *clientv3.Client, prefix, network string, p phase) error {
	base := keyBaseAt(prefix, network)
	resp, err := cli.Get(ctx, base+"ip/4/", clientv3.WithPrefix())
	if err != nil {
		return err
	}
	owner := map[netip.Addr]string{}
	records := 0
	for _, kv := range resp.Kvs {
		if strings.Contains(strings.TrimPrefix(string(kv.Key), base+"ip/4/"), "/") {
			continue // a released address's tombstone (ip/4/<hex>/r)
		}
		records++
		var rec store.Record
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return fmt.Errorf("record %s: %v", kv.Key, err)
		}
		owner[netip.MustParseAddr(rec.IP)] = rec.ContainerID
	}
	ok := 0
	for _, s := range p.samples {
		if s.err != nil {
			continue
		}
		ok++
		if owner[s.ip] != s.cid {
			return fmt.Errorf("etcd says %s belongs to %q, but ADD %s got it", s.ip, owner[s.ip], s.cid)
		}
	}
	if records != ok {
		return fmt.Errorf("etcd holds %d address records after %d ADDs", records, ok)
	}
	att, err := cli.Get(ctx, base+"att/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return err
	}
	if int(att.Count) != ok {
		return fmt.Errorf("etcd holds %d attachments after %d ADDs", att.Count, ok)
	}
	return nil
}

// hostLocalReservations counts the address files in one of host-local's
// network directories (dataDir/<network name>).
func hostLocalReservations(dir string) (int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, de := range ents {
		if _, err := netip.ParseAddr(de.Name()); err == nil {
			n++
		}
	}
	return n, nil
}
