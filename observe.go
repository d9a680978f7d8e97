package distlock

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/distlock/distlock/driver"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// Observability: structured logs through log/slog, and OpenTelemetry
// metrics and traces, written once here for every backend. The Manager calls
// the hooks below from a few places; with no logger and the global no-op
// OpenTelemetry providers they cost a handful of atomic loads per call and
// neither allocate nor read the clock. docs/observability.md names every
// metric, span and attribute.

// ScopeName is the OpenTelemetry instrumentation scope of distlock's meter
// and tracer.
const ScopeName = "github.com/distlock/distlock"

// Metric names; docs/observability.md describes each.
const (
	// MetricAcquireDuration (histogram, s): how long Acquire, Lock and Do
	// took to get the lock or give up. Attributes: backend, outcome.
	MetricAcquireDuration = "distlock.acquire.duration"
	// MetricWaitDuration (histogram, s): how long a call waited for a key
	// held by others, until the attempt that got it or until it gave up.
	// Attributes: backend, outcome.
	MetricWaitDuration = "distlock.acquire.wait.duration"
	// MetricAttempts (counter): acquire attempts sent to the backend.
	// Attributes: backend, outcome.
	MetricAttempts = "distlock.acquire.attempts"
	// MetricHeld (observable up-down counter): lock handles (Lock, Do)
	// held now. Attribute: backend.
	MetricHeld = "distlock.locks.held"
	// MetricLost (counter): lock handles that ended without their Release.
	// Attributes: backend, reason.
	MetricLost = "distlock.locks.lost"
	// MetricRenewFailures (counter): automatic renewals that failed.
	// Attributes: backend, outcome.
	MetricRenewFailures = "distlock.renew.failures"
	// MetricHandoffs (counter): locks handed by a release straight to a
	// waiting goroutine of the same Manager. Attribute: backend.
	MetricHandoffs = "distlock.handoffs"
)

// Attribute keys of distlock's metrics, spans and log records.
const (
	// AttrBackend is the backend's name (Capabilities.Name): "redis",
	// "etcd", "postgres", "memory", …
	AttrBackend = "distlock.backend"
	// AttrOutcome is how a call or attempt ended: see the Outcome
	// constants.
	AttrOutcome = "distlock.outcome"
	// AttrReason is why a held lock was lost: see the Reason constants.
	AttrReason = "distlock.reason"
	// AttrFence is the grant's fencing number, on spans, where the backend
	// supports fencing.
	AttrFence = "distlock.fence"
	// AttrKey is the lock key, on spans and log records, only with
	// WithKeyAttribute. Never on metrics.
	AttrKey = "distlock.key"
)

// Values of AttrOutcome.
const (
	OutcomeAcquired        = "acquired"         // the lock was granted
	OutcomeNotAcquired     = "not_acquired"     // held by another token (for a call: the wait ended)
	OutcomeUnavailable     = "unavailable"      // the backend failed or could not be reached
	OutcomeInvalidArgument = "invalid_argument" // bad key, ttl or token: nothing was sent
	OutcomeClosed          = "closed"           // the Manager was closed
	OutcomeNotHeld         = "not_held"         // release, extend or renewal by a token that does not hold the key
	OutcomeOK              = "ok"               // Do: fn ran under the lock and the lock was released
	OutcomeError           = "error"            // Do: fn returned an error
	OutcomeLost            = "lost"             // Do: the lock was lost while fn ran
)

// Values of AttrReason.
const (
	ReasonExpired = "expired"  // the TTL passed without a successful renewal
	ReasonNotHeld = "not_held" // a renewal, Extend or Release found the key no longer held by the token
	ReasonBackend = "backend"  // the backend reported the lock gone (deleted, session or lease ended)
	ReasonClosed  = "closed"   // the Manager was closed while the lock was held
)

// WithLogger makes the Manager log through l: lost locks and renewal
// failures (Warn), backend unavailability (Error), acquires that gave up
// (Info) and closes that ended held locks (Debug). Without it the Manager
// logs nothing (nor does it with a nil l). Log records never carry tokens;
// the key only with WithKeyAttribute.
func WithLogger(l *slog.Logger) Option {
	return func(c *managerConfig) { c.obs.logger = l }
}

// WithMeterProvider makes the Manager record its metrics on mp instead of
// the global MeterProvider (otel.GetMeterProvider); nil means the global
// one.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *managerConfig) { c.obs.mp = mp }
}

// WithTracerProvider makes the Manager start its spans (one per Acquire,
// Lock and Do) on tp instead of the global TracerProvider
// (otel.GetTracerProvider); nil means the global one.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *managerConfig) { c.obs.tp = tp }
}

// WithKeyAttribute adds the lock key (attribute distlock.key) to spans and
// log records. Keys may identify users or orders, so they are left out by
// default. They are never metric attributes: one time series per key would
// grow without bound. Keys that are not valid UTF-8 are shown with
// U+FFFD in place of the invalid bytes.
func WithKeyAttribute() Option {
	return func(c *managerConfig) { c.obs.keyAttr = true }
}

type obsConfig struct {
	logger  *slog.Logger
	mp      metric.MeterProvider
	tp      trace.TracerProvider
	keyAttr bool
	off     bool // no observability at all: the baseline of the overhead benchmark
}

// Span names.
const (
	spanAcquire = "distlock.Acquire"
	spanLock    = "distlock.Lock"
	spanDo      = "distlock.Do"
)

type outcome uint8

const (
	outAcquired outcome = iota
	outNotAcquired
	outUnavailable
	outInvalid
	outClosed
	outNotHeld
	outOK
	outError
	outLost
	nOutcomes
)

var outcomeNames = [nOutcomes]string{
	OutcomeAcquired, OutcomeNotAcquired, OutcomeUnavailable, OutcomeInvalidArgument,
	OutcomeClosed, OutcomeNotHeld, OutcomeOK, OutcomeError, OutcomeLost,
}

// outcomeOfKind maps a sentinel to its outcome.
func outcomeOfKind(kind error) outcome {
	switch kind {
	case nil:
		return outAcquired
	case ErrNotAcquired:
		return outNotAcquired
	case ErrInvalidArgument:
		return outInvalid
	case ErrClosed:
		return outClosed
	case ErrNotHeld:
		return outNotHeld
	case ErrLockLost:
		return outLost
	}
	return outUnavailable
}

// outcomeOf is the outcome of an error returned by Acquire, Lock, Extend
// or Release (an *Error), or of a backend attempt.
func outcomeOf(err error) outcome {
	if err == nil {
		return outAcquired
	}
	if e, ok := err.(*Error); ok && e.Kind != nil {
		return outcomeOfKind(e.Kind)
	}
	return outcomeOfKind(classify(err))
}

type reason uint8

const (
	reasonExpired reason = iota
	reasonNotHeld
	reasonBackend
	reasonClosed
	nReasons
)

var reasonNames = [nReasons]string{ReasonExpired, ReasonNotHeld, ReasonBackend, ReasonClosed}

// reasonOf classifies the error a Lock handle ended with (see finish).
func reasonOf(err error) reason {
	var e *Error
	switch {
	case errors.As(err, &e) && e.Op == "close":
		return reasonClosed
	case errors.As(err, &e) && e.Op == "watch":
		return reasonBackend
	case errors.Is(err, ErrNotHeld):
		return reasonNotHeld
	}
	return reasonExpired
}

// defaultTracerProvider and defaultMeterProvider are the global providers
// as this package found them at its initialisation: OpenTelemetry's own
// delegating providers while no SDK is installed, whose spans record
// nothing (yet starting one costs hundreds of ns) and whose instruments are
// disabled. A Manager on the global providers starts spans and measures
// only once the global provider is another one (an SDK installed, usually
// in main). A provider installed in some package's init before this one's
// is taken for the default here: pass it with WithTracerProvider or
// WithMeterProvider.
var (
	defaultTracerProvider = otel.GetTracerProvider()
	defaultMeterProvider  = otel.GetMeterProvider()
)

// observer holds one Manager's logger and instruments, made once in New.
// A nil *observer observes nothing; every hook accepts one.
type observer struct {
	backend string
	log     *slog.Logger
	keys    bool

	// tracer is nil when spans are off for good (a no-op provider).
	// globalTrace: tracer comes from the global provider, so spans are
	// started only once an SDK is installed there (starting one on the
	// default provider costs hundreds of ns and records nothing).
	tracer      trace.Tracer
	globalTrace bool
	globalMeter bool // the instruments come from the global provider

	acquireDur, waitDur               metric.Float64Histogram
	attempts, lost, renewFail, handed metric.Int64Counter
	held                              metric.Int64ObservableUpDownCounter
	reg                               metric.Registration

	// Measurement options, made once: recording allocates nothing.
	backendAttr attribute.KeyValue
	backendOpts []metric.AddOption
	backendObs  []metric.ObserveOption
	outcomeAdd  [nOutcomes][]metric.AddOption
	outcomeRec  [nOutcomes][]metric.RecordOption
	reasonAdd   [nReasons][]metric.AddOption
}

// durationBuckets suit lock calls: from tens of µs (an uncontended grant on
// loopback) to a minute (a long wait), in seconds.
var durationBuckets = []float64{
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
}

func newObserver(m *Manager, c obsConfig) *observer {
	if c.off {
		return nil
	}
	o := &observer{backend: m.caps.Name, log: c.logger, keys: c.keyAttr}

	tp := c.tp
	if tp == nil {
		tp = otel.GetTracerProvider()
		o.globalTrace = true
	}
	if _, noop := tp.(tracenoop.TracerProvider); !noop || o.globalTrace {
		o.tracer = tp.Tracer(ScopeName)
	}

	mp := c.mp
	if mp == nil {
		mp = otel.GetMeterProvider()
		o.globalMeter = true
	}
	meter := mp.Meter(ScopeName)
	sec := metric.WithUnit("s")
	buckets := metric.WithExplicitBucketBoundaries(durationBuckets...)
	var errs []error
	hist := instrument[metric.Float64Histogram](&errs, metricnoop.Float64Histogram{})
	count := instrument[metric.Int64Counter](&errs, metricnoop.Int64Counter{})
	o.acquireDur = hist(meter.Float64Histogram(MetricAcquireDuration, sec, buckets,
		metric.WithDescription("How long Acquire, Lock and Do took to get the lock or give up.")))
	o.waitDur = hist(meter.Float64Histogram(MetricWaitDuration, sec, buckets,
		metric.WithDescription("How long a call waited for a key held by others: until the attempt that got it, or until it gave up.")))
	o.attempts = count(meter.Int64Counter(MetricAttempts, metric.WithUnit("{attempt}"),
		metric.WithDescription("Acquire attempts sent to the backend.")))
	o.lost = count(meter.Int64Counter(MetricLost, metric.WithUnit("{lock}"),
		metric.WithDescription("Lock handles (Lock, Do) that ended without their Release.")))
	o.renewFail = count(meter.Int64Counter(MetricRenewFailures, metric.WithUnit("{renewal}"),
		metric.WithDescription("Automatic renewals that failed.")))
	o.handed = count(meter.Int64Counter(MetricHandoffs, metric.WithUnit("{handoff}"),
		metric.WithDescription("Locks handed by a release straight to a waiting goroutine of the same Manager.")))
	o.held = instrument[metric.Int64ObservableUpDownCounter](&errs, metricnoop.Int64ObservableUpDownCounter{})(meter.Int64ObservableUpDownCounter(MetricHeld, metric.WithUnit("{lock}"),
		metric.WithDescription("Lock handles (Lock, Do) currently held.")))

	o.backendAttr = attribute.String(AttrBackend, o.backend)
	backend := attribute.NewSet(o.backendAttr)
	o.backendOpts = []metric.AddOption{metric.WithAttributeSet(backend)}
	o.backendObs = []metric.ObserveOption{metric.WithAttributeSet(backend)}
	for i, name := range outcomeNames {
		set := metric.WithAttributeSet(attribute.NewSet(o.backendAttr, attribute.String(AttrOutcome, name)))
		o.outcomeAdd[i] = []metric.AddOption{set}
		o.outcomeRec[i] = []metric.RecordOption{set}
	}
	for i, name := range reasonNames {
		o.reasonAdd[i] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(o.backendAttr, attribute.String(AttrReason, name)))}
	}

	reg, err := meter.RegisterCallback(func(_ context.Context, obs metric.Observer) error {
		obs.ObserveInt64(o.held, int64(m.sched.held()), o.backendObs...)
		return nil
	}, o.held)
	if err != nil {
		errs = append(errs, err)
	}
	o.reg = reg
	if err := errors.Join(errs...); err != nil {
		otel.Handle(err)
	}
	return o
}

// instrument returns a function that keeps the instrument a Meter made, or
// def (a no-op) if it made none, collecting the error.
func instrument[I any](errs *[]error, def I) func(I, error) I {
	return func(i I, err error) I {
		if err != nil {
			*errs = append(*errs, err)
		}
		if any(i) == nil {
			return def
		}
		return i
	}
}

// close unregisters the held-locks callback (Manager.Close).
func (o *observer) close() {
	if o != nil && o.reg != nil {
		_ = o.reg.Unregister()
	}
}

// tracesIdle reports, cheaply, that no span would be recorded: no tracer,
// or the global one while no SDK is installed.
func (o *observer) tracesIdle() bool {
	return o.tracer == nil || o.globalTrace && otel.GetTracerProvider() == defaultTracerProvider
}

// metricsIdle reports, cheaply, that no metric would be recorded: the
// instruments come from the global provider while no SDK is installed.
// (Other disabled instruments are found out by their Enabled method.)
func (o *observer) metricsIdle() bool {
	return o.globalMeter && otel.GetMeterProvider() == defaultMeterProvider
}

// spanTracer returns the tracer to start a span with, or nil when spans
// would record nothing.
func (o *observer) spanTracer() trace.Tracer {
	if o.tracer == nil {
		return nil
	}
	if o.globalTrace {
		switch tp := otel.GetTracerProvider(); tp.(type) {
		case tracenoop.TracerProvider:
			return nil
		default:
			if tp == defaultTracerProvider {
				return nil
			}
		}
	}
	return o.tracer
}

func (o *observer) keyValue(key string) string {
	if !utf8.ValidString(key) {
		return strings.ToValidUTF8(key, "\uFFFD")
	}
	return key
}

// call observes one Acquire, Lock or Do call, from begin to its end.
type call struct {
	o       *observer
	key     string
	span    trace.Span // nil: not traced
	start   time.Time
	counted bool // the attempts counter is enabled
}

// begin starts observing a call named name ("distlock.Acquire", …) on key.
// The returned context carries the call's span, if one was started.
// It returns a nil *call when nothing observes it.
func (o *observer) begin(ctx context.Context, name, key string) (context.Context, *call) {
	// With no logger and the global providers as OpenTelemetry starts
	// (no SDK installed), nothing observes the call: it skips its hooks,
	// without reading the clock or allocating, after two atomic loads.
	if o == nil || o.log == nil && o.metricsIdle() && o.tracesIdle() {
		return ctx, nil
	}
	return o.beginCall(ctx, name, key)
}

func (o *observer) beginCall(ctx context.Context, name, key string) (context.Context, *call) {
	c := &call{o: o, key: key}
	if tr := o.spanTracer(); tr != nil {
		attrs := []attribute.KeyValue{o.backendAttr}
		if o.keys {
			attrs = append(attrs, attribute.String(AttrKey, o.keyValue(key)))
		}
		ctx, c.span = tr.Start(ctx, name, trace.WithAttributes(attrs...))
	}
	c.counted = o.attempts.Enabled(ctx)
	if c.span == nil && o.log == nil && !c.counted && !o.acquireDur.Enabled(ctx) && !o.waitDur.Enabled(ctx) {
		return ctx, nil // no-op providers, say
	}
	c.start = time.Now()
	return ctx, c
}

// acquired ends the observation of an Acquire or Lock call: g and t0 are
// what Manager.acquire returned (t0: when the granting attempt started).
func (c *call) acquired(ctx context.Context, op string, g driver.Grant, t0 time.Time, err error) {
	if c != nil {
		c.acquiredSlow(ctx, op, g, t0, err)
	}
}

func (c *call) acquiredSlow(ctx context.Context, op string, g driver.Grant, t0 time.Time, err error) {
	o := c.o
	now := time.Now()
	out := outcomeOf(err)
	o.acquireDur.Record(ctx, now.Sub(c.start).Seconds(), o.outcomeRec[out]...)
	switch out {
	case outAcquired:
		o.waitDur.Record(ctx, max(t0.Sub(c.start), 0).Seconds(), o.outcomeRec[out]...)
	case outNotAcquired:
		o.waitDur.Record(ctx, now.Sub(c.start).Seconds(), o.outcomeRec[out]...)
	}
	if c.span != nil {
		c.endSpan(out, g.Fence, err)
	}
	if o.log == nil {
		return
	}
	switch out {
	case outNotAcquired:
		o.logf(ctx, slog.LevelInfo, "distlock: gave up acquiring", c.key, slog.String("op", op),
			slog.Duration("waited", now.Sub(c.start)), slog.String("error", errText(err, "")))
	case outUnavailable:
		o.logf(ctx, slog.LevelError, "distlock: backend unavailable", c.key, slog.String("op", op),
			slog.String("error", errText(err, "")))
	}
}

// locked notes the lock a Do call got (for its span's fence).
func (c *call) locked(l *Lock) {
	if c != nil && c.span != nil && l.fence != 0 && c.span.IsRecording() {
		c.span.SetAttributes(attribute.Int64(AttrFence, int64(l.fence)))
	}
}

// done ends the observation of a Do call that returned err.
func (c *call) done(err error) {
	if c == nil || c.span == nil {
		return
	}
	out := outOK
	var e *Error
	switch {
	case err == nil:
	case errors.Is(err, ErrLockLost):
		out = outLost
	case errors.As(err, &e) && e.Kind != nil && (e.Op == "acquire" || e.Op == "release" || e.Op == "do"):
		out = outcomeOfKind(e.Kind)
	default:
		out = outError
	}
	c.endSpan(out, 0, err)
}

func (c *call) endSpan(out outcome, fence uint64, err error) {
	s := c.span
	if s.IsRecording() {
		attrs := make([]attribute.KeyValue, 1, 2)
		attrs[0] = attribute.String(AttrOutcome, outcomeNames[out])
		if fence != 0 {
			attrs = append(attrs, attribute.Int64(AttrFence, int64(fence)))
		}
		s.SetAttributes(attrs...)
		if err != nil && out != outError {
			s.SetStatus(codes.Error, errText(err, ""))
		} else if err != nil {
			s.SetStatus(codes.Error, "fn returned an error")
		}
	}
	s.End()
}

// attempt counts one backend acquire attempt of the call that returned
// err.
func (c *call) attempt(ctx context.Context, err error) {
	if c != nil && c.counted {
		c.o.countAttempt(ctx, err)
	}
}

func (o *observer) countAttempt(ctx context.Context, err error) {
	o.attempts.Add(ctx, 1, o.outcomeAdd[outcomeOf(err)]...)
}

// handoff counts a lock handed to a waiter of this Manager.
func (o *observer) handoff(ctx context.Context) {
	if o != nil {
		o.handed.Add(ctx, 1, o.backendOpts...)
	}
}

// renewed observes one automatic renewal of l that returned err.
func (o *observer) renewed(l *Lock, err error) {
	if o == nil || err == nil || errors.Is(err, ErrClosed) || l.releasing.Load() {
		return
	}
	ctx := context.Background()
	o.renewFail.Add(ctx, 1, o.outcomeAdd[outcomeOf(err)]...)
	if errors.Is(err, ErrNotHeld) {
		return // a loss: logged by ended
	}
	o.logf(ctx, slog.LevelWarn, "distlock: renewal failed, retrying", l.key,
		slog.Duration("expires_in", time.Until(l.Expiry())), slog.String("error", errText(err, l.token)))
}

// ended observes the end of Lock handle l (finish, with l.mu held, before
// Done is closed); why is nil after a clean Release.
func (o *observer) ended(l *Lock, why error) {
	if o == nil || why == nil {
		return
	}
	ctx := context.Background()
	r := reasonOf(why)
	o.lost.Add(ctx, 1, o.reasonAdd[r]...)
	level := slog.LevelWarn
	if r == reasonClosed {
		level = slog.LevelDebug
	}
	cause := why
	if e, ok := why.(*Error); ok && e.Err != nil {
		cause = e.Err // "lock lost" is in the message already
	}
	attrs := []slog.Attr{slog.String("reason", reasonNames[r]), slog.String("error", errText(cause, l.token))}
	if l.fence != 0 {
		attrs = append(attrs, slog.Uint64("fence", l.fence))
	}
	o.logf(ctx, level, "distlock: lock lost", l.key, attrs...)
}

// failed observes a Release or Extend that failed with kind (wrap).
// Renewals are observed by renewed.
func (o *observer) failed(ctx context.Context, op, key string, kind, cause error) {
	if o == nil || o.log == nil || kind != ErrUnavailable || op == "renew" {
		return
	}
	o.logf(ctx, slog.LevelError, "distlock: backend unavailable", key, slog.String("op", op),
		slog.String("error", errText(&Error{Op: op, Kind: kind, Err: cause}, "")))
}

// logf logs msg at level with the backend, the key if opted in, and attrs.
func (o *observer) logf(ctx context.Context, level slog.Level, msg, key string, attrs ...slog.Attr) {
	if o.log == nil || !o.log.Enabled(ctx, level) {
		return
	}
	all := make([]slog.Attr, 0, len(attrs)+2)
	all = append(all, slog.String("backend", o.backend))
	if o.keys {
		all = append(all, slog.String("key", o.keyValue(key)))
	}
	all = append(all, attrs...)
	o.log.LogAttrs(ctx, level, msg, all...)
}

// errText describes err for a log record or span status without the key
// (Error.Error names it) and never token: the kinds and causes of *Error
// values, however nested or joined, and any other error's own text.
func errText(err error, token string) string {
	s := describe(err)
	if token != "" {
		s = strings.ReplaceAll(s, token, "[token]")
	}
	return s
}

func describe(err error) string {
	switch e := err.(type) {
	case nil:
		return ""
	case *Error:
		cause := describe(e.Err)
		switch {
		case e.Kind == nil:
			return cause
		case cause == "":
			return e.Kind.Error()
		case strings.HasPrefix(cause, e.Kind.Error()):
			return cause
		}
		return e.Kind.Error() + ": " + cause
	case interface{ Unwrap() []error }:
		var parts []string
		for _, x := range e.Unwrap() {
			if d := describe(x); d != "" {
				parts = append(parts, d)
			}
		}
		return strings.Join(parts, "; ")
	}
	return err.Error()
}
