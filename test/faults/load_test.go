package faults

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// load keeps a fixed number of plugin calls in flight, as a node starting
// pods does, and records every result, until stopped.
type load struct {
	p       *plugin
	mu      sync.Mutex
	results []*result
	seq     atomic.Int64
	stop    chan struct{}
	wg      sync.WaitGroup
}

// startLoad runs body in workers goroutines until stop; body gets a fresh
// sequence number per iteration and runs its calls through l.run.
func startLoad(t *testing.T, p *plugin, workers int, body func(l *load, seq int64)) *load {
	l := &load{p: p, stop: make(chan struct{})}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				body(l, l.seq.Add(1))
			}
		}()
	}
	t.Cleanup(l.stopAndWait)
	return l
}

func (l *load) run(c call) *result {
	r := l.p.run(c)
	l.mu.Lock()
	l.results = append(l.results, r)
	l.mu.Unlock()
	return r
}

// stopAndWait stops the workers and waits until their calls have ended.
// Idempotent.
func (l *load) stopAndWait() {
	l.mu.Lock()
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.mu.Unlock()
	l.wg.Wait()
}

func (l *load) snapshot() []*result {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.results)
}

// waitOK waits until n ADDs that started at or after since have succeeded.
func (l *load) waitOK(t *testing.T, n int, since time.Time, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := 0
		for _, r := range l.snapshot() {
			if r.verb == "ADD" && r.ok() && r.startsAfter(since) {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d successful ADDs in %v since %s, want %d", got, timeout, since.Format("15:04:05.000"), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// window summarises the ADDs that ended within [from, to).
type window struct {
	name     string
	from, to time.Time
	ok, fail int
}

func (w window) rate() float64 { return float64(w.ok) / w.to.Sub(w.from).Seconds() }

func (w window) String() string {
	return fmt.Sprintf("%s: %.1f ADD/s (%d ok, %d failed in %v)", w.name, w.rate(), w.ok, w.fail, w.to.Sub(w.from).Round(100*time.Millisecond))
}

func measure(name string, rs []*result, from, to time.Time) window {
	w := window{name: name, from: from, to: to}
	for _, r := range rs {
		if r.verb != "ADD" || r.end.Before(from) || !r.end.Before(to) {
			continue
		}
		if r.ok() {
			w.ok++
		} else {
			w.fail++
		}
	}
	return w
}

// hold keeps a fault in place for d: the fault's length, chosen by the
// test, not a wait for something to happen.
func hold(d time.Duration) { <-time.After(d) }
