package conformance

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/distlock/distlock"
)

// runOnceCases: WithMinHold and TryOnce make a job run once across
// replicas whose schedules fire a little apart.
var runOnceCases = []Case{
	{Topic: "RunOnce", Name: "TwoSchedulers200msApart", Run: func(t TB, e *Env) {
		m1, m2, probe := e.Manager(t), e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("run-once")
		hold := 3 * e.Short // longer than the TTL: the hold, not the TTL, keeps it
		var runs atomic.Int32
		job := func(context.Context) error { runs.Add(1); return nil }
		schedule := func(m *distlock.Manager) error {
			return m.Do(t.Context(), key, e.Short, job, distlock.WithMinHold(hold), distlock.TryOnce())
		}
		start := time.Now()
		errs := make(chan error, 2)
		go func() { errs <- schedule(m1) }()
		second := time.NewTimer(200 * time.Millisecond) // the second replica's schedule fires 200ms later
		defer second.Stop()
		<-second.C
		go func() { errs <- schedule(m2) }()
		var ok, skipped int
		for range 2 {
			switch err := <-errs; {
			case err == nil:
				ok++
			case errors.Is(err, distlock.ErrNotAcquired):
				skipped++
			default:
				t.Fatalf("scheduled Do: %v", err)
			}
		}
		if n := runs.Load(); n != 1 || ok != 1 || skipped != 1 {
			t.Fatalf("job ran %d times (%d Do calls succeeded, %d skipped), want once", n, ok, skipped)
		}
		if el := time.Since(start); el < hold*8/10 && !heldByOther(t, probe, key) {
			t.Fatalf("lock free %v after the job started, before its minimum hold of %v", el, hold)
		}
		eventually(t, hold+10*e.Short, "the lock to expire after the minimum hold", func() bool { return !heldByOther(t, probe, key) })
		if el := time.Since(start); el < hold*9/10 {
			t.Fatalf("lock freed %v after the job started, before its minimum hold of %v", el, hold)
		}
	}},
	{Topic: "RunOnce", Name: "LockReleaseKeepsMinHold", Run: func(t TB, e *Env) {
		m1, probe := e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("min-hold-lock")
		hold := 2 * e.Short
		start := time.Now()
		l, err := m1.Lock(t.Context(), key, e.Short, distlock.WithMinHold(hold), distlock.WithAutoRenew())
		if err != nil {
			t.Fatalf("Lock: %v", err)
		}
		if err := l.Release(t.Context()); err != nil {
			t.Fatalf("Release within the hold: %v", err)
		}
		select {
		case <-l.Done():
		default:
			t.Fatalf("Done not closed by Release")
		}
		if el := time.Since(start); el < hold*8/10 && !heldByOther(t, probe, key) {
			t.Fatalf("lock free %v after Lock, before its minimum hold of %v", el, hold)
		}
		eventually(t, hold+10*e.Short, "the lock to expire after the minimum hold", func() bool { return !heldByOther(t, probe, key) })
		if el := time.Since(start); el < hold*9/10 {
			t.Fatalf("lock freed %v after Lock, before its minimum hold of %v", el, hold)
		}
	}},
}

// inspectCases: Manager.Inspect, where the backend is a driver.Inspector.
var inspectCases = []Case{
	{Topic: "Inspect", Name: "HeldTTLFenceReadOnly", Run: func(t TB, e *Env) {
		m1, m2 := e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("inspect")
		info, err := m1.Inspect(t.Context(), key)
		if errors.Is(err, distlock.ErrUnsupported) {
			t.Skipf("backend %q does not implement driver.Inspector", e.Caps.Name)
		}
		if err != nil || info.Held {
			t.Fatalf("Inspect of a free key: %+v, %v", info, err)
		}
		l, err := m1.Lock(t.Context(), key, e.Long)
		if err != nil {
			t.Fatalf("Lock: %v", err)
		}
		maxTTL := e.Caps.RoundTTL(e.Long) + time.Second // a server counting in whole seconds may round up
		for name, m := range map[string]*distlock.Manager{"the holder's manager": m1, "another manager": m2} {
			info, err := m.Inspect(t.Context(), key)
			if err != nil || !info.Held {
				t.Fatalf("Inspect by %s of a held key: %+v, %v", name, info, err)
			}
			// Another instance may not know TTL and fence (zero); the
			// holder's must. What is reported must be right.
			if info.TTL < 0 || info.TTL > maxTTL || (m == m1 && info.TTL == 0) {
				t.Fatalf("Inspect by %s: TTL %v, want in (0, %v]", name, info.TTL, maxTTL)
			}
			if e.Caps.Fencing && info.Fence != l.Fence() && (m == m1 || info.Fence != 0) {
				t.Fatalf("Inspect by %s: fence %d, want %d", name, info.Fence, l.Fence())
			}
			if info.Holder != l.Token() && (m == m1 || info.Holder != "") {
				t.Fatalf("Inspect by %s: holder %q, want the lock's token", name, info.Holder)
			}
		}
		if err := l.Release(t.Context()); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if info, err := m2.Inspect(t.Context(), key); err != nil || info.Held {
			t.Fatalf("Inspect after Release: %+v, %v", info, err)
		}
		if heldByOther(t, m2, key) {
			t.Fatalf("Inspect took the lock")
		}

		// Inspecting never extends: a lock inspected all along still
		// expires by its TTL.
		short := e.Key("inspect-expiry")
		start := time.Now()
		mustAcquire(t, m1, short, e.Short)
		eventually(t, 10*e.Short, "the inspected lock to expire", func() bool {
			info, err := m2.Inspect(t.Context(), short)
			if err != nil {
				t.Fatalf("Inspect: %v", err)
			}
			if info.Held && info.TTL > e.Caps.RoundTTL(e.Short)+time.Second {
				t.Fatalf("Inspect reports TTL %v for a lock of %v", info.TTL, e.Short)
			}
			return !info.Held
		})
		if el := time.Since(start); el < e.Short*9/10 {
			t.Fatalf("lock with TTL %v freed after %v", e.Short, el)
		}
	}},
}

// ownerCases: what Release and Extend from another instance say.
var ownerCases = []Case{
	{Topic: "Release", Name: "NotOwnerInstanceIsDistinct", Run: func(t TB, e *Env) {
		m1, m2 := e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("owner")
		tok := mustAcquire(t, m1, key, e.Long)
		// A wrong token, or a key nobody holds, is plain ErrNotHeld.
		for what, err := range map[string]error{
			"wrong token on the holder's manager": m1.Release(t.Context(), key, tok+"x"),
			"a key nobody holds":                  m2.Release(t.Context(), e.Key("owner-free"), tok),
		} {
			wantIs(t, err, distlock.ErrNotHeld)
			if errors.Is(err, distlock.ErrNotOwnerInstance) {
				t.Fatalf("%s: %v matches ErrNotOwnerInstance", what, err)
			}
		}
		if e.Caps.CrossInstanceRelease {
			return // Fencing/CrossInstanceRelease checks the rest
		}
		for what, err := range map[string]error{
			"Release": m2.Release(t.Context(), key, tok),
			"Extend":  m2.Extend(t.Context(), key, tok, e.Long),
		} {
			if !errors.Is(err, distlock.ErrNotOwnerInstance) || !errors.Is(err, distlock.ErrNotHeld) {
				t.Fatalf("%s from another manager with the token, on a backend without cross-instance release: %v, want ErrNotOwnerInstance (and ErrNotHeld)", what, err)
			}
		}
		if !heldByOther(t, m2, key) {
			t.Fatalf("lock freed by another instance")
		}
		if err := m1.Release(t.Context(), key, tok); err != nil {
			t.Fatalf("holder's Release: %v", err)
		}
	}},
}
