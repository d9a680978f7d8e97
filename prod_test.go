package distlock_test

import (
	"context"
	"errors"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/mock/gomock"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/memory"
	"github.com/distlock/distlock/distlockmock"
	"github.com/distlock/distlock/driver"
	"github.com/distlock/distlock/internal/testwait"
)

// holdKey makes a store whose key "k" is held by another manager.
func holdKey(t *testing.T) *memory.Store {
	t.Helper()
	s := memory.NewStore()
	holder := distlock.New(s.Backend())
	t.Cleanup(func() { holder.Close() })
	if _, err := holder.Acquire(t.Context(), "k", time.Minute); err != nil {
		t.Fatal(err)
	}
	return s
}

// Zero and negative delays are refused before anything reaches the
// backend; before, LinearBackoff(0) made about 450,000 calls in 300ms.
func TestRetryRejectsNonPositiveDelays(t *testing.T) {
	bad := map[string]distlock.RetryStrategy{
		"LinearBackoff(0)":               distlock.LinearBackoff(0),
		"LinearBackoff(-1s)":             distlock.LinearBackoff(-time.Second),
		"ExponentialBackoff(0, 10ms)":    distlock.ExponentialBackoff(0, 10*time.Millisecond),
		"ExponentialBackoff(-1ms, 0)":    distlock.ExponentialBackoff(-time.Millisecond, 0),
		"LimitRetry(LinearBackoff(0))":   distlock.LimitRetry(distlock.LinearBackoff(0), 3),
		"LimitWait(LinearBackoff(0))":    distlock.LimitWait(distlock.LinearBackoff(0), time.Second),
		"LimitRetry(…, 0)":               distlock.LimitRetry(distlock.LinearBackoff(time.Millisecond), 0),
		"LimitWait(…, -1s)":              distlock.LimitWait(distlock.LinearBackoff(time.Millisecond), -time.Second),
		"LimitWait(nil)":                 distlock.LimitWait(nil, time.Second),
		"LimitWait(LimitRetry(Linear0))": distlock.LimitWait(distlock.LimitRetry(distlock.LinearBackoff(0), 2), time.Second),
	}
	for name, st := range bad {
		t.Run(name, func(t *testing.T) {
			s := holdKey(t)
			m := distlock.New(s.Backend(), distlock.WithRetry(st))
			defer m.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			before := s.Calls()
			_, err := m.Acquire(ctx, "k", time.Minute)
			if !errors.Is(err, distlock.ErrInvalidArgument) {
				t.Fatalf("Acquire: %v, want ErrInvalidArgument", err)
			}
			_, err = distlock.New(s.Backend()).Lock(ctx, "k", time.Minute, distlock.WithLockRetry(st))
			if !errors.Is(err, distlock.ErrInvalidArgument) {
				t.Fatalf("Lock(WithLockRetry): %v, want ErrInvalidArgument", err)
			}
			if n := s.Calls() - before; n != 0 {
				t.Fatalf("%d calls reached the backend, want none", n)
			}
			if _, err := distlock.Open(ctx, "memory://retry-invalid", distlock.WithRetry(st)); !errors.Is(err, distlock.ErrInvalidArgument) {
				t.Fatalf("Open(WithRetry): %v, want ErrInvalidArgument", err)
			}
		})
	}
	for _, ok := range []distlock.RetryStrategy{distlock.LinearBackoff(time.Millisecond), distlock.ExponentialBackoff(time.Millisecond, 0), distlock.LimitWait(distlock.NoRetry(), 0)} {
		m := memory.NewManager(distlock.WithRetry(ok))
		if _, err := m.Acquire(t.Context(), "free", time.Minute); err != nil {
			t.Errorf("valid strategy refused: %v", err)
		}
		m.Close()
	}
}

// A strategy of the user's own that asks for no delay waits MinRetryDelay.
func TestRetryDelayFloor(t *testing.T) {
	s := holdKey(t)
	zero := retryFunc(func(_ int, waited time.Duration) (time.Duration, bool) { return 0, waited < 100*time.Millisecond })
	m := distlock.New(s.Backend(), distlock.WithRetry(zero))
	defer m.Close()
	before := s.Calls()
	if _, err := m.Acquire(t.Context(), "k", time.Minute); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("Acquire: %v", err)
	}
	// 100ms at one attempt per 1ms at most, plus the re-check after subscribing.
	if n := s.Calls() - before; n > 102 {
		t.Fatalf("%d backend calls in 100ms of waiting: the delay floor of %v is not applied", n, distlock.MinRetryDelay)
	}
}

type retryFunc func(int, time.Duration) (time.Duration, bool)

func (f retryFunc) NextBackoff(a int, w time.Duration) (time.Duration, bool) { return f(a, w) }

var waitedRe = regexp.MustCompile(`\d+(\.\d+)?m?s`)

func TestGiveUpErrorSaysHowLongAndWhatToDo(t *testing.T) {
	s := holdKey(t)
	m := distlock.New(s.Backend(), distlock.WithRetry(distlock.LimitWait(distlock.LinearBackoff(10*time.Millisecond), 50*time.Millisecond)))
	defer m.Close()
	_, err := m.Acquire(t.Context(), "k", time.Minute)
	msg := err.Error()
	if !errors.Is(err, distlock.ErrNotAcquired) || !strings.Contains(msg, "gave up after") || !waitedRe.MatchString(msg) || !strings.Contains(msg, "WithRetry") {
		t.Fatalf("give-up error %q: want ErrNotAcquired saying how long it waited and naming WithRetry", msg)
	}

	_, err = m.Lock(t.Context(), "k", time.Minute, distlock.TryOnce())
	if !errors.Is(err, distlock.ErrNotAcquired) || !strings.Contains(err.Error(), "one attempt") {
		t.Fatalf("try-once error %v: want ErrNotAcquired saying it made one attempt", err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err = distlock.New(s.Backend()).Acquire(ctx, "k", time.Minute)
	if !errors.Is(err, distlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) ||
		!strings.Contains(err.Error(), "waited") || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("ctx-ended error %v: want ErrNotAcquired and the ctx error, saying how long it waited", err)
	}
}

func TestUnavailableNamesEndpoint(t *testing.T) {
	m, err := distlock.Open(t.Context(), "memory://endpoint-test")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	memory.Named("endpoint-test").Stop()
	defer memory.Named("endpoint-test").Start()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err = m.Acquire(ctx, "k", time.Minute)
	if !errors.Is(err, distlock.ErrUnavailable) || !errors.Is(err, memory.ErrDown) || !strings.Contains(err.Error(), "memory://endpoint-test") {
		t.Fatalf("Acquire while down: %v, want ErrUnavailable naming memory://endpoint-test", err)
	}
	err = m.Release(t.Context(), "k", "tok")
	if !errors.Is(err, distlock.ErrUnavailable) || !strings.Contains(err.Error(), "memory://endpoint-test") {
		t.Fatalf("Release while down: %v, want ErrUnavailable naming memory://endpoint-test", err)
	}
}

func TestCapabilitiesOnInterfaceAndMock(t *testing.T) {
	var lm distlock.LockManager = memory.NewManager()
	defer lm.Close()
	if c := lm.Capabilities(); c.Name != "memory" || !c.Fencing {
		t.Fatalf("Capabilities through LockManager: %+v", c)
	}
	mock := distlockmock.NewMockLockManager(gomock.NewController(t))
	mock.EXPECT().Capabilities().Return(driver.Capabilities{Name: "fake", MinTTL: time.Second})
	lm = mock
	if c := lm.Capabilities(); c.Name != "fake" {
		t.Fatalf("mock Capabilities: %+v", c)
	}
}

// limited is a backend that declares neither fencing nor cross-instance
// release, and whole-second leases of 2s at least; it records Close.
type limited struct {
	driver.Backend
	mu     sync.Mutex
	closed bool
}

func (l *limited) Capabilities() driver.Capabilities {
	return driver.Capabilities{Name: "limited", MinTTL: 2 * time.Second, Granularity: time.Second}
}

func (l *limited) Close() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	return l.Backend.Close()
}

var (
	limitedOnce sync.Once
	lastLimited *limited
)

func TestRequire(t *testing.T) {
	limitedOnce.Do(func() {
		distlock.Register("limited", func(context.Context, *url.URL) (driver.Backend, error) {
			lastLimited = &limited{Backend: memory.NewStore().Backend()}
			return lastLimited, nil
		})
	})
	ctx := t.Context()
	m, err := distlock.Open(ctx, "memory://require", distlock.Require(distlock.Fencing(), distlock.CrossInstanceRelease(), distlock.MinTTLAtMost(time.Millisecond),
		distlock.ReadWriteLocks(), distlock.Semaphores(), distlock.Elections()))
	if err != nil {
		t.Fatalf("memory meets every requirement: %v", err)
	}
	m.Close()

	for _, tc := range []struct {
		req  distlock.Requirement
		want string
	}{
		{distlock.Fencing(), "fencing"},
		{distlock.CrossInstanceRelease(), "cross-instance release"},
		{distlock.MinTTLAtMost(100 * time.Millisecond), "at least 2s"},
		{distlock.ReadWriteLocks(), "read-write locks"},
		{distlock.Semaphores(), "semaphores"},
		{distlock.Elections(), "leader election"},
	} {
		_, err := distlock.Open(ctx, "limited://u:hunter2@host", distlock.Require(tc.req))
		if !errors.Is(err, distlock.ErrUnsupported) || !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open(Require) on a backend without %s: %v, want ErrUnsupported saying so", tc.want, err)
		}
		if !lastLimited.closed {
			t.Errorf("Open failing a requirement left the backend open")
		}
	}
	if _, err := distlock.Open(ctx, "limited://host", distlock.Require(distlock.MinTTLAtMost(2*time.Second))); err != nil {
		t.Errorf("MinTTLAtMost(2s) on a 2s backend: %v", err)
	}

	// New cannot fail: the Manager refuses every call instead.
	b := &limited{Backend: memory.NewStore().Backend()}
	nm := distlock.New(b, distlock.Require(distlock.Fencing()))
	defer nm.Close()
	if _, err := nm.Acquire(ctx, "k", time.Minute); !errors.Is(err, distlock.ErrUnsupported) {
		t.Errorf("Acquire on a New manager with unmet requirements: %v", err)
	}
	if err := nm.Release(ctx, "k", "t"); !errors.Is(err, distlock.ErrUnsupported) {
		t.Errorf("Release on a New manager with unmet requirements: %v", err)
	}
	if nm.Capabilities().Name != "limited" {
		t.Errorf("Capabilities: %+v", nm.Capabilities())
	}
}

// A backend that does not declare a primitive refuses it with
// ErrUnsupported, sending nothing.
func TestUndeclaredPrimitivesSendNothing(t *testing.T) {
	s := memory.NewStore()
	m := distlock.New(&limited{Backend: s.Backend()})
	defer m.Close()
	ctx := t.Context()
	before := s.Calls()
	_, err1 := m.RWMutex("k").RLock(ctx, time.Minute)
	_, err2 := m.RWMutex("k").Lock(ctx, time.Minute)
	_, err3 := m.Semaphore("k", 2).Acquire(ctx, time.Minute)
	_, err4 := m.Election("k", time.Minute).Campaign(ctx, "v")
	_, err5 := m.Election("k", time.Minute).Leader(ctx)
	for i, err := range []error{err1, err2, err3, err4, err5} {
		if !errors.Is(err, distlock.ErrUnsupported) {
			t.Errorf("call %d: %v, want ErrUnsupported", i+1, err)
		}
	}
	if n := s.Calls() - before; n != 0 {
		t.Errorf("%d calls reached the store", n)
	}
}

// Bad input to a primitive is ErrInvalidArgument and sends nothing.
func TestPrimitivesBadInput(t *testing.T) {
	s := memory.NewStore()
	m := distlock.New(s.Backend())
	defer m.Close()
	ctx := t.Context()
	before := s.Calls()
	big := strings.Repeat("x", distlock.MaxValueLen+1)
	calls := []func() error{
		func() error { _, err := m.RWMutex("").RLock(ctx, time.Minute); return err },
		func() error { _, err := m.RWMutex("k").Lock(ctx, 0); return err },
		func() error { _, err := m.Semaphore("k", 0).Acquire(ctx, time.Minute); return err },
		func() error { _, err := m.Semaphore("k", -3).Acquire(ctx, time.Minute); return err },
		func() error { _, err := m.Election("k", time.Minute).Campaign(ctx, big); return err },
		func() error { _, err := m.Election("k", -time.Second).Campaign(ctx, "v"); return err },
		func() error {
			_, err := m.RWMutex("k").RLock(ctx, time.Minute, distlock.WithToken(strings.Repeat("t", distlock.MaxTokenLen+1)))
			return err
		},
		func() error { _, err := m.Election("", time.Minute).Leader(ctx); return err },
	}
	for i, call := range calls {
		if err := call(); !errors.Is(err, distlock.ErrInvalidArgument) {
			t.Errorf("call %d: %v, want ErrInvalidArgument", i+1, err)
		}
	}
	if n := s.Calls() - before; n != 0 {
		t.Errorf("%d calls reached the store", n)
	}
}

func TestMinHoldDo(t *testing.T) {
	s := memory.NewStore()
	m1, m2 := distlock.New(s.Backend()), distlock.New(s.Backend())
	defer m1.Close()
	defer m2.Close()
	const hold = 400 * time.Millisecond
	start := time.Now()
	runs := 0
	job := func(context.Context) error { runs++; return nil }
	if err := m1.Do(t.Context(), "job", time.Minute, job, distlock.WithMinHold(hold), distlock.TryOnce()); err != nil {
		t.Fatal(err)
	}
	info, err := m1.Inspect(t.Context(), "job")
	if err != nil || !info.Held || info.TTL > hold {
		t.Fatalf("after Do: %+v, %v; want held with at most %v left (not the 1m TTL)", info, err, hold)
	}
	if err := m2.Do(t.Context(), "job", time.Minute, job, distlock.WithMinHold(hold), distlock.TryOnce()); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("second Do within the hold: %v, want ErrNotAcquired", err)
	}
	testwait.For(t, 5*time.Second, "the lock to expire at the end of the hold", func() bool {
		info, err := m2.Inspect(t.Context(), "job")
		return err == nil && !info.Held
	})
	if el := time.Since(start); el < hold {
		t.Fatalf("lock freed after %v, before its minimum hold of %v", el, hold)
	}
	if err := m2.Do(t.Context(), "job", time.Minute, job, distlock.TryOnce()); err != nil || runs != 2 {
		t.Fatalf("Do after the hold: %v, runs %d", err, runs)
	}
	if err := m2.Do(t.Context(), "job", time.Minute, job, distlock.WithMinHold(-time.Second)); !errors.Is(err, distlock.ErrInvalidArgument) {
		t.Fatalf("WithMinHold(-1s): %v, want ErrInvalidArgument", err)
	}
}

func TestMinHoldLockRelease(t *testing.T) {
	s := memory.NewStore()
	m1 := distlock.New(s.Backend(), distlock.WithRenewFraction(0.1))
	m2 := distlock.New(s.Backend(), distlock.WithRetry(distlock.NoRetry()))
	defer m1.Close()
	defer m2.Close()
	const hold = 300 * time.Millisecond
	start := time.Now()
	// Renewed every 10ms: a renewal after the release would keep it forever.
	l, err := m1.Lock(t.Context(), "k", 100*time.Millisecond, distlock.WithMinHold(hold), distlock.WithAutoRenew())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(t.Context()); err != nil {
		t.Fatalf("Release: %v", err)
	}
	select {
	case <-l.Done():
	default:
		t.Fatal("Done not closed by Release")
	}
	if l.Err() != nil {
		t.Fatalf("Err after Release: %v", l.Err())
	}
	if _, err := m2.Acquire(t.Context(), "k", time.Minute); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("Acquire within the hold: %v, want ErrNotAcquired", err)
	}
	if err := l.Release(t.Context()); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("second Release: %v, want ErrNotHeld", err)
	}
	testwait.For(t, 5*time.Second, "the lock to expire at the end of the hold", func() bool {
		_, err := m2.Acquire(t.Context(), "k", time.Minute)
		return err == nil
	})
	if el := time.Since(start); el < hold {
		t.Fatalf("lock free after %v, before its minimum hold of %v", el, hold)
	}

	// Once the hold has passed, Release deletes the lock as usual.
	l, err = m1.Lock(t.Context(), "k2", time.Minute, distlock.WithMinHold(time.Nanosecond))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := m2.Acquire(t.Context(), "k2", time.Minute); err != nil {
		t.Fatalf("Acquire after a Release past the hold: %v", err)
	}
}

func TestInspect(t *testing.T) {
	m := memory.NewManager()
	defer m.Close()
	ctx := t.Context()
	if info, err := m.Inspect(ctx, "k"); err != nil || info.Held {
		t.Fatalf("free key: %+v, %v", info, err)
	}
	l, err := m.Lock(ctx, "k", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	info, err := m.Inspect(ctx, "k")
	if err != nil || !info.Held || info.Fence != l.Fence() || info.TTL <= 0 || info.TTL > time.Second {
		t.Fatalf("held key: %+v, %v (fence %d)", info, err, l.Fence())
	}
	if _, err := m.Inspect(ctx, ""); !errors.Is(err, distlock.ErrInvalidArgument) {
		t.Fatalf("empty key: %v", err)
	}
	nm := distlock.New(&roundingBackend{Backend: memory.NewStore().Backend()})
	defer nm.Close()
	if _, err := nm.Inspect(ctx, "k"); !errors.Is(err, distlock.ErrUnsupported) || !strings.Contains(err.Error(), "driver.Inspector") {
		t.Fatalf("backend without Inspector: %v, want ErrUnsupported naming driver.Inspector", err)
	}
	m.Close()
	if _, err := m.Inspect(ctx, "k"); !errors.Is(err, distlock.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}
