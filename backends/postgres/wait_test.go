package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/postgres"
	"github.com/distlock/distlock/internal/testwait"
)

// countingTracer counts the statements a pool sends.
type countingTracer struct{ n atomic.Int64 }

func (c *countingTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (c *countingTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// backendOn returns a Backend on a pool of its own (conns connections)
// whose statements tr counts, in h's namespace.
func backendOn(t *testing.T, h *harness, conns int, tr pgx.QueryTracer, opts ...postgres.Option) (*postgres.Backend, *pgxpool.Pool) {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(h.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = int32(conns)
	cfg.ConnConfig.Tracer = tr
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	b := postgres.New(pool, append([]postgres.Option{postgres.WithNamespace(h.ns)}, opts...)...)
	t.Cleanup(func() { b.Close(); pool.Close() })
	return b, pool
}

func waiters(t *testing.T, b *postgres.Backend, key string) int {
	t.Helper()
	info, err := b.Inspect(ctxT(t, 10*time.Second), key)
	if err != nil {
		t.Fatalf("inspect: %v", err)
	}
	return info.Waiters
}

// ours counts what is left of namespace ns's key on the server: advisory
// lock rows (held or waited for) and statements running pg_advisory_lock.
func ours(t *testing.T, h *harness, key string) (locks, running int) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	c, err := pgx.Connect(ctx, h.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	id := postgres.LockID(h.ns, key)
	err = c.QueryRow(ctx, "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"+
		" AND classid::int8 = $1 AND objid::int8 = $2), (SELECT count(*) FROM pg_stat_activity"+
		" WHERE state = 'active' AND query LIKE '%pg_advisory_lock(%' AND pid <> pg_backend_pid())",
		int64(uint64(id)>>32), int64(uint32(id))).Scan(&locks, &running)
	if err != nil {
		t.Fatal(err)
	}
	return locks, running
}

// TestAcquireWaitFIFO: waiters in different Backends are served in the
// order they queued on the server, each release waking exactly one of them
// (the others send nothing), with increasing fences; each lock's
// connection goes back to its pool when it is released.
func TestAcquireWaitFIFO(t *testing.T) {
	h := newHarness(t, server(t), "")
	ctx := ctxT(t, 60*time.Second)
	holder, _ := backendOn(t, h, 2, nil)
	const n = 4
	bs := make([]*postgres.Backend, n)
	pools := make([]*pgxpool.Pool, n)
	trs := make([]*countingTracer, n)
	for i := range bs {
		trs[i] = &countingTracer{}
		bs[i], pools[i] = backendOn(t, h, 2, trs[i])
	}
	g0, err := holder.AcquireWait(ctx, "k", "t-holder", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		i     int
		fence uint64
		err   error
	}
	got := make(chan result, n)
	for i := range bs {
		go func() {
			g, err := bs[i].AcquireWait(ctx, "k", fmt.Sprint("t", i), time.Minute)
			got <- result{i, g.Fence, err}
		}()
		testwait.For(t, 10*time.Second, fmt.Sprintf("waiter %d queued", i), func() bool { return waiters(t, holder, "k") == i+1 })
	}
	counts := func() []int64 {
		c := make([]int64, n)
		for i, tr := range trs {
			c[i] = tr.n.Load()
		}
		return c
	}
	before := counts()
	if err := holder.Release(ctx, "k", "t-holder"); err != nil {
		t.Fatal(err)
	}
	last := g0.Fence
	for want := range n {
		r := <-got
		if r.err != nil || r.i != want {
			t.Fatalf("grant %d went to waiter %d (%v)", want, r.i, r.err)
		}
		if r.fence <= last {
			t.Fatalf("fence %d after %d", r.fence, last)
		}
		last = r.fence
		// Nobody else was woken: the waiters still queued sent nothing.
		after := counts()
		for i := want + 1; i < n; i++ {
			if after[i] != before[i] {
				t.Fatalf("release woke waiter %d too: %d statements", i, after[i]-before[i])
			}
		}
		if w := waiters(t, holder, "k"); w != n-want-1 {
			t.Fatalf("waiters = %d after grant %d", w, want)
		}
		info, err := bs[want].Inspect(ctx, "k")
		if err != nil || !info.Held || info.Fence != r.fence || info.Holder != fmt.Sprint("t", want) {
			t.Fatalf("inspect by holder: %+v %v", info, err)
		}
		if _, err := bs[want].Extend(ctx, "k", fmt.Sprint("t", want), time.Minute); err != nil {
			t.Fatalf("extend: %v", err)
		}
		acquired := pools[want].Stat().AcquiredConns() // the lock's and the holder session Inspect used
		if err := bs[want].Release(ctx, "k", fmt.Sprint("t", want)); err != nil {
			t.Fatalf("release: %v", err)
		}
		testwait.For(t, 10*time.Second, "connection back in the pool", func() bool { return pools[want].Stat().AcquiredConns() == acquired-1 })
	}
	if _, err := holder.Acquire(ctx, "k", "t-free", time.Minute); err != nil {
		t.Fatalf("try-once acquire of the free key: %v", err)
	}
}

// TestAcquireWaitCutOff: waits cut off at once, mid-request or while
// queued leave nothing: no lock, no statement running, no queue entry;
// grants that raced with the deadline are undone.
func TestAcquireWaitCutOff(t *testing.T) {
	h := newHarness(t, server(t), "")
	ctx := ctxT(t, 120*time.Second)
	holder, _ := backendOn(t, h, 2, nil)
	w, pool := backendOn(t, h, 4, nil)
	deadlines := []time.Duration{time.Microsecond, 10 * time.Microsecond, 50 * time.Microsecond,
		100 * time.Microsecond, 300 * time.Microsecond, time.Millisecond, 3 * time.Millisecond, 10 * time.Millisecond}
	var slowest time.Duration
	for _, phase := range []string{"free", "held", "churn"} {
		contended := phase == "held"
		if contended {
			if _, err := holder.AcquireWait(ctx, "k", "t-holder", time.Minute); err != nil {
				t.Fatal(err)
			}
		}
		stop := make(chan struct{})
		churned := make(chan error, 1)
		go func() { // in the churn phase the key changes hands all along
			for phase == "churn" {
				select {
				case <-stop:
					churned <- nil
					return
				default:
				}
				if _, err := holder.AcquireWait(ctx, "k", "t-churn", time.Minute); err != nil {
					churned <- err
					return
				}
				if err := holder.Release(ctx, "k", "t-churn"); err != nil {
					churned <- err
					return
				}
			}
			churned <- nil
		}()
		for rep := range 3 {
			for _, d := range deadlines {
				t0 := time.Now()
				wctx, cancel := context.WithTimeout(ctx, d)
				g, err := w.AcquireWait(wctx, "k", "t-w", time.Minute)
				took := time.Since(t0)
				cancel()
				if err == nil {
					if contended {
						t.Fatalf("granted while held (deadline %v)", d)
					}
					if g.Fence == 0 {
						t.Fatal("no fence")
					}
					if err := w.Release(ctx, "k", "t-w"); err != nil {
						t.Fatalf("release: %v", err)
					}
					continue
				}
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("%s: deadline %v rep %d: %v", phase, d, rep, err)
				}
				slowest = max(slowest, took)
			}
		}
		close(stop)
		if err := <-churned; err != nil {
			t.Fatalf("churn: %v", err)
		}
		if contended {
			if err := holder.Release(ctx, "k", "t-holder"); err != nil {
				t.Fatal(err)
			}
		}
		testwait.For(t, 10*time.Second, "nothing left on the server", func() bool {
			l, r := ours(t, h, "k")
			return l == 0 && r == 0
		})
		// (the holder session its tries use may keep one)
		testwait.For(t, 10*time.Second, "the waits' connections returned", func() bool { return pool.Stat().AcquiredConns() <= 1 })
		if _, err := holder.Acquire(ctx, "k", "t-try", time.Minute); err != nil {
			t.Fatalf("try-once acquire of the free key: %v", err)
		}
		if err := holder.Release(ctx, "k", "t-try"); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("slowest return after the call started, cut off: %v", slowest)
}

// TestAcquireWaitCancelQueued: a waiter that gives up leaves the server's
// queue before AcquireWait returns and blocks nobody, whichever way it is
// cancelled; how long leaving takes is logged.
func TestAcquireWaitCancelQueued(t *testing.T) {
	h := newHarness(t, server(t), "")
	ctx := ctxT(t, 60*time.Second)
	holder, _ := backendOn(t, h, 2, nil)
	a, _ := backendOn(t, h, 2, nil)
	c, _ := backendOn(t, h, 2, nil)
	if _, err := holder.AcquireWait(ctx, "k", "t-holder", time.Minute); err != nil {
		t.Fatal(err)
	}
	// a's holder session is not connected at first: the wait is cancelled
	// by a cancel request; once Inspect has connected it, by
	// pg_cancel_backend there.
	var took []time.Duration
	for i := range 6 {
		if i == 3 {
			waiters(t, a, "k")
		}
		actx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := a.AcquireWait(actx, "k", "t-a", time.Minute)
			done <- err
		}()
		testwait.For(t, 10*time.Second, "a queued", func() bool { return waiters(t, holder, "k") == 1 })
		t0 := time.Now()
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled wait: %v", err)
		}
		took = append(took, time.Since(t0))
		if w := waiters(t, holder, "k"); w != 0 {
			t.Fatalf("%d waiters left after the wait returned", w)
		}
	}
	t.Logf("cancelled waits returned after %v (cancel request), %v (pg_cancel_backend)", took[:3], took[3:])
	var wg sync.WaitGroup
	wg.Add(1)
	var cerr error
	go func() {
		defer wg.Done()
		_, cerr = c.AcquireWait(ctx, "k", "t-c", time.Minute)
	}()
	testwait.For(t, 10*time.Second, "c queued", func() bool { return waiters(t, holder, "k") == 1 })
	if err := holder.Release(ctx, "k", "t-holder"); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if cerr != nil {
		t.Fatalf("next waiter: %v", cerr)
	}
}

// TestAcquireWaitLockKeepsPromises: a lock granted by AcquireWait expires
// at its TTL, is reported lost when its session is terminated, and is
// answered by Acquire with the same token as a re-acquire.
func TestAcquireWaitLockKeepsPromises(t *testing.T) {
	h := newHarness(t, server(t), "")
	ctx := ctxT(t, 60*time.Second)
	a, apool := backendOn(t, h, 2, nil)
	b, _ := backendOn(t, h, 2, nil)

	g, err := a.AcquireWait(ctx, "k", "t-a", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if g2, err := a.AcquireWait(ctx, "k", "t-a", 200*time.Millisecond); err != nil || g2.Fence != g.Fence {
		t.Fatalf("re-acquire: %+v %v", g2, err)
	}
	if _, err := a.Acquire(ctx, "k", "t-other", time.Minute); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("acquire by another token: %v", err)
	}
	// Not extended: the TTL frees it for a waiter elsewhere.
	if _, err := b.AcquireWait(ctx, "k", "t-b", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx, "k", "t-a"); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("release after expiry: %v", err)
	}
	// (the holder session Release used may still hold one)
	testwait.For(t, 10*time.Second, "a's connection back in its pool", func() bool { return apool.Stat().AcquiredConns() <= 1 })

	// Terminated: the loss is reported.
	lost := make(chan struct{})
	stop := b.WatchLoss("k", "t-b", func() { close(lost) })
	defer stop()
	if err := h.Revoke(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
	case <-ctx.Done():
		t.Fatal("loss not reported")
	}
	if _, err := a.Acquire(ctx, "k", "t-a2", time.Minute); err != nil {
		t.Fatalf("acquire after the holder was terminated: %v", err)
	}
}
