package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
	"golang.org/x/term"
)

const demoHelp = `
Book a few seats with many concurrent clients, first without the lock and
then with it, and print what happened: bookings, double bookings, throughput
and the fencing numbers seen.

Each worker is a separate client (its own connection, as separate processes
would have) that books one seat in a booking system that checks a seat is
free, then writes the booking a moment later: without the lock two clients
that check at the same time both book the seat. With the lock on the seat,
each seat is booked once.

Without --url and $DISTLOCK_URL the demo starts an embedded engine in this
process, so it needs nothing installed; with either it runs against that
backend, under keys prefixed distlock-demo/<random>/ (they are released at
the end and expire anyway).

Examples:
  distlock demo
  distlock demo --workers 200 --seats 20
  distlock demo --url redis://localhost:6379 --json
`

func runDemo(ctx context.Context, env *cliEnv, args []string) int {
	const cmdName = "distlock demo"
	fs := newFlags("demo", "[--url URL] [--workers N] [--seats N] [flags]", demoHelp)
	var c common
	c.register(fs)
	workers := fs.Int("workers", 40, "concurrent clients, each with its own connection")
	seats := fs.Int("seats", 10, "seats to book (fewer than workers: most workers find them sold out)")
	latency := duration(fs, "latency", 2*time.Millisecond, "time the booking system takes between checking a seat and writing the booking")
	ttl := duration(fs, "ttl", 10*time.Second, "TTL of each seat lock")
	quiet := fs.Bool("quiet", false, "no progress lines on stderr")
	if code, done := parse(fs, env, args); done {
		return code
	}
	if code, ok := noArgs(env, fs); !ok {
		return code
	}
	switch {
	case *workers < 1 || *workers > 10000:
		return usageError(env, cmdName, "--workers must be in 1..10000 (got %d)", *workers)
	case *seats < 1 || *seats > 10000:
		return usageError(env, cmdName, "--seats must be in 1..10000 (got %d)", *seats)
	case *latency < 0 || *latency > time.Minute:
		return usageError(env, cmdName, "--latency must be in 0..1m (got %v)", *latency)
	case *ttl <= 0:
		return usageError(env, cmdName, "--ttl must be positive (got %v)", *ttl)
	}
	ctx, stop := signalContext(ctx)
	defer stop()

	prog := newProgress(env.stderr, *quiet)
	raw, where := c.url, ""
	if raw == "" {
		raw = env.getenv(envURL)
	}
	if raw == "" {
		prog.linef("starting the embedded engine…")
		eng, err := startEngine(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return c.fail(env, cmdName, fmt.Errorf("starting the embedded engine: %w", err))
			}
			prog.linef("the embedded etcd did not start (%v); using memory:// instead", err)
			eng = memoryEngine()
		}
		defer eng.stop()
		raw, where = eng.url, eng.desc
	} else {
		var code int
		var ok bool
		if raw, code, ok = c.resolveURL(env, cmdName); !ok {
			return code
		}
		where = redact(raw)
	}

	prog.linef("connecting %d clients to %s…", *workers, where)
	managers := make([]*distlock.Manager, *workers)
	defer func() {
		for _, m := range managers {
			if m != nil {
				_ = m.Close()
			}
		}
	}()
	var caps driver.Capabilities
	for i := range managers {
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		m, err := distlock.Open(octx, raw)
		cancel()
		if err != nil {
			return c.fail(env, cmdName, err)
		}
		managers[i] = m
		caps = m.Capabilities()
	}
	if caps.MinTTL > *ttl {
		*ttl = caps.MinTTL
	}

	prefix := "distlock-demo/" + distlock.NewToken()[:8] + "/"
	cfg := demoConfig{seats: *seats, latency: *latency, ttl: *ttl, prefix: prefix}
	results := []phaseResult{
		runPhase(ctx, "without lock", managers, cfg, false, prog),
		runPhase(ctx, "with lock", managers, cfg, true, prog),
	}
	prog.done()
	if err := ctx.Err(); err != nil {
		fmt.Fprintf(env.stderr, "%s: interrupted\n", cmdName)
		return exitError
	}

	locked := results[1]
	code := exitOK
	if locked.DoubleBookings > 0 || locked.FenceViolations > 0 {
		code = exitError
	}
	if c.json {
		writeJSON(env.stdout, map[string]any{
			"ok": code == exitOK, "engine": where, "backend": caps.Name, "fencing": caps.Fencing,
			"workers": *workers, "seats": *seats, "latency": latency.String(), "phases": results,
		})
	} else {
		printDemo(env.stdout, where, caps, *workers, *seats, results)
	}
	if code != exitOK {
		fmt.Fprintf(env.stderr, "%s: the lock did not prevent double bookings: this backend or deployment is not safe\n", cmdName)
	}
	if locked.Errors > 0 {
		fmt.Fprintf(env.stderr, "%s: %d lock errors, e.g. %s\n", cmdName, locked.Errors, locked.FirstError)
	}
	return code
}

type demoConfig struct {
	seats   int
	latency time.Duration
	ttl     time.Duration
	prefix  string
}

// phaseResult is one row of the demo's table.
type phaseResult struct {
	Name            string  `json:"name"`
	Bookings        int     `json:"bookings"`
	SeatsBooked     int     `json:"seats_booked"`
	DoubleBookings  int     `json:"double_bookings"` // bookings beyond one per seat
	SeatsOversold   int     `json:"seats_oversold"`  // seats booked more than once
	Attempts        int64   `json:"attempts"`
	Seconds         float64 `json:"seconds"`
	AttemptsPerSec  float64 `json:"attempts_per_sec"`
	LockGrants      int     `json:"lock_grants"`
	FencesSeen      int     `json:"fences_seen"`
	FenceViolations int     `json:"fence_order_violations"`
	Errors          int     `json:"lock_errors"`
	FirstError      string  `json:"first_error,omitempty"`
}

// seatTable is the booking system: check, then write a moment later, with
// no transaction between the two — as many real systems do.
type seatTable struct {
	mu       sync.Mutex
	bookings [][]int    // per seat: the workers that booked it
	grants   [][]uint64 // per seat: fences of lock grants, in grant order
	errs     int
	firstErr string
}

func (t *seatTable) freeSeats() []int {
	t.mu.Lock()
	defer t.mu.Unlock()
	var free []int
	for i, b := range t.bookings {
		if len(b) == 0 {
			free = append(free, i)
		}
	}
	return free
}

func (t *seatTable) isFree(seat int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.bookings[seat]) == 0
}

func (t *seatTable) book(seat, worker int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.bookings[seat] = append(t.bookings[seat], worker)
}

func (t *seatTable) granted(seat int, fence uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.grants[seat] = append(t.grants[seat], fence)
}

func (t *seatTable) lockError(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.errs++
	if t.firstErr == "" {
		t.firstErr = err.Error()
	}
}

func (t *seatTable) counts() (bookings, booked int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range t.bookings {
		bookings += len(b)
		if len(b) > 0 {
			booked++
		}
	}
	return bookings, booked
}

// runPhase runs every worker once over a fresh seat table.
func runPhase(ctx context.Context, name string, managers []*distlock.Manager, cfg demoConfig, useLock bool, prog *progress) phaseResult {
	t := &seatTable{bookings: make([][]int, cfg.seats), grants: make([][]uint64, cfg.seats)}
	var attempts atomic.Int64
	start := make(chan struct{})
	var wg sync.WaitGroup
	for w, m := range managers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			demoWorker(ctx, w, m, t, cfg, useLock, &attempts)
		}()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()

	t0 := time.Now()
	close(start)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	report := func() {
		b, booked := t.counts()
		prog.statusf("%-12s %3d/%d seats booked, %d bookings, %d attempts, %.1fs", name, booked, cfg.seats, b, attempts.Load(), time.Since(t0).Seconds())
	}
	report()
	for running := true; running; {
		select {
		case <-finished:
			running = false
		case <-tick.C:
			report()
		}
	}
	report()
	elapsed := time.Since(t0)

	r := phaseResult{Name: name, Attempts: attempts.Load(), Seconds: elapsed.Seconds(), Errors: t.errs, FirstError: t.firstErr}
	r.Bookings, r.SeatsBooked = t.counts()
	r.DoubleBookings = r.Bookings - r.SeatsBooked
	for _, b := range t.bookings {
		if len(b) > 1 {
			r.SeatsOversold++
		}
	}
	if elapsed > 0 {
		r.AttemptsPerSec = float64(r.Attempts) / elapsed.Seconds()
	}
	seen := map[uint64]bool{}
	for _, g := range t.grants {
		for i, f := range g {
			r.LockGrants++
			if f != 0 {
				seen[f] = true
			}
			if i > 0 && f <= g[i-1] && f != 0 {
				r.FenceViolations++
			}
		}
	}
	r.FencesSeen = len(seen)
	return r
}

// demoWorker books one seat: it picks a seat that looks free, checks it,
// and books it; it stops once it has a seat or none is left.
func demoWorker(ctx context.Context, w int, m *distlock.Manager, t *seatTable, cfg demoConfig, useLock bool, attempts *atomic.Int64) {
	for try := 0; try <= cfg.seats && ctx.Err() == nil; try++ {
		free := t.freeSeats()
		if len(free) == 0 {
			return // sold out
		}
		seat := free[rand.IntN(len(free))]
		attempts.Add(1)
		if !useLock {
			if t.isFree(seat) {
				sleepCtx(ctx, cfg.latency)
				t.book(seat, w)
				return
			}
			continue
		}
		key := fmt.Sprintf("%sseat:%d", cfg.prefix, seat)
		l, err := m.Lock(ctx, key, cfg.ttl)
		if err != nil {
			if !errors.Is(err, distlock.ErrNotAcquired) || ctx.Err() == nil {
				t.lockError(err)
			}
			continue
		}
		t.granted(seat, l.Fence())
		booked := false
		if t.isFree(seat) {
			sleepCtx(ctx, cfg.latency)
			t.book(seat, w)
			booked = true
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
		if err := l.Release(rctx); err != nil {
			t.lockError(err)
		}
		cancel()
		if booked {
			return
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func printDemo(w io.Writer, engine string, caps driver.Capabilities, workers, seats int, rs []phaseResult) {
	fmt.Fprintf(w, "%d clients booking %d seats on %s\n\n", workers, seats, engine)
	fmt.Fprintf(w, "%-14s %9s %14s %11s  %s\n", "", "bookings", "double-booked", "attempts/s", "fences seen")
	for _, r := range rs {
		fences := "-"
		if r.LockGrants > 0 {
			switch {
			case !caps.Fencing:
				fences = "n/a (backend has no fencing)"
			case r.FenceViolations == 0:
				fences = fmt.Sprintf("%d, increasing per seat", r.FencesSeen)
			default:
				fences = fmt.Sprintf("%d, %d OUT OF ORDER", r.FencesSeen, r.FenceViolations)
			}
		}
		fmt.Fprintf(w, "%-14s %9d %14d %11.0f  %s\n", r.Name, r.Bookings, r.DoubleBookings, r.AttemptsPerSec, fences)
	}
	un, lk := rs[0], rs[1]
	fmt.Fprintln(w)
	if un.DoubleBookings > 0 {
		fmt.Fprintf(w, "Without the lock, %d of the %d seats were sold more than once (%d bookings too many):\nclients checked the same seat at the same time and both booked it.\n", un.SeatsOversold, seats, un.DoubleBookings)
	} else {
		fmt.Fprintln(w, "Without the lock there happened to be no double booking this time; try more --workers or a longer --latency.")
	}
	if lk.DoubleBookings == 0 {
		fmt.Fprintf(w, "With the lock, each of the %d seats was booked exactly once.\n", lk.SeatsBooked)
		if caps.Fencing && lk.FenceViolations == 0 && lk.LockGrants > 0 {
			fmt.Fprintln(w, "Every grant of a seat's lock carried a larger fencing number than the one before.")
		}
	}
}

// progress prints progress lines on stderr: rewritten in place on a
// terminal, at most one line per phase state change otherwise.
type progress struct {
	w     io.Writer
	quiet bool
	tty   bool
	last  string
	open  bool
}

func newProgress(w io.Writer, quiet bool) *progress {
	p := &progress{w: w, quiet: quiet}
	if f, ok := w.(*os.File); ok {
		p.tty = term.IsTerminal(int(f.Fd()))
	}
	return p
}

func (p *progress) linef(format string, a ...any) {
	if p.quiet {
		return
	}
	p.done()
	fmt.Fprintf(p.w, format+"\n", a...)
}

func (p *progress) statusf(format string, a ...any) {
	if p.quiet {
		return
	}
	s := fmt.Sprintf(format, a...)
	if s == p.last {
		return
	}
	p.last = s
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", s)
		p.open = true
		return
	}
	fmt.Fprintln(p.w, s)
}

func (p *progress) done() {
	if p.open {
		fmt.Fprintln(p.w)
		p.open = false
	}
}
