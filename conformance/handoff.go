package conformance

import (
	"context"
	"sync"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
)

// longWait lets a waiter wait as long as the case does.
var longWait = distlock.WithRetry(distlock.LimitWait(distlock.ExponentialBackoff(2*time.Millisecond, 100*time.Millisecond), time.Minute))

// transferer returns a backend of the harness that implements
// driver.Transferer, or skips the case.
func transferer(t TB, e *Env) (driver.Backend, driver.Transferer) {
	t.Helper()
	b, err := e.H.NewBackend(t.Context())
	if err != nil {
		t.Fatalf("harness NewBackend: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	tr, ok := b.(driver.Transferer)
	if !ok {
		t.Skipf("%s backend does not implement driver.Transferer", e.Caps.Name)
	}
	return b, tr
}

var handoffCases = []Case{
	{Topic: "Handoff", Name: "ArrivalOrderInOneManager", Run: func(t TB, e *Env) {
		// Goroutines of one Manager waiting for a key get it in the order
		// they started waiting, and every grant has a fresh fence.
		m := e.Manager(t, longWait)
		key := e.Key("order")
		tok := mustAcquire(t, m, key, e.Long)
		const n = 4
		type grant struct {
			i     int
			fence uint64
		}
		got := make(chan grant, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l, err := m.Lock(t.Context(), key, e.Long)
				if err != nil {
					t.Errorf("waiter %d: Lock: %v", i, err)
					return
				}
				got <- grant{i, l.Fence()} // while holding the lock: in grant order
				if err := l.Release(t.Context()); err != nil {
					t.Errorf("waiter %d: Release: %v", i, err)
				}
			}()
			eventually(t, 10*time.Second, "the waiter to join the line", func() bool { return m.Waiting(key) == i+1 })
		}
		if err := m.Release(t.Context(), key, tok); err != nil {
			t.Fatalf("Release: %v", err)
		}
		wg.Wait()
		close(got)
		var prev uint64
		i := 0
		for g := range got {
			if g.i != i {
				t.Errorf("grant %d went to waiter %d, want arrival order", i, g.i)
			}
			if e.Caps.Fencing && g.fence <= prev {
				t.Errorf("grant %d: fence %d not above the previous %d", i, g.fence, prev)
			}
			prev = g.fence
			i++
		}
		if i != n {
			t.Fatalf("%d grants, want %d", i, n)
		}
		if m.Waiting(key) != 0 {
			t.Fatalf("Waiting = %d after every waiter got the lock", m.Waiting(key))
		}
	}},
	{Topic: "Handoff", Name: "TransferRegrants", Run: func(t TB, e *Env) {
		b, tr := transferer(t, e)
		probe := e.Manager(t, noRetry)
		ctx := t.Context()
		key := e.Key("transfer")
		long := e.Caps.RoundTTL(e.Long)
		g1, err := b.Acquire(ctx, key, "token-a", long)
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		g2, err := tr.Transfer(ctx, key, "token-a", "token-b", e.Short)
		if err != nil {
			t.Fatalf("Transfer by the holder: %v", err)
		}
		if e.Caps.Fencing && g2.Fence <= g1.Fence {
			t.Errorf("Transfer fence %d not above the first grant's %d", g2.Fence, g1.Fence)
		}
		wantIs(t, b.Release(ctx, key, "token-a"), distlock.ErrNotHeld)
		_, err = b.Extend(ctx, key, "token-a", long)
		wantIs(t, err, distlock.ErrNotHeld)
		_, err = tr.Transfer(ctx, key, "token-a", "token-c", long)
		wantIs(t, err, distlock.ErrNotHeld)
		if !heldByOther(t, probe, key) {
			t.Fatalf("key free after a transfer")
		}
		g3, err := b.Extend(ctx, key, "token-b", e.Short)
		if err != nil {
			t.Fatalf("new holder's Extend: %v", err)
		}
		if e.Caps.Fencing && g3.Fence != g2.Fence {
			t.Errorf("Extend changed the fence: %d, transfer gave %d", g3.Fence, g2.Fence)
		}
		// The transfer's own TTL (short) applies, not the first grant's.
		eventually(t, 10*e.Short+5*time.Second, "the transferred grant to expire", func() bool { return !heldByOther(t, probe, key) })
	}},
	{Topic: "Handoff", Name: "TransferOfFreeKeyChangesNothing", Run: func(t TB, e *Env) {
		b, tr := transferer(t, e)
		probe := e.Manager(t, noRetry)
		ctx := t.Context()
		key := e.Key("transfer-free")
		_, err := tr.Transfer(ctx, key, "token-a", "token-b", e.Caps.RoundTTL(e.Long))
		wantIs(t, err, distlock.ErrNotHeld)
		if heldByOther(t, probe, key) {
			t.Fatalf("Transfer of a free key created a lock")
		}
		wantIs(t, b.Release(ctx, key, "token-b"), distlock.ErrNotHeld)
	}},
	{Topic: "Handoff", Name: "OtherManagersGetTurns", Run: func(t TB, e *Env) {
		// Hand-offs inside one Manager are capped, so a waiter of another
		// Manager (another process) is not starved by a busy one.
		_, _ = transferer(t, e)
		busy, other := e.Manager(t, longWait), e.Manager(t, longWait)
		key := e.Key("turns")
		ctx, stop := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		var mu sync.Mutex
		grants := 0
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					tok, err := busy.Acquire(ctx, key, e.Long)
					if err != nil {
						if ctx.Err() == nil {
							t.Errorf("busy Acquire: %v", err)
						}
						return
					}
					mu.Lock()
					grants++
					mu.Unlock()
					// Hold it until the other busy goroutines are in the
					// line, so that the release hands the key on.
					if !until(ctx, 10*time.Second, 100*time.Microsecond, func() bool { return busy.Waiting(key) >= 2 }) && ctx.Err() == nil {
						t.Errorf("the other busy goroutines did not join the line within 10s")
						_ = busy.Release(context.WithoutCancel(ctx), key, tok)
						return
					}
					if err := busy.Release(context.WithoutCancel(ctx), key, tok); err != nil {
						t.Errorf("busy Release: %v", err)
						return
					}
				}
			}()
		}
		defer func() { stop(); wg.Wait() }()
		eventually(t, 10*time.Second, "the busy manager to hand the key around", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return grants > 2*distlock.DefaultHandoffLimit
		})
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		tok, err := other.Acquire(wctx, key, e.Long)
		if err != nil {
			mu.Lock()
			n := grants
			mu.Unlock()
			t.Fatalf("the other manager never got the key (%d grants in the busy one): %v", n, err)
		}
		stop()
		wg.Wait()
		if err := other.Release(context.WithoutCancel(ctx), key, tok); err != nil {
			t.Fatalf("other Release: %v", err)
		}
	}},
}
