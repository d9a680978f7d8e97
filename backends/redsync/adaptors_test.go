package redsync_test

import (
	"context"
	"errors"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/distlock/distlock"
	redsyncLocker "github.com/distlock/distlock/backends/redsync"
	"github.com/distlock/distlock/conformance"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/driver"
	rsredis "github.com/go-redsync/redsync/v4/redis"
	rsredigo "github.com/go-redsync/redsync/v4/redis/redigo"
	"github.com/gomodule/redigo/redis"
)

// redigoPool returns a redigo pool for addr, wrapped as a go-redsync pool,
// and a function that closes it.
func redigoPool(addr string) (rsredis.Pool, func() error) {
	p := &redis.Pool{
		MaxIdle:     16,
		IdleTimeout: time.Minute,
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			return redis.DialContext(ctx, "tcp", addr,
				redis.DialConnectTimeout(2*time.Second),
				redis.DialReadTimeout(5*time.Second),
				redis.DialWriteTimeout(5*time.Second))
		},
	}
	return rsredigo.NewPool(p), p.Close
}

// redigoHarness runs the suite through go-redsync's redigo adaptor: one
// server (fenced, distlock's scripts through redigo) or several (Redlock,
// go-redsync's Mutex through redigo).
type redigoHarness struct {
	masters
	mu     *sync.Mutex
	closes *[]func() error // the pools, closed when the test ends
}

func newRedigoHarness(t *testing.T, n int) redigoHarness {
	h := redigoHarness{masters: startN(t, n), mu: new(sync.Mutex), closes: new([]func() error)}
	t.Cleanup(func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, c := range *h.closes {
			_ = c()
		}
	})
	return h
}

func (h redigoHarness) NewBackend(ctx context.Context) (driver.Backend, error) {
	var pools []rsredis.Pool
	for _, s := range h.masters {
		p, c := redigoPool(s.Addr)
		pools = append(pools, p)
		h.mu.Lock()
		*h.closes = append(*h.closes, c)
		h.mu.Unlock()
	}
	return redsyncLocker.New(pools)
}

// TestConformanceRedigo: the whole suite through go-redsync's redigo
// adaptor, on one node and on a Redlock of three masters.
func TestConformanceRedigo(t *testing.T) {
	t.Run("SingleNode", func(t *testing.T) {
		conformance.Run(t, newRedigoHarness(t, 1))
	})
	t.Run("Redlock3", func(t *testing.T) {
		conformance.Run(t, newRedigoHarness(t, 3), conformance.WithShortTTL(time.Second))
	})
}

// TestFenceKeyIsReserved: no lock can be named like the fence counter, so
// a manager (fenced or not) can never block the counter that every fenced
// grant increments. (Before, an unfenced manager holding "distlock:fence"
// made every fenced Acquire fail with "ERR value is not an integer".)
func TestFenceKeyIsReserved(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	noRetry := redsyncLocker.WithManagerOptions(distlock.WithRetry(distlock.NoRetry()))
	fenced := newManager(t, sharedAddr, noRetry)
	unfenced := newManager(t, sharedAddr, noRetry, redsyncLocker.WithoutFencing())
	srvs := startN(t, 3)
	redlock := newRedlockManager(t, srvs, noRetry)
	for _, key := range []string{redsyncLocker.DefaultFenceKey, redsyncLocker.DefaultFenceKey + ":{7}", redsyncLocker.DefaultFenceKey + "x"} {
		for name, m := range map[string]*distlock.Manager{"fenced": fenced, "unfenced": unfenced, "redlock": redlock} {
			if _, err := m.Acquire(ctx, key, time.Minute); !errors.Is(err, distlock.ErrInvalidArgument) {
				t.Fatalf("%s Acquire(%q): got %v, want ErrInvalidArgument", name, key, err)
			}
			if err := m.Release(ctx, key, "tok"); !errors.Is(err, distlock.ErrInvalidArgument) {
				t.Fatalf("%s Release(%q): got %v, want ErrInvalidArgument", name, key, err)
			}
		}
	}
	if typ := newClient(t, sharedAddr).Type(ctx, redsyncLocker.DefaultFenceKey).Val(); typ != "string" && typ != "none" {
		t.Fatalf("fence counter has type %q", typ)
	}
	key := uniqueKey(t)
	l, err := fenced.Lock(ctx, key, time.Minute)
	if err != nil || l.Fence() == 0 {
		t.Fatalf("fenced Lock after the refusals: fence %v, err %v", l, err)
	}
	_ = l.Release(ctx)
	// Keys that only look alike are ordinary locks.
	for _, key := range []string{"x" + redsyncLocker.DefaultFenceKey, "distlock:fenc"} {
		tok, err := unfenced.Acquire(ctx, key, time.Minute)
		if err != nil {
			t.Fatalf("Acquire(%q): %v", key, err)
		}
		_ = unfenced.Release(ctx, key, tok)
	}
}

// TestDuplicateMastersRefused: a Redlock whose masters are not distinct
// servers cannot keep its promise (one server would count several times
// toward the quorum), so listing one twice is ErrInvalidArgument — by URL,
// by go-redis clients and by go-redsync pools.
func TestDuplicateMastersRefused(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	a := startN(t, 2)
	u := "redlock://" + a[0].Addr + "," + a[1].Addr + "," + a[0].Addr
	if _, err := distlock.Open(ctx, u); !errors.Is(err, distlock.ErrInvalidArgument) {
		t.Fatalf("Open(%s): got %v, want ErrInvalidArgument", u, err)
	}
	q := url.Values{"addr": {a[1].Addr}}
	u = "redlock://" + a[0].Addr + "," + a[1].Addr + "?" + q.Encode()
	if _, err := distlock.Open(ctx, u); !errors.Is(err, distlock.ErrInvalidArgument) {
		t.Fatalf("Open(%s): got %v, want ErrInvalidArgument", u, err)
	}
	if _, err := redsyncLocker.NewRedlock(redlockClients([]*distlocktest.RedisServer{a[0], a[1], a[0]})); !errors.Is(err, distlock.ErrInvalidArgument) {
		t.Fatalf("NewRedlock with a master twice: got %v, want ErrInvalidArgument", err)
	}
	p, closePool := redigoPool(a[0].Addr)
	defer closePool()
	if _, err := redsyncLocker.NewPoolRedlock([]rsredis.Pool{p, p}); !errors.Is(err, distlock.ErrInvalidArgument) {
		t.Fatalf("NewPoolRedlock with a pool twice: got %v, want ErrInvalidArgument", err)
	}
	// Distinct masters are fine.
	m, err := distlock.Open(ctx, "redlock://"+a[0].Addr+","+a[1].Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
}
