package conformance

import (
	"errors"
	"time"

	"github.com/distlock/distlock"
)

var errorsIs = errors.Is

var releaseCases = []Case{
	{Topic: "Release", Name: "WrongTokenReleaseAndExtend", Run: func(t TB, e *Env) {
		m1, m2 := e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("wrong")
		tok := mustAcquire(t, m1, key, e.Long)
		wantIs(t, m2.Release(t.Context(), key, "not-the-token"), distlock.ErrNotHeld)
		wantIs(t, m1.Release(t.Context(), key, tok+"x"), distlock.ErrNotHeld)
		wantIs(t, m2.Extend(t.Context(), key, "not-the-token", e.Long), distlock.ErrNotHeld)
		if !heldByOther(t, m2, key) {
			t.Fatalf("wrong-token release or extend freed the lock")
		}
		if err := m1.Extend(t.Context(), key, tok, e.Long); err != nil {
			t.Fatalf("holder Extend after wrong-token attempts: %v", err)
		}
		if err := m1.Release(t.Context(), key, tok); err != nil {
			t.Fatalf("holder Release after wrong-token attempts: %v", err)
		}
	}},
	{Topic: "Release", Name: "Double", Run: func(t TB, e *Env) {
		m := e.Manager(t)
		key := e.Key("double")
		tok := mustAcquire(t, m, key, e.Long)
		if err := m.Release(t.Context(), key, tok); err != nil {
			t.Fatalf("Release: %v", err)
		}
		wantIs(t, m.Release(t.Context(), key, tok), distlock.ErrNotHeld)
		wantIs(t, m.Extend(t.Context(), key, tok, e.Long), distlock.ErrNotHeld)
	}},
	{Topic: "Release", Name: "NeverHeld", Run: func(t TB, e *Env) {
		m, probe := e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("never")
		wantIs(t, m.Release(t.Context(), key, "some-token"), distlock.ErrNotHeld)
		wantIs(t, m.Extend(t.Context(), key, "some-token", e.Long), distlock.ErrNotHeld)
		if heldByOther(t, probe, key) {
			t.Fatalf("Extend of a never-held key created a lock")
		}
	}},
	{Topic: "Release", Name: "AfterExpiryWhileOtherHolds", Run: func(t TB, e *Env) {
		m1, m2, probe := e.Manager(t), e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("expired-other")
		old := mustAcquire(t, m1, key, e.Short)
		var tok2 string
		eventually(t, 10*e.Short, "the first lock to expire", func() bool {
			var err error
			tok2, err = m2.Acquire(t.Context(), key, e.Long)
			return err == nil
		})
		wantIs(t, m1.Release(t.Context(), key, old), distlock.ErrNotHeld)
		wantIs(t, m1.Extend(t.Context(), key, old, e.Long), distlock.ErrNotHeld)
		if !heldByOther(t, probe, key) {
			t.Fatalf("stale release or extend freed the new holder's lock")
		}
		if err := m2.Release(t.Context(), key, tok2); err != nil {
			t.Fatalf("new holder's Release: %v", err)
		}
	}},
	{Topic: "Release", Name: "ExtendAfterExpiryDoesNotRecreate", Run: func(t TB, e *Env) {
		m1, probe := e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("extend-expired")
		tok := mustAcquire(t, m1, key, e.Short)
		eventually(t, 10*e.Short, "the lock to expire", func() bool { return !heldByOther(t, probe, key) })
		wantIs(t, m1.Extend(t.Context(), key, tok, e.Long), distlock.ErrNotHeld)
		if heldByOther(t, probe, key) {
			t.Fatalf("Extend after expiry re-created the lock")
		}
	}},
}

var ttlCases = []Case{
	{Topic: "TTL", Name: "ExpiryFreesLock", Run: func(t TB, e *Env) {
		m1, m2 := e.Manager(t), e.Manager(t, distlock.WithRetry(distlock.LinearBackoff(10*time.Millisecond)))
		key := e.Key("expiry")
		start := time.Now()
		mustAcquire(t, m1, key, e.Short)
		ctx, cancel := contextWithTimeout(t, 10*e.Short)
		defer cancel()
		if _, err := m2.Acquire(ctx, key, e.Long); err != nil {
			t.Fatalf("second manager did not get the lock after the TTL: %v", err)
		}
		if el := time.Since(start); el < e.Short*9/10 {
			t.Fatalf("lock with TTL %v freed after only %v", e.Short, el)
		}
	}},
	{Topic: "TTL", Name: "ExtendKeepsLockPastTTL", Run: func(t TB, e *Env) {
		m1, probe := e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("extend-keeps")
		start := time.Now()
		tok := mustAcquire(t, m1, key, e.Short)
		for time.Since(start) < 3*e.Short {
			time.Sleep(e.Short / 3) // pace the extensions, each within the TTL
			if err := m1.Extend(t.Context(), key, tok, e.Short); err != nil {
				t.Fatalf("Extend at %v: %v", time.Since(start), err)
			}
			if !heldByOther(t, probe, key) {
				t.Fatalf("lock free at %v although extended", time.Since(start))
			}
		}
		if err := m1.Release(t.Context(), key, tok); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}},
}
