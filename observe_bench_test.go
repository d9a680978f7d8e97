package distlock_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/memory"
	_ "github.com/distlock/distlock/backends/redsync" // registers redis://
	"github.com/distlock/distlock/distlocktest"
	"go.opentelemetry.io/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// The overhead of observability with no OpenTelemetry provider set and no
// logger (the default): uncontended Acquire+Release on one Manager without
// any hooks (WithoutObservability, the baseline) and on one with the
// default hooks, taking turns every block of operations so that both see
// the same machine load. It reports each row's ns/op and the overhead
// (default/baseline − 1) in %, over the whole run and as the median of the
// per-block ratios. A control row, a second Manager without hooks, shows
// the noise floor. The -sdk variants add a row with the OpenTelemetry SDK
// recording every metric and sampling every span (nothing exported): what
// turning it on costs. The redis rows need a redis-server (see
// internal/testserver).
//
//	go test -run '^$' -bench 'ObservabilityOverhead/memory$' -benchtime 200000x -count 8 .
//	go test -run '^$' -bench 'ObservabilityOverhead/redis$' -benchtime 20000x -count 5 .
func BenchmarkObservabilityOverhead(b *testing.B) {
	if !otelGlobalsUnset() {
		b.Fatal("a test installed a global OpenTelemetry provider: run the benchmark alone (-run '^$')")
	}
	for _, sdk := range []bool{false, true} {
		suffix := ""
		if sdk {
			suffix = "-sdk"
		}
		b.Run("memory"+suffix, func(b *testing.B) {
			s := memory.NewStore()
			rows := overheadRows(b, sdk, func(opts ...distlock.Option) *distlock.Manager { return distlock.New(s.Backend(), opts...) })
			interleaved(b, 512, rows)
		})
		b.Run("redis"+suffix, func(b *testing.B) {
			url := distlocktest.Redis(b)
			rows := overheadRows(b, sdk, func(opts ...distlock.Option) *distlock.Manager {
				m, err := distlock.Open(context.Background(), url, opts...)
				if err != nil {
					b.Fatal(err)
				}
				return m
			})
			interleaved(b, 32, rows)
		})
	}
}

func otelGlobalsUnset() bool {
	return fmt.Sprintf("%T", otel.GetTracerProvider()) == "*global.tracerProvider" &&
		fmt.Sprintf("%T", otel.GetMeterProvider()) == "*global.meterProvider"
}

type overheadRow struct {
	name string
	op   func(ctx context.Context) error
}

func overheadRows(b *testing.B, sdk bool, open func(...distlock.Option) *distlock.Manager) []overheadRow {
	row := func(name, key string, opts ...distlock.Option) overheadRow {
		m := open(opts...)
		b.Cleanup(func() { _ = m.Close() })
		key = fmt.Sprintf("bench:obs:%s:%d", key, time.Now().UnixNano())
		return overheadRow{name, func(ctx context.Context) error {
			tok, err := m.Acquire(ctx, key, time.Minute)
			if err != nil {
				return err
			}
			return m.Release(ctx, key, tok)
		}}
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	tp := sdktrace.NewTracerProvider()
	b.Cleanup(func() { _ = mp.Shutdown(context.Background()); _ = tp.Shutdown(context.Background()) })
	rows := []overheadRow{
		row("baseline", "base", distlock.WithoutObservability()),
		row("default", "default"),
		row("control", "control", distlock.WithoutObservability()), // a second baseline: the noise floor
	}
	if sdk {
		rows = append(rows, row("sdk", "sdk", distlock.WithMeterProvider(mp), distlock.WithTracerProvider(tp)))
	}
	return rows
}

// interleaved runs b.N operations of every row, block operations of one row
// at a time, the rows' order rotating from round to round.
func interleaved(b *testing.B, block int, rows []overheadRow) {
	ctx := context.Background()
	total := make([]time.Duration, len(rows))
	ratios := make([][]float64, len(rows)) // per block, against rows[0]
	round := make([]time.Duration, len(rows))
	b.ReportAllocs()
	b.ResetTimer()
	for done, r := 0, 0; done < b.N; done, r = done+block, r+1 {
		n := min(block, b.N-done)
		for j := range rows {
			i := (j + r) % len(rows) // each row takes each place in turn
			t0 := time.Now()
			for range n {
				if err := rows[i].op(ctx); err != nil {
					b.Fatal(err)
				}
			}
			round[i] = time.Since(t0)
			total[i] += round[i]
		}
		for i := 1; i < len(rows); i++ {
			ratios[i] = append(ratios[i], float64(round[i])/float64(round[0]))
		}
	}
	b.StopTimer()
	for i, row := range rows {
		b.ReportMetric(float64(total[i].Nanoseconds())/float64(b.N), row.name+"-ns/op")
		if i == 0 {
			continue
		}
		b.ReportMetric((float64(total[i])/float64(total[0])-1)*100, row.name+"-overhead-%")
		slices.Sort(ratios[i])
		b.ReportMetric((ratios[i][len(ratios[i])/2]-1)*100, row.name+"-median-overhead-%")
	}
}
