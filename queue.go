package distlock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/distlock/distlock/driver"
)

// Waiting across processes, on a backend whose server queues waiters
// (driver.Queuer). The goroutines of one Manager that wait for a key form
// its line (handoff.go); only the head waits on the server, in
// AcquireWait, so a key has at most one waiter per Manager in the server's
// queue and a release there wakes exactly one waiter of one process. When
// a goroutine of this Manager releases the key while others of it wait,
// the Manager may hand the key straight to the head (Transfer) and then
// cancels the head's AcquireWait, whose own cleanup leaves the transferred
// grant alone.
//
// The retry strategy bounds the wait: its total delay (what it would wait
// over all its attempts) is the deadline of the wait in the server's
// queue. A strategy that only gives up when ctx ends waits until then.

// maxBudgetSteps bounds how many steps of a retry strategy waitBudget
// follows; a strategy that still retries after them waits until ctx ends.
const maxBudgetSteps = 10000

// waitBudget returns how long s would wait in all, and false if it never
// gives up (within maxBudgetSteps attempts).
func waitBudget(s RetryStrategy) (time.Duration, bool) {
	var waited time.Duration
	for attempt := 1; attempt <= maxBudgetSteps; attempt++ {
		d, ok := s.NextBackoff(attempt, waited)
		if !ok {
			return waited, true
		}
		waited += max(d, MinRetryDelay)
		if waited >= MaxTTL {
			break
		}
	}
	return 0, false
}

// gaveUpQueued is the cause of ErrNotAcquired when the wait in the
// server's queue reached the retry strategy's total.
func gaveUpQueued(waited time.Duration) error {
	return fmt.Errorf("held by another token; gave up after waiting %v in the server's queue, the retry strategy's limit (the default waits 5s): wait longer with distlock.WithRetry or WithLockRetry, e.g. LimitWait(ExponentialBackoff(2*time.Millisecond, 100*time.Millisecond), time.Minute), or bound the wait by ctx alone with ExponentialBackoff",
		waited.Round(time.Millisecond))
}

// acquireQueued is acquire on a Queuer, for a call whose strategy lets it
// wait. Arguments are already checked.
func (m *Manager) acquireQueued(ctx context.Context, key string, ttl time.Duration, token string, explicit bool, retry RetryStrategy, oc *call) (string, driver.Grant, time.Time, error) {
	const op = "acquire"
	start := time.Now()
	var (
		deadline time.Time
		w        *waiter
		timer    *time.Timer
		waited   bool // the call waited for the key held by another token
		lastErr  error
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	fail := func(kind, c error) (string, driver.Grant, time.Time, error) {
		return m.giveUp(ctx, op, key, token, ttl, w, kind, c)
	}
	ended := func(cerr error) (string, driver.Grant, time.Time, error) {
		if !waited && lastErr != nil {
			return fail(ErrUnavailable, joinCtx(cause(lastErr, ErrUnavailable), cerr))
		}
		return fail(ErrNotAcquired, waitEnded(time.Since(start), cerr))
	}
	ok := func(g driver.Grant, t0 time.Time) (string, driver.Grant, time.Time, error) {
		if g.TTL < ttl {
			g.TTL = ttl
		}
		if w != nil {
			m.gotThroughLine(key, token, t0.Add(grantValid(g)))
		}
		return token, g, t0, nil
	}

	if m.tryFirst(key, explicit) {
		// One plain attempt first: a free key costs what Acquire costs
		// (the backend's Acquire respects its queue, so this slips in
		// ahead of nobody). With others of this Manager in line, only an
		// explicit token tries: it may be its holder's re-acquire, which
		// must not queue behind them.
		t0 := time.Now()
		g, err := m.b.Acquire(ctx, key, token, ttl)
		oc.attempt(ctx, err)
		if err == nil {
			return ok(g, t0)
		}
		kind := classify(err)
		if kind == ErrNotAcquired {
			m.foundHeld(key)
		}
		if cerr := ctx.Err(); cerr != nil {
			if !explicit {
				m.dropAbandoned(ctx, key, token, nil)
			}
			if kind == ErrNotAcquired {
				return fail(ErrNotAcquired, waitEnded(time.Since(start), cerr))
			}
			return fail(ErrUnavailable, joinCtx(cause(err, kind), cerr))
		}
		switch kind {
		case ErrNotAcquired:
			waited = true
		case ErrUnavailable:
			lastErr = err // AcquireWait tries again, per the strategy
		default:
			return fail(kind, cause(err, kind))
		}
	}
	if b, ok := waitBudget(retry); ok {
		deadline = start.Add(b)
	}
	w = m.enqueue(key, token, ttl)
	failures := 0 // server errors in a row
	for {
		if m.closed.Load() {
			return fail(ErrClosed, nil)
		}
		if h := m.takeGrant(w); h != nil {
			return ok(h.g, h.t0)
		}
		var retryIn time.Duration
		var localUntil time.Time
		if m.isHead(w) {
			localUntil = m.localHolder(key)
		}
		if !localUntil.IsZero() {
			// Another goroutine of this Manager holds the key, having
			// got it through this line: its release hands the key here
			// (or wakes this head), with nothing to undo on the server.
			waited = true
		} else if m.isHead(w) {
			wctx, cancel := context.WithCancel(ctx)
			if !deadline.IsZero() {
				wctx, cancel = context.WithDeadline(ctx, deadline)
			}
			if !m.setWaitCancel(w, cancel) {
				cancel() // a transfer to w landed meanwhile
				continue
			}
			onClose := context.AfterFunc(m.closeCtx, cancel) // Close ends the wait
			t0 := time.Now()
			g, err := m.queuer.AcquireWait(wctx, key, token, ttl)
			onClose()
			m.setWaitCancel(w, nil)
			cancel()
			if err != nil && wctx.Err() != nil && !errors.Is(err, ErrUnavailable) {
				oc.attempt(ctx, ErrNotAcquired) // the wait ended without the key
			} else {
				oc.attempt(ctx, err)
			}
			if m.closed.Load() && err != nil {
				return fail(ErrClosed, nil)
			}
			if err == nil {
				m.leave(key, w) // a transfer that landed meanwhile granted the same token
				if !g.At.IsZero() {
					t0 = g.At
				}
				return ok(g, t0)
			}
			if h := m.settle(w); h != nil {
				// A goroutine of this Manager handed the key to w and
				// cancelled the wait for it.
				return ok(h.g, h.t0)
			}
			if cerr := ctx.Err(); cerr != nil {
				kind, c := error(ErrNotAcquired), waitEnded(time.Since(start), cerr)
				if !waited && (errors.Is(err, ErrUnavailable) || lastErr != nil) {
					// The server never said the key was held, and could
					// not be reached (now, or before this wait).
					if !errors.Is(err, ErrUnavailable) {
						err = lastErr
					}
					kind, c = ErrUnavailable, joinCtx(cause(err, ErrUnavailable), cerr)
				}
				r1, r2, r3, r4 := fail(kind, c)
				if !explicit {
					// The request may have landed as ctx ended: the
					// backend cleans up; make sure.
					m.dropAbandoned(ctx, key, token, nil)
				}
				return r1, r2, r3, r4
			}
			unavailable := errors.Is(err, ErrUnavailable)
			if !unavailable && wctx.Err() != nil {
				if !deadline.IsZero() && !time.Now().Before(deadline) {
					return fail(ErrNotAcquired, gaveUpQueued(time.Since(start)))
				}
				continue // cancelled for a transfer that did not land
			}
			kind := classify(err)
			if kind != ErrUnavailable {
				return fail(kind, cause(err, kind))
			}
			// The server could not be reached: try again per the
			// strategy, as long as it lets the call wait.
			lastErr = err
			failures++
			d, more := retry.NextBackoff(failures, time.Since(start))
			if !more || (!deadline.IsZero() && !time.Now().Before(deadline)) {
				return fail(kind, cause(err, kind))
			}
			retryIn = max(d, MinRetryDelay)
		} else {
			waited = true
		}
		var tc <-chan time.Time
		if !localUntil.IsZero() {
			retryIn = max(time.Until(localUntil), MinRetryDelay)
		}
		if wait := retryIn; wait > 0 || !deadline.IsZero() {
			if wait == 0 || (!deadline.IsZero() && time.Until(deadline) < wait) {
				wait = max(time.Until(deadline), 0)
			}
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			tc = timer.C
		}
		select {
		case <-ctx.Done():
			return ended(ctx.Err())
		case <-m.closing:
			return fail(ErrClosed, nil)
		case <-w.got:
		case <-w.wake:
		case <-tc:
			switch {
			case deadline.IsZero() || time.Now().Before(deadline):
			case retryIn > 0 && lastErr != nil:
				return fail(ErrUnavailable, cause(lastErr, ErrUnavailable))
			default:
				return fail(ErrNotAcquired, gaveUpQueued(time.Since(start)))
			}
		}
	}
}

// maxContended bounds how many keys a Manager remembers as contended;
// when it is reached the memory starts afresh.
const maxContended = 1024

// contendedSkips is how many acquires of a key that a plain attempt found
// held go straight to the server's queue before one tries first again.
const contendedSkips = 8

// tryFirst reports whether an acquire of key that may wait makes a plain
// attempt before it waits in the server's queue. It does unless others of
// this Manager wait for key (then only an explicit token tries: it may be
// the holder's re-acquire), or a recent plain attempt of this Manager
// found key held: then the next contendedSkips acquires go straight to the
// queue, which grants a free key at once anyway, saving the server a
// request each; the one after tries again, so a key that is no longer
// contended soon costs a plain Acquire again.
func (m *Manager) tryFirst(key string, explicit bool) bool {
	m.qmu.Lock()
	defer m.qmu.Unlock()
	if q := m.queues[key]; q != nil && len(q.ws) > 0 {
		return explicit
	}
	n, hot := m.contended[key]
	switch {
	case !hot:
		return true
	case n > 1:
		m.contended[key] = n - 1
	default:
		delete(m.contended, key)
	}
	return false
}

// foundHeld remembers that a plain attempt on key found it held.
func (m *Manager) foundHeld(key string) {
	m.qmu.Lock()
	defer m.qmu.Unlock()
	if m.contended == nil || len(m.contended) >= maxContended {
		m.contended = make(map[string]int)
	}
	m.contended[key] = contendedSkips
}

// setWaitCancel records (or with nil, forgets) the function that cancels
// w's AcquireWait, so that a transfer to w can end it. It reports false if
// a transfer to w has landed or is under way: w must not start waiting.
func (m *Manager) setWaitCancel(w *waiter, cancel context.CancelFunc) bool {
	m.qmu.Lock()
	defer m.qmu.Unlock()
	if cancel != nil && (w.granted != nil || w.inflight != nil) {
		return false
	}
	w.cancelWait = cancel
	return true
}

// settle waits for a transfer to w under way to end, and returns its grant
// if it landed (w has then left the line).
func (m *Manager) settle(w *waiter) *handoff {
	m.qmu.Lock()
	defer m.qmu.Unlock()
	return m.settleLocked(w)
}
