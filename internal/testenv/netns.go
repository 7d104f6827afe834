package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// RequireRoot skips the test unless it runs as root (namespaces, links). In
// CI, which runs as root, it fails instead, so privileged tests cannot be
// skipped silently.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "test needs root (network namespaces, links); run it as root")
	}
}

// NewNS creates a persistent network namespace that is closed and unmounted
// when the test ends.
func NewNS(t testing.TB) ns.NetNS {
	t.Helper()
	RequireRoot(t)
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("creating netns: %v", err)
	}
	t.Cleanup(func() {
		if err := errors.Join(n.Close(), testutils.UnmountNS(n)); err != nil {
			t.Errorf("removing netns: %v", err)
		}
	})
	return n
}

// VethPair creates a veth pair, nameA in nsA and nameB in nsB, both up. A nil
// namespace means the caller's current one; prefer namespaces so tests never
// touch the host's links. The pair is deleted when the test ends.
func VethPair(t testing.TB, nsA ns.NetNS, nameA string, nsB ns.NetNS, nameB string) {
	t.Helper()
	RequireRoot(t)
	hA, hB := handle(t, nsA), handle(t, nsB)
	peerNS, err := nsHandle(nsB)
	if err != nil {
		t.Fatal(err)
	}
	defer peerNS.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nameA}, PeerName: nameB, PeerNamespace: netlink.NsFd(peerNS)}
	if err := hA.LinkAdd(veth); err != nil {
		t.Fatalf("creating veth %s/%s: %v", nameA, nameB, err)
	}
	// Registered only after LinkAdd so that a name clash never deletes a link
	// we do not own. Deleting one end removes the peer too.
	t.Cleanup(func() {
		l, err := hA.LinkByName(nameA)
		if err == nil {
			err = hA.LinkDel(l)
		}
		if err != nil && !errors.As(err, &netlink.LinkNotFoundError{}) {
			t.Errorf("deleting veth %s: %v", nameA, err)
		}
	})
	for h, name := range map[*netlink.Handle]string{hA: nameA, hB: nameB} {
		l, err := h.LinkByName(name)
		if err == nil {
			err = h.LinkSetUp(l)
		}
		if err != nil {
			t.Fatalf("setting %s up: %v", name, err)
		}
	}
}

// AddAddr adds address cidr (e.g. "10.188.0.250/16") to link name inside n.
// It goes when the link or the namespace does.
func AddAddr(t testing.TB, n ns.NetNS, name, cidr string) {
	t.Helper()
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatalf("address %q: %v", cidr, err)
	}
	h := handle(t, n)
	if err := h.AddrAdd(mustLink(t, h, name), addr); err != nil {
		t.Fatalf("adding %s to %s: %v", cidr, name, err)
	}
}

// SegmentPeer creates a namespace that stands for another host on a
// segment of the test's own: a veth pair whose end parent (prefix plus
// random hex) stays in the caller's namespace, e.g. as the master of a
// macvlan plugin the test runs, and whose other end is eth0 in peer with
// address cidr. Both are removed when the test ends.
func SegmentPeer(t testing.TB, prefix, cidr string) (peer ns.NetNS, parent string) {
	t.Helper()
	peer, parent = NewNS(t), UniqueName(prefix)
	VethPair(t, nil, parent, peer, "eth0")
	AddAddr(t, peer, "eth0", cidr)
	return peer, parent
}

// nsHandle opens n, or the calling thread's namespace when n is nil.
func nsHandle(n ns.NetNS) (netns.NsHandle, error) {
	if n == nil {
		cur, err := ns.GetCurrentNS()
		if err != nil {
			return netns.None(), err
		}
		defer cur.Close()
		n = cur
	}
	return netns.GetFromPath(n.Path())
}

// handle returns a netlink socket in n, so links there can be managed
// without switching threads. It is closed when the test ends, after the
// cleanups registered later that use it; until then it pins the namespace.
func handle(t testing.TB, n ns.NetNS) *netlink.Handle {
	t.Helper()
	nh, err := nsHandle(n)
	if err != nil {
		t.Fatalf("opening netns: %v", err)
	}
	defer nh.Close()
	h, err := netlink.NewHandleAt(nh)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

// UniqueName returns prefix plus random hex within the 15-byte Linux
// interface-name limit. It panics if fewer than 4 hex digits fit, since
// collisions would then be likely.
func UniqueName(prefix string) string {
	n := min(15-len(prefix), 8)
	if n < 4 {
		panic(fmt.Sprintf("testenv.UniqueName: prefix %q too long", prefix))
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b) // cannot fail since Go 1.24
	return prefix + hex.EncodeToString(b)[:n]
}

// IPv4Addrs returns the IPv4 addresses (CIDR form) of link name inside n.
func IPv4Addrs(t testing.TB, n ns.NetNS, name string) []string {
	t.Helper()
	var have []string
	if err := n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range addrs {
			have = append(have, a.IPNet.String())
		}
		return err
	}); err != nil {
		t.Fatalf("addresses of %s in %s: %v", name, n.Path(), err)
	}
	return have
}
