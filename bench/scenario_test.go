package bench

import (
	"sync"
	"testing"
)

// scenario keeps the result of a benchmark whose work is one scenario run
// once, on the b.N == 1 call: the testing package calls a benchmark again
// with larger b.N, and those calls report the same result instead of
// running it again.
type scenario[R any] struct {
	mu  sync.Mutex
	res *R
}

// result runs the scenario and prints it on the b.N == 1 call; later calls
// return what it found.
func (s *scenario[R]) result(b *testing.B, run func(*testing.B) *R, print func(*R)) *R {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.N == 1 {
		s.res = run(b)
		print(s.res)
		return s.res
	}
	if s.res == nil {
		b.Fatal("no scenario result to report (the b.N == 1 run did not complete)")
	}
	return s.res
}

// reportMetrics is a sub-benchmark that only reports metrics of a scenario (its
// time is not per operation).
func reportMetrics(b *testing.B, name string, f func(b *testing.B)) {
	b.Run(name, func(b *testing.B) {
		f(b)
		b.ReportMetric(0, "ns/op")
	})
}
