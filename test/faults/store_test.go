package faults

// What etcd holds, read from the raw keys of docs/architecture.md with the
// test's own client (not through internal/store), so that these tests judge
// the plugin's writes independently of its reading code.

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const prefix = "/kube-ipam"

func netBase(network string) string { return prefix + "/v1/networks/" + network + "/" }

// attachment and record are the JSON values of att/<cid>/<ifname> and
// ip/<4|6>/<hex> (internal/store's Attachment and Record).
type attachment struct {
	ContainerID string   `json:"containerID"`
	IfName      string   `json:"ifname"`
	IPs         []string `json:"ips"`
	PodName     string   `json:"podName"`
	PodUID      string   `json:"podUID"`
}

type record struct {
	IP          string `json:"ip"`
	Kind        string `json:"kind"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
	PodName     string `json:"podName"`
	PodUID      string `json:"podUID"`
}

// storeView is every key of one network.
type storeView struct {
	atts     map[string]*attachment // "<cid>/<ifname>"
	recs     map[string]*record     // by address
	tombs    int
	stickies int
}

// get reads with short attempts until one answers (a request sent on a
// connection to a member that is then cut hangs until its deadline).
func get(cli *clientv3.Client, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		r, err := cli.Get(ctx, key, opts...)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return r, err
		}
	}
}

func readStore(t *testing.T, cli *clientv3.Client, network string) *storeView {
	t.Helper()
	base := netBase(network)
	resp, err := get(cli, base, clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("reading the store: %v", err)
	}
	v := &storeView{atts: map[string]*attachment{}, recs: map[string]*record{}}
	for _, kv := range resp.Kvs {
		k := strings.TrimPrefix(string(kv.Key), base)
		switch {
		case strings.HasPrefix(k, "att/"):
			a := &attachment{}
			if err := json.Unmarshal(kv.Value, a); err != nil {
				t.Fatalf("attachment %s: %v", kv.Key, err)
			}
			v.atts[strings.TrimPrefix(k, "att/")] = a
		case strings.HasPrefix(k, "ip/") && strings.HasSuffix(k, "/r"):
			v.tombs++
		case strings.HasPrefix(k, "ip/"):
			r := &record{}
			if err := json.Unmarshal(kv.Value, r); err != nil {
				t.Fatalf("record %s: %v", kv.Key, err)
			}
			v.recs[r.IP] = r
		case strings.HasPrefix(k, "sticky/"):
			v.stickies++
		}
	}
	return v
}

// heldBy describes what the store holds for a container and interface: its
// attachment and every record naming it ("" when nothing).
func (v *storeView) heldBy(cid, ifname string) string {
	var out []string
	if a := v.atts[cid+"/"+ifname]; a != nil {
		out = append(out, fmt.Sprintf("attachment att/%s/%s listing %v", cid, ifname, a.IPs))
	}
	for _, r := range v.recs {
		if r.ContainerID == cid {
			out = append(out, fmt.Sprintf("record of %s (%s, %s)", r.IP, r.Kind, r.IfName))
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// kinds counts the records by kind.
func (v *storeView) kinds() map[string]int {
	m := map[string]int{}
	for _, r := range v.recs {
		m[r.Kind]++
	}
	return m
}

// stored checks that cid/ifname holds exactly ips: the attachment lists
// them and each record names the container. It returns what is wrong ("" if
// nothing).
func (v *storeView) stored(cid, ifname string, ips []string) string {
	a := v.atts[cid+"/"+ifname]
	if a == nil {
		return fmt.Sprintf("no attachment att/%s/%s", cid, ifname)
	}
	if !sameSet(a.IPs, ips) {
		return fmt.Sprintf("attachment att/%s/%s lists %v, the ADD returned %v", cid, ifname, a.IPs, ips)
	}
	for _, ip := range ips {
		r := v.recs[ip]
		if r == nil {
			return fmt.Sprintf("no record of %s", ip)
		}
		if r.ContainerID != cid || r.IfName != ifname {
			return fmt.Sprintf("record of %s names %s/%s, not %s/%s", ip, r.ContainerID, r.IfName, cid, ifname)
		}
	}
	return ""
}

// storedOne is stored for a single attachment, read with two small reads
// (for checks after every ADD, cheaper than a whole view).
func storedOne(cli *clientv3.Client, network, cid, ifname string, ips []string) (string, error) {
	v := &storeView{atts: map[string]*attachment{}, recs: map[string]*record{}}
	base := netBase(network)
	resp, err := get(cli, base+"att/"+cid+"/"+ifname)
	if err != nil {
		return "", err
	}
	for _, kv := range resp.Kvs {
		a := &attachment{}
		if err := json.Unmarshal(kv.Value, a); err != nil {
			return "", err
		}
		v.atts[cid+"/"+ifname] = a
	}
	for _, ip := range ips {
		k, err := ipKey(ip)
		if err != nil {
			return err.Error(), nil
		}
		resp, err := get(cli, base+k)
		if err != nil {
			return "", err
		}
		for _, kv := range resp.Kvs {
			r := &record{}
			if err := json.Unmarshal(kv.Value, r); err != nil {
				return "", err
			}
			v.recs[ip] = r
		}
	}
	return v.stored(cid, ifname, ips), nil
}

// attIPs returns the addresses att/<cid>/<ifname> lists (nil if absent).
func attIPs(cli *clientv3.Client, network, cid, ifname string) ([]string, error) {
	resp, err := get(cli, netBase(network)+"att/"+cid+"/"+ifname)
	if err != nil || len(resp.Kvs) == 0 {
		return nil, err
	}
	a := &attachment{}
	if err := json.Unmarshal(resp.Kvs[0].Value, a); err != nil {
		return nil, err
	}
	if a.IPs == nil {
		a.IPs = []string{}
	}
	return a.IPs, nil
}

// ipKey is ip/4/<hex> of an IPv4 address.
func ipKey(ip string) (string, error) {
	var a, b, c, d int
	if _, err := fmt.Sscanf(ip, "%d.%d.%d.%d", &a, &b, &c, &d); err != nil {
		return "", fmt.Errorf("not an IPv4 address: %q", ip)
	}
	return fmt.Sprintf("ip/4/%02x%02x%02x%02x", a, b, c, d), nil
}

func sameSet(a, b []string) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y)
}

// problems collects contract violations by kind, so that one run reports
// every kind of failure (with a few examples each) instead of the first.
type problems struct {
	mu     sync.Mutex
	kinds  []string
	byKind map[string][]string
}

func (p *problems) add(kind, format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byKind == nil {
		p.byKind = map[string][]string{}
	}
	if _, ok := p.byKind[kind]; !ok {
		p.kinds = append(p.kinds, kind)
	}
	p.byKind[kind] = append(p.byKind[kind], fmt.Sprintf(format, args...))
}

func (p *problems) count(kind string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byKind[kind])
}

// report fails t once per kind, with the count and up to 5 examples.
func (p *problems) report(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, k := range p.kinds {
		ex := p.byKind[k]
		msg := fmt.Sprintf("%s: %d time(s)", k, len(ex))
		for i, e := range ex {
			if i == 5 {
				msg += fmt.Sprintf("\n    … and %d more", len(ex)-5)
				break
			}
			msg += "\n    " + e
		}
		t.Error(msg)
	}
}

// latencies summarises durations.
type latencies []time.Duration

func (l latencies) q(f float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	return s[min(len(s)-1, int(f*float64(len(s))))]
}

func (l latencies) String() string {
	if len(l) == 0 {
		return "none"
	}
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	return fmt.Sprintf("n=%d p50 %v p99 %v max %v", len(l), r(l.q(0.5)), r(l.q(0.99)), r(l.q(1)))
}
