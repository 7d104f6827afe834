package plugin

// Unit tests of the pure helpers of the plugin (no etcd, no Kubernetes):
// error-code mapping, result building, resolv.conf parsing, the reuse policy
// and prevResult parsing. The verbs themselves are tested in etcd_test.go.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"kubeipam/internal/allocator"
	"kubeipam/internal/config"
	"kubeipam/internal/pod"
	"kubeipam/internal/store"
)

func unitAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// unitNet parses a network config with a valid etcdConfig and the given ipam
// members.
func unitNet(t *testing.T, ipamExtra string) *config.Network {
	t.Helper()
	data := `{"cniVersion":"1.0.0","name":"k8snet2","ipam":{"etcdConfig":{"etcdURL":"http://127.0.0.1:2379"},` + ipamExtra + `}}`
	n, err := config.Parse([]byte(data))
	if err != nil {
		t.Fatalf("config.Parse(%s): %v", data, err)
	}
	return n
}

// --- toCNI ----------------------------------------------------------------------------

func TestUnitToCNI(t *testing.T) {
	passthrough := types.NewError(types.ErrIOFailure, "io", "details")
	ip := unitAddr("10.188.0.218")
	tests := []struct {
		name    string
		err     error
		code    uint
		msgPart string
	}{
		{"config.Error", &config.Error{Msg: "ipam.subnet bad"}, types.ErrInvalidNetworkConfig, "ipam.subnet bad"},
		{"wrapped config.Error", fmt.Errorf("parse: %w", &config.Error{Msg: "bad"}), 7, "bad"},
		{"store.ConfigError", &store.ConfigError{Msg: "cert missing"}, 7, "cert missing"},
		{"ConflictError", &allocator.ConflictError{IP: ip, Holder: "default/database-1-0"}, CodeConflict, "already allocated to default/database-1-0"},
		{"ExhaustedError", &allocator.ExhaustedError{Network: "k8snet2", Set: 0, Ranges: "10.188.0.10-10.188.0.200"}, CodeExhausted, "no free address"},
		{"pod.LookupError", &pod.LookupError{Msg: "pod default/x not found"}, CodePodLookup, "not found"},
		{"pod.AnnotationError", &pod.AnnotationError{Key: pod.AnnotationIP, Value: "x", Reason: "bad"}, CodeAnnotation, "kube-ipam.ip"},
		{"OutOfRangeError", &allocator.OutOfRangeError{IP: ip, Reason: "is outside every subnet"}, CodeOutOfRange, "outside every subnet"},
		{"CoolingError", &allocator.CoolingError{Network: "k8snet2", Set: 0, Ready: time.Unix(0, 0)}, types.ErrTryAgainLater, "cooldown"},
		{"ContentionError", &allocator.ContentionError{Attempts: 200}, 11, "lost 200 claim races"},
		{"pod.TransientError", &pod.TransientError{Err: errors.New("connection refused")}, 11, "connection refused"},
		{"store.UnreachableError", &store.UnreachableError{Endpoints: []string{"http://10.0.0.5:2379", "http://10.0.0.6:2379"}, Wait: 5 * time.Second, Reasons: []string{"10.0.0.5:2379: connect: connection refused", "10.0.0.6:2379: TCP connect timed out"}}, 11,
			"etcd http://10.0.0.5:2379,http://10.0.0.6:2379 unreachable: no connection within 5s (10.0.0.5:2379: connect: connection refused; 10.0.0.6:2379: TCP connect timed out); try again later"},
		{"wrapped store.UnreachableError", fmt.Errorf("x: %w", &store.UnreachableError{Endpoints: []string{"http://e:1"}, Wait: time.Second}), 11, "x: etcd http://e:1 unreachable: no connection within 1s; try again later"},
		{"context.DeadlineExceeded", context.DeadlineExceeded, 11, "etcd did not answer in time"},
		{"wrapped DeadlineExceeded", fmt.Errorf("get: %w", context.DeadlineExceeded), 11, "deadline"},
		{"context.Canceled", context.Canceled, 11, "canceled"},
		{"gRPC Unavailable", status.Error(codes.Unavailable, "connection error"), 11, "connection error"},
		{"gRPC DeadlineExceeded", status.Error(codes.DeadlineExceeded, "slow"), 11, "slow"},
		{"etcd 3.4 deadline as gRPC Unknown (quorum lost)", fmt.Errorf("reading attachment: %w", status.Error(codes.Unknown, "context deadline exceeded")), 11, "context deadline exceeded"},
		{"gRPC ResourceExhausted", status.Error(codes.ResourceExhausted, "quota"), 11, "quota"},
		{"etcd no leader", rpctypes.ErrNoLeader, 11, "no leader"},
		{"etcd request timed out", rpctypes.ErrTimeout, 11, "timed out"},
		{"etcd leader changed", rpctypes.ErrLeaderChanged, 11, "leader changed"},
		{"etcd too many requests", rpctypes.ErrTooManyRequests, 11, "too many requests"},
		{"wrapped etcd no leader", fmt.Errorf("claim: %w", rpctypes.ErrNoLeader), 11, "no leader"},
		{"gRPC PermissionDenied is not retryable", status.Error(codes.PermissionDenied, "denied"), CodeStoreRejected, "denied"},
		{"etcd permission denied is not retryable", rpctypes.ErrPermissionDenied, CodeStoreRejected, "permission denied"},
		{"etcd request too large", rpctypes.ErrRequestTooLarge, CodeStoreRejected, "too large"},
		{"codedError check mismatch", &codedError{CodeCheckMismatch, "held by someone"}, CodeCheckMismatch, "held by someone"},
		{"codedError request invalid", &codedError{CodeRequestInvalid, "refusing"}, CodeRequestInvalid, "refusing"},
		{"plain error", errors.New("corrupt record"), CodeStoreRejected, "store error: corrupt record"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := toCNI(tc.err)
			if e == nil {
				t.Fatal("toCNI returned nil")
			}
			if e.Code != tc.code {
				t.Errorf("code = %d, want %d (msg %q)", e.Code, tc.code, e.Msg)
			}
			if !strings.Contains(e.Msg, tc.msgPart) {
				t.Errorf("msg %q does not contain %q", e.Msg, tc.msgPart)
			}
		})
	}

	t.Run("types.Error passes through", func(t *testing.T) {
		if got := toCNI(passthrough); got != passthrough {
			t.Errorf("toCNI(*types.Error) = %+v, want the same error", got)
		}
		if got := toCNI(fmt.Errorf("ctx: %w", passthrough)); got != passthrough {
			t.Errorf("toCNI(wrapped *types.Error) = %+v, want the same error", got)
		}
	})
	t.Run("codes are distinct and outside the CNI range", func(t *testing.T) {
		codes := []uint{CodeConflict, CodeExhausted, CodePodLookup, CodeAnnotation, CodeOutOfRange, CodeCheckMismatch, CodeStoreRejected, CodeRequestInvalid}
		seen := map[uint]bool{}
		for _, c := range codes {
			if c < 100 || seen[c] {
				t.Errorf("code %d reused or inside the reserved 0-99 range", c)
			}
			seen[c] = true
		}
	})
}

// --- buildResult -------------------------------------------------------------------------

type unitIP struct {
	cidr string // address with mask, e.g. "10.188.0.10/16"
	gw   string // "" for none
}

func unitCheckIPs(t *testing.T, res *current.Result, want []unitIP) {
	t.Helper()
	if len(res.IPs) != len(want) {
		t.Fatalf("result has %d IPs %v, want %d", len(res.IPs), res.IPs, len(want))
	}
	for i, w := range want {
		got := res.IPs[i]
		if got.Address.String() != w.cidr {
			t.Errorf("ips[%d].address = %s, want %s", i, got.Address.String(), w.cidr)
		}
		// The mask must have the address's own length (4 bytes for IPv4),
		// or the 0.2.0 conversion and netlink misread it.
		if ip := net.ParseIP(strings.Split(w.cidr, "/")[0]); ip.To4() != nil && len(got.Address.Mask) != net.IPv4len {
			t.Errorf("ips[%d] IPv4 mask has %d bytes", i, len(got.Address.Mask))
		}
		if w.gw == "" {
			if got.Gateway != nil {
				t.Errorf("ips[%d].gateway = %s, want none", i, got.Gateway)
			}
		} else if !got.Gateway.Equal(net.ParseIP(w.gw)) {
			t.Errorf("ips[%d].gateway = %s, want %s", i, got.Gateway, w.gw)
		}
	}
}

func TestUnitBuildResult(t *testing.T) {
	seed := `"subnet":"10.188.0.0/16","rangeStart":"10.188.0.10","rangeEnd":"10.188.0.200","gateway":"10.188.0.254"`
	dual := `"ranges":[[` + `{"subnet":"10.188.0.0/16","rangeStart":"10.188.0.10","rangeEnd":"10.188.0.200","gateway":"10.188.0.254"}],` +
		`[{"subnet":"fd00:188::/64","gateway":"fd00:188::1"}]]`
	dyn := func(ip string, set int) allocator.Allocated {
		return allocator.Allocated{IP: unitAddr(ip), Set: set, Kind: store.KindDynamic}
	}
	fix := func(ip string, set int) allocator.Allocated {
		return allocator.Allocated{IP: unitAddr(ip), Set: set, Kind: store.KindFixed}
	}
	spec := func(s string) config.IPSpec {
		p, err := config.ParseIPOrCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	wants := func(ann map[string]string) pod.Wants {
		w, err := pod.ParseAnnotations(ann)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	noWants := pod.Wants{Netmask: -1}
	tests := []struct {
		name  string
		ipam  string
		got   []allocator.Allocated
		fixed []config.IPSpec
		wants pod.Wants
		want  []unitIP
	}{
		{
			name: "dynamic: subnet prefix and config gateway",
			ipam: seed, got: []allocator.Allocated{dyn("10.188.0.10", 0)}, wants: noWants,
			want: []unitIP{{"10.188.0.10/16", "10.188.0.254"}},
		},
		{
			name: "dynamic ignores annotation netmask and gateway",
			ipam: seed, got: []allocator.Allocated{dyn("10.188.0.11", 0)},
			wants: wants(map[string]string{pod.AnnotationNetmask: "255.255.255.0", pod.AnnotationGateway: "10.188.0.1"}),
			want:  []unitIP{{"10.188.0.11/16", "10.188.0.254"}},
		},
		{
			name:  "fixed (seed annotations): annotation netmask and gateway",
			ipam:  seed,
			got:   []allocator.Allocated{fix("10.188.0.218", 0)},
			fixed: []config.IPSpec{spec("10.188.0.218")},
			wants: wants(map[string]string{pod.AnnotationIP: "10.188.0.218", pod.AnnotationNetmask: "255.255.255.0", pod.AnnotationGateway: "10.188.0.1"}),
			want:  []unitIP{{"10.188.0.218/24", "10.188.0.1"}},
		},
		{
			name:  "fixed with prefix-length netmask",
			ipam:  seed,
			got:   []allocator.Allocated{fix("10.188.0.218", 0)},
			fixed: []config.IPSpec{spec("10.188.0.218")},
			wants: wants(map[string]string{pod.AnnotationIP: "10.188.0.218", pod.AnnotationNetmask: "/20", pod.AnnotationGateway: "10.188.0.1"}),
			want:  []unitIP{{"10.188.0.218/20", "10.188.0.1"}},
		},
		{
			name:  "fixed without netmask annotation: subnet prefix",
			ipam:  seed,
			got:   []allocator.Allocated{fix("10.188.0.218", 0)},
			fixed: []config.IPSpec{spec("10.188.0.218")},
			wants: wants(map[string]string{pod.AnnotationIP: "10.188.0.218", pod.AnnotationGateway: "10.188.0.1"}),
			want:  []unitIP{{"10.188.0.218/16", "10.188.0.1"}},
		},
		{
			name:  "fixed CIDR bits win over the netmask annotation",
			ipam:  seed,
			got:   []allocator.Allocated{fix("10.188.0.218", 0)},
			fixed: []config.IPSpec{spec("10.188.0.218/20")},
			wants: wants(map[string]string{pod.AnnotationIP: "10.188.0.218/20", pod.AnnotationNetmask: "255.255.255.0", pod.AnnotationGateway: "10.188.0.1"}),
			want:  []unitIP{{"10.188.0.218/20", "10.188.0.1"}},
		},
		{
			name:  "CIDR bits of one fixed IP do not leak to another",
			ipam:  seed,
			got:   []allocator.Allocated{fix("10.188.0.218", 0)},
			fixed: []config.IPSpec{spec("10.188.0.219/20"), spec("10.188.0.218")},
			wants: wants(map[string]string{pod.AnnotationNetmask: "255.255.255.0"}),
			want:  []unitIP{{"10.188.0.218/24", "10.188.0.254"}},
		},
		{
			name:  "fixed IPv6 ignores a dotted v4 netmask and a v4 gateway",
			ipam:  dual,
			got:   []allocator.Allocated{fix("fd00:188::218", 1)},
			fixed: []config.IPSpec{spec("fd00:188::218")},
			wants: wants(map[string]string{pod.AnnotationIP: "fd00:188::218", pod.AnnotationNetmask: "255.255.255.0", pod.AnnotationGateway: "10.188.0.1"}),
			want:  []unitIP{{"fd00:188::218/64", "fd00:188::1"}},
		},
		{
			name:  "fixed IPv6 with CIDR bits and a v6 gateway annotation",
			ipam:  dual,
			got:   []allocator.Allocated{fix("fd00:188::218", 1)},
			fixed: []config.IPSpec{spec("fd00:188::218/80")},
			wants: wants(map[string]string{pod.AnnotationIP: "fd00:188::218/80", pod.AnnotationGateway: "fd00:188::fe"}),
			want:  []unitIP{{"fd00:188::218/80", "fd00:188::fe"}},
		},
		{
			name:  "dual stack fixed: one netmask and gateway per family",
			ipam:  dual,
			got:   []allocator.Allocated{fix("10.188.0.218", 0), fix("fd00:188::218", 1)},
			fixed: []config.IPSpec{spec("10.188.0.218"), spec("fd00:188::218")},
			wants: wants(map[string]string{pod.AnnotationIP: "10.188.0.218,fd00:188::218", pod.AnnotationNetmask: "16", pod.AnnotationGateway: "10.188.0.1"}),
			want:  []unitIP{{"10.188.0.218/16", "10.188.0.1"}, {"fd00:188::218/64", "fd00:188::1"}},
		},
		{
			name:  "fixed v4 with dynamic v6",
			ipam:  dual,
			got:   []allocator.Allocated{fix("10.188.0.218", 0), dyn("fd00:188::2", 1)},
			fixed: []config.IPSpec{spec("10.188.0.218")},
			wants: wants(map[string]string{pod.AnnotationIP: "10.188.0.218", pod.AnnotationNetmask: "255.255.255.0", pod.AnnotationGateway: "10.188.0.1"}),
			want:  []unitIP{{"10.188.0.218/24", "10.188.0.1"}, {"fd00:188::2/64", "fd00:188::1"}},
		},
		{
			name: "dual stack dynamic keeps the allocation order",
			ipam: dual, got: []allocator.Allocated{dyn("10.188.0.12", 0), dyn("fd00:188::2", 1)}, wants: noWants,
			want: []unitIP{{"10.188.0.12/16", "10.188.0.254"}, {"fd00:188::2/64", "fd00:188::1"}},
		},
		{
			name: "nothing allocated", ipam: seed, wants: noWants, want: nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := unitNet(t, tc.ipam)
			res, err := buildResult(n, tc.got, tc.fixed, tc.wants)
			if err != nil {
				t.Fatalf("buildResult: %v", err)
			}
			unitCheckIPs(t, res, tc.want)
			if res.CNIVersion != current.ImplementedSpecVersion {
				t.Errorf("CNIVersion = %q", res.CNIVersion)
			}
			if len(res.Routes) != 0 || res.DNS.Nameservers != nil {
				t.Errorf("routes %v / dns %+v without config", res.Routes, res.DNS)
			}
		})
	}
}

func TestUnitBuildResultNetmaskTooLongForIPv4(t *testing.T) {
	n := unitNet(t, `"subnet":"10.188.0.0/16"`)
	w, err := pod.ParseAnnotations(map[string]string{pod.AnnotationIP: "10.188.0.218", pod.AnnotationNetmask: "64"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = buildResult(n, []allocator.Allocated{{IP: unitAddr("10.188.0.218"), Kind: store.KindFixed}},
		[]config.IPSpec{{Addr: unitAddr("10.188.0.218"), Bits: -1}}, w)
	var ae *pod.AnnotationError
	if !errors.As(err, &ae) || ae.Key != pod.AnnotationNetmask {
		t.Fatalf("err = %T %v, want *pod.AnnotationError on %s", err, err, pod.AnnotationNetmask)
	}
	if toCNI(err).Code != CodeAnnotation {
		t.Errorf("code %d", toCNI(err).Code)
	}
	// The same netmask with a v4 CIDR annotation is not used, so no error.
	if _, err := buildResult(n, []allocator.Allocated{{IP: unitAddr("10.188.0.218"), Kind: store.KindFixed}},
		[]config.IPSpec{{Addr: unitAddr("10.188.0.218"), Bits: 24}}, w); err != nil {
		t.Errorf("CIDR annotation with unused long netmask: %v", err)
	}
}

func TestUnitBuildResultRoutesAndDNS(t *testing.T) {
	dir := t.TempDir()
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := unitNet(t, `"subnet":"10.188.0.0/16","gateway":"10.188.0.1","routes":[{"dst":"0.0.0.0/0"},{"dst":"10.200.0.0/16","gw":"10.188.0.254"}],"resolvConf":`+fmt.Sprintf("%q", resolv))
	for _, kind := range []string{store.KindDynamic, store.KindFixed} {
		t.Run(kind, func(t *testing.T) {
			res, err := buildResult(n, []allocator.Allocated{{IP: unitAddr("10.188.0.218"), Kind: kind}},
				[]config.IPSpec{{Addr: unitAddr("10.188.0.218"), Bits: -1}}, pod.Wants{Netmask: -1})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Routes) != 2 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[0].GW != nil ||
				res.Routes[1].Dst.String() != "10.200.0.0/16" || !res.Routes[1].GW.Equal(net.ParseIP("10.188.0.254")) {
				t.Errorf("routes = %v", res.Routes)
			}
			if !slices.Equal(res.DNS.Nameservers, []string{"10.96.0.10"}) ||
				!slices.Equal(res.DNS.Search, []string{"default.svc.cluster.local", "svc.cluster.local"}) ||
				!slices.Equal(res.DNS.Options, []string{"ndots:5"}) {
				t.Errorf("dns = %+v", res.DNS)
			}
			// The result must survive the conversion multus/old runtimes ask for.
			for _, v := range []string{"0.2.0", "0.3.1", "0.4.0", "1.0.0"} {
				if _, err := res.GetAsVersion(v); err != nil {
					t.Errorf("GetAsVersion(%s): %v", v, err)
				}
			}
		})
	}

	t.Run("missing resolvConf is an I/O error", func(t *testing.T) {
		missing := filepath.Join(dir, "nope.conf")
		n := unitNet(t, `"subnet":"10.188.0.0/16","resolvConf":`+fmt.Sprintf("%q", missing))
		_, err := buildResult(n, []allocator.Allocated{{IP: unitAddr("10.188.0.10"), Kind: store.KindDynamic}}, nil, pod.Wants{Netmask: -1})
		var te *types.Error
		if !errors.As(err, &te) {
			t.Fatalf("err = %T %v, want *types.Error", err, err)
		}
		if te.Code != types.ErrIOFailure {
			t.Errorf("code = %d, want %d", te.Code, types.ErrIOFailure)
		}
		if !strings.Contains(te.Msg, missing) || !strings.Contains(te.Msg, "resolvConf") {
			t.Errorf("msg %q should name ipam.resolvConf and the path", te.Msg)
		}
		if got := toCNI(err); got.Code != types.ErrIOFailure {
			t.Errorf("toCNI code = %d", got.Code)
		}
	})
}

// --- readResolvConf ----------------------------------------------------------------------

func TestUnitReadResolvConf(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    types.DNS
	}{
		{"empty", "", types.DNS{}},
		{"only comments", "# generated\n; nothing\n\n", types.DNS{}},
		{
			name: "full",
			content: "# Generated by NetworkManager\n" +
				"; another comment style\n" +
				"nameserver 10.96.0.10\n" +
				"  nameserver\t8.8.8.8  \n" +
				"nameserver fd00::53\n" +
				"search default.svc.cluster.local svc.cluster.local\n" +
				"search cluster.local\n" +
				"domain example.com\n" +
				"options ndots:5 timeout:2\n" +
				"options edns0\n" +
				"nameserver\n" + // no value: ignored
				"sortlist 130.155.160.0/255.255.240.0\n" + // unknown: ignored
				"#nameserver 1.1.1.1\n" +
				"   # indented comment\n",
			want: types.DNS{
				Nameservers: []string{"10.96.0.10", "8.8.8.8", "fd00::53"},
				Domain:      "example.com",
				Search:      []string{"default.svc.cluster.local", "svc.cluster.local", "cluster.local"},
				Options:     []string{"ndots:5", "timeout:2", "edns0"},
			},
		},
		{"last domain wins", "domain a.example\ndomain b.example\n", types.DNS{Domain: "b.example"}},
		{"CRLF line endings", "nameserver 10.0.0.1\r\nsearch x.local\r\n", types.DNS{Nameservers: []string{"10.0.0.1"}, Search: []string{"x.local"}}},
		{"no trailing newline", "nameserver 10.0.0.1", types.DNS{Nameservers: []string{"10.0.0.1"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "resolv.conf")
			if err := os.WriteFile(p, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := readResolvConf(p)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Nameservers, tc.want.Nameservers) || got.Domain != tc.want.Domain ||
				!slices.Equal(got.Search, tc.want.Search) || !slices.Equal(got.Options, tc.want.Options) {
				t.Errorf("readResolvConf =\n  %+v\nwant\n  %+v", got, tc.want)
			}
		})
	}
	if _, err := readResolvConf(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v, want ErrNotExist", err)
	}
	if _, err := readResolvConf(t.TempDir()); err == nil {
		t.Error("directory: want an error")
	}
}

// --- reusePolicy -------------------------------------------------------------------------

func TestUnitReusePolicy(t *testing.T) {
	n := unitNet(t, `"ranges":[[{"subnet":"10.188.0.0/16","rangeStart":"10.188.0.10","rangeEnd":"10.188.0.200","gateway":"10.188.0.1"}],
		[{"subnet":"fd00:188::/120","rangeStart":"fd00:188::10","rangeEnd":"fd00:188::20","gateway":"fd00:188::1"}]],
		"fixedStart":"10.188.0.100","fixedEnd":"10.188.0.109"`)
	policy := allocator.ReusePolicy(n)
	tests := []struct {
		name      string
		ip        string
		kind      string
		set       int
		log, tomb bool
	}{
		{"dynamic in range: release log and tombstone", "10.188.0.50", store.KindDynamic, 0, true, true},
		{"range start", "10.188.0.10", store.KindDynamic, 0, true, true},
		{"range end", "10.188.0.200", store.KindDynamic, 0, true, true},
		{"fixed inside the dynamic range: tombstone only", "10.188.0.50", store.KindFixed, 0, false, true},
		{"fixed in the fixed block: no trace", "10.188.0.105", store.KindFixed, 0, false, false},
		{"fixed block edges", "10.188.0.100", store.KindFixed, 0, false, false},
		{"fixed block end", "10.188.0.109", store.KindFixed, 0, false, false},
		{"just below the fixed block", "10.188.0.99", store.KindFixed, 0, false, true},
		{"just above the fixed block", "10.188.0.110", store.KindDynamic, 0, true, true},
		{"fixed in the subnet outside the range: no trace", "10.188.5.5", store.KindFixed, 0, false, false},
		{"the gateway: no trace", "10.188.0.1", store.KindFixed, 0, false, false},
		{"outside every subnet", "10.99.0.1", store.KindDynamic, -1, false, false},
		{"v6 dynamic in the second set", "fd00:188::15", store.KindDynamic, 1, true, true},
		{"v6 fixed in range", "fd00:188::15", store.KindFixed, 1, false, true},
		{"v6 fixed outside range", "fd00:188::80", store.KindFixed, 1, false, false},
		{"v6 gateway", "fd00:188::1", store.KindDynamic, 1, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			set, log, tomb := policy(unitAddr(tc.ip), tc.kind)
			if set != tc.set || log != tc.log || tomb != tc.tomb {
				t.Errorf("policy(%s, %s) = (%d, %v, %v), want (%d, %v, %v)", tc.ip, tc.kind, set, log, tomb, tc.set, tc.log, tc.tomb)
			}
		})
	}
}

// --- prevIPs ---------------------------------------------------------------------------------

func TestUnitPrevIPs(t *testing.T) {
	tests := []struct {
		name    string
		prev    string // JSON; "" for no prevResult
		want    []string
		wantErr bool
	}{
		{"no prevResult", "", nil, false},
		{"no ips key", `{"cniVersion":"1.0.0","dns":{}}`, nil, false},
		{"ips not a list", `{"ips":"10.0.0.5/24"}`, nil, false},
		{"empty ips", `{"ips":[]}`, nil, false},
		{"v4 and v6", `{"cniVersion":"1.0.0","ips":[{"address":"10.188.0.10/16","gateway":"10.188.0.1"},{"address":"fd00::5/64"}]}`, []string{"10.188.0.10", "fd00::5"}, false},
		{"bare address is not a CIDR", `{"ips":[{"address":"10.188.0.10"}]}`, nil, true},
		{"missing address", `{"ips":[{"gateway":"10.188.0.1"}]}`, nil, true},
		{"entry not an object", `{"ips":["10.188.0.10/16"]}`, nil, true},
		{"garbage address", `{"ips":[{"address":"x/16"}]}`, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := &config.Network{}
			if tc.prev != "" {
				if err := json.Unmarshal([]byte(tc.prev), &n.RawPrevResult); err != nil {
					t.Fatal(err)
				}
			}
			got, err := prevIPs(n)
			if tc.wantErr {
				var te *types.Error
				if !errors.As(err, &te) || te.Code != types.ErrDecodingFailure {
					t.Fatalf("err = %T %v, want *types.Error code %d", err, err, types.ErrDecodingFailure)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("prevIPs = %q, want %q", got, tc.want)
			}
		})
	}

	// Through config.Parse, as CHECK receives it.
	n := unitNet(t, `"subnet":"10.188.0.0/16"},"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.188.0.10/16"}]`)
	if got, err := prevIPs(n); err != nil || !slices.Equal(got, []string{"10.188.0.10"}) {
		t.Errorf("prevIPs from parsed config = %q, %v", got, err)
	}
}

// --- small helpers -----------------------------------------------------------------------------

func TestUnitSameAddrsAndShort(t *testing.T) {
	s := func(ss ...string) []config.IPSpec {
		var out []config.IPSpec
		for _, x := range ss {
			p, err := config.ParseIPOrCIDR(x)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, p)
		}
		return out
	}
	tests := []struct {
		a, b []config.IPSpec
		want bool
	}{
		{s("10.0.0.1", "fd00::1"), s("fd00::1/64", "10.0.0.1/24"), true},
		{s("10.0.0.1"), s("10.0.0.2"), false},
		{s("10.0.0.1"), s("10.0.0.1", "10.0.0.2"), false},
		{nil, nil, true},
	}
	for i, tc := range tests {
		if got := sameAddrs(tc.a, tc.b); got != tc.want {
			t.Errorf("case %d: sameAddrs = %v, want %v", i, got, tc.want)
		}
	}
	if short("0123456789abcdef") != "0123456789ab" || short("abc") != "abc" {
		t.Error("short")
	}
	if writtenBits(s("10.0.0.1/24"), unitAddr("10.0.0.1")) != 24 || writtenBits(s("10.0.0.1"), unitAddr("10.0.0.1")) != -1 || writtenBits(s("10.0.0.2/24"), unitAddr("10.0.0.1")) != -1 {
		t.Error("writtenBits")
	}
}
