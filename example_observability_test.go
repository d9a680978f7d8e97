package distlock_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/memory"
)

// Logs, metrics and traces of a Manager, on providers of its own. A real
// application passes the MeterProvider and TracerProvider it exports with
// (or none: the Manager then uses the global ones) and opens a real backend:
// distlock.Open(ctx, "redis://…", opts...). Here the SDK's ManualReader
// and span recorder print what was recorded.
func ExampleWithMeterProvider() {
	ctx := context.Background()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey || a.Key == "waited" { // vary from run to run
				return slog.Attr{}
			}
			return a
		},
	}))

	lm := distlock.New(memory.NewStore().Backend(),
		distlock.WithMeterProvider(mp),
		distlock.WithTracerProvider(tp),
		distlock.WithLogger(logger),
		distlock.WithRetry(distlock.NoRetry()),
	)
	defer lm.Close()

	l, err := lm.Lock(ctx, "nightly-report", 10*time.Second)
	if err != nil {
		panic(err)
	}
	// Another try while it is held gives up (and logs it).
	if _, err := lm.Acquire(ctx, "nightly-report", 10*time.Second); err == nil {
		panic("acquired a held lock")
	}
	if err := l.Release(ctx); err != nil {
		panic(err)
	}
	err = lm.Do(ctx, "nightly-report", 10*time.Second, func(ctx context.Context) error { return nil })
	if err != nil {
		panic(err)
	}
	// A lock left to expire is lost (and logged).
	short, err := lm.Lock(ctx, "cache-warmup", 20*time.Millisecond)
	if err != nil {
		panic(err)
	}
	<-short.Done()

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		panic(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			printMetric(m)
		}
	}
	for _, s := range spans.Ended() {
		fmt.Print(s.Name())
		for _, kv := range s.Attributes() {
			fmt.Printf(" %s=%s", kv.Key, kv.Value.String())
		}
		fmt.Println()
	}
	// Output:
	// level=INFO msg="distlock: gave up acquiring" backend=memory op=acquire error="not acquired: held by another token; the retry strategy makes one attempt (to wait for the lock, give one that retries with distlock.WithRetry or WithLockRetry)"
	// level=WARN msg="distlock: lock lost" backend=memory reason=expired error="ttl expired" fence=3
	// distlock.acquire.duration {distlock.backend=memory,distlock.outcome=acquired} count=3
	// distlock.acquire.duration {distlock.backend=memory,distlock.outcome=not_acquired} count=1
	// distlock.acquire.wait.duration {distlock.backend=memory,distlock.outcome=acquired} count=3
	// distlock.acquire.wait.duration {distlock.backend=memory,distlock.outcome=not_acquired} count=1
	// distlock.acquire.attempts {distlock.backend=memory,distlock.outcome=acquired} 3
	// distlock.acquire.attempts {distlock.backend=memory,distlock.outcome=not_acquired} 1
	// distlock.locks.lost {distlock.backend=memory,distlock.reason=expired} 1
	// distlock.locks.held {distlock.backend=memory} 0
	// distlock.Lock distlock.backend=memory distlock.outcome=acquired distlock.fence=1
	// distlock.Acquire distlock.backend=memory distlock.outcome=not_acquired
	// distlock.Lock distlock.backend=memory distlock.outcome=acquired distlock.fence=2
	// distlock.Do distlock.backend=memory distlock.fence=2 distlock.outcome=ok
	// distlock.Lock distlock.backend=memory distlock.outcome=acquired distlock.fence=3
}

// printMetric prints a counter's values or a histogram's counts, one line
// per attribute set, in a stable order.
func printMetric(m metricdata.Metrics) {
	var lines []string
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			lines = append(lines, fmt.Sprintf("%s {%s} %d", m.Name, p.Attributes.Encoded(attribute.DefaultEncoder()), p.Value))
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			lines = append(lines, fmt.Sprintf("%s {%s} count=%d", m.Name, p.Attributes.Encoded(attribute.DefaultEncoder()), p.Count))
		}
	}
	slices.Sort(lines)
	fmt.Print(strings.Join(lines, "\n"))
	if len(lines) > 0 {
		fmt.Println()
	}
}
