package allocator

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"kubeipam/internal/store"
)

// ipam.exclude over the in-memory store: excluded addresses are never
// handed out, neither dynamically (even when they are the lowest free, or
// wait in the release log from before the exclusion) nor as fixed or
// remembered sticky addresses.
var excludeCases = []stratCase{
	{"never handed out even when lowest free, then exhausted", `"subnet":"10.30.0.0/24","rangeStart":"10.30.0.10","rangeEnd":"10.30.0.20","exclude":["10.30.0.10","10.30.0.12-10.30.0.13","10.30.0.16/30"]`, func(e *stratEnv) {
		var got []netip.Addr
		for i := range 4 {
			got = append(got, e.add1(sreq(fmt.Sprint("c", i))))
		}
		wantAddrs(e.t, "dynamic ADDs", got, "10.30.0.11", "10.30.0.14", "10.30.0.15", "10.30.0.20")
		var ex *ExhaustedError
		if err := e.addErr(sreq("c4")); !errors.As(err, &ex) {
			e.t.Fatalf("ADD with only excluded addresses left: %v, want an ExhaustedError", err)
		}
		if err := e.alloc().CanAllocate(e.ctx); !errors.As(err, &ex) {
			e.t.Fatalf("CanAllocate with only excluded addresses left: %v, want an ExhaustedError", err)
		}
		// Freed and cooled down, the same addresses come back, and only
		// they.
		for i := range 4 {
			e.del(fmt.Sprint("c", i))
		}
		e.clock = e.clock.Add(time.Hour)
		got = nil
		for i := range 4 {
			got = append(got, e.add1(sreq(fmt.Sprint("again", i))))
		}
		for _, a := range got {
			if x, ok := e.n.Excluded(a); ok {
				e.t.Fatalf("reuse handed out %s, excluded by %q", a, x.Entry)
			}
		}
		if err := e.addErr(sreq("again4")); !errors.As(err, &ex) {
			e.t.Fatalf("ADD on a full pool: %v, want an ExhaustedError", err)
		}
	}},
	{"everything excluded", `"subnet":"10.31.0.0/24","rangeStart":"10.31.0.10","rangeEnd":"10.31.0.20","exclude":["10.31.0.0/27"]`, func(e *stratEnv) {
		var ex *ExhaustedError
		if err := e.addErr(sreq("c")); !errors.As(err, &ex) || !strings.Contains(err.Error(), "10.31.0.10-10.31.0.20") {
			e.t.Fatalf("ADD: %v, want an ExhaustedError naming the range", err)
		}
		if e.mem.Commits() != 0 {
			e.t.Fatal("a refused ADD committed")
		}
	}},
	// A /8 excluded between the cursor and the free addresses costs no
	// more reads than a dense pool: the windows jump over it.
	{"a huge excluded block is jumped, not read", `"subnet":"10.0.0.0/8","exclude":["10.0.0.4-10.255.255.200"]`, func(e *stratEnv) {
		spy := &usedSpy{Backend: e.mem}
		e.b = spy
		var got []netip.Addr
		for i := range 4 {
			got = append(got, e.add1(sreq(fmt.Sprint("c", i))))
		}
		wantAddrs(e.t, "dynamic ADDs", got, "10.0.0.2", "10.0.0.3", "10.255.255.201", "10.255.255.202")
		if reads := spy.take(); len(reads) > 4*2 {
			e.t.Fatalf("%d window reads for 4 ADDs: %v", len(reads), reads)
		}
		// The full sweep (after the fresh windows and the release log)
		// jumps too: fill the top, then exhaustion is found in few reads.
		e.fill(aip("10.255.255.203"), 52)
		spy.take()
		var ex *ExhaustedError
		if err := e.addErr(sreq("last")); !errors.As(err, &ex) {
			e.t.Fatalf("ADD on a full pool: %v, want an ExhaustedError", err)
		}
		if reads := spy.take(); len(reads) > 8 {
			e.t.Fatalf("%d window reads to find the pool full: %v", len(reads), reads)
		}
	}},
	// Addresses released before the exclusion was configured wait in the
	// release log: the new config's allocator drops them instead of
	// handing them out, and its DEL leaves an excluded address no trace.
	{"release log from before the exclusion", `"subnet":"10.32.0.0/24","rangeStart":"10.32.0.10","rangeEnd":"10.32.0.13"`, func(e *stratEnv) {
		for i := range 4 {
			e.add1(sreq(fmt.Sprint("c", i)))
		}
		e.del("c0")
		e.del("c1")
		e.n = stratNet(e.t, `"subnet":"10.32.0.0/24","rangeStart":"10.32.0.10","rangeEnd":"10.32.0.13","exclude":["10.32.0.10"]`)
		e.clock = e.clock.Add(time.Hour)
		if got := e.add1(sreq("n0")); got != aip("10.32.0.11") {
			e.t.Fatalf("ADD got %s, want 10.32.0.11 (10.32.0.10 is excluded now)", got)
		}
		var ex *ExhaustedError
		if err := e.addErr(sreq("n1")); !errors.As(err, &ex) {
			e.t.Fatalf("ADD with only an excluded released address left: %v, want an ExhaustedError", err)
		}
		// An excluded address held from before: its DEL leaves no
		// tombstone and no release-log entry (as outside the pool).
		e.n = stratNet(e.t, `"subnet":"10.32.0.0/24","rangeStart":"10.32.0.10","rangeEnd":"10.32.0.13","exclude":["10.32.0.10","10.32.0.12"]`)
		e.del("c2")
		if st := e.state(aip("10.32.0.12")); st.Record != nil || st.Tomb != nil {
			e.t.Fatalf("excluded 10.32.0.12 after DEL: %+v", st)
		}
	}},
	// The pod's next sandbox does not keep a dynamic address that is
	// excluded now: it gets a new one, the old one is released.
	{"next sandbox leaves an excluded address", `"subnet":"10.33.0.0/24","rangeStart":"10.33.0.10","rangeEnd":"10.33.0.13"`, func(e *stratEnv) {
		r := sreq("a")
		if got := e.add1(r); got != aip("10.33.0.10") {
			e.t.Fatalf("first ADD got %s", got)
		}
		e.n = stratNet(e.t, `"subnet":"10.33.0.0/24","rangeStart":"10.33.0.10","rangeEnd":"10.33.0.13","exclude":["10.33.0.10"]`)
		r.ContainerID = "b"
		a := e.alloc()
		out, err := a.Allocate(e.ctx, r)
		if err != nil || len(out) != 1 || out[0].IP != aip("10.33.0.11") || a.Retired != 1 {
			e.t.Fatalf("next sandbox got %+v (%v), Retired %d; want 10.33.0.11, 1", out, err, a.Retired)
		}
		if st := e.state(aip("10.33.0.10")); st.Record != nil {
			e.t.Fatalf("excluded 10.33.0.10 still held: %+v", st.Record)
		}
	}},
	// A remembered sticky address that is excluded now is refused, with the
	// entry and what to do.
	{"sticky excluded", `"subnet":"10.34.0.0/24","exclude":["10.34.0.96/27"]`, func(e *stratEnv) {
		if ok, err := e.mem.ImportSticky(e.ctx, store.Sticky{Namespace: "ns", StatefulSet: "db", StatefulSetUID: "sts-u", Ordinal: 3, IfName: "net1", IPs: []string{"10.34.0.100"}}); !ok || err != nil {
			e.t.Fatal(ok, err)
		}
		r := sreq("c")
		r.StatefulSet, r.StatefulSetUID, r.Ordinal, r.Sticky = "db", "sts-u", 3, true
		err := e.addErr(r)
		var oe *OutOfRangeError
		want := `requested IP 10.34.0.100 (remembered for StatefulSet ns/db ordinal 3) is excluded by ipam.exclude entry "10.34.0.96/27" of network "strat"; scale the StatefulSet below the ordinal`
		if !errors.As(err, &oe) || !strings.Contains(err.Error(), want) {
			e.t.Fatalf("%v, want an OutOfRangeError %q", err, want)
		}
		if e.mem.Commits() != 0 {
			e.t.Fatal("a refused ADD committed")
		}
	}},
}

func TestStrategyExclude(t *testing.T) {
	for _, c := range excludeCases {
		t.Run(c.name, func(t *testing.T) { c.run(newStratEnv(t, c.ipam)) })
	}
}

// A fixed request (annotation, runtimeConfig.ips) for an excluded address is
// refused before anything is read or written, naming the entry, even inside
// the fixed block; its neighbours are fine.
func TestStrategyExcludeFixed(t *testing.T) {
	for _, c := range []struct {
		name, ipam, fixed, why string
		fine                   []string
	}{
		{"address", `"subnet":"10.35.0.0/24","exclude":["10.35.0.7"]`, "10.35.0.7", `is excluded by ipam.exclude entry "10.35.0.7" of network "strat"`, []string{"10.35.0.6", "10.35.0.8"}},
		{"range", `"subnet":"10.35.0.0/24","exclude":["10.35.0.20-10.35.0.29"]`, "10.35.0.29", `is excluded by ipam.exclude entry "10.35.0.20-10.35.0.29" of network "strat"`, []string{"10.35.0.19", "10.35.0.30"}},
		{"inside the fixed block", `"subnet":"10.35.0.0/24","fixedStart":"10.35.0.200","fixedEnd":"10.35.0.250","exclude":["10.35.0.240/28"]`, "10.35.0.241", `is excluded by ipam.exclude entry "10.35.0.240/28" of network "strat"`, []string{"10.35.0.239"}},
		{"IPv6", `"ranges":[[{"subnet":"10.35.0.0/24"}],[{"subnet":"fd00:35::/64"}]],"exclude":["fd00:35::/120"]`, "fd00:35::8", `is excluded by ipam.exclude entry "fd00:35::/120" of network "strat"`, []string{"fd00:35::100"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newStratEnv(t, c.ipam)
			r := sreq("c")
			r.Fixed = []netip.Addr{aip(c.fixed)}
			err := e.addErr(r)
			var oe *OutOfRangeError
			if !errors.As(err, &oe) || oe.IP != aip(c.fixed) || oe.Reason != c.why {
				t.Fatalf("%v; want OutOfRangeError %s %s", err, c.fixed, c.why)
			}
			if e.mem.Commits() != 0 {
				t.Fatal("a refused ADD committed")
			}
			// Just outside the entry is fine.
			for _, s := range c.fine {
				if _, err := e.alloc().ValidateFixed(aip(s)); err != nil {
					t.Errorf("ValidateFixed(%s) next to the entry: %v", s, err)
				}
			}
		})
	}
}
