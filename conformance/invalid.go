package conformance

import (
	"context"
	"strings"
	"sync/atomic"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
)

// counting wraps a backend and counts the calls that reach it.
type counting struct {
	driver.Backend
	calls atomic.Int64
}

func (c *counting) Acquire(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	c.calls.Add(1)
	return c.Backend.Acquire(ctx, key, token, ttl)
}

func (c *counting) Extend(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	c.calls.Add(1)
	return c.Backend.Extend(ctx, key, token, ttl)
}

func (c *counting) Release(ctx context.Context, key, token string) error {
	c.calls.Add(1)
	return c.Backend.Release(ctx, key, token)
}

var invalidCases = []Case{
	{Topic: "Invalid", Name: "ArgumentsRejectedBeforeBackend", Run: func(t TB, e *Env) {
		b, err := e.H.NewBackend(t.Context())
		if err != nil {
			t.Fatalf("harness NewBackend: %v", err)
		}
		cb := &counting{Backend: b}
		m := distlock.New(cb)
		t.Cleanup(func() { _ = m.Close() })
		ctx := t.Context()
		key := e.Key("invalid")
		long := strings.Repeat("k", distlock.MaxKeyLen+1)
		longTok := strings.Repeat("t", distlock.MaxTokenLen+1)
		fn := func(context.Context) error { return nil }
		calls := map[string]func() error{
			"Acquire empty key":       func() error { _, err := m.Acquire(ctx, "", e.Long); return err },
			"Acquire zero ttl":        func() error { _, err := m.Acquire(ctx, key, 0); return err },
			"Acquire negative ttl":    func() error { _, err := m.Acquire(ctx, key, -time.Second); return err },
			"Acquire ttl over MaxTTL": func() error { _, err := m.Acquire(ctx, key, distlock.MaxTTL+1); return err },
			"Acquire oversized key":   func() error { _, err := m.Acquire(ctx, long, e.Long); return err },
			"Acquire oversized token": func() error { _, err := m.Acquire(ctx, key, e.Long, longTok); return err },
			"Acquire empty token":     func() error { _, err := m.Acquire(ctx, key, e.Long, ""); return err },
			"Acquire two tokens":      func() error { _, err := m.Acquire(ctx, key, e.Long, "a", "b"); return err },
			"Release empty key":       func() error { return m.Release(ctx, "", "tok") },
			"Release empty token":     func() error { return m.Release(ctx, key, "") },
			"Release oversized key":   func() error { return m.Release(ctx, long, "tok") },
			"Release oversized token": func() error { return m.Release(ctx, key, longTok) },
			"Extend empty key":        func() error { return m.Extend(ctx, "", "tok", e.Long) },
			"Extend zero ttl":         func() error { return m.Extend(ctx, key, "tok", 0) },
			"Extend empty token":      func() error { return m.Extend(ctx, key, "", e.Long) },
			"Lock empty key":          func() error { _, err := m.Lock(ctx, "", e.Long); return err },
			"Lock empty token":        func() error { _, err := m.Lock(ctx, key, e.Long, distlock.WithToken("")); return err },
			"Do empty key":            func() error { return m.Do(ctx, "", e.Long, fn) },
			"Do nil fn":               func() error { return m.Do(ctx, key, e.Long, nil) },
		}
		for name, call := range calls {
			err := call()
			if !errorsIs(err, distlock.ErrInvalidArgument) {
				t.Errorf("%s: got %v, want ErrInvalidArgument", name, err)
			}
		}
		if n := cb.calls.Load(); n != 0 {
			t.Fatalf("%d calls reached the backend with invalid arguments", n)
		}
	}},
}
