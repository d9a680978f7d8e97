package redsync_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/distlock/distlock/distlocktest"
	"github.com/redis/go-redis/v9"
)

// sharedAddr is the redis-server the package's tests share (tests that
// stop or kill servers start their own). The runnable examples read it
// from REDIS_ADDR.
var sharedAddr string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

// quietLogger drops go-redis's own log lines (reconnect attempts to the
// servers the fault tests kill).
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

func run(m *testing.M) int {
	if os.Getenv("DISTLOCK_TEST_VERBOSE") == "" {
		redis.SetLogger(quietLogger{})
	}
	if u := os.Getenv(distlocktest.RedisURLEnv); u != "" {
		opts, err := redis.ParseURL(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", distlocktest.RedisURLEnv, err)
			return 1
		}
		sharedAddr = opts.Addr
	} else {
		r, err := distlocktest.NewRedis(distlocktest.RedisOptions{})
		if err != nil {
			if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			fmt.Println("SKIP: backends/redsync:", err)
			return 0
		}
		defer r.Close()
		sharedAddr = r.Addr
	}
	if os.Getenv("REDIS_ADDR") == "" {
		os.Setenv("REDIS_ADDR", sharedAddr)
	}
	return m.Run()
}

// newClient returns a go-redis client for addr, closed when t ends.
func newClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// uniqueKey returns a key no other test uses.
func uniqueKey(t testing.TB) string {
	return fmt.Sprintf("test:%s:%d", t.Name(), time.Now().UnixNano())
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
