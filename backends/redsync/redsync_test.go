package redsync_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distlock/distlock"
	redsyncLocker "github.com/distlock/distlock/backends/redsync"
	"github.com/go-redsync/redsync/v4"
	"github.com/redis/go-redis/v9"
)

func newManager(t testing.TB, addr string, opts ...redsyncLocker.Option) *distlock.Manager {
	t.Helper()
	m := redsyncLocker.NewRedsyncLockManager(newClient(t, addr), opts...)
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func TestContract(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	m := newManager(t, sharedAddr, redsyncLocker.WithManagerOptions(distlock.WithRetry(distlock.NoRetry())))
	other := newManager(t, sharedAddr, redsyncLocker.WithManagerOptions(distlock.WithRetry(distlock.NoRetry())))
	key := uniqueKey(t)

	tok, err := m.Acquire(ctx, key, 5*time.Second)
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	if _, err := other.Acquire(ctx, key, 5*time.Second); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("acquire of a held key: got %v, want ErrNotAcquired", err)
	}
	if err := other.Release(ctx, key, "not-the-token"); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("release with a wrong token: got %v, want ErrNotHeld", err)
	}
	if err := other.Extend(ctx, key, "not-the-token", time.Second); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("extend with a wrong token: got %v, want ErrNotHeld", err)
	}
	// Cross-instance: another manager releases with the token.
	if err := other.Extend(ctx, key, tok, 5*time.Second); err != nil {
		t.Fatalf("extend by token from another manager: %v", err)
	}
	if err := other.Release(ctx, key, tok); err != nil {
		t.Fatalf("release by token from another manager: %v", err)
	}
	if err := m.Release(ctx, key, tok); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("second release: got %v, want ErrNotHeld", err)
	}

	// Extend after expiry never re-creates.
	tok, err = m.Acquire(ctx, key, 30*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	raw := newClient(t, sharedAddr)
	deadline := time.Now().Add(5 * time.Second)
	for raw.Exists(ctx, key).Val() == 1 {
		if time.Now().After(deadline) {
			t.Fatal("lock did not expire")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := m.Extend(ctx, key, tok, time.Second); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("extend after expiry: got %v, want ErrNotHeld", err)
	}
	if n := raw.Exists(ctx, key).Val(); n != 0 {
		t.Fatal("extend after expiry re-created the key")
	}
}

// TestReacquireNeverDrops: acquiring again with the holding token resets
// the TTL in place — the key exists at every instant — and keeps the
// fence, where redsync's Mutex deletes the lock in its retry cleanup.
func TestReacquireNeverDrops(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	m := newManager(t, sharedAddr)
	key := uniqueKey(t)
	l, err := m.Lock(ctx, key, 2*time.Second, distlock.WithToken("holder"))
	if err != nil {
		t.Fatal(err)
	}
	raw := newClient(t, sharedAddr)
	var missing atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 100000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if raw.Exists(ctx, key).Val() != 1 {
				missing.Add(1)
			}
		}
	}()
	for range 200 {
		l2, err := m.Lock(ctx, key, 2*time.Second, distlock.WithToken("holder"))
		if err != nil {
			t.Fatalf("re-acquire: %v", err)
		}
		if l2.Fence() != l.Fence() {
			t.Fatalf("re-acquire changed the fence: %d then %d", l.Fence(), l2.Fence())
		}
	}
	close(stop)
	wg.Wait()
	if n := missing.Load(); n > 0 {
		t.Fatalf("the lock was missing %d times during re-acquires", n)
	}
	if ttl := raw.PTTL(ctx, key).Val(); ttl < time.Second {
		t.Fatalf("re-acquire did not reset the TTL: %v left", ttl)
	}
}

func TestFencingIncreases(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	a, b := newManager(t, sharedAddr), newManager(t, sharedAddr)
	key := uniqueKey(t)
	var last uint64
	for i := range 20 {
		m := a
		if i%2 == 1 {
			m = b
		}
		l, err := m.Lock(ctx, key, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if l.Fence() <= last {
			t.Fatalf("grant %d: fence %d not above %d", i, l.Fence(), last)
		}
		last = l.Fence()
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSeedRetryHonoured: redsync.WithTries(3) and WithRetryDelay(100ms)
// make a taken lock fail after 3 attempts. (The Manager counts its
// immediate re-check after subscribing to releases as one of them, so
// only one 100ms delay is waited.)
func TestSeedRetryHonoured(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	m := newManager(t, sharedAddr,
		redsyncLocker.WithTokenGenerator(func(key string) string { return "token-for:" + key }),
		redsyncLocker.WithRedsyncOptions(redsync.WithTries(3), redsync.WithRetryDelay(100*time.Millisecond)))
	key := uniqueKey(t)
	tok, err := m.Acquire(ctx, key, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "token-for:"+key {
		t.Fatalf("token %q: generator not used", tok)
	}
	t0 := time.Now()
	_, err = m.Acquire(ctx, key, 5*time.Second, "another-token")
	took := time.Since(t0)
	if !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("got %v, want ErrNotAcquired", err)
	}
	if took < 100*time.Millisecond || took > 3*time.Second {
		t.Fatalf("3 tries 100ms apart took %v", took)
	}
}

func TestContextCancelWhileWaiting(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	m := newManager(t, sharedAddr)
	key := uniqueKey(t)
	if _, err := m.Acquire(ctx, key, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := m.Acquire(wctx, key, time.Second, "other")
	if !errors.Is(err, distlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want ErrNotAcquired and DeadlineExceeded", err)
	}
	if d := time.Since(t0); d > time.Second {
		t.Fatalf("returned %v after the deadline", d)
	}
}

func TestBinaryKeysAreDistinct(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	m := newManager(t, sharedAddr, redsyncLocker.WithManagerOptions(distlock.WithRetry(distlock.NoRetry())))
	base := uniqueKey(t)
	keys := []string{base + "\x00a", base + "\x00b", base + "\xff", base + "{x}", base + "}"}
	for _, k := range keys {
		if _, err := m.Acquire(ctx, k, 5*time.Second); err != nil {
			t.Fatalf("acquire %q: %v", k, err)
		}
	}
}

func TestRedlockBasics(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	srvs := startN(t, 3)
	m := newRedlockManager(t, srvs, redsyncLocker.WithManagerOptions(distlock.WithRetry(distlock.NoRetry())))
	other := newRedlockManager(t, srvs, redsyncLocker.WithManagerOptions(distlock.WithRetry(distlock.NoRetry())))
	key := uniqueKey(t)
	tok, err := m.Acquire(ctx, key, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err = other.Acquire(ctx, key, 5*time.Second); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("got %v, want ErrNotAcquired", err)
	}
	if _, err := m.Acquire(ctx, key, 5*time.Second, tok); err != nil {
		t.Fatalf("re-acquire: %v", err)
	}
	for _, s := range srvs {
		if n := redis.NewClient(&redis.Options{Addr: s.Addr}); n.Exists(ctx, key).Val() != 1 {
			n.Close()
			t.Fatalf("re-acquire dropped the lock on %s", s.Addr)
		} else {
			n.Close()
		}
	}
	if err := m.Extend(ctx, key, tok, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := other.Release(ctx, key, tok); err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, key, tok); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("second release: %v", err)
	}
	if err := m.Extend(ctx, key, tok, time.Second); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("extend after release: %v", err)
	}
}

// TestRedlockGrantValidity: a Redlock grant reports its validity (TTL
// minus the drift allowance, from before the round), which the Manager
// uses for Lock.Expiry.
func TestRedlockGrantValidity(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	srvs := startN(t, 3)
	rl, err := redsyncLocker.NewRedlock(redlockClients(srvs))
	if err != nil {
		t.Fatal(err)
	}
	defer rl.Close()
	const ttl = 2 * time.Second
	key := uniqueKey(t)
	g, err := rl.Acquire(ctx, key, "tok", ttl)
	if err != nil {
		t.Fatal(err)
	}
	// go-redsync's default drift factor is 0.01, counted from go-redsync's
	// own start of the round (a moment after the backend's).
	if want := ttl - ttl/100 + 10*time.Millisecond; g.Valid <= 0 || g.Valid > want || g.TTL != ttl {
		t.Fatalf("grant %+v: want TTL %v and 0 < Valid <= %v", g, ttl, want)
	}
	if g, err = rl.Extend(ctx, key, "tok", ttl); err != nil || g.Valid <= 0 || g.Valid >= ttl {
		t.Fatalf("extend: grant %+v, err %v", g, err)
	}
	if err := rl.Release(ctx, key, "tok"); err != nil {
		t.Fatal(err)
	}
}

// TestRedlockGoRedsyncOptions: go-redsync's own options reach its Mutex:
// with fail-fast and shuffled pools the contract holds (a re-acquire keeps
// every copy), and WithTries(2) with a 100 ms delay makes a taken lock fail
// after go-redsync's own second try, not at once and not after distlock's
// default wait.
func TestRedlockGoRedsyncOptions(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	srvs := startN(t, 3)
	opts := redsyncLocker.WithRedsyncOptions(redsync.WithFailFast(true), redsync.WithShufflePools(true),
		redsync.WithTries(2), redsync.WithRetryDelay(100*time.Millisecond))
	m, other := newRedlockManager(t, srvs, opts), newRedlockManager(t, srvs, opts)
	key := uniqueKey(t)
	tok, err := m.Acquire(ctx, key, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if _, err := other.Acquire(ctx, key, 5*time.Second); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("acquire of a held key: got %v, want ErrNotAcquired", err)
	}
	if took := time.Since(t0); took < 100*time.Millisecond || took > 3*time.Second {
		t.Fatalf("2 tries 100 ms apart took %v", took)
	}
	// Re-acquires keep the lock and, round after round, put it on every
	// master. With fail-fast, go-redsync returns once a quorum answered:
	// a master that missed a round (the other manager's straggling SET
	// got there first, or answered late) is filled in by a later one, or
	// once the straggler's value expires (its TTL is 5s).
	holdsAll := func() bool {
		for _, s := range srvs {
			if newClient(t, s.Addr).Get(ctx, key).Val() != tok {
				return false
			}
		}
		return true
	}
	for i := 0; ; i++ {
		if _, err := m.Acquire(ctx, key, 5*time.Second, tok); err != nil {
			t.Fatalf("re-acquire %d: %v", i, err)
		}
		if i >= 20 && holdsAll() {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("after %d re-acquires some master still does not hold the token", i)
		}
	}
	if err := other.Release(ctx, key, tok); err != nil {
		t.Fatal(err)
	}
}
