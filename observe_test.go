package distlock_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/memory"
	"github.com/distlock/distlock/internal/testwait"
)

// observed is a Manager over a memory store with every observability
// output captured: metrics on a ManualReader, spans in a SpanRecorder, log
// records in a recordingHandler.
type observed struct {
	*distlock.Manager
	store  *memory.Store
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	logs   *recordingHandler
}

func newObserved(t *testing.T, opts ...distlock.Option) *observed {
	t.Helper()
	o := &observed{
		store:  memory.NewStore(),
		reader: sdkmetric.NewManualReader(),
		spans:  tracetest.NewSpanRecorder(),
		logs:   &recordingHandler{},
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(o.reader))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(o.spans))
	t.Cleanup(func() {
		_ = mp.Shutdown(context.Background())
		_ = tp.Shutdown(context.Background())
	})
	opts = append([]distlock.Option{
		distlock.WithMeterProvider(mp),
		distlock.WithTracerProvider(tp),
		distlock.WithLogger(slog.New(o.logs)),
	}, opts...)
	o.Manager = distlock.New(o.store.Backend(), opts...)
	t.Cleanup(func() { _ = o.Close() })
	return o
}

// collect returns the metrics recorded so far.
func (o *observed) collect(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := o.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return rm
}

func findMetric(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

func matches(set attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// count returns the sum of a counter's points, or the number of
// measurements of a histogram, over the points carrying every attribute of
// want.
func count(t *testing.T, rm metricdata.ResourceMetrics, name string, want ...attribute.KeyValue) int64 {
	t.Helper()
	m, ok := findMetric(rm, name)
	if !ok {
		return 0
	}
	var n int64
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				n += p.Value
			}
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				n += int64(p.Count)
			}
		}
	default:
		t.Fatalf("%s: unexpected data %T", name, m.Data)
	}
	return n
}

func outcome(s string) attribute.KeyValue { return attribute.String(distlock.AttrOutcome, s) }
func reason(s string) attribute.KeyValue  { return attribute.String(distlock.AttrReason, s) }

var memoryBackend = attribute.String(distlock.AttrBackend, "memory")

// recordingHandler is a slog.Handler that keeps every record, at every
// level, as text.
type recordingHandler struct {
	mu    sync.Mutex
	lines []string
	attrs []slog.Attr
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.mu.Lock()
	h.lines = append(h.lines, b.String())
	h.mu.Unlock()
	return nil
}

func (h *recordingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.mu.Lock()
	defer h.mu.Unlock()
	return &recordingHandler{attrs: append(append([]slog.Attr{}, h.attrs...), as...)}
}

func (h *recordingHandler) WithGroup(string) slog.Handler { return h }

func (h *recordingHandler) Lines() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.lines...)
}

// has reports whether a line contains every one of parts.
func (h *recordingHandler) has(parts ...string) bool {
	for _, l := range h.Lines() {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			return true
		}
	}
	return false
}

var quick = distlock.WithRetry(distlock.LimitRetry(distlock.LinearBackoff(time.Millisecond), 3))

func TestObservabilityAcquireMetrics(t *testing.T) {
	ctx := t.Context()
	o := newObserved(t, quick)
	tok, err := o.Acquire(ctx, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.Acquire(ctx, "a", time.Minute, "other-token"); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("second acquire: %v", err)
	}
	rm := o.collect(t)
	for _, c := range []struct {
		name string
		want []attribute.KeyValue
		n    int64
	}{
		{distlock.MetricAcquireDuration, []attribute.KeyValue{memoryBackend, outcome("acquired")}, 1},
		{distlock.MetricAcquireDuration, []attribute.KeyValue{memoryBackend, outcome("not_acquired")}, 1},
		{distlock.MetricWaitDuration, []attribute.KeyValue{outcome("acquired")}, 1},
		{distlock.MetricWaitDuration, []attribute.KeyValue{outcome("not_acquired")}, 1},
		{distlock.MetricAttempts, []attribute.KeyValue{memoryBackend, outcome("acquired")}, 1},
	} {
		if got := count(t, rm, c.name, c.want...); got != c.n {
			t.Errorf("%s%v = %d, want %d", c.name, c.want, got, c.n)
		}
	}
	// A try, then one wait in the store's queue (memory is a
	// driver.Queuer) that gave up.
	if got := count(t, rm, distlock.MetricAttempts, outcome("not_acquired")); got != 2 {
		t.Errorf("not_acquired attempts = %d, want 2", got)
	}
	if !o.logs.has("gave up acquiring", "backend=memory", "op=acquire") {
		t.Errorf("no give-up logged: %q", o.logs.Lines())
	}

	if err := o.Release(ctx, "a", tok); err != nil {
		t.Fatal(err)
	}
}

func TestObservabilityHeldLostRenewHandoff(t *testing.T) {
	ctx := t.Context()
	o := newObserved(t, patient, distlock.WithRenewFraction(0.2))

	// Held locks, up and down.
	l, err := o.Lock(ctx, "held", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if got := count(t, o.collect(t), distlock.MetricHeld, memoryBackend); got != 1 {
		t.Fatalf("held = %d, want 1", got)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := count(t, o.collect(t), distlock.MetricHeld); got != 0 {
		t.Fatalf("held after release = %d, want 0", got)
	}

	// Lost: expired without renewal.
	l, err = o.Lock(ctx, "expires", 30*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, l)
	// Lost: the backend reported it gone.
	l, err = o.Lock(ctx, "revoked", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	o.store.Revoke("revoked")
	waitDone(t, l)

	// Renewal failures while the store is down, then the loss.
	l, err = o.Lock(ctx, "renewed", 200*time.Millisecond, distlock.WithAutoRenew())
	if err != nil {
		t.Fatal(err)
	}
	o.store.Stop()
	waitDone(t, l)
	o.store.Start()

	rm := o.collect(t)
	if got := count(t, rm, distlock.MetricLost, memoryBackend, reason("expired")); got != 2 {
		t.Errorf("lost expired = %d, want 2", got)
	}
	if got := count(t, rm, distlock.MetricLost, reason("backend")); got != 1 {
		t.Errorf("lost backend = %d, want 1", got)
	}
	if got := count(t, rm, distlock.MetricRenewFailures, memoryBackend, outcome("unavailable")); got < 1 {
		t.Errorf("renew failures = %d, want ≥ 1", got)
	}
	if !o.logs.has("WARN", "renewal failed", "memory store is stopped", "expires_in=") {
		t.Errorf("no renewal failure logged: %q", o.logs.Lines())
	}
	for _, r := range []string{"expired", "backend"} {
		if !o.logs.has("WARN", "lock lost", "reason="+r) {
			t.Errorf("no loss (%s) logged: %q", r, o.logs.Lines())
		}
	}

	// Hand-off from one goroutine to the next.
	tok, err := o.Acquire(ctx, "handed", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		tok, err := o.Acquire(ctx, "handed", time.Minute)
		if err == nil {
			err = o.Release(ctx, "handed", tok)
		}
		got <- err
	}()
	testwait.For(t, 5*time.Second, "the waiter to queue", func() bool { return o.Waiting("handed") == 1 })
	if err := o.Release(ctx, "handed", tok); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if got := count(t, o.collect(t), distlock.MetricHandoffs, memoryBackend); got != 1 {
		t.Errorf("handoffs = %d, want 1", got)
	}

	// Close ends held locks: counted as lost, reason closed.
	if _, err := o.Lock(ctx, "at-close", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if got := count(t, o.collect(t), distlock.MetricLost, reason("closed")); got != 1 {
		t.Errorf("lost closed = %d, want 1", got)
	}
}

func waitDone(t *testing.T, l *distlock.Lock) {
	t.Helper()
	select {
	case <-l.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("lock %q not lost after 10s", l.Key())
	}
}

func spanAttr(s sdktrace.ReadOnlySpan, key string) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func TestObservabilitySpans(t *testing.T) {
	ctx := t.Context()
	o := newObserved(t, distlock.WithRetry(distlock.NoRetry()))
	tok, err := o.Acquire(ctx, "s", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.Acquire(ctx, "s", time.Minute, "other"); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatal(err)
	}
	if err := o.Release(ctx, "s", tok); err != nil {
		t.Fatal(err)
	}
	l, err := o.Lock(ctx, "s", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := o.Do(ctx, "d", time.Minute, func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := o.Do(ctx, "d", time.Minute, func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	err = o.Do(ctx, "d", time.Minute, func(ctx context.Context) error {
		o.store.Revoke("d") // as an operator would: the lock is lost while fn runs
		<-ctx.Done()
		return ctx.Err()
	})
	if !errors.Is(err, distlock.ErrLockLost) {
		t.Fatal(err)
	}

	type want struct {
		name, outcome string
		fence, failed bool
	}
	wants := []want{
		{"distlock.Acquire", "acquired", true, false},
		{"distlock.Acquire", "not_acquired", false, true},
		{"distlock.Lock", "acquired", true, false},
		{"distlock.Lock", "acquired", true, false}, // inside the first Do
		{"distlock.Do", "ok", true, false},
		{"distlock.Lock", "acquired", true, false}, // inside the second Do
		{"distlock.Do", "error", true, true},
		{"distlock.Lock", "acquired", true, false}, // inside the third Do
		{"distlock.Do", "lost", true, true},
	}
	spans := o.spans.Ended()
	if len(spans) != len(wants) {
		t.Fatalf("%d spans, want %d", len(spans), len(wants))
	}
	for i, w := range wants {
		s := spans[i]
		if s.Name() != w.name {
			t.Errorf("span %d: %s, want %s", i, s.Name(), w.name)
			continue
		}
		if v, _ := spanAttr(s, distlock.AttrBackend); v.AsString() != "memory" {
			t.Errorf("span %d %s: backend %q", i, w.name, v.AsString())
		}
		if v, _ := spanAttr(s, distlock.AttrOutcome); v.AsString() != w.outcome {
			t.Errorf("span %d %s: outcome %q, want %q", i, w.name, v.AsString(), w.outcome)
		}
		if v, ok := spanAttr(s, distlock.AttrFence); ok != w.fence || ok && v.AsInt64() <= 0 {
			t.Errorf("span %d %s: fence %v (present %v), want present %v", i, w.name, v.AsInt64(), ok, w.fence)
		}
		if failed := s.Status().Code == codes.Error; failed != w.failed {
			t.Errorf("span %d %s: status %v", i, w.name, s.Status())
		}
		if _, ok := spanAttr(s, distlock.AttrKey); ok {
			t.Errorf("span %d %s carries the key without WithKeyAttribute", i, w.name)
		}
	}
	// The Lock of a Do is a child of the Do's span.
	if spans[3].Parent().SpanID() != spans[4].SpanContext().SpanID() {
		t.Error("Do's Lock span is not a child of its Do span")
	}
	if got := spans[1].Status().Description; !strings.Contains(got, "not acquired") || strings.Contains(got, `"s"`) {
		t.Errorf("status description %q", got)
	}
}

// Tokens never reach logs, spans or metrics; keys only with
// WithKeyAttribute, and never metrics.
func TestObservabilityNoTokenKeyOnlyOptIn(t *testing.T) {
	const (
		token = "tok-3e1f9a-SECRET"
		key   = "user:alice@example.com"
	)
	exercise := func(t *testing.T, o *observed) {
		ctx := t.Context()
		l, err := o.Lock(ctx, key, 150*time.Millisecond, distlock.WithToken(token), distlock.WithAutoRenew())
		if err != nil {
			t.Fatal(err)
		}
		// A give-up by another token.
		if _, err := o.Acquire(ctx, key, time.Minute, token+"-other"); !errors.Is(err, distlock.ErrNotAcquired) {
			t.Fatal(err)
		}
		// Renewal failures, then the loss.
		o.store.Stop()
		waitDone(t, l)
		// Backend unavailable on Acquire, Release and Extend.
		if _, err := o.Acquire(ctx, key, time.Minute, token); !errors.Is(err, distlock.ErrUnavailable) {
			t.Fatal(err)
		}
		if err := o.Release(ctx, key, token); !errors.Is(err, distlock.ErrUnavailable) {
			t.Fatal(err)
		}
		if err := o.Extend(ctx, key, token, time.Minute); !errors.Is(err, distlock.ErrUnavailable) {
			t.Fatal(err)
		}
		o.store.Start()
		// A Do on the key, with the token.
		if err := o.Do(ctx, key, time.Minute, func(context.Context) error { return nil }, distlock.WithToken(token)); err != nil {
			t.Fatal(err)
		}
		for _, msg := range []string{"gave up acquiring", "renewal failed", "lock lost", "backend unavailable\" op=acquire", "op=release", "op=extend"} {
			if !o.logs.has(strings.Split(msg, "\" ")...) {
				t.Errorf("nothing logged for %q: %q", msg, o.logs.Lines())
			}
		}
	}
	// texts returns every log line, span name, status and attribute, and
	// every metric attribute, by where they come from.
	texts := func(t *testing.T, o *observed) map[string][]string {
		got := map[string][]string{"log": o.logs.Lines()}
		for _, s := range o.spans.Ended() {
			got["span"] = append(got["span"], s.Name()+" "+s.Status().Description)
			for _, kv := range s.Attributes() {
				got["span"] = append(got["span"], string(kv.Key)+"="+kv.Value.String())
			}
			for _, e := range s.Events() {
				got["span"] = append(got["span"], e.Name)
				for _, kv := range e.Attributes {
					got["span"] = append(got["span"], string(kv.Key)+"="+kv.Value.String())
				}
			}
		}
		rm := o.collect(t)
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				var sets []attribute.Set
				switch d := m.Data.(type) {
				case metricdata.Sum[int64]:
					for _, p := range d.DataPoints {
						sets = append(sets, p.Attributes)
					}
				case metricdata.Histogram[float64]:
					for _, p := range d.DataPoints {
						sets = append(sets, p.Attributes)
					}
				}
				for _, set := range sets {
					for _, kv := range set.ToSlice() {
						got["metric"] = append(got["metric"], m.Name+" "+string(kv.Key)+"="+kv.Value.String())
					}
				}
			}
		}
		return got
	}
	contains := func(lines []string, s string) bool {
		for _, l := range lines {
			if strings.Contains(l, s) {
				return true
			}
		}
		return false
	}

	t.Run("default", func(t *testing.T) {
		o := newObserved(t, quick, distlock.WithRenewFraction(0.2))
		exercise(t, o)
		for where, lines := range texts(t, o) {
			if len(lines) == 0 {
				t.Errorf("no %s recorded", where)
			}
			if contains(lines, token) || contains(lines, "3e1f9a") {
				t.Errorf("token in %s: %q", where, lines)
			}
			if contains(lines, key) || contains(lines, "alice") {
				t.Errorf("key in %s without WithKeyAttribute: %q", where, lines)
			}
		}
	})
	t.Run("WithKeyAttribute", func(t *testing.T) {
		o := newObserved(t, quick, distlock.WithRenewFraction(0.2), distlock.WithKeyAttribute())
		exercise(t, o)
		got := texts(t, o)
		for where, lines := range got {
			if contains(lines, token) || contains(lines, "3e1f9a") {
				t.Errorf("token in %s: %q", where, lines)
			}
		}
		if !contains(got["span"], distlock.AttrKey+"="+key) {
			t.Errorf("key not on spans with WithKeyAttribute: %q", got["span"])
		}
		if !contains(got["log"], "key="+key) {
			t.Errorf("key not in logs with WithKeyAttribute: %q", got["log"])
		}
		if contains(got["metric"], key) {
			t.Errorf("key in metrics: %q", got["metric"])
		}
	})
}

// Without WithLogger the Manager logs nothing, not even to slog's default.
func TestObservabilityQuietByDefault(t *testing.T) {
	h := &recordingHandler{}
	prev := slog.Default()
	slog.SetDefault(slog.New(h))
	defer slog.SetDefault(prev)

	s := memory.NewStore()
	m := distlock.New(s.Backend(), distlock.WithRetry(distlock.NoRetry()))
	defer m.Close()
	ctx := t.Context()
	l, err := m.Lock(ctx, "q", 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Acquire(ctx, "q", time.Minute); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatal(err)
	}
	waitDone(t, l)
	s.Stop()
	if _, err := m.Acquire(ctx, "q", time.Minute); !errors.Is(err, distlock.ErrUnavailable) {
		t.Fatal(err)
	}
	if lines := h.Lines(); len(lines) != 0 {
		t.Fatalf("logged without WithLogger: %q", lines)
	}
}

// With no provider options the Manager uses the global providers, also
// when they are installed after it was made. Installing them cannot be
// undone, so this runs in a child process.
func TestObservabilityGlobalProviders(t *testing.T) {
	if os.Getenv("DISTLOCK_TEST_OTEL_GLOBAL") != "1" {
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestObservabilityGlobalProviders$", "-test.count=1")
		cmd.Env = append(os.Environ(), "DISTLOCK_TEST_OTEL_GLOBAL=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "PASS") {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	ctx := t.Context()
	m := memory.NewManager()
	defer m.Close()
	// Before any provider is installed: nothing to see, nothing to fail.
	tok, err := m.Acquire(ctx, "g", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, "g", tok); err != nil {
		t.Fatal(err)
	}

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	otel.SetMeterProvider(mp)
	otel.SetTracerProvider(tp)

	tok, err = m.Acquire(ctx, "g", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, "g", tok); err != nil {
		t.Fatal(err)
	}
	if n := len(spans.Ended()); n != 1 || spans.Ended()[0].Name() != "distlock.Acquire" {
		t.Fatalf("%d spans after installing a global TracerProvider, want 1 distlock.Acquire", n)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	if got := count(t, rm, distlock.MetricAcquireDuration, outcome("acquired")); got != 1 {
		t.Fatalf("acquire.duration count %d after installing a global MeterProvider, want 1", got)
	}
	if got := count(t, rm, distlock.MetricAttempts, outcome("acquired")); got != 1 {
		t.Fatalf("attempts %d, want 1", got)
	}
}

// With no logger and no OpenTelemetry SDK installed, the hooks allocate
// nothing: Acquire+Release allocate as much as on a Manager without hooks.
func TestObservabilityDefaultPathAllocatesNothing(t *testing.T) {
	if !otelGlobalsUnset() {
		t.Skip("a global OpenTelemetry provider is installed")
	}
	ctx := t.Context()
	allocs := func(m *distlock.Manager) float64 {
		defer m.Close()
		return testing.AllocsPerRun(200, func() {
			tok, err := m.Acquire(ctx, "k", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Release(ctx, "k", tok); err != nil {
				t.Fatal(err)
			}
		})
	}
	base := allocs(memory.NewManager(distlock.WithoutObservability()))
	def := allocs(memory.NewManager())
	if def != base {
		t.Fatalf("default Manager: %v allocations per Acquire+Release, without hooks %v", def, base)
	}
}
