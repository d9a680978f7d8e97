package redsync_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/distlock/distlock"
	redsyncLocker "github.com/distlock/distlock/backends/redsync"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/internal/testwait"
	"github.com/redis/go-redis/v9"
)

func startN(t *testing.T, n int) []*distlocktest.RedisServer {
	t.Helper()
	return distlocktest.StartRedisN(t, n, distlocktest.RedisOptions{})
}

func redlockClients(srvs []*distlocktest.RedisServer) []redis.UniversalClient {
	cs := make([]redis.UniversalClient, len(srvs))
	for i, s := range srvs {
		cs[i] = redis.NewClient(&redis.Options{Addr: s.Addr, ContextTimeoutEnabled: true, MaxRetries: -1})
	}
	return cs
}

func newRedlockManager(t *testing.T, srvs []*distlocktest.RedisServer, opts ...redsyncLocker.Option) *distlock.Manager {
	t.Helper()
	m, err := redsyncLocker.NewRedlockManager(redlockClients(srvs), append(opts, redsyncLocker.WithCloseClient())...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// eventually retries f until it succeeds or d passes.
func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRedlockFiveMastersFaults(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	srvs := startN(t, 5)
	m := newRedlockManager(t, srvs)
	key := uniqueKey(t)

	// 2 of 5 killed: acquire and release still work.
	l, err := m.Lock(ctx, key, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = srvs[0].Kill()
	_ = srvs[1].Kill()
	if err := l.Extend(ctx, 5*time.Second); err != nil {
		t.Fatalf("extend with 2 of 5 down: %v", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("release with 2 of 5 down: %v", err)
	}
	tok, err := m.Acquire(ctx, key, 5*time.Second)
	if err != nil {
		t.Fatalf("acquire with 2 of 5 down: %v", err)
	}
	if err := m.Release(ctx, key, tok); err != nil {
		t.Fatalf("release with 2 of 5 down: %v", err)
	}

	// 3 of 5 killed: ErrUnavailable within the caller's deadline.
	held, err := m.Acquire(ctx, key+":held", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = srvs[2].Kill()
	dctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	t0 := time.Now()
	_, err = m.Acquire(dctx, key, 5*time.Second)
	took := time.Since(t0)
	cancel()
	if !errors.Is(err, distlock.ErrUnavailable) {
		t.Fatalf("acquire with 3 of 5 down: got %v, want ErrUnavailable", err)
	}
	if took > 2500*time.Millisecond {
		t.Fatalf("acquire with 3 of 5 down took %v with a 1.5s deadline", took)
	}
	if err := m.Release(ctx, key+":held", held); !errors.Is(err, distlock.ErrUnavailable) {
		t.Fatalf("release with 3 of 5 down: got %v, want ErrUnavailable", err)
	}
	if err := m.Extend(ctx, key+":held", held, time.Second); !errors.Is(err, distlock.ErrUnavailable) {
		t.Fatalf("extend with 3 of 5 down: got %v, want ErrUnavailable", err)
	}

	// Restarted (empty, persistence off): it works again.
	for _, s := range srvs[:3] {
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "acquire after restart", func() error {
		tok, err := m.Acquire(ctx, key, 5*time.Second)
		if err != nil {
			return err
		}
		return m.Release(ctx, key, tok)
	})
}

func TestSingleNodeKilledWhileHeld(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	srv := distlocktest.StartRedis(t, distlocktest.RedisOptions{})
	m := newManager(t, srv.Addr)
	key := uniqueKey(t)
	l, err := m.Lock(ctx, key, 1500*time.Millisecond, distlock.WithAutoRenew())
	if err != nil {
		t.Fatal(err)
	}
	tok, err := m.Acquire(ctx, key+":plain", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, key+":plain", tok); !errors.Is(err, distlock.ErrUnavailable) {
		t.Fatalf("release with the server down: got %v, want ErrUnavailable", err)
	}
	if err := m.Extend(ctx, key+":plain", tok, time.Second); !errors.Is(err, distlock.ErrUnavailable) {
		t.Fatalf("extend with the server down: got %v, want ErrUnavailable", err)
	}
	if err := l.Extend(ctx, time.Second); !errors.Is(err, distlock.ErrUnavailable) {
		t.Fatalf("Lock.Extend with the server down: got %v, want ErrUnavailable", err)
	}
	select {
	case <-l.Done():
		if !errors.Is(l.Err(), distlock.ErrLockLost) {
			t.Fatalf("lock ended with %v, want ErrLockLost", l.Err())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the lock-lost signal did not fire")
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "acquire after restart", func() error {
		_, err := m.Acquire(ctx, key, time.Second)
		return err
	})
}

func TestOpenURLs(t *testing.T) {
	ctx := ctxTimeout(t, 30*time.Second)
	srv := distlocktest.StartRedis(t, distlocktest.RedisOptions{Password: "s3cret-pw"})

	t.Run("redis", func(t *testing.T) {
		m, err := distlock.Open(ctx, "redis://:s3cret-pw@"+srv.Addr+"/2")
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		tok, err := m.Acquire(ctx, uniqueKey(t), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if tok == "" {
			t.Fatal("empty token")
		}
		if !m.Capabilities().Fencing {
			t.Fatal("redis:// should fence")
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		_, err := distlock.Open(ctx, "redis://:wrong-pw-XYZ@"+srv.Addr)
		if err == nil {
			t.Fatal("no error")
		}
		if msg := err.Error(); !contains(msg, "authentication failed") || contains(msg, "wrong-pw-XYZ") {
			t.Fatalf("unclear or leaky error: %v", err)
		}
	})
	t.Run("no password", func(t *testing.T) {
		_, err := distlock.Open(ctx, "redis://"+srv.Addr)
		if err == nil || !contains(err.Error(), "authentication") {
			t.Fatalf("got %v, want an authentication error", err)
		}
	})
	t.Run("bad URL", func(t *testing.T) {
		for _, u := range []string{"redis://:pw-SECRET@" + srv.Addr + "/notadb", "redis://:pw-SECRET@" + srv.Addr + "?bogus_option=1", "redlock://:pw-SECRET@/0"} {
			_, err := distlock.Open(ctx, u)
			if !errors.Is(err, distlock.ErrInvalidArgument) {
				t.Errorf("%s: got %v, want ErrInvalidArgument", u, err)
			}
			if err != nil && contains(err.Error(), "pw-SECRET") {
				t.Errorf("password in error: %v", err)
			}
		}
	})
	t.Run("not redis", func(t *testing.T) {
		addr := notRedis(t)
		octx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		t0 := time.Now()
		_, err := distlock.Open(octx, "redis://:pw-SECRET@"+addr)
		if !errors.Is(err, distlock.ErrUnavailable) {
			t.Fatalf("got %v, want ErrUnavailable", err)
		}
		if contains(err.Error(), "pw-SECRET") {
			t.Fatalf("password in error: %v", err)
		}
		if d := time.Since(t0); d > 4*time.Second {
			t.Fatalf("took %v", d)
		}
		t.Log(err)
	})
	t.Run("nothing listening", func(t *testing.T) {
		port, _ := distlocktest.FreePort()
		_, err := distlock.Open(ctx, "redis://127.0.0.1:"+itoa(port))
		if !errors.Is(err, distlock.ErrUnavailable) {
			t.Fatalf("got %v, want ErrUnavailable", err)
		}
	})
	t.Run("redlock", func(t *testing.T) {
		srvs := startN(t, 3)
		u := "redlock://" + srvs[0].Addr + "," + srvs[1].Addr + "?addr=" + srvs[2].Addr
		m, err := distlock.Open(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		key := uniqueKey(t)
		tok, err := m.Acquire(ctx, key, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range srvs {
			c := redis.NewClient(&redis.Options{Addr: s.Addr})
			n := c.Exists(ctx, key).Val()
			c.Close()
			if n != 1 {
				t.Fatalf("lock missing on %s", s.Addr)
			}
		}
		if err := m.Release(ctx, key, tok); err != nil {
			t.Fatal(err)
		}
		if m.Capabilities().Fencing {
			t.Fatal("redlock must not claim fencing")
		}
	})
}

// TestRedlockBackToBackKeepsEveryCopy: back-to-back grants and releases of
// one key leave every grant on every master (go-redsync waits for every
// master unless redsync.WithFailFast is given), so the lock is never one
// failure away from losing its quorum.
func TestRedlockBackToBackKeepsEveryCopy(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	srvs := startN(t, 3)
	rl, err := redsyncLocker.NewRedlock(redlockClients(srvs), redsyncLocker.WithCloseClient())
	if err != nil {
		t.Fatal(err)
	}
	defer rl.Close()
	raws := make([]*redis.Client, len(srvs))
	for i, s := range srvs {
		raws[i] = newClient(t, s.Addr)
	}
	key := uniqueKey(t)
	short := 0
	for i := range 200 {
		tok := "tok-" + itoa(i)
		if _, err := rl.Acquire(ctx, key, tok, 5*time.Second); err != nil {
			t.Fatalf("acquire %d: %v", i, err)
		}
		if i%20 == 19 {
			for j, c := range raws {
				if v := c.Get(ctx, key).Val(); v != tok {
					short++
					t.Logf("round %d: master %d holds %q, not %s", i, j, v, tok)
				}
			}
		}
		if err := rl.Release(ctx, key, tok); err != nil {
			t.Fatalf("release %d: %v", i, err)
		}
	}
	if short > 0 {
		t.Fatalf("%d missing copies in 10 checks", short)
	}
}

// TestSentinelFailover: a Sentinel moves the master to its replica
// (SENTINEL FAILOVER; the old master becomes a read-only replica). The
// backend, over go-redis's failover client, follows: grants land on the
// new master within a deadline, and from then on every one does — none
// sticks to the old master through a connection the backend kept aside.
// The lock held across the failover is released or reported not held,
// nothing else.
func TestSentinelFailover(t *testing.T) {
	s := distlocktest.StartRedisSentinel(t, 1)
	ctx := ctxTimeout(t, 90*time.Second)
	c := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:            s.MasterName,
		SentinelAddrs:         []string{s.Sentinel.Addr},
		ContextTimeoutEnabled: true,
	})
	m := distlock.New(redsyncLocker.NewBackend(c, redsyncLocker.WithCloseClient()), distlock.WithRetry(distlock.NoRetry()))
	defer m.Close()
	key := uniqueKey(t)
	for range 5 {
		tok, err := m.Acquire(ctx, key, 10*time.Second)
		if err != nil {
			t.Fatalf("before the failover: %v", err)
		}
		if err := m.Release(ctx, key, tok); err != nil {
			t.Fatalf("before the failover: %v", err)
		}
	}
	held, err := m.Acquire(ctx, key+":held", time.Minute)
	if err != nil {
		t.Fatal(err)
	}

	sc := redis.NewSentinelClient(&redis.Options{Addr: s.Sentinel.Addr})
	defer sc.Close()
	// The Sentinel promotes a replica only once it has looked at it
	// (NOGOODSLAVE until then).
	testwait.For(t, 30*time.Second, "SENTINEL FAILOVER to be accepted", func() bool {
		return sc.Failover(ctx, s.MasterName).Err() == nil
	})
	replica := s.Replicas[0].Addr
	testwait.For(t, 30*time.Second, "the sentinel to name the replica master", func() bool {
		addr, err := sc.GetMasterAddrByName(ctx, s.MasterName).Result()
		return err == nil && len(addr) == 2 && addr[0]+":"+addr[1] == replica
	})
	// A grant counts once the new master holds it: until go-redis hears
	// of the switch, and until the Sentinel demotes the old master, a
	// grant can still land on the old one (and be lost with it).
	direct := redis.NewClient(&redis.Options{Addr: replica})
	defer direct.Close()
	onNewMaster := func() error {
		tok, err := m.Acquire(ctx, key, 10*time.Second)
		if err != nil {
			return err
		}
		v, err := direct.Get(ctx, key).Result()
		if rerr := m.Release(ctx, key, tok); rerr != nil {
			return rerr
		}
		if !strings.HasSuffix(v, ":"+tok) {
			return fmt.Errorf("the new master holds %q (%v), not the grant of %q", v, err, tok)
		}
		return nil
	}
	testwait.For(t, 30*time.Second, "grants to land on the new master", func() bool { return onNewMaster() == nil })
	for i := range 20 {
		if err := onNewMaster(); err != nil {
			t.Fatalf("cycle %d after the failover: %v", i, err)
		}
	}
	if err := m.Release(ctx, key+":held", held); err != nil && !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("release of the lock held across the failover: %v", err)
	}
}
