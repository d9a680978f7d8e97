package distlock_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/memory"
	"github.com/distlock/distlock/driver"
)

func TestRetryStrategies(t *testing.T) {
	if _, ok := distlock.NoRetry().NextBackoff(1, 0); ok {
		t.Error("NoRetry retried")
	}
	lim := distlock.LimitRetry(distlock.LinearBackoff(time.Millisecond), 3)
	for attempt, want := range map[int]bool{1: true, 2: true, 3: false, 4: false} {
		if _, ok := lim.NextBackoff(attempt, 0); ok != want {
			t.Errorf("LimitRetry(3) after %d attempts: retry=%v, want %v", attempt, ok, want)
		}
	}
	exp := distlock.ExponentialBackoff(4*time.Millisecond, 64*time.Millisecond)
	for attempt := 1; attempt <= 10; attempt++ {
		d, ok := exp.NextBackoff(attempt, 0)
		ceil := min(4*time.Millisecond<<(attempt-1), 64*time.Millisecond)
		if !ok || d < ceil/2 || d > ceil {
			t.Errorf("attempt %d: backoff %v, want in [%v, %v]", attempt, d, ceil/2, ceil)
		}
	}
	w := distlock.LimitWait(distlock.LinearBackoff(40*time.Millisecond), 100*time.Millisecond)
	if d, ok := w.NextBackoff(1, 80*time.Millisecond); !ok || d != 20*time.Millisecond {
		t.Errorf("LimitWait near the limit: %v %v, want 20ms true", d, ok)
	}
	if _, ok := w.NextBackoff(1, 100*time.Millisecond); ok {
		t.Error("LimitWait retried past its limit")
	}
}

func TestRetryPolicyBoundsAcquire(t *testing.T) {
	s := memory.NewStore()
	holder := distlock.New(s.Backend())
	defer holder.Close()
	if _, err := holder.Acquire(t.Context(), "k", time.Minute); err != nil {
		t.Fatal(err)
	}
	m := distlock.New(s.Backend(), distlock.WithRetry(distlock.LimitRetry(distlock.LinearBackoff(time.Millisecond), 5)))
	defer m.Close()
	before := s.Calls()
	_, err := m.Acquire(t.Context(), "k", time.Minute)
	if !errors.Is(err, distlock.ErrNotAcquired) || errors.Is(err, distlock.ErrUnavailable) {
		t.Fatalf("got %v, want ErrNotAcquired only", err)
	}
	// memory is a driver.Queuer: one try, then one wait in the store's
	// queue, bounded by the strategy's total (4 waits of 1ms), which then
	// leaves the queue.
	if n := s.Calls() - before; n != 2 {
		t.Fatalf("%d calls reached the backend, want 2", n)
	}
	if info, err := holder.Inspect(t.Context(), "k"); err != nil || info.Waiters != 0 {
		t.Fatalf("after the give-up: %+v, %v; want no waiter left in the queue", info, err)
	}
}

func TestTokens(t *testing.T) {
	tok := distlock.NewToken()
	if len(tok) != 22 || tok == distlock.NewToken() {
		t.Fatalf("NewToken = %q (len %d)", tok, len(tok))
	}
	m := memory.NewManager(distlock.WithTokenGenerator(func(key string) string { return "token-for:" + key }))
	defer m.Close()
	got, err := m.Acquire(t.Context(), "k", time.Minute)
	if err != nil || got != "token-for:k" {
		t.Fatalf("Acquire with a generator = %q, %v", got, err)
	}
	bad := memory.NewManager(distlock.WithTokenGenerator(func(string) string { return "" }))
	defer bad.Close()
	if _, err := bad.Acquire(t.Context(), "k", time.Minute); !errors.Is(err, distlock.ErrInvalidArgument) {
		t.Fatalf("empty generated token: %v, want ErrInvalidArgument", err)
	}
}

func TestErrorFormat(t *testing.T) {
	cause := errors.New("dial tcp 127.0.0.1:1: connection refused")
	err := error(&distlock.Error{Op: "acquire", Key: "seat:42", Kind: distlock.ErrUnavailable, Err: distlock.Unavailable(cause)})
	if got, want := err.Error(), `distlock: acquire "seat:42": backend unavailable: dial tcp 127.0.0.1:1: connection refused`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, distlock.ErrUnavailable) || !errors.Is(err, cause) || errors.Is(err, distlock.ErrNotHeld) {
		t.Errorf("errors.Is does not see kind and cause of %v", err)
	}
	var de *distlock.Error
	if !errors.As(err, &de) || de.Op != "acquire" {
		t.Errorf("errors.As failed")
	}
}

func TestOpen(t *testing.T) {
	ctx := t.Context()
	m, err := distlock.Open(ctx, "memory://open-test")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Capabilities().Name != "memory" {
		t.Fatalf("capabilities %+v", m.Capabilities())
	}

	_, err = distlock.Open(ctx, "nosuch://user:hunter2@host/")
	if !errors.Is(err, distlock.ErrInvalidArgument) || !strings.Contains(err.Error(), "memory") || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("unknown scheme: %v (want ErrInvalidArgument listing registered schemes, no password)", err)
	}
	for _, raw := range []string{"", "not a url", "redis://user:hunter2@[::1", "::hunter2"} {
		_, err := distlock.Open(ctx, raw)
		if !errors.Is(err, distlock.ErrInvalidArgument) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open(%q): %v", raw, err)
		}
	}
}

var registerLeaky sync.Once

func TestOpenScrubsSecretsFromBackendErrors(t *testing.T) {
	registerLeaky.Do(func() {
		distlock.Register("leaky", func(_ context.Context, u *url.URL) (driver.Backend, error) {
			p, _ := u.User.Password()
			return nil, distlock.Unavailable(errors.New("auth failed for " + u.String() + " with " + p + " and " + u.Query().Get("password")))
		})
	})
	_, err := distlock.Open(t.Context(), "leaky://bob:s3cr%40t@h:1/?password=qs3cret")
	if err == nil || strings.Contains(err.Error(), "s3cr") || strings.Contains(err.Error(), "qs3cret") {
		t.Fatalf("secret leaked: %v", err)
	}
	if !errors.Is(err, distlock.ErrUnavailable) {
		t.Fatalf("kind lost: %v", err)
	}
	if got := distlock.RedactURL(&url.URL{Scheme: "redis", Host: "h", User: url.UserPassword("u", "pw"), RawQuery: "password=qq&db=1"}); strings.Contains(got, "pw") || strings.Contains(got, "qq") {
		t.Fatalf("RedactURL = %q", got)
	}
}

func TestRenewalSurvivesShortOutageAndLosesLongOne(t *testing.T) {
	s := memory.NewStore()
	m := distlock.New(s.Backend())
	defer m.Close()
	l, err := m.Lock(t.Context(), "k", 300*time.Millisecond, distlock.WithAutoRenew())
	if err != nil {
		t.Fatal(err)
	}
	s.Stop() // renewals fail from now on
	select {
	case <-l.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("lock not reported lost while renewals failed past its expiry")
	}
	if !errors.Is(l.Err(), distlock.ErrLockLost) {
		t.Fatalf("Err = %v", l.Err())
	}
	if time.Now().Before(l.Expiry()) {
		t.Fatalf("reported lost before its expiry %v", l.Expiry())
	}
}

func TestDoReportsLoss(t *testing.T) {
	s := memory.NewStore()
	m := distlock.New(s.Backend())
	defer m.Close()
	err := m.Do(t.Context(), "job", 200*time.Millisecond, func(ctx context.Context) error {
		s.Revoke("job")
		<-ctx.Done()
		return nil
	})
	if !errors.Is(err, distlock.ErrLockLost) {
		t.Fatalf("Do = %v, want ErrLockLost", err)
	}
}

func TestTTLRoundedUp(t *testing.T) {
	b := &roundingBackend{Backend: memory.NewStore().Backend()}
	m := distlock.New(b)
	defer m.Close()
	l, err := m.Lock(t.Context(), "k", 1500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if b.last != 2*time.Second {
		t.Fatalf("backend got ttl %v, want 2s (rounded up to the granularity)", b.last)
	}
	if until := time.Until(l.Expiry()); until < 1900*time.Millisecond {
		t.Fatalf("expiry in %v, want about 2s", until)
	}
	if _, err := m.Acquire(t.Context(), "k2", time.Millisecond); err != nil || b.last != 2*time.Second {
		t.Fatalf("ttl below MinTTL: %v, backend got %v", err, b.last)
	}
}

type roundingBackend struct {
	driver.Backend
	last time.Duration
}

func (r *roundingBackend) Capabilities() driver.Capabilities {
	c := r.Backend.Capabilities()
	c.MinTTL, c.Granularity = 2*time.Second, time.Second
	return c
}

func (r *roundingBackend) Acquire(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	r.last = ttl
	return r.Backend.Acquire(ctx, key, token, ttl)
}

func TestAutoRenewKeepsExtendedTTL(t *testing.T) {
	b := &ttlRecorder{Backend: memory.NewStore().Backend()}
	m := distlock.New(b, distlock.WithRenewFraction(0.1))
	defer m.Close()
	l, err := m.Lock(t.Context(), "k", 100*time.Millisecond, distlock.WithAutoRenew())
	if err != nil {
		t.Fatal(err)
	}
	waitFor := func(n int64) bool { // renewals reach n within 5s
		deadline := time.Now().Add(5 * time.Second)
		for b.renewals.Load() < n && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		return b.renewals.Load() >= n
	}
	if !waitFor(1) { // renewal is running with the first TTL
		t.Fatal("auto-renewal did not run")
	}
	if err := l.Extend(t.Context(), 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	base := b.renewals.Load()
	if !waitFor(base + 3) {
		t.Fatal("auto-renewal did not run after Extend")
	}
	if got := time.Duration(b.last.Load()); got != 300*time.Millisecond {
		t.Fatalf("auto-renewal extended with %v after Extend(300ms)", got)
	}
}

type ttlRecorder struct {
	driver.Backend
	renewals atomic.Int64
	last     atomic.Int64
}

func (r *ttlRecorder) Extend(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	r.last.Store(int64(ttl))
	r.renewals.Add(1)
	return r.Backend.Extend(ctx, key, token, ttl)
}
