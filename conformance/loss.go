package conformance

import (
	"context"
	"errors"
	"time"

	"github.com/distlock/distlock"
)

func waitDone(t TB, l *distlock.Lock, within time.Duration, what string) {
	t.Helper()
	select {
	case <-l.Done():
	case <-time.After(within):
		t.Fatalf("lock-lost signal did not fire within %v after %s", within, what)
	}
}

var lossCases = []Case{
	{Topic: "Loss", Name: "SignalOnUnrenewedExpiry", Run: func(t TB, e *Env) {
		m := e.Manager(t)
		l, err := m.Lock(t.Context(), e.Key("loss-expiry"), e.Short)
		if err != nil {
			t.Fatalf("Lock: %v", err)
		}
		if l.Err() != nil {
			t.Fatalf("fresh lock reports %v", l.Err())
		}
		if !l.Expiry().After(time.Now()) {
			t.Fatalf("fresh lock's expiry %v is in the past", l.Expiry())
		}
		waitDone(t, l, e.Short+promptly, "its TTL")
		wantIs(t, l.Err(), distlock.ErrLockLost)
	}},
	{Topic: "Loss", Name: "SignalWhenTakenAway", Run: func(t TB, e *Env) {
		rv, ok := e.H.(Revoker)
		if !ok {
			t.Skipf("%s", noRevoker)
		}
		m, other := e.Manager(t), e.Manager(t)
		key := e.Key("loss-revoke")
		l, err := m.Lock(t.Context(), key, e.Short, distlock.WithAutoRenew())
		if err != nil {
			t.Fatalf("Lock: %v", err)
		}
		if err := rv.Revoke(t.Context(), key); err != nil {
			t.Fatalf("harness Revoke: %v", err)
		}
		tok := mustAcquire(t, other, key, e.Long) // someone else takes it
		waitDone(t, l, e.Short+promptly, "the lock was taken away")
		wantIs(t, l.Err(), distlock.ErrLockLost)
		wantIs(t, l.Release(t.Context()), distlock.ErrNotHeld)
		if err := other.Release(t.Context(), key, tok); err != nil {
			t.Fatalf("new holder's Release: %v", err)
		}
	}},
	{Topic: "Loss", Name: "AutoRenewKeepsLock", Run: func(t TB, e *Env) {
		m, probe := e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("autorenew")
		start := time.Now()
		l, err := m.Lock(t.Context(), key, e.Short, distlock.WithAutoRenew())
		if err != nil {
			t.Fatalf("Lock: %v", err)
		}
		for time.Since(start) < 3*e.Short {
			if !heldByOther(t, probe, key) {
				t.Fatalf("auto-renewed lock free at %v", time.Since(start))
			}
			select {
			case <-l.Done():
				t.Fatalf("auto-renewed lock reported lost: %v", l.Err())
			case <-time.After(e.Short / 5):
			}
		}
		if err := l.Release(t.Context()); err != nil {
			t.Fatalf("Release: %v", err)
		}
		waitDone(t, l, promptly, "Release")
		if l.Err() != nil {
			t.Fatalf("released lock reports %v, want nil", l.Err())
		}
		if heldByOther(t, probe, key) {
			t.Fatalf("lock held after Release")
		}
	}},
	{Topic: "Loss", Name: "DoRunsWhileHeldThenReleases", Run: func(t TB, e *Env) {
		m, probe := e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("do")
		ran := false
		err := m.Do(t.Context(), key, e.Short, func(ctx context.Context) error {
			ran = true
			if !heldByOther(t, probe, key) {
				t.Errorf("lock not held inside Do")
			}
			time.Sleep(2 * e.Short) // outlive the TTL: Do renews
			if ctx.Err() != nil {
				t.Errorf("fn context ended while the lock was renewed: %v", context.Cause(ctx))
			}
			if !heldByOther(t, probe, key) {
				t.Errorf("lock not held inside Do after its first TTL")
			}
			return nil
		})
		if err != nil || !ran {
			t.Fatalf("Do: ran=%v err=%v", ran, err)
		}
		if heldByOther(t, probe, key) {
			t.Fatalf("lock held after Do returned")
		}
		want := errors.New("fn failed")
		if err := m.Do(t.Context(), key, e.Long, func(context.Context) error { return want }); !errors.Is(err, want) {
			t.Fatalf("Do returned %v, want fn's error", err)
		}
	}},
	{Topic: "Loss", Name: "DoCancelsFnOnLoss", Run: func(t TB, e *Env) {
		rv, ok := e.H.(Revoker)
		if !ok {
			t.Skipf("%s", noRevoker)
		}
		m := e.Manager(t)
		key := e.Key("do-loss")
		started, revoked := make(chan struct{}), make(chan error, 1)
		go func() {
			<-started
			revoked <- rv.Revoke(context.WithoutCancel(t.Context()), key)
		}()
		defer func() {
			select {
			case <-started:
				if err := <-revoked; err != nil {
					t.Errorf("harness Revoke: %v", err)
				}
			default:
				close(started) // fn never ran: let the goroutine end
				<-revoked
			}
		}()
		err := m.Do(t.Context(), key, e.Short, func(ctx context.Context) error {
			close(started)
			select {
			case <-ctx.Done():
				wantIs(t, context.Cause(ctx), distlock.ErrLockLost)
				return ctx.Err()
			case <-time.After(e.Short + promptly):
				return errors.New("fn context not cancelled after the lock was taken away")
			}
		})
		wantIs(t, err, distlock.ErrLockLost)
	}},
}
