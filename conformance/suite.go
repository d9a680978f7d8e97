package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
)

// TB is the part of testing.TB the cases use. *testing.T satisfies it; Check
// supplies its own so the same cases run outside go test.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
	Cleanup(func())
	Failed() bool
	Context() context.Context
}

// Case is one conformance check.
type Case struct {
	// Topic groups cases ("Acquire", "Release", …); Name names the case in
	// its topic. The go test name is Topic/Name.
	Topic, Name string
	// Serial cases run alone: they stop the server or count goroutines.
	Serial bool
	// Run performs the check.
	Run func(t TB, e *Env)
}

// FullName is Topic/Name.
func (c Case) FullName() string { return c.Topic + "/" + c.Name }

// Cases returns every case of the suite, in order.
func Cases() []Case {
	var all []Case
	for _, group := range [][]Case{acquireCases, reacquireCases, releaseCases, ttlCases, waitCases, contextCases, exclusionCases, fencingCases, invalidCases, lossCases, closeCases, handoffCases, outageCases, runOnceCases, inspectCases, ownerCases, queueCases, rwCases, semaphoreCases, electionCases} {
		all = append(all, group...)
	}
	return all
}

// Option configures a run of the suite.
type Option func(*config)

type config struct {
	shortTTL time.Duration
	prefix   string
	skip     []string
}

// WithShortTTL sets the TTL the suite uses for locks it lets expire. The
// default is the larger of 500ms and the backend's MinTTL (rounded up to its
// granularity).
func WithShortTTL(d time.Duration) Option { return func(c *config) { c.shortTTL = d } }

// WithKeyPrefix sets the prefix of every key the suite uses (default
// "distlock-conformance/<random>/"), so a run never touches other keys.
func WithKeyPrefix(p string) Option { return func(c *config) { c.prefix = p } }

// WithSkip skips the named cases (FullName, e.g. "Outage/Unavailable").
func WithSkip(names ...string) Option { return func(c *config) { c.skip = append(c.skip, names...) } }

// Env is what a case sees: the harness, the backend's capabilities and the
// suite's settings.
type Env struct {
	H     Harness
	Caps  driver.Capabilities
	Short time.Duration // TTL for locks that are let expire
	Long  time.Duration // TTL for locks that must outlive the case
	cfg   config
}

func newEnv(ctx context.Context, h Harness, opts []Option) (*Env, error) {
	cfg := config{}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.prefix == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		cfg.prefix = "distlock-conformance/" + hex.EncodeToString(b[:]) + "/"
	}
	b, err := h.NewBackend(ctx)
	if err != nil {
		return nil, fmt.Errorf("harness: NewBackend: %w", err)
	}
	caps := b.Capabilities()
	if err := b.Close(); err != nil {
		return nil, fmt.Errorf("harness: Close: %w", err)
	}
	short := cfg.shortTTL
	if short <= 0 {
		short = caps.RoundTTL(500 * time.Millisecond)
	}
	return &Env{H: h, Caps: caps, Short: short, Long: max(30*time.Second, 10*short), cfg: cfg}, nil
}

// Run runs every case as a subtest of t (Topic/Name), in parallel except the
// serial ones, which run first, one at a time.
//
// The parallel cases run after Run's own function body has returned, at the
// end of t: close what the harness needs with t.Cleanup, not with defer.
func Run(t *testing.T, h Harness, opts ...Option) {
	t.Helper()
	e, err := newEnv(t.Context(), h, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("backend %q: fencing=%v cross-instance-release=%v min-ttl=%v granularity=%v; short ttl %v",
		e.Caps.Name, e.Caps.Fencing, e.Caps.CrossInstanceRelease, e.Caps.MinTTL, e.Caps.Granularity, e.Short)
	var topics []string
	byTopic := map[string][]Case{}
	for _, c := range Cases() {
		if _, ok := byTopic[c.Topic]; !ok {
			topics = append(topics, c.Topic)
		}
		byTopic[c.Topic] = append(byTopic[c.Topic], c)
	}
	// Serial topics first: parallel subtests wait until Run returns.
	slices.SortStableFunc(topics, func(a, b string) int {
		sa, sb := byTopic[a][0].Serial, byTopic[b][0].Serial
		switch {
		case sa && !sb:
			return -1
		case sb && !sa:
			return 1
		}
		return 0
	})
	for _, topic := range topics {
		cases := byTopic[topic]
		t.Run(topic, func(t *testing.T) {
			if !cases[0].Serial {
				t.Parallel()
			}
			for _, c := range cases {
				t.Run(c.Name, func(t *testing.T) {
					if slices.Contains(e.cfg.skip, c.FullName()) {
						t.Skip("skipped by WithSkip")
					}
					if !c.Serial {
						t.Parallel()
					}
					c.Run(t, e)
				})
			}
		})
	}
}

// Result is the outcome of one case run by Check.
type Result struct {
	Name     string        // Topic/Name
	Status   string        // "pass", "fail" or "skip"
	Message  string        // failure or skip messages
	Duration time.Duration // how long the case took
}

// Check runs every case outside go test (as `distlock check` does against a
// live deployment) and returns one Result per case, in order. Serial cases
// run first, one at a time; the rest run in parallel. Keys are prefixed so
// that a run touches nothing else; locks it leaves behind expire by TTL.
func Check(ctx context.Context, h Harness, opts ...Option) ([]Result, error) {
	e, err := newEnv(ctx, h, opts)
	if err != nil {
		return nil, err
	}
	cases := Cases()
	results := make([]Result, len(cases))
	run := func(i int) {
		c := cases[i]
		if slices.Contains(e.cfg.skip, c.FullName()) {
			results[i] = Result{Name: c.FullName(), Status: "skip", Message: "skipped by WithSkip"}
			return
		}
		results[i] = runStandalone(ctx, c, e)
	}
	for i, c := range cases {
		if c.Serial {
			run(i)
		}
	}
	var wg sync.WaitGroup
	for i, c := range cases {
		if !c.Serial {
			wg.Add(1)
			go func() { defer wg.Done(); run(i) }()
		}
	}
	wg.Wait()
	return results, nil
}

// Describe returns the settings Check or Run would use with these options: the
// backend's capabilities and TTLs. Tools print it beside the results.
func Describe(ctx context.Context, h Harness, opts ...Option) (*Env, error) {
	return newEnv(ctx, h, opts)
}

// checkT is the TB of Check.
type checkT struct {
	ctx      context.Context
	mu       sync.Mutex
	failed   bool
	skipped  bool
	msgs     []string
	cleanups []func()
}

func (c *checkT) Helper()                         {}
func (c *checkT) Logf(format string, args ...any) {}
func (c *checkT) Errorf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failed = true
	c.msgs = append(c.msgs, fmt.Sprintf(format, args...))
}
func (c *checkT) Fatalf(format string, args ...any) {
	c.Errorf(format, args...)
	runtime.Goexit()
}
func (c *checkT) Skipf(format string, args ...any) {
	c.mu.Lock()
	c.skipped = true
	c.msgs = append(c.msgs, fmt.Sprintf(format, args...))
	c.mu.Unlock()
	runtime.Goexit()
}
func (c *checkT) Cleanup(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cleanups = append(c.cleanups, f)
}
func (c *checkT) Failed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failed
}
func (c *checkT) Context() context.Context { return c.ctx }

func runStandalone(ctx context.Context, cs Case, e *Env) Result {
	cctx, cancel := context.WithCancel(ctx)
	ct := &checkT{ctx: cctx}
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if r := recover(); r != nil {
				ct.Errorf("panic: %v", r)
			}
		}()
		cs.Run(ct, e)
	}()
	<-done
	cancel()
	for i := len(ct.cleanups) - 1; i >= 0; i-- {
		ct.cleanups[i]()
	}
	r := Result{Name: cs.FullName(), Status: "pass", Duration: time.Since(start), Message: strings.Join(ct.msgs, "; ")}
	switch {
	case ct.failed:
		r.Status = "fail"
	case ct.skipped:
		r.Status = "skip"
	}
	return r
}

// --- helpers shared by the cases ---

// Manager returns a new Manager over a new backend of the harness (its own
// client), closed when the case ends.
func (e *Env) Manager(t TB, opts ...distlock.Option) *distlock.Manager {
	t.Helper()
	b, err := e.H.NewBackend(t.Context())
	if err != nil {
		t.Fatalf("harness NewBackend: %v", err)
	}
	m := distlock.New(b, opts...)
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// Key returns a key unique to this run and name.
func (e *Env) Key(name string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return e.cfg.prefix + name + "/" + hex.EncodeToString(b[:])
}

var noRetry = distlock.WithRetry(distlock.NoRetry())

func mustAcquire(t TB, m distlock.LockManager, key string, ttl time.Duration, token ...string) string {
	t.Helper()
	tok, err := m.Acquire(t.Context(), key, ttl, token...)
	if err != nil {
		t.Fatalf("Acquire(%q): %v", key, err)
	}
	return tok
}

// heldByOther reports whether a fresh token fails to get key (with probe, a
// NoRetry manager). A probe that succeeds releases what it took.
func heldByOther(t TB, probe *distlock.Manager, key string) bool {
	t.Helper()
	tok, err := probe.Acquire(t.Context(), key, time.Minute)
	switch {
	case err == nil:
		if rerr := probe.Release(t.Context(), key, tok); rerr != nil {
			t.Fatalf("probe release: %v", rerr)
		}
		return false
	case errors.Is(err, distlock.ErrNotAcquired):
		return true
	}
	t.Fatalf("probe Acquire(%q): want nil or ErrNotAcquired, got %v", key, err)
	return false
}

// eventually polls cond every 10ms until it holds or timeout passes.
func eventually(t TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !until(t.Context(), timeout, 10*time.Millisecond, cond) {
		if t.Context().Err() != nil {
			t.Fatalf("context ended waiting for %s", what)
		}
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// until polls cond every poll until it holds (true), or timeout passes or
// ctx ends (false). Unlike eventually it may run in any goroutine.
func until(ctx context.Context, timeout, poll time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return cond()
		case <-tick.C:
		}
	}
	return true
}

func wantIs(t TB, err error, targets ...error) {
	t.Helper()
	for _, target := range targets {
		if !errors.Is(err, target) {
			t.Fatalf("error %v: want errors.Is(err, %v)", err, target)
		}
	}
}
