package redsync

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/distlock/distlock/internal/testserver"
	"github.com/distlock/distlock/internal/testwait"
	"github.com/redis/go-redis/v9"
)

// keptClient returns a client of poolSize connections to the shared test
// server and a fenced backend over it (which does not close it).
func keptClient(t *testing.T, poolSize int) (*redis.Client, *Backend) {
	t.Helper()
	opts, err := redis.ParseURL(testserver.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	opts.ContextTimeoutEnabled = true
	opts.PoolSize = poolSize
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	b := NewBackend(c, WithFenceKey("test:fence:"+t.Name()))
	t.Cleanup(func() { _ = b.Close() })
	return c, b
}

// cycle acquires and releases key through b n times.
func cycle(t *testing.T, ctx context.Context, b *Backend, key string, n int) {
	t.Helper()
	for range n {
		if _, err := b.Acquire(ctx, key, "tok", time.Minute); err != nil {
			t.Fatalf("acquire: %v", err)
		}
		if err := b.Release(ctx, key, "tok"); err != nil {
			t.Fatalf("release: %v", err)
		}
	}
}

// inUse is how many of c's pooled connections are out of the pool.
func inUse(c *redis.Client) int {
	s := c.PoolStats()
	return int(s.TotalConns) - int(s.IdleConns)
}

// TestKeptConnectionBreaks: when the server drops the connection the
// backend set aside (a restart, CLIENT KILL, an idle timeout), the next
// lock command still succeeds: it goes out again through the pool, whose
// health check dials a fresh connection.
func TestKeptConnectionBreaks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, b := keptClient(t, 16)
	key := fmt.Sprintf("test:kept:%d", time.Now().UnixNano())
	cycle(t, ctx, b, key, 3)
	if got := inUse(c); got != 1 {
		t.Fatalf("%d connections out of the pool after one caller's commands, want the 1 kept", got)
	}
	killer := redis.NewClient(&redis.Options{Addr: c.Options().Addr})
	defer killer.Close()
	for round := range 3 {
		killed, err := killer.ClientKillByFilter(ctx, "TYPE", "normal").Result()
		if err != nil || killed < 1 {
			t.Fatalf("CLIENT KILL: %d killed, %v", killed, err)
		}
		if _, err := b.Acquire(ctx, key, "tok", time.Minute); err != nil {
			t.Fatalf("round %d: acquire after the kept connection was killed: %v", round, err)
		}
		if err := b.Release(ctx, key, "tok"); err != nil {
			t.Fatalf("round %d: release: %v", round, err)
		}
	}
}

// TestKeptConnectionsGoBack: connections set aside go back to the
// client's pool once idle for the kept age, and at once on Close; a
// client's pool never has more than a quarter of its connections set
// aside, and a small pool has none.
func TestKeptConnectionsGoBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("Idle", func(t *testing.T) {
		c, b := keptClient(t, 16)
		b.n.batch.conns.age = 100 * time.Millisecond
		cycle(t, ctx, b, fmt.Sprintf("test:kept:idle:%d", time.Now().UnixNano()), 3)
		if got := inUse(c); got != 1 {
			t.Fatalf("%d connections out of the pool right after use, want the 1 kept", got)
		}
		testwait.For(t, 5*time.Second, "the idle kept connection to go back to the pool", func() bool { return inUse(c) == 0 })
		cycle(t, ctx, b, fmt.Sprintf("test:kept:idle:%d", time.Now().UnixNano()), 1)
		if got := inUse(c); got != 1 {
			t.Fatalf("%d connections out of the pool after new use, want 1", got)
		}
	})

	t.Run("Close", func(t *testing.T) {
		c, b := keptClient(t, 16)
		cycle(t, ctx, b, fmt.Sprintf("test:kept:close:%d", time.Now().UnixNano()), 3)
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if got := inUse(c); got != 0 {
			t.Fatalf("%d connections out of the pool after Close", got)
		}
		if err := c.Ping(ctx).Err(); err != nil {
			t.Fatalf("the client after the backend closed: %v", err)
		}
	})

	for _, tc := range []struct{ pool, max int }{{3, 0}, {8, 2}, {64, maxInFlight}} {
		t.Run(fmt.Sprintf("Pool%d", tc.pool), func(t *testing.T) {
			c, b := keptClient(t, tc.pool)
			k := &b.n.batch.conns
			if k.max != tc.max {
				t.Fatalf("keeps up to %d of a pool of %d, want %d", k.max, tc.pool, tc.max)
			}
			var (
				wg       sync.WaitGroup
				mu       sync.Mutex
				most     int
				stop     = make(chan struct{})
				sampling = make(chan struct{})
			)
			go func() { // samples how many are kept while 16 goroutines lock
				defer close(sampling)
				for {
					k.mu.Lock()
					n := k.n
					k.mu.Unlock()
					mu.Lock()
					most = max(most, n)
					mu.Unlock()
					select {
					case <-stop:
						return
					case <-time.After(100 * time.Microsecond):
					}
				}
			}()
			base := fmt.Sprintf("test:kept:pool:%d:", time.Now().UnixNano())
			for g := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					cycle(t, ctx, b, fmt.Sprint(base, g), 30)
				}()
			}
			wg.Wait()
			close(stop)
			<-sampling
			if most > tc.max {
				t.Fatalf("%d connections kept at once, want at most %d", most, tc.max)
			}
			if tc.max > 0 && most == 0 {
				t.Fatal("no connection was kept")
			}
			if got := inUse(c); got > tc.max {
				t.Fatalf("%d connections out of the pool after the goroutines ended, want at most %d", got, tc.max)
			}
		})
	}
}
