package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
	"github.com/distlock/distlock/internal/testwait"
)

// TestStatusShowsWaiters: status reports how many waiters of other
// processes queue on the server for the key, where the backend queues them.
func TestStatusShowsWaiters(t *testing.T) {
	forEachBackend(t, func(t *testing.T, _ liveBackend, url string, _ driver.Capabilities) {
		ctx := t.Context()
		b, err := distlock.OpenBackend(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		_, queues := b.(driver.Queuer)
		_ = b.Close()
		if !queues {
			t.Skip("the backend does not queue waiters on the server")
		}
		holder, err := distlock.Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer holder.Close()
		waiter, err := distlock.Open(ctx, url, distlock.WithRetry(distlock.ExponentialBackoff(2*time.Millisecond, 100*time.Millisecond)))
		if err != nil {
			t.Fatal(err)
		}
		defer waiter.Close()
		const key = "status-waiters"
		tok, err := holder.Acquire(ctx, key, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = holder.Release(context.WithoutCancel(ctx), key, tok) }()
		wctx, stop := context.WithCancel(ctx)
		defer stop()
		go func() { _, _ = waiter.Acquire(wctx, key, time.Minute) }()
		testwait.For(t, 10*time.Second, "the waiter to queue on the server", func() bool {
			info, err := holder.Inspect(ctx, key)
			return err == nil && info.Waiters == 1
		})
		r := cli(t, nil, "status", "--url", url, "--key", key, "--token", "not-the-holder", "--json")
		var out map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out["waiters"] != float64(1) {
			t.Fatalf("status --json: %v %s", err, r)
		}
		r = cli(t, nil, "status", "--url", url, "--key", key, "--token", "not-the-holder")
		if !strings.Contains(r.stdout, "waiters:      1 queued on the server") {
			t.Fatalf("status: %s", r)
		}
	})
}
