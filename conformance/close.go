package conformance

import (
	"context"
	"time"

	"go.uber.org/goleak"

	"github.com/distlock/distlock"
)

var closeCases = []Case{
	{Topic: "Close", Name: "CallsAfterCloseAndNoLeaks", Serial: true, Run: func(t TB, e *Env) {
		before := goleak.IgnoreCurrent()
		m, holder := e.Manager(t), e.Manager(t)
		key, busy := e.Key("close"), e.Key("close-busy")
		tok := mustAcquire(t, m, key, e.Long)
		l, err := m.Lock(t.Context(), e.Key("close-renewed"), e.Short, distlock.WithAutoRenew())
		if err != nil {
			t.Fatalf("Lock: %v", err)
		}
		btok := mustAcquire(t, holder, busy, e.Long)
		// A waiter blocked on a held key while the manager closes.
		waitErr := make(chan error, 1)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		go func() { _, err := m.Acquire(ctx, busy, e.Long); waitErr <- err }()

		if err := m.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := m.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		waitDone(t, l, promptly, "Close")
		wantIs(t, l.Err(), distlock.ErrLockLost)
		select {
		case err := <-waitErr:
			if err == nil {
				t.Fatalf("waiter acquired a held key")
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("waiter still blocked after Close")
		}
		ctx2 := t.Context()
		_, err = m.Acquire(ctx2, e.Key("after"), e.Long)
		wantIs(t, err, distlock.ErrClosed)
		wantIs(t, m.Release(ctx2, key, tok), distlock.ErrClosed)
		wantIs(t, m.Extend(ctx2, key, tok, e.Long), distlock.ErrClosed)
		_, err = m.Lock(ctx2, e.Key("after"), e.Long)
		wantIs(t, err, distlock.ErrClosed)
		wantIs(t, m.Do(ctx2, e.Key("after"), e.Long, func(context.Context) error { return nil }), distlock.ErrClosed)
		if err := holder.Release(ctx2, busy, btok); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if err := holder.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := goleak.Find(before); err != nil {
			t.Fatalf("goroutines left after Close: %v", err)
		}
	}},
}

var outageCases = []Case{
	{Topic: "Outage", Name: "UnavailableThenRecovers", Serial: true, Run: func(t TB, e *Env) {
		st, ok := e.H.(Stopper)
		if !ok {
			t.Skipf("%s", noStopper)
		}
		m := e.Manager(t)
		key := e.Key("outage")
		tok := mustAcquire(t, m, key, e.Long)
		if err := st.Stop(t.Context()); err != nil {
			t.Fatalf("harness Stop: %v", err)
		}
		restarted := false
		t.Cleanup(func() {
			if !restarted {
				_ = st.Start(context.Background())
			}
		})
		const deadline = 3 * time.Second
		ctx, cancel := context.WithTimeout(t.Context(), deadline)
		start := time.Now()
		_, err := m.Acquire(ctx, e.Key("outage-new"), e.Long)
		cancel()
		if el := time.Since(start); el > deadline+promptly {
			t.Fatalf("Acquire took %v with a %v deadline", el, deadline)
		}
		wantIs(t, err, distlock.ErrUnavailable)
		ctx, cancel = context.WithTimeout(t.Context(), deadline)
		err = m.Release(ctx, key, tok)
		cancel()
		if err == nil || errorsIs(err, distlock.ErrNotHeld) {
			t.Fatalf("Release with the backend stopped: got %v, want ErrUnavailable or a context error", err)
		}
		if err := st.Start(t.Context()); err != nil {
			t.Fatalf("harness Start: %v", err)
		}
		restarted = true
		k2 := e.Key("outage-after")
		eventually(t, 30*time.Second, "acquire to work after restart", func() bool {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer cancel()
			tok2, err := m.Acquire(ctx, k2, e.Long)
			if err != nil {
				return false
			}
			return m.Release(ctx, k2, tok2) == nil
		})
	}},
}
