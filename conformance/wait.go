package conformance

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distlock/distlock"
)

func contextWithTimeout(t TB, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), d)
}

// promptly is how late a call may return after its context ends.
const promptly = time.Second

var waitCases = []Case{
	{Topic: "Wait", Name: "BlockedAcquireGetsLockAfterRelease", Run: func(t TB, e *Env) {
		m1, m2 := e.Manager(t), e.Manager(t, distlock.WithRetry(distlock.DefaultRetry))
		key := e.Key("handoff")
		tok := mustAcquire(t, m1, key, e.Long)
		type res struct {
			at  time.Time
			err error
		}
		got := make(chan res, 1)
		ctx, cancel := contextWithTimeout(t, 30*time.Second)
		defer cancel()
		go func() {
			tok2, err := m2.Acquire(ctx, key, e.Long)
			if err == nil {
				defer func() { _ = m2.Release(context.WithoutCancel(ctx), key, tok2) }()
			}
			got <- res{time.Now(), err}
		}()
		eventually(t, 10*time.Second, "the waiter to wait", func() bool { return m2.Waiting(key) == 1 })
		select {
		case r := <-got:
			t.Fatalf("waiter returned while the lock was held: %v", r.err)
		default:
		}
		released := time.Now()
		if err := m1.Release(t.Context(), key, tok); err != nil {
			t.Fatalf("Release: %v", err)
		}
		r := <-got
		if r.err != nil {
			t.Fatalf("waiter: %v", r.err)
		}
		if lag := r.at.Sub(released); lag > promptly {
			t.Fatalf("waiter got the lock %v after release", lag)
		}
	}},
}

var contextCases = []Case{
	{Topic: "Context", Name: "DeadlineWhileWaiting", Run: func(t TB, e *Env) {
		m1, m2 := e.Manager(t), e.Manager(t, distlock.WithRetry(distlock.LinearBackoff(20*time.Millisecond)))
		key := e.Key("deadline")
		mustAcquire(t, m1, key, e.Long)
		warmUp(t, e, m2)
		ctx, cancel := contextWithTimeout(t, 500*time.Millisecond)
		defer cancel()
		_, err := m2.Acquire(ctx, key, e.Long)
		late := time.Since(deadlineOf(ctx))
		wantIs(t, err, distlock.ErrNotAcquired, context.DeadlineExceeded)
		if errors.Is(err, distlock.ErrUnavailable) {
			t.Fatalf("deadline while waiting on a held key reported unavailable: %v", err)
		}
		if late > promptly {
			t.Fatalf("Acquire returned %v after its deadline", late)
		}
	}},
	{Topic: "Context", Name: "CancelWhileWaiting", Run: func(t TB, e *Env) {
		m1, m2 := e.Manager(t), e.Manager(t, distlock.WithRetry(distlock.LinearBackoff(20*time.Millisecond)))
		key := e.Key("cancel")
		mustAcquire(t, m1, key, e.Long)
		warmUp(t, e, m2)
		ctx, cancel := context.WithCancel(t.Context())
		timer := time.AfterFunc(500*time.Millisecond, cancel)
		defer timer.Stop()
		_, err := m2.Lock(ctx, key, e.Long)
		wantIs(t, err, distlock.ErrNotAcquired, context.Canceled)
	}},
	{Topic: "Context", Name: "CutOffLeavesNothing", Run: func(t TB, e *Env) {
		// An Acquire whose deadline ends while its request is in flight
		// may be granted by the server after all; the Manager must take
		// that grant back, so the key does not stay blocked for its TTL.
		m, probe := e.Manager(t, noRetry), e.Manager(t, noRetry)
		warmUp(t, e, m)
		got := 0
		for i := range 40 {
			key := e.Key(fmt.Sprintf("cut-off-%d", i))
			d := time.Duration(10+rand.IntN(600)) * time.Microsecond
			ctx, cancel := contextWithTimeout(t, d)
			tok, err := m.Acquire(ctx, key, e.Long)
			cancel()
			if err == nil {
				got++
				if err := m.Release(t.Context(), key, tok); err != nil {
					t.Fatalf("Release: %v", err)
				}
				continue
			}
			eventually(t, min(e.Long/3, 10*time.Second), "the key of an Acquire cut off by its deadline to be free",
				func() bool { return !heldByOther(t, probe, key) })
		}
		t.Logf("%d of 40 acquires made it within their deadline", got)
	}},
	{Topic: "Context", Name: "AlreadyCancelledAcquiresNothing", Run: func(t TB, e *Env) {
		m, probe := e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("precancelled")
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := m.Acquire(ctx, key, e.Long)
		wantIs(t, err, distlock.ErrNotAcquired, context.Canceled)
		if heldByOther(t, probe, key) {
			t.Fatalf("Acquire with a cancelled context took the lock")
		}
	}},
}

// warmUp makes m take and release a lock, so that connection set-up is
// not what a short deadline measures.
func warmUp(t TB, e *Env, m *distlock.Manager) {
	t.Helper()
	k := e.Key("warm-up")
	tok := mustAcquire(t, m, k, e.Long)
	if err := m.Release(t.Context(), k, tok); err != nil {
		t.Fatalf("warm-up Release: %v", err)
	}
}

func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

var exclusionCases = []Case{
	{Topic: "Exclusion", Name: "Stress", Run: func(t TB, e *Env) {
		const managers, workers, rounds = 3, 4, 15
		key := e.Key("stress")
		var (
			inside   atomic.Int32
			overlaps atomic.Int32
			counter  atomic.Int64 // read-then-write: lost updates reveal overlap
			wg       sync.WaitGroup
			errs     = make(chan error, managers*workers)
		)
		ctx, cancel := contextWithTimeout(t, 60*time.Second)
		defer cancel()
		for range managers {
			m := e.Manager(t, distlock.WithRetry(distlock.ExponentialBackoff(time.Millisecond, 20*time.Millisecond)))
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range rounds {
						tok, err := m.Acquire(ctx, key, e.Long)
						if err != nil {
							errs <- err
							return
						}
						if inside.Add(1) != 1 {
							overlaps.Add(1)
						}
						v := counter.Load()
						time.Sleep(100 * time.Microsecond) // the critical section's work: widens any overlap
						counter.Store(v + 1)
						inside.Add(-1)
						if err := m.Release(ctx, key, tok); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("worker: %v", err)
		}
		if n := overlaps.Load(); n != 0 {
			t.Fatalf("%d overlapping critical sections", n)
		}
		if got, want := counter.Load(), int64(managers*workers*rounds); got != want && !t.Failed() {
			t.Fatalf("counter = %d, want %d (lost updates)", got, want)
		}
	}},
}

var fencingCases = []Case{
	{Topic: "Fencing", Name: "StrictlyIncreasingAcrossManagers", Run: func(t TB, e *Env) {
		if !e.Caps.Fencing {
			t.Skipf("%s", noFencing)
		}
		ms := []*distlock.Manager{e.Manager(t), e.Manager(t), e.Manager(t)}
		key := e.Key("fence")
		var last uint64
		for i := range 24 {
			m := ms[i%len(ms)]
			l, err := m.Lock(t.Context(), key, e.Long)
			if err != nil {
				t.Fatalf("Lock %d: %v", i, err)
			}
			if l.Fence() <= last {
				t.Fatalf("grant %d: fence %d not greater than previous %d", i, l.Fence(), last)
			}
			last = l.Fence()
			if err := l.Release(t.Context()); err != nil {
				t.Fatalf("Release %d: %v", i, err)
			}
		}
		// After an expiry too.
		l, err := ms[0].Lock(t.Context(), key, e.Short)
		if err != nil {
			t.Fatalf("Lock: %v", err)
		}
		if l.Fence() <= last {
			t.Fatalf("fence %d not greater than previous %d", l.Fence(), last)
		}
		last = l.Fence()
		ctx, cancel := contextWithTimeout(t, 10*e.Short)
		defer cancel()
		l2, err := ms[1].Lock(ctx, key, e.Long, distlock.WithLockRetry(distlock.LinearBackoff(10*time.Millisecond)))
		if err != nil {
			t.Fatalf("Lock after expiry: %v", err)
		}
		if l2.Fence() <= last {
			t.Fatalf("fence after expiry %d not greater than previous %d", l2.Fence(), last)
		}
	}},
	{Topic: "Fencing", Name: "CrossInstanceRelease", Run: func(t TB, e *Env) {
		if !e.Caps.CrossInstanceRelease {
			t.Skipf("backend declares no cross-instance release (driver.Capabilities.CrossInstanceRelease is false): only the holding client can release")
		}
		m1, m2, probe := e.Manager(t), e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("cross")
		tok := mustAcquire(t, m1, key, e.Short)
		if err := m2.Extend(t.Context(), key, tok, e.Long); err != nil {
			t.Fatalf("Extend from another manager with the token: %v", err)
		}
		if err := m2.Release(t.Context(), key, tok); err != nil {
			t.Fatalf("Release from another manager with the token: %v", err)
		}
		if heldByOther(t, probe, key) {
			t.Fatalf("lock still held after cross-instance release")
		}
		wantIs(t, m1.Release(t.Context(), key, tok), distlock.ErrNotHeld)
	}},
}
