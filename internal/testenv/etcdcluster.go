package testenv

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// EtcdCluster is a multi-member etcd owned by one test, each member in its
// own network namespace, so that one member can be cut off from the others
// and from its clients the way a network partition does it: its packets
// are dropped, not refused.
//
// Topology (private addresses in ClusterSubnet, nothing on the host's links):
//
//	hub namespace: bridge br0
//	  ├─ veth ── member i's namespace: eth0 10.250.0.(11+i), etcd on :2379 (client), :2380 (peer)
//	  └─ veth ── client namespace:     eth0 10.250.0.100
//
// Clients run in ClientNS (StartProcess, or Client for the test's own). The
// raft settings are those of a production cluster: etcd's default timers
// (heartbeat 100 ms, election 1000 ms), not StartEtcd's shortened ones, and
// pre-vote, the default of every etcd since 3.5 (3.4 has it off: there a
// member rejoining after a partition, its term raised by the elections it
// held alone, deposes the leader and forces an election).
type EtcdCluster struct {
	Members   []*EtcdMember
	Endpoints []string // client URLs of every member
	ClientNS  ns.NetNS // on the members' segment, for clients
	HubNS     ns.NetNS // holds the bridge
	ClientIP  string
	bin       string
}

// EtcdMember is one member of an EtcdCluster.
type EtcdMember struct {
	Name      string
	IP        string
	ClientURL string
	PeerURL   string
	DataDir   string
	LogFile   string
	NS        ns.NetNS

	args   []string
	proc   *Process
	frozen bool
	cut    bool
}

// ClusterSubnet is the segment of StartEtcdCluster's namespaces.
const ClusterSubnet = "10.250.0.0/24"

// Raft timers of StartEtcdCluster, in milliseconds.
const (
	ClusterHeartbeatMs = 100
	ClusterElectionMs  = 1000
)

// cutTable is the nftables table that black-holes a member's eth0.
const cutTable = "kube_ipam_test_cut"

// StartEtcdCluster starts an n-member etcd (plain HTTP), each member in its
// own network namespace, and waits until every member serves and agrees on
// a leader. Everything (processes, links, namespaces, data) is removed when
// the test ends.
func StartEtcdCluster(t testing.TB, n int) *EtcdCluster {
	t.Helper()
	RequireRoot(t)
	bin := os.Getenv("KUBE_IPAM_TEST_ETCD")
	if bin == "" {
		bin = "/usr/bin/etcd"
	}
	if _, err := os.Stat(bin); err != nil {
		missing(t, "etcd not available (%v): run `apt-get install etcd-server` or set KUBE_IPAM_TEST_ETCD", err)
	}
	if _, err := exec.LookPath("nft"); err != nil {
		missing(t, "nft not available (%v): run `apt-get install nftables`", err)
	}
	// Namespaces and the temp dir first: cleanups run LIFO, so processes
	// are stopped before their namespaces and data go.
	dir := t.TempDir()
	c := &EtcdCluster{bin: bin, HubNS: NewNS(t), ClientNS: NewNS(t), ClientIP: "10.250.0.100"}
	hub := handle(t, c.HubNS)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := hub.LinkAdd(br); err != nil {
		t.Fatalf("creating bridge in the hub namespace: %v", err)
	}
	if err := hub.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	attach := func(n ns.NetNS, port, ip string) {
		t.Helper()
		VethPair(t, n, "eth0", c.HubNS, port)
		l, err := hub.LinkByName(port)
		if err == nil {
			err = hub.LinkSetMaster(l, br)
		}
		if err != nil {
			t.Fatalf("attaching %s to br0: %v", port, err)
		}
		h := handle(t, n)
		addr, _ := netlink.ParseAddr(ip + "/24")
		if err := h.AddrAdd(mustLink(t, h, "eth0"), addr); err != nil {
			t.Fatalf("address %s: %v", ip, err)
		}
		if err := h.LinkSetUp(mustLink(t, h, "lo")); err != nil {
			t.Fatal(err)
		}
	}
	attach(c.ClientNS, "client", c.ClientIP)

	token := fmt.Sprintf("kube-ipam-test-%08x", mrand.Uint32())
	var initial []string
	for i := range n {
		ip := fmt.Sprintf("10.250.0.%d", 11+i)
		m := &EtcdMember{
			Name: fmt.Sprintf("m%d", i), IP: ip, NS: NewNS(t),
			ClientURL: "http://" + ip + ":2379", PeerURL: "http://" + ip + ":2380",
			DataDir: filepath.Join(dir, fmt.Sprintf("m%d", i)), LogFile: filepath.Join(dir, fmt.Sprintf("m%d.log", i)),
		}
		attach(m.NS, m.Name, ip)
		c.Members = append(c.Members, m)
		c.Endpoints = append(c.Endpoints, m.ClientURL)
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	for _, m := range c.Members {
		m.args = []string{"--name", m.Name, "--data-dir", m.DataDir,
			"--heartbeat-interval", fmt.Sprint(ClusterHeartbeatMs), "--election-timeout", fmt.Sprint(ClusterElectionMs), "--pre-vote",
			"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", token,
			"--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr"}
	}
	t.Cleanup(func() {
		for _, m := range c.Members {
			m.stop()
		}
		if t.Failed() {
			for _, m := range c.Members {
				b, err := os.ReadFile(m.LogFile)
				b = b[max(0, len(b)-3<<10):]
				t.Logf("etcd member %s log %s (last %d bytes, err=%v):\n%s", m.Name, m.LogFile, len(b), err, b)
			}
		}
	})
	// Members must start together: each waits for the others to elect.
	for _, m := range c.Members {
		if err := m.start(bin); err != nil {
			t.Fatalf("starting etcd member %s: %v", m.Name, err)
		}
	}
	if _, err := c.waitLeader(60 * time.Second); err != nil {
		t.Fatalf("etcd cluster did not elect a leader: %v", err)
	}
	return c
}

func mustLink(t testing.TB, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

func (m *EtcdMember) start(bin string) error {
	logf, err := os.OpenFile(m.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(bin, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	p, err := StartProcess(cmd, m.NS)
	if err != nil {
		return err
	}
	m.proc, m.frozen = p, false
	return nil
}

// stop ends the member (SIGCONT first: a frozen process ignores SIGTERM),
// escalating to SIGKILL after 5 s. Idempotent.
func (m *EtcdMember) stop() {
	if m.proc == nil {
		return
	}
	_ = m.proc.Signal(syscall.SIGCONT)
	_ = m.proc.Signal(syscall.SIGTERM)
	select {
	case <-m.proc.Exited:
	case <-time.After(5 * time.Second):
		_ = m.proc.Signal(syscall.SIGKILL)
		<-m.proc.Exited
	}
	m.proc = nil
}

// PID of member i (0 when it is not running).
func (c *EtcdCluster) PID(i int) int {
	if c.Members[i].proc == nil {
		return 0
	}
	return c.Members[i].proc.PID()
}

// Cut black-holes member i: nftables in its namespace drop every IP packet
// in and out of its eth0, so peers and clients see silence (no RST, no ICMP)
// and connections already open hang rather than fail.
func (c *EtcdCluster) Cut(t testing.TB, i int) {
	t.Helper()
	m := c.Members[i]
	rules := fmt.Sprintf(`table inet %[1]s {
	chain in { type filter hook input priority -400; policy accept; iifname "eth0" drop; }
	chain out { type filter hook output priority -400; policy accept; oifname "eth0" drop; }
}
`, cutTable)
	if out, err := RunIn(m.NS, rules, "nft", "-f", "-"); err != nil {
		t.Fatalf("cutting member %s: %v %s", m.Name, err, out)
	}
	m.cut = true
}

// Restore undoes Cut.
func (c *EtcdCluster) Restore(t testing.TB, i int) {
	t.Helper()
	m := c.Members[i]
	if out, err := RunIn(m.NS, "", "nft", "delete", "table", "inet", cutTable); err != nil {
		t.Fatalf("restoring member %s: %v %s", m.Name, err, out)
	}
	m.cut = false
}

// Freeze stops member i with SIGSTOP (by PID); Thaw resumes it.
func (c *EtcdCluster) Freeze(t testing.TB, i int) {
	t.Helper()
	m := c.Members[i]
	if m.proc == nil || m.proc.Signal(syscall.SIGSTOP) != nil {
		t.Fatalf("freezing member %s: not running", m.Name)
	}
	m.frozen = true
}

// Thaw resumes a member stopped by Freeze.
func (c *EtcdCluster) Thaw(t testing.TB, i int) {
	t.Helper()
	m := c.Members[i]
	if m.proc == nil || m.proc.Signal(syscall.SIGCONT) != nil {
		t.Fatalf("thawing member %s: not running", m.Name)
	}
	m.frozen = false
}

// Kill ends member i with SIGKILL, as a crash would.
func (c *EtcdCluster) Kill(t testing.TB, i int) {
	t.Helper()
	m := c.Members[i]
	if m.proc == nil {
		return
	}
	_ = m.proc.Signal(syscall.SIGKILL)
	<-m.proc.Exited
	m.proc = nil
}

// Restart starts member i again on its data dir (stopping it first if it
// runs) and waits until it answers a status request.
func (c *EtcdCluster) Restart(t testing.TB, i int) {
	t.Helper()
	m := c.Members[i]
	m.stop()
	if err := m.start(c.bin); err != nil {
		t.Fatalf("restarting member %s: %v", m.Name, err)
	}
	err := poll(30*time.Second, func() error {
		_, err := c.status(i, time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("member %s does not answer after restart: %v", m.Name, err)
	}
}

// Dialer returns a gRPC dialer whose connections are made from inside
// network namespace n (a socket belongs to the namespace it was created in).
func Dialer(n ns.NetNS) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var conn net.Conn
		err := n.Do(func(ns.NetNS) error {
			var d net.Dialer
			var err error
			conn, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		return conn, err
	}
}

// Config is a client configuration for the given members (all when none
// are given) whose connections come from ClientNS.
func (c *EtcdCluster) Config(members ...int) clientv3.Config {
	eps := c.Endpoints
	if len(members) > 0 {
		eps = nil
		for _, i := range members {
			eps = append(eps, c.Members[i].ClientURL)
		}
	}
	return clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(Dialer(c.ClientNS))}}
}

// Client returns a client of every member, dialing from ClientNS, closed
// when the test ends.
func (c *EtcdCluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(c.Config())
	if err != nil {
		t.Fatalf("etcd cluster client: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// MemberStatus is what one member says about the cluster.
type MemberStatus struct {
	ID, Leader         uint64
	Revision, RaftTerm int64
	RaftIndex          uint64
	RaftApplied        uint64
}

// status asks member i alone, within timeout.
func (c *EtcdCluster) status(i int, timeout time.Duration) (*MemberStatus, error) {
	cli, err := clientv3.New(c.Config(i))
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	r, err := cli.Status(ctx, c.Members[i].ClientURL)
	if err != nil {
		return nil, err
	}
	return &MemberStatus{ID: r.Header.MemberId, Leader: r.Leader, Revision: r.Header.Revision,
		RaftTerm: int64(r.RaftTerm), RaftIndex: r.RaftIndex, RaftApplied: r.RaftAppliedIndex}, nil
}

// Status asks every member that is running, not frozen and not cut (nil
// for the others, and for those that do not answer within a second).
func (c *EtcdCluster) Status() []*MemberStatus {
	out := make([]*MemberStatus, len(c.Members))
	done := make(chan struct{})
	for i, m := range c.Members {
		go func() {
			defer func() { done <- struct{}{} }()
			if m.proc != nil && !m.frozen && !m.cut {
				out[i], _ = c.status(i, time.Second)
			}
		}()
	}
	for range c.Members {
		<-done
	}
	return out
}

// Leader returns the index of the member that a majority of the cluster
// names as leader, or -1 when there is none (no quorum, an election).
func (c *EtcdCluster) Leader() int {
	sts := c.Status()
	votes := map[uint64]int{}
	for _, s := range sts {
		if s != nil && s.Leader != 0 {
			votes[s.Leader]++
		}
	}
	for id, v := range votes {
		if 2*v <= len(c.Members) {
			continue
		}
		for i, s := range sts {
			if s != nil && s.ID == id {
				return i
			}
		}
	}
	return -1
}

// WaitLeader waits until a majority names a leader other than the members
// in except, and returns it.
func (c *EtcdCluster) WaitLeader(t testing.TB, timeout time.Duration, except ...int) int {
	t.Helper()
	l, err := c.waitLeader(timeout, except...)
	if err != nil {
		t.Fatalf("waiting for an etcd leader: %v", err)
	}
	return l
}

func (c *EtcdCluster) waitLeader(timeout time.Duration, except ...int) (int, error) {
	leader := -1
	err := poll(timeout, func() error {
		leader = c.Leader()
		for _, e := range except {
			if leader == e {
				return fmt.Errorf("member %d is still the leader", e)
			}
		}
		if leader < 0 {
			return errors.New("no leader named by a majority")
		}
		return nil
	})
	return leader, err
}

// WaitConverged waits until every member answers, names the same leader,
// has applied the same raft index and holds the same keys (equal HashKV
// at the same revision): the members agree.
func (c *EtcdCluster) WaitConverged(t testing.TB, timeout time.Duration) {
	t.Helper()
	err := poll(timeout, func() error {
		sts := c.Status()
		for i, s := range sts {
			if s == nil {
				return fmt.Errorf("member %s does not answer", c.Members[i].Name)
			}
			if s.Leader == 0 || s.Leader != sts[0].Leader || s.Revision != sts[0].Revision || s.RaftApplied != sts[0].RaftApplied {
				return fmt.Errorf("members disagree: %+v", derefAll(sts))
			}
		}
		var hash uint32
		for i := range c.Members {
			h, err := c.hashKV(i, sts[0].Revision)
			if err != nil {
				return err
			}
			if i > 0 && h != hash {
				return fmt.Errorf("member %s's HashKV at revision %d is %08x, member %s's %08x", c.Members[i].Name, sts[0].Revision, h, c.Members[0].Name, hash)
			}
			hash = h
		}
		return nil
	})
	if err != nil {
		t.Fatalf("etcd members do not converge: %v", err)
	}
}

func derefAll(sts []*MemberStatus) []MemberStatus {
	out := make([]MemberStatus, len(sts))
	for i, s := range sts {
		if s != nil {
			out[i] = *s
		}
	}
	return out
}

func (c *EtcdCluster) hashKV(i int, rev int64) (uint32, error) {
	cli, err := clientv3.New(c.Config(i))
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := cli.HashKV(ctx, c.Members[i].ClientURL, rev)
	if err != nil {
		return 0, fmt.Errorf("HashKV of member %s: %w", c.Members[i].Name, err)
	}
	return r.Hash, nil
}

// poll calls cond every 50 ms until it returns nil or timeout passes, and
// returns its last error then.
func poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
