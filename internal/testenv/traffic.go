package testenv

import (
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// ListenTCP accepts and closes TCP connections on addr inside n until the
// test ends: a reachable port for DialTCP. The socket is made inside n.Do
// and stays in that namespace after the thread switches back.
func ListenTCP(t testing.TB, n ns.NetNS, addr string) {
	t.Helper()
	var ln net.Listener
	if err := n.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen %s in %s: %v", addr, n.Path(), err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
}

// DialTCP opens one TCP connection from inside n to addr and closes it. The
// 1.5 s timeout allows for one retransmission of a lost SYN (after 1 s)
// while keeping the tests that expect a dropped SYN short.
func DialTCP(n ns.NetNS, addr string) error {
	return n.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", addr, 1500*time.Millisecond)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// Ping sends one ICMP echo request from inside n to ip and waits up to wait
// (whole seconds, at least one) for the reply; the error has ping's output.
func Ping(n ns.NetNS, ip string, wait time.Duration) error {
	w := strconv.Itoa(max(1, int(wait/time.Second)))
	return n.Do(func(ns.NetNS) error {
		if out, err := exec.Command("ping", "-c", "1", "-W", w, ip).CombinedOutput(); err != nil {
			return fmt.Errorf("ping %s: %v\n%s", ip, err, out)
		}
		return nil
	})
}
