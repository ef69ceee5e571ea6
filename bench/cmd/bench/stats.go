package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// row is one line of the result table: a scenario's measured rounds.
type row struct {
	group string    // "raw limit", "peer", "semaphored (redis)", ...
	name  string    // scenario
	unit  string    // "pairs/s", "jobs/s", "ms", "cmds/grant", "B/job"
	vals  []float64 // one value per measured round
	note  string
	near  string // printed next to the peer scenario of that name (addNear)
}

func (r row) median() float64 { return median(r.vals) }

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile is the nearest-rank p-quantile of sorted samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// fmtNum prints a value with a precision suited to its size.
func fmtNum(v float64) string {
	switch {
	case math.IsNaN(v):
		return "n/a"
	case math.Abs(v) >= 1000:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.1f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// printTable writes rows as a Markdown table.
func printTable(w io.Writer, rows []row) {
	fmt.Fprintln(w, "| group | scenario | median | min–max | unit | rounds | note |")
	fmt.Fprintln(w, "| --- | --- | ---: | ---: | --- | ---: | --- |")
	for _, r := range rows {
		if len(r.vals) == 0 {
			fmt.Fprintf(w, "| %s | %s | — | — | %s | 0 | %s |\n", r.group, r.name, r.unit, r.note)
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s–%s | %s | %d | %s |\n", r.group, r.name,
			fmtNum(r.median()), fmtNum(slices.Min(r.vals)), fmtNum(slices.Max(r.vals)), r.unit, len(r.vals), r.note)
	}
}

// runFor runs op in clients goroutines until d has passed and returns the
// completed operations per second (each goroutine finishes the op it is in;
// the elapsed time runs until the last one returns). The first error stops
// the round and is returned.
func runFor(d time.Duration, clients int, op func(worker int) (int, error)) (float64, int64, error) {
	var done atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var stop atomic.Bool
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for w := range clients {
		wg.Go(func() {
			for !stop.Load() && time.Now().Before(deadline) {
				n, err := op(w)
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					stop.Store(true)
					return
				}
				done.Add(int64(n))
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	return float64(done.Load()) / el.Seconds(), done.Load(), firstErr
}

// label trims a long error for the table's note column.
func label(err error) string {
	s := err.Error()
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return "FAILED: " + s
}
