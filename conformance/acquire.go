package conformance

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/distlock/distlock"
)

var acquireCases = []Case{
	{Topic: "Acquire", Name: "RoundTrip", Run: func(t TB, e *Env) {
		m1, m2 := e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("roundtrip")
		tok := mustAcquire(t, m1, key, e.Long)
		if !heldByOther(t, m2, key) {
			t.Fatalf("key free for another manager while held")
		}
		if err := m1.Release(t.Context(), key, tok); err != nil {
			t.Fatalf("Release: %v", err)
		}
		tok2 := mustAcquire(t, m2, key, e.Long)
		if err := m2.Release(t.Context(), key, tok2); err != nil {
			t.Fatalf("Release by second manager: %v", err)
		}
	}},
	{Topic: "Acquire", Name: "GeneratedTokensUnique", Run: func(t TB, e *Env) {
		m := e.Manager(t)
		seen := map[string]bool{}
		for i := range 20 {
			key := e.Key("gen")
			tok := mustAcquire(t, m, key, e.Long)
			if len(tok) < 16 {
				t.Fatalf("generated token %q is shorter than 16 bytes", tok)
			}
			if seen[tok] {
				t.Fatalf("token %q generated twice (iteration %d)", tok, i)
			}
			seen[tok] = true
			if err := m.Release(t.Context(), key, tok); err != nil {
				t.Fatalf("Release: %v", err)
			}
		}
	}},
	{Topic: "Acquire", Name: "ExplicitTokenVerbatim", Run: func(t TB, e *Env) {
		m := e.Manager(t)
		key := e.Key("explicit")
		want := "my-token:\x00\xff ünïcode"
		got := mustAcquire(t, m, key, e.Long, want)
		if got != want {
			t.Fatalf("Acquire returned token %q, want %q", got, want)
		}
		if err := m.Release(t.Context(), key, want); err != nil {
			t.Fatalf("Release with the explicit token: %v", err)
		}
	}},
	{Topic: "Acquire", Name: "HeldKeyNotAcquired", Run: func(t TB, e *Env) {
		m1, m2 := e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("held")
		mustAcquire(t, m1, key, e.Long)
		_, err := m2.Acquire(t.Context(), key, e.Long)
		wantIs(t, err, distlock.ErrNotAcquired)
		if errorsIsAny(err, distlock.ErrUnavailable, distlock.ErrNotHeld) {
			t.Fatalf("held key: error %v also matches another kind", err)
		}
		_, err = m2.Acquire(t.Context(), key, e.Long, "another-token")
		wantIs(t, err, distlock.ErrNotAcquired)
	}},
	{Topic: "Acquire", Name: "IndependentKeys", Run: func(t TB, e *Env) {
		m1, m2 := e.Manager(t), e.Manager(t, noRetry)
		k1, k2 := e.Key("indep-a"), e.Key("indep-b")
		mustAcquire(t, m1, k1, e.Long)
		tok2 := mustAcquire(t, m2, k2, e.Long)
		if !heldByOther(t, m2, k1) {
			t.Fatalf("first key freed by taking the second")
		}
		if err := m2.Release(t.Context(), k2, tok2); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if !heldByOther(t, m2, k1) {
			t.Fatalf("first key freed by releasing the second")
		}
	}},
	{Topic: "Acquire", Name: "BinaryKeysDistinct", Run: func(t TB, e *Env) {
		m1, m2 := e.Manager(t), e.Manager(t, noRetry)
		base := e.Key("bin")
		keys := []string{base + "a\x00b", base + "a\x00c", base + "a", base + "\xff\xfe", base + "\xff\xfd", base + "a\x00"}
		toks := map[string]string{}
		for _, k := range keys {
			toks[k] = mustAcquire(t, m1, k, e.Long) // would fail if two keys collided
		}
		for _, k := range keys {
			if !heldByOther(t, m2, k) {
				t.Fatalf("binary key %q not held after acquire", k)
			}
		}
		if err := m1.Release(t.Context(), keys[0], toks[keys[0]]); err != nil {
			t.Fatalf("Release: %v", err)
		}
		for _, k := range keys[1:] {
			if !heldByOther(t, m2, k) {
				t.Fatalf("releasing %q freed %q", keys[0], k)
			}
		}
	}},
}

var reacquireCases = []Case{
	{Topic: "Reacquire", Name: "SameTokenExtendsWithoutGap", Run: func(t TB, e *Env) {
		m1, m2 := e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("reacquire")
		start := time.Now()
		tok := mustAcquire(t, m1, key, e.Short)

		var stop atomic.Bool
		var got atomic.Int64
		var probes atomic.Int64
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // a contender polling all the while
			defer wg.Done()
			for !stop.Load() {
				if tok2, err := m2.Acquire(t.Context(), key, e.Long); err == nil {
					got.Add(1)
					_ = m2.Release(t.Context(), key, tok2)
				}
				probes.Add(1)
			}
		}()
		// Re-acquire with the same token well past the first TTL.
		for time.Since(start) < 3*e.Short {
			if again := mustAcquire(t, m1, key, e.Short, tok); again != tok {
				t.Fatalf("re-acquire returned token %q, want %q", again, tok)
			}
			time.Sleep(e.Short / 4) // pace the re-acquires, each well within the TTL
		}
		stop.Store(true)
		wg.Wait()
		if n := got.Load(); n > 0 {
			t.Fatalf("contender got the lock %d times during re-acquires (%d probes)", n, probes.Load())
		}
		if probes.Load() == 0 {
			t.Fatalf("contender never probed")
		}
		if err := m1.Release(t.Context(), key, tok); err != nil {
			t.Fatalf("Release after re-acquires: %v", err)
		}
	}},
	{Topic: "Reacquire", Name: "ResetsTTL", Run: func(t TB, e *Env) {
		m1, m2 := e.Manager(t), e.Manager(t, noRetry)
		key := e.Key("reacquire-ttl")
		tok := mustAcquire(t, m1, key, e.Short)
		mustAcquire(t, m1, key, e.Long, tok) // now held for Long
		time.Sleep(e.Short + e.Short/2)      // outlive the first TTL
		if !heldByOther(t, m2, key) {
			t.Fatalf("lock expired at the first TTL although re-acquire set a longer one")
		}
	}},
	{Topic: "Reacquire", Name: "KeepsFence", Run: func(t TB, e *Env) {
		if !e.Caps.Fencing {
			t.Skipf("%s", noFencing)
		}
		m := e.Manager(t)
		key := e.Key("reacquire-fence")
		l1, err := m.Lock(t.Context(), key, e.Long)
		if err != nil {
			t.Fatalf("Lock: %v", err)
		}
		l2, err := m.Lock(t.Context(), key, e.Long, distlock.WithToken(l1.Token()))
		if err != nil {
			t.Fatalf("re-Lock with the same token: %v", err)
		}
		if l1.Fence() == 0 || l2.Fence() != l1.Fence() {
			t.Fatalf("fence changed on re-acquire by the holder: %d then %d", l1.Fence(), l2.Fence())
		}
	}},
}

func errorsIsAny(err error, targets ...error) bool {
	for _, target := range targets {
		if errorsIs(err, target) {
			return true
		}
	}
	return false
}
