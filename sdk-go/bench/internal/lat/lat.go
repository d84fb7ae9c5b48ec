// Package lat runs latency measurements: closed loop (n goroutines each
// keep one call in flight) or open loop (calls started on a fixed
// schedule); every call's latency is recorded.
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

// Open is the result of an open-loop phase.
type Open struct {
	Calls   int     `json:"calls"`
	Errors  int     `json:"errors"`
	FirstEr string  `json:"first_error,omitempty"`
	Seconds float64 `json:"seconds"`
	P50us   float64 `json:"p50_us"`
	P90us   float64 `json:"p90_us"`
	P99us   float64 `json:"p99_us"`
	OpsPerS float64 `json:"ops_per_s"`
}

// Open gives a closed-loop result in the open-loop shape (no p90).
func (r Result) Open() Open {
	return Open{Calls: r.Ops, Errors: r.Errors, FirstEr: r.FirstEr, Seconds: r.Seconds, P50us: r.P50us, P99us: r.P99us, OpsPerS: r.OpsPerS}
}

// OpenLoop starts one call every 1/rate seconds, each in its own
// goroutine, so a slow call never delays the next; a call's latency counts
// from its scheduled start.
func OpenLoop(call func() error, rate int, dur time.Duration) Open {
	n := int(float64(rate) * dur.Seconds())
	lats := make([]int64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	period := time.Second / time.Duration(rate)
	start := time.Now()
	for i := 0; i < n; i++ {
		due := start.Add(time.Duration(i) * period)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func(i int, due time.Time) {
			defer wg.Done()
			errs[i] = call()
			lats[i] = int64(time.Since(due))
		}(i, due)
	}
	wg.Wait()
	el := time.Since(start)
	r := Open{Seconds: el.Seconds()}
	ok := lats[:0]
	for i, l := range lats {
		if errs[i] != nil {
			r.Errors++
			if r.FirstEr == "" {
				r.FirstEr = errs[i].Error()
			}
			continue
		}
		ok = append(ok, l)
	}
	r.Calls = len(ok)
	if len(ok) > 0 {
		slices.Sort(ok)
		q := func(p float64) float64 {
			i := int(p*float64(len(ok))+0.5) - 1
			return float64(ok[max(0, min(i, len(ok)-1))]) / 1e3
		}
		r.P50us, r.P90us, r.P99us = q(0.5), q(0.9), q(0.99)
		r.OpsPerS = float64(len(ok)) / el.Seconds()
	}
	return r
}
