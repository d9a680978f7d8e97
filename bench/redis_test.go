package bench

// Redis rows: distlock's redsync backend against the raw floor (SET NX PX
// + compare-and-delete script), go-redsync's Mutex and bsm/redislock, on
// the same redis-server, side by side in one run.
//
//	go test -run '^$' -bench 'RedisInterleaved|RedisRedlockInterleaved' -benchtime 5000x   (from bench/)
//	go test -run '^$' -bench 'RedisParallel16Interleaved' -benchtime 16x
//	go test -run '^$' -bench 'Redis(Uncontended|Parallel16)$' -benchtime 2s
//	go test -run '^$' -bench RedisContended16 -benchtime 1x
//	go test -run '^$' -bench RedisContended16Interleaved -benchtime 5x
//
// The Interleaved rows take turns between the contenders so that a shared
// machine's changing load hits them alike: their ratios are the figures to
// quote (docs/redis.md).
//
// The server: DISTLOCK_BENCH_REDIS_URL or DISTLOCK_TEST_REDIS_URL if set,
// else a redis-server started on a free 127.0.0.1 port (persistence off).
// The Redlock rows always start their own masters.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"os"
	"testing"
	"time"

	"github.com/bsm/redislock"
	rs "github.com/go-redsync/redsync/v4"
	rsredis "github.com/go-redsync/redsync/v4/redis"
	rsgoredis "github.com/go-redsync/redsync/v4/redis/goredis/v9"
	"github.com/redis/go-redis/v9"

	"github.com/distlock/distlock"
	redsyncLocker "github.com/distlock/distlock/backends/redsync"
	"github.com/distlock/distlock/distlocktest"
)

// redisBenchTTL is the TTL of every lock the Redis rows take.
const redisBenchTTL = 10 * time.Second

// redisContendedFor is how long each contended row runs.
const redisContendedFor = 5 * time.Second

// redisAddr returns the address of the server for one top-level benchmark.
func redisAddr(b *testing.B) string {
	b.Helper()
	for _, env := range []string{"DISTLOCK_BENCH_REDIS_URL", distlocktest.RedisURLEnv} {
		if raw := os.Getenv(env); raw != "" {
			opts, err := redis.ParseURL(raw)
			if err != nil {
				b.Fatalf("%s: %v", env, err)
			}
			return opts.Addr
		}
	}
	return distlocktest.StartRedis(b, distlocktest.RedisOptions{}).Addr
}

func newRedisClient(b *testing.B, addr string) *redis.Client {
	b.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 32, ContextTimeoutEnabled: true})
	b.Cleanup(func() { _ = c.Close() })
	if err := c.Ping(context.Background()).Err(); err != nil {
		b.Fatalf("redis at %s: %v", addr, err)
	}
	return c
}

// rawDelScript is the floor's release: delete the key if it holds our token.
var rawDelScript = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)

// rawRedis is the floor: SET NX PX with a random token, polling every
// millisecond while taken; release by compare-and-delete script.
func rawRedis(c *redis.Client) LockFunc {
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		var b [16]byte
		_, _ = rand.Read(b[:])
		tok := base64.RawURLEncoding.EncodeToString(b[:])
		for {
			ok, err := c.SetNX(ctx, key, tok, redisBenchTTL).Result()
			if err != nil {
				return nil, err
			}
			if ok {
				break
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Millisecond):
			}
		}
		return func(ctx context.Context) error {
			n, err := rawDelScript.Run(ctx, c, []string{key}, tok).Int64()
			if err == nil && n != 1 {
				err = errors.New("raw: lock was not held")
			}
			return err
		}, nil
	}
}

// rawRedlock is the floor of Redlock over clients (not a usable lock: no
// validity check, no cleanup of a failed round, no waiting): SET NX PX on
// every master in parallel, done at a quorum; release by the
// compare-and-delete script on every master, done at a quorum. The
// stragglers finish on their own. It shows what the fan-out itself costs on
// this machine, without distlock.
func rawRedlock(cs []*redis.Client) LockFunc {
	quorum := len(cs)/2 + 1
	fan := func(op func(c *redis.Client) bool) bool {
		res := make(chan bool, len(cs))
		for _, c := range cs {
			go func() { res <- op(c) }()
		}
		ok, failed := 0, 0
		for range cs {
			if <-res {
				ok++
			} else {
				failed++
			}
			if ok >= quorum {
				return true
			}
			if failed > len(cs)-quorum {
				return false
			}
		}
		return false
	}
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		var b [16]byte
		_, _ = rand.Read(b[:])
		tok := base64.RawURLEncoding.EncodeToString(b[:])
		for !fan(func(c *redis.Client) bool {
			ok, err := c.SetNX(ctx, key, tok, redisBenchTTL).Result()
			return err == nil && ok
		}) {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Millisecond):
			}
		}
		return func(ctx context.Context) error {
			if !fan(func(c *redis.Client) bool {
				n, err := rawDelScript.Run(ctx, c, []string{key}, tok).Int64()
				return err == nil && n == 1
			}) {
				return errors.New("raw redlock: lock was not held on a quorum")
			}
			return nil
		}, nil
	}
}

// rawFenceScript is the least a fenced acquire can send: INCR the counter
// and SET NX a value that carries the fence, in one script.
var rawFenceScript = redis.NewScript(`local f = redis.call('INCR', KEYS[2])
if redis.call('SET', KEYS[1], f .. ':' .. ARGV[1], 'NX', 'PX', ARGV[2]) then return f end
return -1`)

// rawFencedRedis is the floor of a fenced lock (not a usable lock: no
// re-acquire, no waiting for releases): rawFenceScript, polling every
// millisecond while taken; release by compare-and-delete script. It shows
// what fencing itself costs against the raw floor, without distlock.
func rawFencedRedis(c *redis.Client) LockFunc {
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		var b [16]byte
		_, _ = rand.Read(b[:])
		tok := base64.RawURLEncoding.EncodeToString(b[:])
		var f int64
		for {
			var err error
			f, err = rawFenceScript.Run(ctx, c, []string{key, "bench:fence"}, tok, redisBenchTTL.Milliseconds()).Int64()
			if err != nil {
				return nil, err
			}
			if f >= 0 {
				break
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Millisecond):
			}
		}
		val := fmt.Sprint(f, ":", tok)
		return func(ctx context.Context) error {
			n, err := rawDelScript.Run(ctx, c, []string{key}, val).Int64()
			if err == nil && n != 1 {
				err = errors.New("raw fenced: lock was not held")
			}
			return err
		}, nil
	}
}

// distlockAcquire locks through Manager.Acquire/Release.
func distlockAcquire(m *distlock.Manager) LockFunc {
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		tok, err := m.Acquire(ctx, key, redisBenchTTL)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) error { return m.Release(ctx, key, tok) }, nil
	}
}

func newRedisManager(b *testing.B, c redis.UniversalClient, retry distlock.RetryStrategy, opts ...redsyncLocker.Option) *distlock.Manager {
	m := redsyncLocker.NewRedsyncLockManager(c, append(opts, redsyncLocker.WithManagerOptions(distlock.WithRetry(retry)))...)
	b.Cleanup(func() { _ = m.Close() })
	return m
}

// redsyncMutex locks with a fresh go-redsync Mutex per lock, as its users
// do.
func redsyncMutex(r *rs.Redsync, opts ...rs.Option) LockFunc {
	opts = append([]rs.Option{rs.WithExpiry(redisBenchTTL)}, opts...)
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		mu := r.NewMutex(key, opts...)
		if err := mu.LockContext(ctx); err != nil {
			return nil, err
		}
		return func(ctx context.Context) error {
			ok, err := mu.UnlockContext(ctx)
			if err == nil && !ok {
				err = errors.New("redsync: unlock failed")
			}
			return err
		}, nil
	}
}

func newRedsync(clients ...redis.UniversalClient) *rs.Redsync {
	pools := make([]rsredis.Pool, len(clients))
	for i, c := range clients {
		pools[i] = rsgoredis.NewPool(c)
	}
	return rs.New(pools...)
}

// bsmRedislock locks with bsm/redislock.
func bsmRedislock(c *redis.Client, retry redislock.RetryStrategy) LockFunc {
	lc := redislock.New(c)
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		l, err := lc.Obtain(ctx, key, redisBenchTTL, &redislock.Options{RetryStrategy: retry})
		if err != nil {
			return nil, err
		}
		return l.Release, nil
	}
}

// redisRows are the single-server rows of the uncontended benchmarks.
func redisRows(b *testing.B, addr string, run func(b *testing.B, lock LockFunc)) {
	row := func(name string, mk func(c *redis.Client) LockFunc) {
		b.Run(name, func(b *testing.B) { run(b, mk(newRedisClient(b, addr))) })
	}
	row("raw-setnx-del", rawRedis)
	row("distlock", func(c *redis.Client) LockFunc { return distlockAcquire(newRedisManager(b, c, distlock.DefaultRetry)) })
	row("distlock-nofence", func(c *redis.Client) LockFunc {
		return distlockAcquire(newRedisManager(b, c, distlock.DefaultRetry, redsyncLocker.WithoutFencing()))
	})
	row("redsync-Mutex", func(c *redis.Client) LockFunc { return redsyncMutex(newRedsync(c)) })
	row("bsm-redislock", func(c *redis.Client) LockFunc { return bsmRedislock(c, redislock.LinearBackoff(time.Millisecond)) })
}

func BenchmarkRedisUncontended(b *testing.B) {
	redisRows(b, redisAddr(b), Uncontended)
}

func BenchmarkRedisParallel16(b *testing.B) {
	redisRows(b, redisAddr(b), func(b *testing.B, lock LockFunc) { Parallel(b, 16, lock) })
}

// BenchmarkRedisRedlock compares one server with Redlock over 3 and 5
// masters (uncontended acquire+release, 1 goroutine).
func BenchmarkRedisRedlock(b *testing.B) {
	srvs := distlocktest.StartRedisN(b, 5, distlocktest.RedisOptions{})
	clients := func(b *testing.B, n int) []redis.UniversalClient {
		cs := make([]redis.UniversalClient, n)
		for i := range cs {
			cs[i] = newRedisClient(b, srvs[i].Addr)
		}
		return cs
	}
	for _, n := range []int{1, 3, 5} {
		b.Run(fmt.Sprintf("distlock-%d", n), func(b *testing.B) {
			cs := clients(b, n)
			var m *distlock.Manager
			if n == 1 {
				m = newRedisManager(b, cs[0], distlock.DefaultRetry)
			} else {
				var err error
				m, err = redsyncLocker.NewRedlockManager(cs)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = m.Close() })
			}
			Uncontended(b, distlockAcquire(m))
		})
	}
	for _, n := range []int{1, 3, 5} {
		b.Run(fmt.Sprintf("redsync-%d", n), func(b *testing.B) {
			Uncontended(b, redsyncMutex(newRedsync(clients(b, n)...)))
		})
		if n > 1 {
			b.Run(fmt.Sprintf("redsync-failfast-%d", n), func(b *testing.B) {
				Uncontended(b, redsyncMutex(newRedsync(clients(b, n)...), rs.WithFailFast(true)))
			})
		}
	}
}

// BenchmarkRedisContended16: 16 goroutines on one key, acquire →
// increment → release, for redisContendedFor. Run with -benchtime 1x.
func BenchmarkRedisContended16(b *testing.B) {
	addr := redisAddr(b)
	run := func(b *testing.B, lock LockFunc) { RunContended(b, 16, redisContendedFor, lock) }
	longWait := distlock.LimitWait(distlock.ExponentialBackoff(2*time.Millisecond, 100*time.Millisecond), time.Minute)
	b.Run("distlock", func(b *testing.B) {
		run(b, distlockAcquire(newRedisManager(b, newRedisClient(b, addr), longWait)))
	})
	b.Run("distlock-nofence", func(b *testing.B) {
		run(b, distlockAcquire(newRedisManager(b, newRedisClient(b, addr), longWait, redsyncLocker.WithoutFencing())))
	})
	b.Run("redsync-default", func(b *testing.B) {
		run(b, redsyncMutex(newRedsync(newRedisClient(b, addr))))
	})
	b.Run("redsync-1ms", func(b *testing.B) {
		run(b, redsyncMutex(newRedsync(newRedisClient(b, addr)), rs.WithRetryDelay(time.Millisecond), rs.WithTries(math.MaxInt32)))
	})
	b.Run("bsm-redislock-1ms", func(b *testing.B) {
		run(b, bsmRedislock(newRedisClient(b, addr), redislock.LinearBackoff(time.Millisecond)))
	})
}

// BenchmarkRedisInterleaved takes turns between the floor, distlock,
// go-redsync and bsm/redislock on one server every iteration, so that the
// p50 ratios hold even while the machine's load changes. raw-fenced is the
// floor with a fence (the INCR + SET NX script alone, without distlock):
// the bound a fenced acquire cannot beat.
func BenchmarkRedisInterleaved(b *testing.B) {
	addr := redisAddr(b)
	ap, err := newRedisClient(b, addr).AutoPipeline()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ap.Close() })
	Interleaved(b,
		NamedLock{"raw", rawRedis(newRedisClient(b, addr))},
		NamedLock{"distlock", distlockAcquire(newRedisManager(b, newRedisClient(b, addr), distlock.DefaultRetry))},
		NamedLock{"distlock-nofence", distlockAcquire(newRedisManager(b, newRedisClient(b, addr), distlock.DefaultRetry, redsyncLocker.WithoutFencing()))},
		NamedLock{"distlock-autopipeline", distlockAcquire(newRedisManager(b, ap, distlock.DefaultRetry))},
		NamedLock{"raw-fenced", rawFencedRedis(newRedisClient(b, addr))},
		NamedLock{"redsync", redsyncMutex(newRedsync(newRedisClient(b, addr)))},
		NamedLock{"redislock", bsmRedislock(newRedisClient(b, addr), redislock.LinearBackoff(time.Millisecond))},
	)
}

// BenchmarkRedisRedlockInterleaved takes turns between one server and
// Redlock over 3 and 5 masters, for distlock and go-redsync.
func BenchmarkRedisRedlockInterleaved(b *testing.B) {
	srvs := distlocktest.StartRedisN(b, 5, distlocktest.RedisOptions{})
	clients := func(n int) []redis.UniversalClient {
		cs := make([]redis.UniversalClient, n)
		for i := range cs {
			cs[i] = newRedisClient(b, srvs[i].Addr)
		}
		return cs
	}
	redlock := func(n int) LockFunc {
		m, err := redsyncLocker.NewRedlockManager(clients(n))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = m.Close() })
		return distlockAcquire(m)
	}
	rawClients := func(n int) []*redis.Client {
		cs := make([]*redis.Client, n)
		for i := range cs {
			cs[i] = newRedisClient(b, srvs[i].Addr)
		}
		return cs
	}
	failfast := func(n int) LockFunc {
		m, err := redsyncLocker.NewRedlockManager(clients(n), redsyncLocker.WithRedsyncOptions(rs.WithFailFast(true)))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = m.Close() })
		return distlockAcquire(m)
	}
	Interleaved(b,
		NamedLock{"raw-1", rawRedis(rawClients(1)[0])},
		NamedLock{"raw-redlock-3", rawRedlock(rawClients(3))},
		NamedLock{"distlock-1", distlockAcquire(newRedisManager(b, clients(1)[0], distlock.DefaultRetry))},
		NamedLock{"distlock-3", redlock(3)},
		NamedLock{"distlock-5", redlock(5)},
		NamedLock{"redsync-1", redsyncMutex(newRedsync(clients(1)...))},
		NamedLock{"redsync-3", redsyncMutex(newRedsync(clients(3)...))},
		NamedLock{"redsync-5", redsyncMutex(newRedsync(clients(5)...))},
		NamedLock{"redsync-failfast-3", redsyncMutex(newRedsync(clients(3)...), rs.WithFailFast(true))},
		NamedLock{"distlock-failfast-3", failfast(3)},
	)
}

// BenchmarkRedisParallel16Interleaved: 16 goroutines on distinct keys,
// taking turns in 250ms phases between the floor, distlock (also through
// go-redis's own AutoPipeliner), go-redsync and bsm/redislock. b.N is the number of rounds: run with -benchtime 8x.
func BenchmarkRedisParallel16Interleaved(b *testing.B) {
	addr := redisAddr(b)
	ap, err := newRedisClient(b, addr).AutoPipeline()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ap.Close() })
	ParallelInterleaved(b, 16, 250*time.Millisecond,
		NamedLock{"raw", rawRedis(newRedisClient(b, addr))},
		NamedLock{"distlock", distlockAcquire(newRedisManager(b, newRedisClient(b, addr), distlock.DefaultRetry))},
		NamedLock{"distlock-autopipeline", distlockAcquire(newRedisManager(b, ap, distlock.DefaultRetry))},
		NamedLock{"distlock-nofence", distlockAcquire(newRedisManager(b, newRedisClient(b, addr), distlock.DefaultRetry, redsyncLocker.WithoutFencing()))},
		NamedLock{"redsync", redsyncMutex(newRedsync(newRedisClient(b, addr)))},
		NamedLock{"redislock", bsmRedislock(newRedisClient(b, addr), redislock.LinearBackoff(time.Millisecond))},
	)
}

// BenchmarkRedisContended16Interleaved: the contended hand-off of
// BenchmarkRedisContended16, taking turns between distlock, go-redsync
// (1ms retry) and bsm/redislock (1ms retry) in 1s phases, b.N rounds (run
// with -benchtime 5x), so that the owner-change ratios hold while the
// machine's load changes. Each row's figures are summed over its phases.
func BenchmarkRedisContended16Interleaved(b *testing.B) {
	addr := redisAddr(b)
	longWait := distlock.LimitWait(distlock.ExponentialBackoff(2*time.Millisecond, 100*time.Millisecond), time.Minute)
	locks := []NamedLock{
		{"redislock", bsmRedislock(newRedisClient(b, addr), redislock.LinearBackoff(time.Millisecond))},
		{"distlock", distlockAcquire(newRedisManager(b, newRedisClient(b, addr), longWait))},
		{"distlock-nofence", distlockAcquire(newRedisManager(b, newRedisClient(b, addr), longWait, redsyncLocker.WithoutFencing()))},
		{"redsync", redsyncMutex(newRedsync(newRedisClient(b, addr)), rs.WithRetryDelay(time.Millisecond), rs.WithTries(math.MaxInt32))},
	}
	RunContendedInterleaved(b, 16, time.Second, locks...)
}

// redisBenchURL returns a redis:// URL of the server for one top-level
// benchmark (the environment's URL as given, password included).
func redisBenchURL(b *testing.B) string {
	b.Helper()
	for _, env := range []string{"DISTLOCK_BENCH_REDIS_URL", distlocktest.RedisURLEnv} {
		if raw := os.Getenv(env); raw != "" {
			return raw
		}
	}
	return "redis://" + redisAddr(b)
}

func init() {
	RegisterChild("redislock-1ms", func(ctx context.Context, url string) (LockFunc, func(), error) {
		opts, err := redis.ParseURL(url)
		if err != nil {
			return nil, nil, err
		}
		c := redis.NewClient(opts)
		return bsmRedislock(c, redislock.LinearBackoff(time.Millisecond)), func() { _ = c.Close() }, nil
	})
	RegisterChild("redsync-1ms", func(ctx context.Context, url string) (LockFunc, func(), error) {
		opts, err := redis.ParseURL(url)
		if err != nil {
			return nil, nil, err
		}
		c := redis.NewClient(opts)
		return redsyncMutex(newRedsync(c), rs.WithRetryDelay(time.Millisecond), rs.WithTries(math.MaxInt32)), func() { _ = c.Close() }, nil
	})
}

// BenchmarkRedisManagers16Interleaved: 16 goroutines on one key, each
// with a Manager and a go-redis client of its own (as 16 processes would
// be), taking turns in 1s phases with bsm/redislock (1ms retry) and
// go-redsync (1ms retry), each also with a client per goroutine. b.N
// rounds: run with -benchtime 5x. The issue 12 target: distlock ≥ 1.5×
// redislock's owner changes/s, wait p99 ≤ 20 ms.
func BenchmarkRedisManagers16Interleaved(b *testing.B) {
	addr := redisAddr(b)
	RunContendedInterleaved(b, 16, time.Second,
		NamedLock{"redislock", PoolOf(16, func() LockFunc {
			return bsmRedislock(newRedisClient(b, addr), redislock.LinearBackoff(time.Millisecond))
		})},
		NamedLock{"distlock", PoolOf(16, func() LockFunc {
			return distlockAcquire(newRedisManager(b, newRedisClient(b, addr), contendedRetry))
		})},
		NamedLock{"redsync", PoolOf(16, func() LockFunc {
			return redsyncMutex(newRedsync(newRedisClient(b, addr)), rs.WithRetryDelay(time.Millisecond), rs.WithTries(math.MaxInt32))
		})},
	)
}

// BenchmarkRedisProcesses8: 8 OS processes on one key (this test binary
// re-executed, see processes.go), each opening its lock from the server's
// URL, taking turns in 2s phases between bsm/redislock (1ms retry),
// distlock (distlock.Open) and go-redsync (1ms retry). b.N rounds: run
// with -benchtime 3x.
func BenchmarkRedisProcesses8(b *testing.B) {
	url := redisBenchURL(b)
	RunProcessesInterleaved(b, 8, processPhase,
		ProcessLock{Name: "redislock", Kind: "redislock-1ms", URL: url},
		ProcessLock{Name: "distlock", Kind: "distlock", URL: url},
		ProcessLock{Name: "redsync", Kind: "redsync-1ms", URL: url},
	)
}
