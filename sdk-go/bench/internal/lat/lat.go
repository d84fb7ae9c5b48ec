// Package lat runs a closed-loop latency measurement: n goroutines each
// keep one call in flight; every call's latency is recorded.
package lat

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// Result of one measurement.
type Result struct {
	Ops     int     `json:"ops"`
	Seconds float64 `json:"seconds"`
	P50us   float64 `json:"p50_us"`
	P99us   float64 `json:"p99_us"`
	P999us  float64 `json:"p999_us"`
	OpsPerS float64 `json:"ops_per_s"`
	Errors  int     `json:"errors"`
	FirstEr string  `json:"first_error,omitempty"`
	// ChildCPU: CPU time of the process that measured (for child legs).
	ChildCPU time.Duration `json:"-"`
}

func (r Result) String() string {
	return fmt.Sprintf("p50 %.2f µs  p99 %.2f µs  p99.9 %.2f µs  %.0f ops/s  (%d ops, %d errors)", r.P50us, r.P99us, r.P999us, r.OpsPerS, r.Ops, r.Errors)
}

// Run warms up for warm, then measures for dur with conc goroutines
// calling op.
func Run(conc int, warm, dur time.Duration, op func() error) Result {
	if warm > 0 {
		phase(conc, warm, op, false)
	}
	lats, errs, first, el := phase(conc, dur, op, true)
	r := Result{Ops: len(lats), Seconds: el.Seconds(), Errors: errs, FirstEr: first}
	if len(lats) > 0 {
		slices.Sort(lats)
		q := func(p float64) float64 {
			i := int(p*float64(len(lats))+0.5) - 1
			i = max(0, min(i, len(lats)-1))
			return float64(lats[i]) / 1e3
		}
		r.P50us, r.P99us, r.P999us = q(0.50), q(0.99), q(0.999)
		r.OpsPerS = float64(len(lats)) / el.Seconds()
	}
	return r
}

func phase(conc int, dur time.Duration, op func() error, record bool) ([]int64, int, string, time.Duration) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	all := make([]int64, 0, 1<<20)
	errs := 0
	first := ""
	start := time.Now()
	end := start.Add(dur)
	for g := 0; g < conc; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]int64, 0, 1<<18)
			e, fe := 0, ""
			for i := 0; ; i++ {
				t0 := time.Now()
				err := op()
				d := time.Since(t0)
				if err != nil {
					e++
					if fe == "" {
						fe = err.Error()
					}
				} else if record {
					mine = append(mine, int64(d))
				}
				if i&63 == 0 && t0.After(end) {
					break
				}
			}
			mu.Lock()
			all = append(all, mine...)
			errs += e
			if first == "" {
				first = fe
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return all, errs, first, time.Since(start)
}
