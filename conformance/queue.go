package conformance

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// Several managers on one key, each with its own client, as separate
// processes are: the case users run.

const noQueuer = "backend is not a driver.Queuer (its waiters poll, as go-redsync's Mutex does): " +
	"there is no server-side queue to wake one waiter per release or keep arrival order"

// queuer reports whether the harness's backends queue waiters on the server.
func queuer(t TB, e *Env) bool {
	t.Helper()
	b, err := e.H.NewBackend(t.Context())
	if err != nil {
		t.Fatalf("harness NewBackend: %v", err)
	}
	defer func() { _ = b.Close() }()
	_, ok := b.(driver.Queuer)
	return ok
}

// queued waits until the server shows n waiters queued for key.
func queued(t TB, probe *distlock.Manager, key string, n int) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%d waiter(s) in the server's queue", n), func() bool {
		info, err := probe.Inspect(t.Context(), key)
		if err != nil {
			t.Fatalf("Inspect: %v", err)
		}
		return info.Waiters == n
	})
}

// attemptCounter counts the attempts a Manager makes on its backend,
// through the Manager's own metric.
type attemptCounter struct{ r *sdkmetric.ManualReader }

func newAttemptCounter() (*attemptCounter, distlock.Option) {
	r := sdkmetric.NewManualReader()
	return &attemptCounter{r}, distlock.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(r)))
}

func (c *attemptCounter) count(t TB) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := c.r.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect metrics: %v", err)
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != distlock.MetricAttempts {
				continue
			}
			if s, ok := m.Data.(metricdata.Sum[int64]); ok {
				for _, p := range s.DataPoints {
					n += p.Value
				}
			}
		}
	}
	return n
}

// grantOrder runs n waiters, each on its own Manager, that queue for key
// (held by holder with tok) one after another, and returns the order in
// which they got it once tok is released. Each waiter holds the key until
// it has recorded its turn.
func grantOrder(t TB, e *Env, holder *distlock.Manager, key, tok string, ms []*distlock.Manager) []int {
	t.Helper()
	order := make(chan int, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := m.Lock(t.Context(), key, e.Long)
			if err != nil {
				t.Errorf("waiter %d: Lock: %v", i, err)
				return
			}
			order <- i
			if err := l.Release(t.Context()); err != nil {
				t.Errorf("waiter %d: Release: %v", i, err)
			}
		}()
		eventually(t, 10*time.Second, fmt.Sprintf("waiter %d to wait", i), func() bool { return m.Waiting(key) == 1 })
		queued(t, holder, key, i+1)
	}
	if err := holder.Release(t.Context(), key, tok); err != nil {
		t.Fatalf("Release: %v", err)
	}
	wg.Wait()
	close(order)
	var got []int
	for i := range order {
		got = append(got, i)
	}
	return got
}

var queueCases = []Case{
	{Topic: "Waiters", Name: "FirstComeFirstServedAcrossManagers", Run: func(t TB, e *Env) {
		// Waiters in different processes get the key in the order they
		// queued on the server.
		if !queuer(t, e) {
			t.Skipf("%s", noQueuer)
		}
		holder := e.Manager(t)
		key := e.Key("fcfs")
		tok := mustAcquire(t, holder, key, e.Long)
		const n = 5
		ms := make([]*distlock.Manager, n)
		for i := range ms {
			ms[i] = e.Manager(t, longWait)
		}
		got := grantOrder(t, e, holder, key, tok, ms)
		for i, w := range got {
			if w != i {
				t.Fatalf("grant order %v, want 0..%d in queue order", got, n-1)
			}
		}
		if len(got) != n {
			t.Fatalf("%d of %d waiters got the key", len(got), n)
		}
	}},
	{Topic: "Waiters", Name: "OneWakePerRelease", Run: func(t TB, e *Env) {
		// Each release wakes one waiter, not every one: with n managers
		// waiting and n releases, the managers make about 2n attempts in
		// all (each a try, then one wait in the server's queue), not n
		// per release (n² in all).
		if !queuer(t, e) {
			t.Skipf("%s", noQueuer)
		}
		holder := e.Manager(t)
		key := e.Key("herd")
		tok := mustAcquire(t, holder, key, e.Long)
		const n = 6
		ms := make([]*distlock.Manager, n)
		counters := make([]*attemptCounter, n)
		for i := range ms {
			c, opt := newAttemptCounter()
			counters[i] = c
			ms[i] = e.Manager(t, longWait, opt)
		}
		if got := grantOrder(t, e, holder, key, tok, ms); len(got) != n {
			t.Fatalf("%d of %d waiters got the key", len(got), n)
		}
		var total int64
		for _, c := range counters {
			total += c.count(t)
		}
		if total > 2*n+1 { // one spare for a request the server answered late
			t.Fatalf("%d managers made %d attempts over %d releases: more than one wake-up per release", n, total, n)
		}
	}},
	{Topic: "Waiters", Name: "TTLCountsFromTheGrant", Run: func(t TB, e *Env) {
		// A waiter that waited longer than its TTL gets a lock whose TTL
		// counts from the grant, not from when it started waiting: the
		// handle is live, its expiry ahead, and the key held.
		holder, probe := e.Manager(t), e.Manager(t, noRetry)
		waiter := e.Manager(t, longWait)
		key := e.Key("ttl-from-grant")
		tok := mustAcquire(t, holder, key, e.Long)
		got := make(chan *distlock.Lock, 1)
		go func() {
			l, err := waiter.Lock(t.Context(), key, e.Short)
			if err != nil {
				t.Errorf("waiter: Lock: %v", err)
			}
			got <- l
		}()
		eventually(t, 10*time.Second, "the waiter to wait", func() bool { return waiter.Waiting(key) == 1 })
		time.Sleep(e.Short + e.Short/2) // outlive the waiter's TTL while it waits
		if err := holder.Release(t.Context(), key, tok); err != nil {
			t.Fatalf("Release: %v", err)
		}
		l := <-got
		if l == nil {
			return
		}
		if left := time.Until(l.Expiry()); left <= 0 || l.Err() != nil {
			t.Fatalf("a lock granted after a long wait: expiry %v from now, Err %v; want its TTL to count from the grant", left, l.Err())
		}
		if !heldByOther(t, probe, key) {
			t.Fatalf("the waiter's lock is not held on the server")
		}
		if err := l.Release(t.Context()); err != nil {
			t.Fatalf("waiter Release: %v", err)
		}
	}},
	{Topic: "Waiters", Name: "LeaverBlocksNobody", Run: func(t TB, e *Env) {
		// A waiter of another manager that gives up, between two others,
		// leaves no trace: the one behind it gets the key at the release,
		// and afterwards a try-once Acquire of the free key succeeds.
		holder := e.Manager(t)
		key := e.Key("leaver")
		tok := mustAcquire(t, holder, key, e.Long)
		q := queuer(t, e)
		leaver, stayer := e.Manager(t, longWait), e.Manager(t, longWait)
		lctx, leave := context.WithCancel(t.Context())
		defer leave()
		left := make(chan error, 1)
		go func() {
			_, err := leaver.Acquire(lctx, key, e.Long)
			left <- err
		}()
		eventually(t, 10*time.Second, "the leaver to wait", func() bool { return leaver.Waiting(key) == 1 })
		if q {
			queued(t, holder, key, 1)
		}
		got := make(chan error, 1)
		var tok2 string
		go func() {
			var err error
			tok2, err = stayer.Acquire(t.Context(), key, e.Long)
			got <- err
		}()
		eventually(t, 10*time.Second, "the second waiter to wait", func() bool { return stayer.Waiting(key) == 1 })
		if q {
			queued(t, holder, key, 2)
		}
		leave()
		select {
		case err := <-left:
			wantIs(t, err, distlock.ErrNotAcquired, context.Canceled)
		case <-time.After(10 * time.Second):
			t.Fatalf("the leaver still waits 10s after its context ended")
		}
		if q {
			queued(t, holder, key, 1)
		}
		released := time.Now()
		if err := holder.Release(t.Context(), key, tok); err != nil {
			t.Fatalf("Release: %v", err)
		}
		select {
		case err := <-got:
			if err != nil {
				t.Fatalf("the waiter behind the leaver: %v", err)
			}
			if lag := time.Since(released); lag > promptly {
				t.Fatalf("the waiter behind the leaver got the key %v after the release", lag)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the waiter behind the leaver did not get the key within 10s of the release")
		}
		if err := stayer.Release(t.Context(), key, tok2); err != nil {
			t.Fatalf("Release: %v", err)
		}
		probe := e.Manager(t, noRetry)
		tok3, err := probe.Acquire(t.Context(), key, e.Long)
		if err != nil {
			t.Fatalf("try-once Acquire of the free key after a waiter left: %v", err)
		}
		_ = probe.Release(t.Context(), key, tok3)
	}},
	{Topic: "Waiters", Name: "CutOffWaitersLeaveNothing", Run: func(t TB, e *Env) {
		// Waiters of other managers whose deadlines end at any moment of
		// their requests (10µs to 3ms) leave nothing that blocks anyone:
		// once the holder releases, the key is free for a try-once Acquire
		// long before any TTL could pass.
		holder := e.Manager(t)
		key := e.Key("cutoff-waiters")
		tok := mustAcquire(t, holder, key, e.Long)
		var wg sync.WaitGroup
		const managers, each = 4, 10
		for i := range managers {
			m := e.Manager(t, longWait)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range each {
					d := 10*time.Microsecond + time.Duration(i*each+j)*75*time.Microsecond
					ctx, cancel := context.WithTimeout(t.Context(), d)
					tk, err := m.Acquire(ctx, key, e.Long)
					cancel()
					if err == nil {
						t.Errorf("a waiter got the key while it was held (token %v)", tk != "")
						return
					}
					if !errors.Is(err, distlock.ErrNotAcquired) && !errors.Is(err, distlock.ErrUnavailable) {
						t.Errorf("cut-off waiter: %v", err)
					}
				}
			}()
		}
		wg.Wait()
		if err := holder.Release(t.Context(), key, tok); err != nil {
			t.Fatalf("Release: %v", err)
		}
		probe := e.Manager(t, noRetry)
		// A cut-off request may still be cleaned up in the background:
		// give it seconds, far below the 30s TTL a leftover grant keeps.
		eventually(t, 5*time.Second, "the key to be free for a try-once Acquire", func() bool {
			tk, err := probe.Acquire(t.Context(), key, e.Long)
			if err == nil {
				_ = probe.Release(t.Context(), key, tk)
				return true
			}
			if !errors.Is(err, distlock.ErrNotAcquired) {
				t.Fatalf("probe: %v", err)
			}
			return false
		})
		info, err := holder.Inspect(t.Context(), key)
		if err != nil {
			t.Fatalf("Inspect: %v", err)
		}
		if info.Waiters != 0 {
			t.Fatalf("%d waiters left in the server's queue after every waiter gave up", info.Waiters)
		}
	}},
}
