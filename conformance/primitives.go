package conformance

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
)

// The primitives: read-write locks (topic RWLock), semaphores (Semaphore)
// and elections (Election). A backend passes them or declares the
// primitive absent in its Capabilities; the Declared case of each topic
// checks the declaration either way.

const noModeRevoker = "harness does not implement conformance.ModeRevoker (RevokeMode(ctx, key, kind) error): " +
	"conformance.URL has one for redis, etcd and postgres URLs"

// expiryLag bounds how long after a handle reports its expiry the server
// may still count the hold: the handle's expiry is measured from before
// the request, and etcd drops expired leases up to a second late.
const expiryLag = 5 * time.Second

func declared(c driver.Capabilities, k driver.Kind) bool {
	switch k {
	case driver.Read, driver.Write:
		return c.ReadWrite
	case driver.Permit:
		return c.Semaphore
	}
	return c.Election
}

// need skips a case of a primitive the backend does not declare.
func need(t TB, e *Env, k driver.Kind) {
	t.Helper()
	if !declared(e.Caps, k) {
		t.Skipf("backend declares no %s holds (driver.Capabilities)", k)
	}
}

// declaredCase checks kind's declaration: a declared primitive needs
// driver.Primitives, an undeclared one gives ErrUnsupported, sending
// nothing.
func declaredCase(topic string, k driver.Kind, try func(ctx context.Context, m *distlock.Manager, key string) error) Case {
	return Case{Topic: topic, Name: "Declared", Run: func(t TB, e *Env) {
		b, err := e.H.NewBackend(t.Context())
		if err != nil {
			t.Fatalf("harness NewBackend: %v", err)
		}
		_, isPrims := b.(driver.Primitives)
		m := distlock.New(b, noRetry)
		t.Cleanup(func() { _ = m.Close() })
		err = try(t.Context(), m, e.Key("declared"))
		if !declared(e.Caps, k) {
			wantIs(t, err, distlock.ErrUnsupported)
			return
		}
		if !isPrims {
			t.Fatalf("backend declares %s holds but does not implement driver.Primitives", k)
		}
		if err != nil {
			t.Fatalf("declared %s: %v", k, err)
		}
	}}
}

// revokeMode takes key away in kind's key space through the harness,
// skipping the case when it cannot.
func revokeMode(t TB, e *Env, key string, k driver.Kind) {
	t.Helper()
	rv, ok := e.H.(ModeRevoker)
	if !ok {
		t.Skipf("%s", noModeRevoker)
	}
	if err := rv.RevokeMode(t.Context(), key, k); err != nil {
		if errors.Is(err, errors.ErrUnsupported) {
			t.Skipf("%s: %v", noModeRevoker, err)
		}
		t.Fatalf("harness RevokeMode: %v", err)
	}
}

// lossCase checks that an auto-renewed hold taken with take reports its
// loss through Done when the harness revokes its key.
func lossCase(topic string, k driver.Kind, take func(ctx context.Context, m *distlock.Manager, key string, ttl time.Duration, o distlock.LockOption) (*distlock.Lock, error)) Case {
	return Case{Topic: topic, Name: "LossSignal", Run: func(t TB, e *Env) {
		need(t, e, k)
		key := e.Key("loss")
		l, err := take(t.Context(), e.Manager(t), key, e.Short, distlock.WithAutoRenew())
		mustHold(t, l, err, "hold")
		revokeMode(t, e, key, k)
		waitDone(t, l, e.Short+promptly, "the key was revoked")
		wantIs(t, l.Err(), distlock.ErrLockLost)
	}}
}

func mustHold(t TB, l *distlock.Lock, err error, what string) *distlock.Lock {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	t.Cleanup(func() { _ = l.Release(context.WithoutCancel(t.Context())) })
	return l
}

func release(t TB, l *distlock.Lock, what string) {
	t.Helper()
	if err := l.Release(t.Context()); err != nil {
		t.Fatalf("Release %s: %v", what, err)
	}
}

// refused asserts a try-once call failed with ErrNotAcquired.
func refused(t TB, l *distlock.Lock, err error, what string) {
	t.Helper()
	if err == nil {
		_ = l.Release(t.Context())
		t.Fatalf("%s: got the hold, want ErrNotAcquired", what)
	}
	wantIs(t, err, distlock.ErrNotAcquired)
}

// exclusionRun runs workers goroutines over managers that each take a hold
// with take and, while holding, check and count with enter/leave, until
// rounds holds were taken or the time is up.
func exclusionRun(t TB, e *Env, managers, workers, rounds int, take func(m *distlock.Manager, i int) (*distlock.Lock, error), enter func(i int) error, leave func(i int)) int64 {
	t.Helper()
	ms := make([]*distlock.Manager, managers)
	for i := range ms {
		ms[i] = e.Manager(t, distlock.WithRetry(distlock.LimitWait(distlock.ExponentialBackoff(time.Millisecond, 20*time.Millisecond), 20*time.Second)))
	}
	var (
		done   atomic.Int64
		failed atomic.Value
		wg     sync.WaitGroup
	)
	deadline := time.Now().Add(20 * time.Second)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := ms[w%managers]
			for done.Load() < int64(rounds) && time.Now().Before(deadline) && failed.Load() == nil {
				l, err := take(m, w)
				if err != nil {
					if !errors.Is(err, distlock.ErrNotAcquired) {
						failed.Store(err)
					}
					continue
				}
				if err := enter(w); err != nil {
					failed.Store(err)
				}
				time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond) // the critical section's work: widens any overlap
				leave(w)
				if err := l.Release(context.WithoutCancel(t.Context())); err != nil {
					failed.Store(err)
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatalf("%v", err)
	}
	return done.Load()
}

var rwCases = []Case{
	declaredCase("RWLock", driver.Read, func(ctx context.Context, m *distlock.Manager, key string) error {
		l, err := m.RWMutex(key).RLock(ctx, time.Minute)
		if err == nil {
			return l.Release(ctx)
		}
		return err
	}),
	{Topic: "RWLock", Name: "ReadersShareWritersExclude", Run: func(t TB, e *Env) {
		need(t, e, driver.Read)
		m1, m2, m3 := e.Manager(t, noRetry), e.Manager(t, noRetry), e.Manager(t, noRetry)
		key := e.Key("rw-share")
		a, err := m1.RWMutex(key).RLock(t.Context(), e.Long)
		a = mustHold(t, a, err, "first reader")
		b, err := m2.RWMutex(key).RLock(t.Context(), e.Long)
		b = mustHold(t, b, err, "second reader, another manager")
		w, err := m3.RWMutex(key).Lock(t.Context(), e.Long)
		refused(t, w, err, "writer beside two readers")
		if tok, err := m3.Acquire(t.Context(), key, e.Long); err != nil {
			t.Fatalf("the plain lock %q must be independent of the read-write lock: %v", key, err)
		} else if err := m3.Release(t.Context(), key, tok); err != nil {
			t.Fatalf("plain Release: %v", err)
		}
		release(t, a, "first reader")
		release(t, b, "second reader")
		w2, err := m3.RWMutex(key).Lock(t.Context(), e.Long) // a refused try-once writer leaves no mark
		w2 = mustHold(t, w2, err, "writer once the readers left")
		r, err := m1.RWMutex(key).RLock(t.Context(), e.Long)
		refused(t, r, err, "reader beside a writer")
		w3, err := m2.RWMutex(key).Lock(t.Context(), e.Long)
		refused(t, w3, err, "second writer")
		release(t, w2, "writer")
		r, err = m1.RWMutex(key).RLock(t.Context(), e.Long)
		release(t, mustHold(t, r, err, "reader after the writer"), "reader")
	}},
	{Topic: "RWLock", Name: "NeverWriterBesideReader", Run: func(t TB, e *Env) {
		need(t, e, driver.Read)
		key := e.Key("rw-exclusion")
		var readers, writers atomic.Int64
		var maxReaders atomic.Int64
		isWriter := func(i int) bool { return i%4 == 0 }
		n := exclusionRun(t, e, 4, 8, 150,
			func(m *distlock.Manager, i int) (*distlock.Lock, error) {
				if isWriter(i) {
					return m.RWMutex(key).Lock(t.Context(), e.Long)
				}
				return m.RWMutex(key).RLock(t.Context(), e.Long)
			},
			func(i int) error {
				if isWriter(i) {
					if w := writers.Add(1); w > 1 || readers.Load() > 0 {
						return errors.New("a writer holds the lock beside another holder")
					}
					return nil
				}
				r := readers.Add(1)
				if writers.Load() > 0 {
					return errors.New("a reader holds the lock beside a writer")
				}
				for m := maxReaders.Load(); r > m && !maxReaders.CompareAndSwap(m, r); m = maxReaders.Load() {
				}
				return nil
			},
			func(i int) {
				if isWriter(i) {
					writers.Add(-1)
				} else {
					readers.Add(-1)
				}
			})
		t.Logf("%d holds, up to %d readers at once", n, maxReaders.Load())
		if n < 30 {
			t.Fatalf("only %d holds in 20s", n)
		}
	}},
	{Topic: "RWLock", Name: "WaitingWriterHoldsOffNewReaders", Run: func(t TB, e *Env) {
		need(t, e, driver.Read)
		m1, m2, probe := e.Manager(t, noRetry), e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("rw-fair")
		r, err := m1.RWMutex(key).RLock(t.Context(), e.Long)
		r = mustHold(t, r, err, "reader")
		got := make(chan error, 1)
		var wl *distlock.Lock
		go func() {
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			var err error
			wl, err = m2.RWMutex(key).Lock(ctx, e.Long, distlock.WithLockRetry(distlock.ExponentialBackoff(time.Millisecond, 20*time.Millisecond)))
			got <- err
		}()
		// Once the writer waits, a new reader is refused although only
		// readers hold the lock.
		eventually(t, 10*time.Second, "a new reader to be refused behind the waiting writer", func() bool {
			l, err := probe.RWMutex(key).RLock(t.Context(), e.Long)
			if err == nil {
				_ = l.Release(t.Context())
				return false
			}
			wantIs(t, err, distlock.ErrNotAcquired)
			return true
		})
		select {
		case err := <-got:
			t.Fatalf("writer returned beside a reader: %v", err)
		default:
		}
		released := time.Now()
		release(t, r, "reader")
		if err := <-got; err != nil {
			t.Fatalf("waiting writer: %v", err)
		}
		if lag := time.Since(released); lag > promptly+time.Second {
			t.Fatalf("writer got the lock %v after the last reader left", lag)
		}
		release(t, wl, "writer")
	}},
	{Topic: "RWLock", Name: "ExpiryFreesEachHolder", Run: func(t TB, e *Env) {
		need(t, e, driver.Read)
		m, probe := e.Manager(t, noRetry), e.Manager(t, noRetry)
		key := e.Key("rw-expiry")
		r, err := m.RWMutex(key).RLock(t.Context(), e.Short)
		mustHold(t, r, err, "short reader")
		long, err := m.RWMutex(key).RLock(t.Context(), e.Long)
		long = mustHold(t, long, err, "long reader")
		waitDone(t, r, e.Short+promptly, "the short reader's TTL")
		wantIs(t, r.Err(), distlock.ErrLockLost)
		release(t, long, "long reader")
		// The handle's expiry is measured from before the request, so the
		// server's may come a moment later.
		var w *distlock.Lock
		eventually(t, expiryLag, "a writer once every reader has gone", func() bool {
			var err error
			w, err = probe.RWMutex(key).Lock(t.Context(), e.Short)
			return err == nil
		})
		mustHold(t, w, nil, "writer")
		wantIs(t, r.Extend(t.Context(), e.Long), distlock.ErrNotHeld) // never re-created
		waitDone(t, w, e.Short+promptly, "the writer's TTL")
		var rr *distlock.Lock
		eventually(t, expiryLag, "a reader once the writer expired", func() bool {
			rr, err = probe.RWMutex(key).RLock(t.Context(), e.Long)
			return err == nil
		})
		release(t, mustHold(t, rr, nil, "reader after the writer expired"), "reader")
	}},
	{Topic: "RWLock", Name: "TokensAreTheirOwn", Run: func(t TB, e *Env) {
		need(t, e, driver.Read)
		m, probe := e.Manager(t, noRetry), e.Manager(t, noRetry)
		key := e.Key("rw-token")
		a, err := m.RWMutex(key).RLock(t.Context(), e.Long, distlock.WithToken("reader-a"))
		a = mustHold(t, a, err, "reader a")
		again, err := m.RWMutex(key).RLock(t.Context(), e.Long, distlock.WithToken("reader-a"))
		mustHold(t, again, err, "re-acquire by reader a")
		if again.Fence() != a.Fence() {
			t.Fatalf("a re-acquire changed the fence: %d, was %d", again.Fence(), a.Fence())
		}
		w, err := m.RWMutex(key).Lock(t.Context(), e.Long, distlock.WithToken("reader-a"))
		refused(t, w, err, "write by a reader's token (no upgrade)")
		b, err := m.RWMutex(key).RLock(t.Context(), e.Long, distlock.WithToken("reader-b"))
		b = mustHold(t, b, err, "reader b")
		release(t, a, "reader a") // one release ends a's hold, re-acquired or not
		wantIs(t, a.Release(t.Context()), distlock.ErrNotHeld)
		wantIs(t, again.Release(t.Context()), distlock.ErrNotHeld)
		if err := b.Extend(t.Context(), e.Long); err != nil {
			t.Fatalf("reader b lost its hold when reader a released: %v", err)
		}
		w, err = probe.RWMutex(key).Lock(t.Context(), e.Long)
		refused(t, w, err, "writer while reader b holds")
		release(t, b, "reader b")
	}},
	{Topic: "RWLock", Name: "CancelledWriterLeavesNothing", Run: func(t TB, e *Env) {
		need(t, e, driver.Read)
		m, waiter, probe := e.Manager(t, noRetry), e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("rw-cancel")
		r, err := m.RWMutex(key).RLock(t.Context(), e.Long)
		r = mustHold(t, r, err, "reader")
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		w, err := waiter.RWMutex(key).Lock(ctx, e.Long)
		if err == nil {
			_ = w.Release(t.Context())
			t.Fatalf("writer got the lock beside a reader")
		}
		wantIs(t, err, distlock.ErrNotAcquired, context.DeadlineExceeded)
		if el := time.Since(start); el > 300*time.Millisecond+promptly {
			t.Fatalf("cancelled writer returned after %v", el)
		}
		// The writer waited between tries when its ctx ended: it dropped
		// its mark before returning.
		l, err := probe.RWMutex(key).RLock(t.Context(), e.Long)
		release(t, mustHold(t, l, err, "new reader once the cancelled writer left"), "new reader")
		release(t, r, "reader")
	}},
	lossCase("RWLock", driver.Read, func(ctx context.Context, m *distlock.Manager, key string, ttl time.Duration, o distlock.LockOption) (*distlock.Lock, error) {
		return m.RWMutex(key).RLock(ctx, ttl, o)
	}),
	{Topic: "RWLock", Name: "FencesGoUp", Run: func(t TB, e *Env) {
		need(t, e, driver.Read)
		if !e.Caps.Fencing {
			t.Skipf("%s", noFencing)
		}
		m1, m2 := e.Manager(t, noRetry), e.Manager(t, noRetry)
		key := e.Key("rw-fence")
		var last uint64
		for i := range 6 {
			m := m1
			if i%2 == 1 {
				m = m2
			}
			var l *distlock.Lock
			var err error
			if i%3 == 0 {
				l, err = m.RWMutex(key).Lock(t.Context(), e.Long)
			} else {
				l, err = m.RWMutex(key).RLock(t.Context(), e.Long)
			}
			mustHold(t, l, err, "hold")
			if l.Fence() <= last {
				t.Fatalf("grant %d: fence %d after %d", i, l.Fence(), last)
			}
			last = l.Fence()
			release(t, l, "hold")
		}
	}},
}

var semaphoreCases = []Case{
	declaredCase("Semaphore", driver.Permit, func(ctx context.Context, m *distlock.Manager, key string) error {
		l, err := m.Semaphore(key, 2).Acquire(ctx, time.Minute)
		if err == nil {
			return l.Release(ctx)
		}
		return err
	}),
	{Topic: "Semaphore", Name: "NeverMoreThanLimit", Run: func(t TB, e *Env) {
		need(t, e, driver.Permit)
		const limit = 3
		key := e.Key("sem-exclusion")
		var holders, most atomic.Int64
		n := exclusionRun(t, e, 4, 8, 150,
			func(m *distlock.Manager, _ int) (*distlock.Lock, error) {
				return m.Semaphore(key, limit).Acquire(t.Context(), e.Long)
			},
			func(int) error {
				h := holders.Add(1)
				if h > limit {
					return errors.New("more holders than the limit")
				}
				for m := most.Load(); h > m && !most.CompareAndSwap(m, h); m = most.Load() {
				}
				return nil
			},
			func(int) { holders.Add(-1) })
		t.Logf("%d holds, up to %d at once", n, most.Load())
		if n < 30 {
			t.Fatalf("only %d holds in 20s", n)
		}
	}},
	{Topic: "Semaphore", Name: "LimitAndRelease", Run: func(t TB, e *Env) {
		need(t, e, driver.Permit)
		ms := []*distlock.Manager{e.Manager(t, noRetry), e.Manager(t, noRetry), e.Manager(t, noRetry)}
		key := e.Key("sem-limit")
		a, err := ms[0].Semaphore(key, 2).Acquire(t.Context(), e.Long)
		a = mustHold(t, a, err, "first permit")
		b, err := ms[1].Semaphore(key, 2).Acquire(t.Context(), e.Long)
		b = mustHold(t, b, err, "second permit")
		c, err := ms[2].Semaphore(key, 2).Acquire(t.Context(), e.Long)
		refused(t, c, err, "third permit of 2")
		info, err := ms[2].Semaphore(key, 2).Inspect(t.Context())
		if err != nil || info.Holders != 2 || info.Limit != 2 {
			t.Fatalf("Inspect: %+v, %v; want 2 holders of limit 2", info, err)
		}
		again, err := ms[0].Semaphore(key, 2).Acquire(t.Context(), e.Long, distlock.WithToken(a.Token()))
		mustHold(t, again, err, "re-acquire of the first permit")
		if info, err := ms[2].Semaphore(key, 2).Inspect(t.Context()); err != nil || info.Holders != 2 {
			t.Fatalf("Inspect after a re-acquire: %+v, %v; want still 2 holders", info, err)
		}
		release(t, a, "first permit")
		c, err = ms[2].Semaphore(key, 2).Acquire(t.Context(), e.Long)
		c = mustHold(t, c, err, "third permit after a release")
		wantIs(t, a.Release(t.Context()), distlock.ErrNotHeld)
		release(t, b, "second permit")
		release(t, c, "third permit")
	}},
	{Topic: "Semaphore", Name: "LimitMismatchTakesNothing", Run: func(t TB, e *Env) {
		need(t, e, driver.Permit)
		m1, m2 := e.Manager(t, noRetry), e.Manager(t)
		key := e.Key("sem-mismatch")
		a, err := m1.Semaphore(key, 2).Acquire(t.Context(), e.Long)
		a = mustHold(t, a, err, "permit of 2")
		l, err := m2.Semaphore(key, 3).Acquire(t.Context(), e.Long)
		if err == nil {
			_ = l.Release(t.Context())
			t.Fatalf("a permit of 3 beside a holder of 2: want ErrLimitMismatch")
		}
		wantIs(t, err, distlock.ErrLimitMismatch)
		info, err := m1.Semaphore(key, 2).Inspect(t.Context())
		if err != nil || info.Holders != 1 {
			t.Fatalf("Inspect after a mismatch: %+v, %v; want 1 holder", info, err)
		}
		_, err = m1.Semaphore(key, 0).Acquire(t.Context(), e.Long)
		wantIs(t, err, distlock.ErrInvalidArgument)
		release(t, a, "permit of 2")
		l, err = m2.Semaphore(key, 3).Acquire(t.Context(), e.Long) // nobody holds: a new limit
		release(t, mustHold(t, l, err, "permit of 3 once nobody holds"), "permit of 3")
	}},
	{Topic: "Semaphore", Name: "ExpiryFreesAPermit", Run: func(t TB, e *Env) {
		need(t, e, driver.Permit)
		m, probe := e.Manager(t, noRetry), e.Manager(t, noRetry)
		key := e.Key("sem-expiry")
		short, err := m.Semaphore(key, 1).Acquire(t.Context(), e.Short)
		mustHold(t, short, err, "short permit")
		l, err := probe.Semaphore(key, 1).Acquire(t.Context(), e.Long)
		refused(t, l, err, "permit of a full semaphore")
		waitDone(t, short, e.Short+promptly, "the permit's TTL")
		eventually(t, expiryLag, "the expired permit to free its place", func() bool {
			l, err = probe.Semaphore(key, 1).Acquire(t.Context(), e.Long)
			return err == nil
		})
		mustHold(t, l, nil, "permit after the expiry")
		wantIs(t, short.Extend(t.Context(), e.Long), distlock.ErrNotHeld) // never re-created
		release(t, l, "permit")
	}},
	{Topic: "Semaphore", Name: "CancelledWaiterLeavesNothing", Run: func(t TB, e *Env) {
		need(t, e, driver.Permit)
		m, waiter, probe := e.Manager(t, noRetry), e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("sem-cancel")
		a, err := m.Semaphore(key, 1).Acquire(t.Context(), e.Long)
		a = mustHold(t, a, err, "permit")
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		l, err := waiter.Semaphore(key, 1).Acquire(ctx, e.Long)
		if err == nil {
			_ = l.Release(t.Context())
			t.Fatalf("a second permit of 1")
		}
		wantIs(t, err, distlock.ErrNotAcquired, context.DeadlineExceeded)
		release(t, a, "permit")
		eventually(t, 5*time.Second, "the freed permit", func() bool {
			l, err := probe.Semaphore(key, 1).Acquire(t.Context(), e.Long)
			if err != nil {
				return false
			}
			_ = l.Release(t.Context())
			return true
		})
	}},
	lossCase("Semaphore", driver.Permit, func(ctx context.Context, m *distlock.Manager, key string, ttl time.Duration, o distlock.LockOption) (*distlock.Lock, error) {
		return m.Semaphore(key, 2).Acquire(ctx, ttl, o)
	}),
	{Topic: "Semaphore", Name: "FencesGoUp", Run: func(t TB, e *Env) {
		need(t, e, driver.Permit)
		if !e.Caps.Fencing {
			t.Skipf("%s", noFencing)
		}
		m1, m2 := e.Manager(t, noRetry), e.Manager(t, noRetry)
		key := e.Key("sem-fence")
		var last uint64
		var held []*distlock.Lock
		for i := range 6 {
			m := m1
			if i%2 == 1 {
				m = m2
			}
			l, err := m.Semaphore(key, 2).Acquire(t.Context(), e.Long)
			mustHold(t, l, err, "permit")
			if l.Fence() <= last {
				t.Fatalf("grant %d: fence %d after %d", i, l.Fence(), last)
			}
			last = l.Fence()
			held = append(held, l)
			if len(held) == 2 {
				release(t, held[0], "permit")
				held = held[1:]
			}
		}
	}},
}

var electionCases = []Case{
	declaredCase("Election", driver.Leader, func(ctx context.Context, m *distlock.Manager, key string) error {
		ld, err := m.Election(key, time.Minute).Campaign(ctx, "v")
		if err == nil {
			return ld.Resign(ctx)
		}
		return err
	}),
	{Topic: "Election", Name: "OneLeaderAtATime", Run: func(t TB, e *Env) {
		need(t, e, driver.Leader)
		name := e.Key("elect-one")
		const n = 4
		var leaders atomic.Int32
		var fences sync.Map
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			m := e.Manager(t)
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				defer cancel()
				for range 3 {
					ld, err := m.Election(name, e.Long).Campaign(ctx, string(rune('a'+i)))
					if err != nil {
						errs <- err
						return
					}
					if l := leaders.Add(1); l != 1 {
						errs <- errors.New("two leaders at once")
					}
					if _, dup := fences.LoadOrStore(ld.Fence(), i); dup && e.Caps.Fencing {
						errs <- errors.New("two leaderships with one fence")
					}
					time.Sleep(time.Millisecond) // the leader's work: widens any overlap of two leaders
					leaders.Add(-1)
					if err := ld.Resign(ctx); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("%v", err)
		}
	}},
	{Topic: "Election", Name: "LeaderPublishesValue", Run: func(t TB, e *Env) {
		need(t, e, driver.Leader)
		m, other := e.Manager(t), e.Manager(t)
		name := e.Key("elect-value")
		_, err := other.Election(name, e.Long).Leader(t.Context())
		wantIs(t, err, distlock.ErrNoLeader)
		ld, err := m.Election(name, e.Long).Campaign(t.Context(), "node-1:8080")
		if err != nil {
			t.Fatalf("Campaign: %v", err)
		}
		info, err := other.Election(name, e.Long).Leader(t.Context())
		if err != nil || info.Value != "node-1:8080" || info.Fence != ld.Fence() {
			t.Fatalf("Leader: %+v, %v; want value node-1:8080, fence %d", info, err, ld.Fence())
		}
		// A campaign by the leader's own token publishes a new value,
		// keeping the leadership and its fence.
		again, err := m.Election(name, e.Long).Campaign(t.Context(), "node-1:9090", distlock.WithToken(ld.Token()))
		if err != nil {
			t.Fatalf("Campaign by the leader's token: %v", err)
		}
		info, err = other.Election(name, e.Long).Leader(t.Context())
		if err != nil || info.Value != "node-1:9090" || info.Fence != ld.Fence() || again.Fence() != ld.Fence() {
			t.Fatalf("Leader after the leader's new value: %+v, %v; want value node-1:9090, fence %d", info, err, ld.Fence())
		}
		if err := ld.Resign(t.Context()); err != nil {
			t.Fatalf("Resign: %v", err)
		}
		select {
		case <-ld.Done():
		case <-time.After(promptly):
			t.Fatalf("Done did not close on Resign")
		}
		if ld.Err() != nil {
			t.Fatalf("Err after Resign: %v", ld.Err())
		}
		_, err = other.Election(name, e.Long).Leader(t.Context())
		wantIs(t, err, distlock.ErrNoLeader)
		wantIs(t, ld.Resign(t.Context()), distlock.ErrNotHeld)
	}},
	{Topic: "Election", Name: "FollowerTakesOverAfterResignAndExpiry", Run: func(t TB, e *Env) {
		need(t, e, driver.Leader)
		name := e.Key("elect-failover")
		m1, m2 := e.Manager(t), e.Manager(t)
		b, err := e.H.NewBackend(t.Context())
		if err != nil {
			t.Fatalf("harness NewBackend: %v", err)
		}
		crashed := distlock.New(b)
		first, err := crashed.Election(name, e.Short).Campaign(t.Context(), "crashed")
		if err != nil {
			t.Fatalf("Campaign: %v", err)
		}
		_ = first
		got := make(chan error, 1)
		var second *distlock.Leadership
		go func() {
			var err error
			second, err = m1.Election(name, e.Short).Campaign(t.Context(), "second")
			got <- err
		}()
		// The first leader stops renewing without resigning, as a crashed
		// process would (PostgreSQL ends its session at once).
		stopped := time.Now()
		_ = crashed.Close()
		select {
		case err := <-got:
			if err != nil {
				t.Fatalf("follower's Campaign: %v", err)
			}
		case <-time.After(e.Short + 2*promptly):
			t.Fatalf("follower did not lead within %v of the leader's crash", e.Short+2*promptly)
		}
		t.Logf("failover after %v (ttl %v)", time.Since(stopped), e.Short)
		third := make(chan error, 1)
		go func() {
			ld, err := m2.Election(name, e.Long).Campaign(t.Context(), "third")
			if err == nil {
				defer func() { _ = ld.Resign(context.WithoutCancel(t.Context())) }()
			}
			third <- err
		}()
		if err := second.Resign(t.Context()); err != nil {
			t.Fatalf("Resign: %v", err)
		}
		select {
		case err := <-third:
			if err != nil {
				t.Fatalf("third Campaign: %v", err)
			}
		case <-time.After(2 * promptly):
			t.Fatalf("no new leader within %v of a Resign", 2*promptly)
		}
	}},
	{Topic: "Election", Name: "ObserveSeesChanges", Run: func(t TB, e *Env) {
		need(t, e, driver.Leader)
		m, watcher := e.Manager(t), e.Manager(t)
		name := e.Key("elect-observe")
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		ch := watcher.Election(name, e.Long).Observe(ctx)
		next := func(what string) distlock.LeaderInfo {
			t.Helper()
			select {
			case li, ok := <-ch:
				if !ok {
					t.Fatalf("Observe closed its channel waiting for %s", what)
				}
				return li
			case <-time.After(10 * time.Second):
				t.Fatalf("Observe sent nothing for 10s waiting for %s", what)
			}
			return distlock.LeaderInfo{}
		}
		if li := next("the first state"); li != (distlock.LeaderInfo{}) {
			t.Fatalf("first state %+v, want no leader", li)
		}
		ld, err := m.Election(name, e.Long).Campaign(t.Context(), "one")
		if err != nil {
			t.Fatalf("Campaign: %v", err)
		}
		if li := next("the leader"); li.Value != "one" {
			t.Fatalf("observed %+v, want the leader 'one'", li)
		}
		if err := ld.Resign(t.Context()); err != nil {
			t.Fatalf("Resign: %v", err)
		}
		if li := next("the resignation"); li.Value != "" || li.Fence != 0 {
			t.Fatalf("observed %+v after Resign, want no leader", li)
		}
		cancel()
		for range ch { // closes when ctx ends
		}
	}},
	{Topic: "Election", Name: "CancelledCampaignLeavesNothing", Run: func(t TB, e *Env) {
		need(t, e, driver.Leader)
		m, other := e.Manager(t), e.Manager(t)
		name := e.Key("elect-cancel")
		ld, err := m.Election(name, e.Long).Campaign(t.Context(), "leader")
		if err != nil {
			t.Fatalf("Campaign: %v", err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		_, err = other.Election(name, e.Long).Campaign(ctx, "cancelled")
		wantIs(t, err, distlock.ErrNotAcquired, context.DeadlineExceeded)
		if err := ld.Resign(t.Context()); err != nil {
			t.Fatalf("Resign: %v", err)
		}
		// The cancelled candidate left nothing: a new one leads at once,
		// publishing its own value (a leftover entry or wait would lead
		// instead, and this campaign would run out of time).
		third := e.Manager(t)
		ctx3, cancel3 := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel3()
		ld3, err := third.Election(name, e.Long).Campaign(ctx3, "third")
		if err != nil {
			t.Fatalf("a new candidate after the only leader resigned: %v", err)
		}
		if li, err := other.Election(name, e.Long).Leader(t.Context()); err != nil || li.Value != "third" || li.Fence != ld3.Fence() {
			t.Fatalf("Leader: %+v, %v; want the new candidate's value", li, err)
		}
		if err := ld3.Resign(t.Context()); err != nil {
			t.Fatalf("Resign: %v", err)
		}
	}},
	{Topic: "Election", Name: "WatchSeesLeaderChanges", Run: func(t TB, e *Env) {
		need(t, e, driver.Leader)
		b, err := e.H.NewBackend(t.Context())
		if err != nil {
			t.Fatalf("harness NewBackend: %v", err)
		}
		t.Cleanup(func() { _ = b.Close() })
		w, ok := b.(driver.ModeWatcher)
		if !ok {
			t.Skipf("backend is no driver.ModeWatcher: Observe polls")
		}
		name := e.Key("elect-watch")
		changed := make(chan struct{}, 1)
		stop, err := w.WatchMode(t.Context(), name, driver.Mode{Kind: driver.Leader}, func() {
			select {
			case changed <- struct{}{}:
			default:
			}
		})
		if errors.Is(err, errors.ErrUnsupported) {
			t.Skipf("this backend's client cannot watch: %v", err)
		}
		if err != nil {
			t.Fatalf("WatchMode: %v", err)
		}
		defer stop()
		seen := func(what string) {
			t.Helper()
			select {
			case <-changed:
			case <-time.After(10 * time.Second):
				t.Fatalf("WatchMode was not told of %s within 10s", what)
			}
		}
		m := e.Manager(t)
		ld, err := m.Election(name, e.Long).Campaign(t.Context(), "v")
		if err != nil {
			t.Fatalf("Campaign: %v", err)
		}
		seen("a new leader (another client's campaign)")
		select { // spurious calls are allowed: start afresh
		case <-changed:
		default:
		}
		if err := ld.Resign(t.Context()); err != nil {
			t.Fatalf("Resign: %v", err)
		}
		seen("the leader's resignation")
	}},
	{Topic: "Election", Name: "LossOfLeadership", Run: func(t TB, e *Env) {
		need(t, e, driver.Leader)
		m := e.Manager(t)
		name := e.Key("elect-loss")
		ld, err := m.Election(name, e.Short).Campaign(t.Context(), "v")
		if err != nil {
			t.Fatalf("Campaign: %v", err)
		}
		revokeMode(t, e, name, driver.Leader)
		select {
		case <-ld.Done():
		case <-time.After(e.Short + promptly):
			t.Fatalf("leadership's Done did not fire within %v of its revocation", e.Short+promptly)
		}
		wantIs(t, ld.Err(), distlock.ErrLockLost)
	}},
	{Topic: "Election", Name: "FencesGoUp", Run: func(t TB, e *Env) {
		need(t, e, driver.Leader)
		if !e.Caps.Fencing {
			t.Skipf("%s", noFencing)
		}
		m1, m2 := e.Manager(t), e.Manager(t)
		name := e.Key("elect-fence")
		var last uint64
		for i := range 4 {
			m := m1
			if i%2 == 1 {
				m = m2
			}
			ld, err := m.Election(name, e.Long).Campaign(t.Context(), "v")
			if err != nil {
				t.Fatalf("Campaign: %v", err)
			}
			if ld.Fence() <= last {
				t.Fatalf("leadership %d: fence %d after %d", i, ld.Fence(), last)
			}
			last = ld.Fence()
			if err := ld.Resign(t.Context()); err != nil {
				t.Fatalf("Resign: %v", err)
			}
		}
	}},
}
