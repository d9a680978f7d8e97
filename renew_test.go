package distlock_test

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/memory"
	"github.com/distlock/distlock/driver"
	"github.com/distlock/distlock/internal/testwait"
)

// Thousands of auto-renewed locks share one scheduler: the goroutines stay
// within 0.01 per held lock (plus a small constant) while every lock stays
// held across several renewal periods, and they are all gone, and the
// scheduler empty, once the locks are released or the Manager closed.
func TestAutoRenewSchedulerGoroutines(t *testing.T) {
	// A TTL of 1 s (renewed every 333 ms) leaves a renewal 667 ms to land:
	// under -race on a loaded 2-core machine 2,000 renewals with 300 ms
	// TTLs (200 ms to land) were seen to miss.
	const (
		n   = 2000
		ttl = time.Second
	)
	maxExtra := n/100 + 4
	for _, end := range []string{"Release", "Close"} {
		t.Run(end, func(t *testing.T) {
			s := memory.NewStore()
			m := distlock.New(s.Backend())
			defer m.Close()
			base := runtime.NumGoroutine()
			peak := base
			sample := func() {
				peak = max(peak, runtime.NumGoroutine())
			}

			locks := make([]*distlock.Lock, n)
			for i := range locks {
				l, err := m.Lock(t.Context(), "renew:"+strconv.Itoa(i), ttl, distlock.WithAutoRenew())
				if err != nil {
					t.Fatal(err)
				}
				locks[i] = l
				if i%100 == 0 {
					sample()
				}
			}
			// Several renewal periods: every lock's expiry moves past
			// start+3×ttl only by renewals after start+2×ttl.
			start := time.Now()
			calls := s.Calls()
			testwait.For(t, 10*time.Second, "every lock renewed past 3 TTLs", func() bool {
				sample()
				for _, l := range locks {
					if l.Err() != nil {
						t.Fatalf("lock %s lost after %v: %v (expiry %v ago)", l.Key(), time.Since(start), l.Err(), time.Since(l.Expiry()))
					}
					if l.Expiry().Before(start.Add(3 * ttl)) {
						return false
					}
				}
				return true
			})
			if renewed := s.Calls() - calls; renewed < 2*n {
				t.Fatalf("%d backend calls during the wait, want at least %d renewals", renewed, 2*n)
			}
			if peak-base > maxExtra {
				t.Fatalf("goroutines peaked at %d over the baseline of %d with %d auto-renewed locks held, want at most %d (0.01 per lock + 4)",
					peak-base, base, n, maxExtra)
			}
			t.Logf("%d auto-renewed locks held %v: at most %d goroutines over the baseline (%.4f per lock)",
				n, time.Since(start).Round(time.Millisecond), peak-base, float64(peak-base)/n)
			// Still held in the store: another manager cannot take them.
			other := distlock.New(s.Backend(), distlock.WithRetry(distlock.NoRetry()))
			defer other.Close()
			for _, l := range locks[:50] {
				if _, err := other.Acquire(t.Context(), l.Key(), ttl); !errors.Is(err, distlock.ErrNotAcquired) {
					t.Fatalf("another manager's Acquire of held %s: %v, want ErrNotAcquired", l.Key(), err)
				}
			}

			switch end {
			case "Release":
				for _, l := range locks {
					if err := l.Release(t.Context()); err != nil {
						t.Fatal(err)
					}
				}
				if got := m.Scheduled(); got != 0 {
					t.Fatalf("%d handles left in the scheduler after Release", got)
				}
			case "Close":
				if err := m.Close(); err != nil {
					t.Fatal(err)
				}
				for _, l := range locks {
					if !errors.Is(l.Err(), distlock.ErrLockLost) {
						t.Fatalf("after Close, Err = %v, want ErrLockLost", l.Err())
					}
				}
			}
			testwait.For(t, 5*time.Second, "goroutines back to the baseline", func() bool {
				return runtime.NumGoroutine() <= base
			})
		})
	}
}

// A renewal that hangs in the backend (ignoring its context) delays no
// other lock's renewal, and its own lock is still declared lost at expiry.
func TestAutoRenewSlowCallDelaysNoOther(t *testing.T) {
	const ttl = 300 * time.Millisecond
	b := &hangingBackend{Backend: memory.NewStore().Backend(), unblock: make(chan struct{})}
	m := distlock.New(b)
	defer m.Close()
	defer close(b.unblock) // before Close, which waits for the hung renewal
	slow, err := m.Lock(t.Context(), "slow", ttl, distlock.WithAutoRenew())
	if err != nil {
		t.Fatal(err)
	}
	var locks []*distlock.Lock
	for i := range 20 {
		l, err := m.Lock(t.Context(), "fast:"+strconv.Itoa(i), ttl, distlock.WithAutoRenew())
		if err != nil {
			t.Fatal(err)
		}
		locks = append(locks, l)
	}
	select {
	case <-slow.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("lock whose renewal hangs not declared lost")
	}
	if !errors.Is(slow.Err(), distlock.ErrLockLost) || time.Now().Before(slow.Expiry()) {
		t.Fatalf("hung lock: Err = %v at %v before its expiry %v", slow.Err(), time.Until(slow.Expiry()), slow.Expiry())
	}
	start := time.Now()
	testwait.For(t, 5*time.Second, "the other locks renewed past 3 TTLs", func() bool {
		for _, l := range locks {
			if l.Err() != nil {
				t.Fatalf("lock %s lost: %v", l.Key(), l.Err())
			}
			if l.Expiry().Before(start.Add(3 * ttl)) {
				return false
			}
		}
		return true
	})
}

// hangingBackend's Extend of the key "slow" blocks until unblock is closed,
// whatever its context says.
type hangingBackend struct {
	driver.Backend
	unblock chan struct{}
}

func (h *hangingBackend) Extend(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	if key == "slow" {
		<-h.unblock
		return driver.Grant{}, distlock.ErrNotHeld
	}
	return h.Backend.Extend(ctx, key, token, ttl)
}

// A handle without auto-renewal: an Extend moves its expiry without
// touching the scheduler, which declares it lost at the new expiry, not the
// old one. Done made after the end is closed.
func TestLockExtendMovesExpiry(t *testing.T) {
	const ttl = 200 * time.Millisecond
	m := memory.NewManager()
	defer m.Close()
	l, err := m.Lock(t.Context(), "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	first := l.Expiry()
	if err := l.Extend(t.Context(), 3*ttl); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 5*time.Second, "the first expiry to pass", func() bool {
		return time.Now().After(first.Add(ttl / 2))
	})
	select {
	case <-l.Done():
		t.Fatalf("lost at its first expiry after Extend: %v", l.Err())
	default:
	}
	select {
	case <-l.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not declared lost at its extended expiry")
	}
	if !errors.Is(l.Err(), distlock.ErrLockLost) || time.Now().Before(l.Expiry()) {
		t.Fatalf("Err = %v, %v before its expiry", l.Err(), time.Until(l.Expiry()))
	}
	if m.Scheduled() != 0 {
		t.Fatalf("%d handles left in the scheduler", m.Scheduled())
	}

	l2, err := m.Lock(t.Context(), "k2", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := l2.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l2.Done():
	default:
		t.Fatal("Done of a released handle is not closed")
	}
}
