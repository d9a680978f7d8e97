package etcd_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/etcd"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/internal/testwait"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func newClient(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// open returns a Manager over a backend opened from srv's URL.
func open(t testing.TB, srv *distlocktest.EtcdServer, opts ...distlock.Option) *distlock.Manager {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := distlock.Open(ctx, srv.URL, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// queueLen counts the entries (holder and waiters) in the queue of key
// (default prefix).
func queueLen(t testing.TB, cli *clientv3.Client, key string) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), etcd.QueuePrefix(etcd.DefaultPrefix, key), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestAcquireRelease(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	a := open(t, srv)
	b := open(t, srv, distlock.WithRetry(distlock.NoRetry()))
	ctx := ctxT(t, 20*time.Second)

	if caps := a.Capabilities(); caps.Name != "etcd" || !caps.Fencing || caps.Granularity != time.Second || caps.MinTTL < time.Second {
		t.Fatalf("capabilities %+v", caps)
	}
	la, err := a.Lock(ctx, "k", 1500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if la.Fence() == 0 {
		t.Fatal("no fence")
	}
	if got := time.Until(la.Expiry()); got < 1500*time.Millisecond {
		t.Fatalf("expiry in %v: TTL not rounded up to whole seconds", got)
	}
	if _, err := b.Acquire(ctx, "k", time.Second); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("acquire held key: %v", err)
	}
	if err := b.Release(ctx, "k", "not-the-token"); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("release with wrong token: %v", err)
	}
	if err := b.Extend(ctx, "k", "not-the-token", time.Second); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("extend with wrong token: %v", err)
	}
	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if la.Err() != nil {
		t.Fatalf("clean release reported %v", la.Err())
	}
	lb, err := b.Lock(ctx, "k", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if lb.Fence() <= la.Fence() {
		t.Fatalf("fence %d after %d", lb.Fence(), la.Fence())
	}
	// Cross-instance: a releases b's lock with b's token.
	if err := a.Release(ctx, "k", lb.Token()); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx, "k", lb.Token()); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("second release: %v", err)
	}
}

func TestReacquireNoGap(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	cli := newClient(t, srv.Endpoints)
	m := distlock.New(etcd.New(cli, etcd.WithMinTTL(time.Second)))
	defer m.Close()
	ctx := ctxT(t, 20*time.Second)

	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wch := cli.Watch(wctx, etcd.QueuePrefix(etcd.DefaultPrefix, "re"), clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-wch // created

	l, err := m.Lock(ctx, "re", time.Second, distlock.WithToken("tok"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		ttl := time.Duration(i+1) * time.Second
		l2, err := m.Lock(ctx, "re", ttl, distlock.WithToken("tok"), distlock.WithLockRetry(distlock.NoRetry()))
		if err != nil {
			t.Fatalf("re-acquire %d: %v", i, err)
		}
		if l2.Fence() != l.Fence() {
			t.Fatalf("re-acquire changed the fence: %d → %d", l.Fence(), l2.Fence())
		}
		// The key now lives on a lease of at least ttl.
		resp, err := cli.Get(ctx, etcd.QueuePrefix(etcd.DefaultPrefix, "re"), clientv3.WithFirstCreate()...)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get: %v %v", resp, err)
		}
		lt, err := cli.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
		if err != nil || lt.GrantedTTL < int64(i+1) {
			t.Fatalf("lease after re-acquire with %v: %+v %v", ttl, lt, err)
		}
	}
	if err := m.Release(ctx, "re", "tok"); err != nil {
		t.Fatal(err)
	}
	// Exactly one deletion: the final release.
	var puts, dels int
	for dels == 0 {
		select {
		case resp := <-wch:
			for _, ev := range resp.Events {
				if ev.Type == mvccpb.DELETE {
					dels++
				} else {
					puts++
				}
			}
		case <-ctx.Done():
			t.Fatal("no delete event")
		}
	}
	// The re-acquire for the grant's own TTL (1s) refreshes its lease (a
	// keep-alive); the longer ones move the key to a longer lease.
	if puts != 3 {
		t.Fatalf("%d puts before the delete, want 3 (acquire + 2 re-acquires with a longer TTL)", puts)
	}
}

func TestExtend(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	cli := newClient(t, srv.Endpoints)
	m := distlock.New(etcd.New(cli, etcd.WithMinTTL(time.Second)))
	defer m.Close()
	ctx := ctxT(t, 20*time.Second)

	tok, err := m.Acquire(ctx, "ext", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Extending to a longer TTL moves the key to a longer lease.
	if err := m.Extend(ctx, "ext", tok, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, etcd.QueuePrefix(etcd.DefaultPrefix, "ext"), clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatal(resp, err)
	}
	lt, err := cli.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil || lt.GrantedTTL < 3 {
		t.Fatalf("lease after extend: %+v %v", lt, err)
	}
	// Revoking the lease deletes the key; extend must not re-create it.
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	if err := m.Extend(ctx, "ext", tok, time.Second); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("extend after revoke: %v", err)
	}
	if resp, _ := cli.Get(ctx, etcd.QueuePrefix(etcd.DefaultPrefix, "ext"), clientv3.WithFirstCreate()...); len(resp.Kvs) != 0 {
		t.Fatal("extend re-created the key")
	}
}

func TestExpiry(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	m := open(t, srv, distlock.WithRetry(distlock.NoRetry()))
	ctx := ctxT(t, 20*time.Second)
	tok, err := m.Acquire(ctx, "exp", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testwait.For(t, 5*time.Second, "the lock to expire", func() bool {
		_, err := m.Acquire(ctx, "exp", time.Second)
		return err == nil
	})
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Fatalf("lock freed after %v, before its TTL", d)
	}
	if err := m.Extend(ctx, "exp", tok, time.Second); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("extend of expired grant: %v", err)
	}
}

func TestBinaryKeysAndPrefix(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	cli := newClient(t, srv.Endpoints)
	m := distlock.New(etcd.New(cli, etcd.WithPrefix("app/\x00locks/"), etcd.WithMinTTL(time.Second)), distlock.WithRetry(distlock.NoRetry()))
	defer m.Close()
	ctx := ctxT(t, 20*time.Second)
	keys := []string{"a\x00b", "a\x00c", "\xff\xfe", "a", "a\x00"}
	for _, k := range keys {
		if _, err := m.Acquire(ctx, k, 5*time.Second); err != nil {
			t.Fatalf("acquire %q: %v", k, err)
		}
	}
	resp, err := cli.Get(ctx, "app/\x00locks/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != len(keys) {
		t.Fatalf("%d keys under the prefix, want %d", len(resp.Kvs), len(keys))
	}
	for _, k := range keys {
		if _, err := m.Acquire(ctx, k, time.Second); !errors.Is(err, distlock.ErrNotAcquired) {
			t.Fatalf("second acquire %q: %v", k, err)
		}
	}
}

func TestWaitWakesOnRelease(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	a := open(t, srv)
	// A slow poll: only the watch can wake the waiter quickly.
	b := open(t, srv, distlock.WithRetry(distlock.LinearBackoff(5*time.Second)))
	ctx := ctxT(t, 20*time.Second)
	tok, err := a.Acquire(ctx, "w", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan time.Time, 1)
	go func() {
		if _, err := b.Acquire(ctx, "w", 10*time.Second); err != nil {
			t.Error(err)
		}
		got <- time.Now()
	}()
	// Waiting, it has joined the key's line.
	admin := newClient(t, srv.Endpoints)
	testwait.For(t, 10*time.Second, "the waiter to queue", func() bool { return queueLen(t, admin, "w") == 2 })
	released := time.Now()
	if err := a.Release(ctx, "w", tok); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-got:
		if d := at.Sub(released); d > time.Second {
			t.Fatalf("waiter woke %v after the release", d)
		} else {
			t.Logf("waiter acquired %v after the release", d)
		}
	case <-ctx.Done():
		t.Fatal("waiter never acquired")
	}
}

func TestContendedNoHerd(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	m := open(t, srv)
	ctx := ctxT(t, 30*time.Second)
	const n, rounds = 8, 5
	var mu sync.Mutex
	holders := 0
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				tok, err := m.Acquire(ctx, "hot", 5*time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				holders++
				if holders != 1 {
					t.Error("two holders at once")
				}
				mu.Unlock()
				mu.Lock()
				holders--
				mu.Unlock()
				if err := m.Release(ctx, "hot", tok); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestLossAtRenewal: a held Lock keeps no watch; its loss (the entry
// deleted by hand, the lease revoked) is noticed at its next renewal, a
// third of the TTL later, and a release by its holder is never a loss.
func TestLossAtRenewal(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	cli := newClient(t, srv.Endpoints)
	m := open(t, srv)
	ctx := ctxT(t, 40*time.Second)
	k := etcd.QueuePrefix(etcd.DefaultPrefix, "loss")
	const ttl = 3 * time.Second
	lostWithin := func(l *distlock.Lock, what string) {
		t.Helper()
		select {
		case <-l.Done():
			if !errors.Is(l.Err(), distlock.ErrLockLost) {
				t.Fatalf("%s: Err() = %v", what, l.Err())
			}
		case <-time.After(ttl + 2*time.Second):
			t.Fatalf("%s not reported within the TTL", what)
		}
	}

	// Deleted by hand.
	l, err := m.Lock(ctx, "loss", ttl, distlock.WithAutoRenew())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, k, clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	lostWithin(l, "deletion")

	// Lease revoked.
	l, err = m.Lock(ctx, "loss", ttl, distlock.WithAutoRenew())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, k, clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatal(resp, err)
	}
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	lostWithin(l, "revocation")

	// Released by its holder, many times: never reported as lost; and a
	// re-acquire with the same token is not a loss either.
	for i := range 20 {
		l, err := m.Lock(ctx, "loss", 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Acquire(ctx, "loss", 2*time.Second, l.Token()); err != nil {
			t.Fatal(err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if l.Err() != nil {
			t.Fatalf("round %d: clean release reported %v", i, l.Err())
		}
	}

	// Expired (no renewal): the handle's own timer.
	l, err = m.Lock(ctx, "loss", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("expiry not reported")
	}
}

func TestDoAutoRenew(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	m := open(t, srv, distlock.WithRenewFraction(0.3))
	other := open(t, srv, distlock.WithRetry(distlock.NoRetry()))
	ctx := ctxT(t, 20*time.Second)
	err := m.Do(ctx, "do", time.Second, func(ctx context.Context) error {
		// Outlive the TTL twice over; the lock must stay held.
		deadline := time.Now().Add(2500 * time.Millisecond)
		for time.Now().Before(deadline) {
			if _, err := other.Acquire(ctx, "do", time.Second); !errors.Is(err, distlock.ErrNotAcquired) {
				return errors.Join(errors.New("lock not held during Do"), err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpenErrors(t *testing.T) {
	bad := []string{
		"etcd://",
		"etcd://h1:2379,,h2:2379",
		"etcd://h1:notaport",
		"etcd://h1:2379/path",
		"etcd://h1:2379?unknown=1",
		"etcd://h1:2379?dial_timeout=soon",
		"etcd://h1:2379?ca=/x.pem",
		"etcd://user@h1:2379",
		"etcds://h1:2379?cert=/only-cert.pem",
	}
	for _, raw := range bad {
		ctx := ctxT(t, 5*time.Second)
		_, err := distlock.Open(ctx, raw)
		if !errors.Is(err, distlock.ErrInvalidArgument) {
			t.Errorf("Open(%q) = %v, want ErrInvalidArgument", raw, err)
		}
	}
}

func TestOpenUnreachable(t *testing.T) {
	port, err := distlocktest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, err = distlock.Open(ctx, "etcd://u:s3cret-pw@127.0.0.1:"+itoa(port))
	took := time.Since(start)
	if !errors.Is(err, distlock.ErrUnavailable) {
		t.Fatalf("Open of a closed port: %v", err)
	}
	if took > 1500*time.Millisecond {
		t.Fatalf("Open took %v past a 1s deadline", took)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("password in error: %v", err)
	}
	t.Logf("%v (after %v)", err, took)
}

func TestWrongCredentials(t *testing.T) {
	srv := distlocktest.EtcdCluster(t, 1)
	cli := newClient(t, srv.Endpoints)
	ctx := ctxT(t, 20*time.Second)
	if _, err := cli.UserAdd(ctx, "root", "root-pw"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(srv.URL, "etcd://")

	octx, cancel := context.WithTimeout(ctx, 2*time.Second)
	start := time.Now()
	_, err := distlock.Open(octx, "etcd://root:wr0ng-pw@"+host)
	cancel()
	if err == nil {
		t.Fatal("Open with a wrong password succeeded")
	}
	if strings.Contains(err.Error(), "wr0ng-pw") {
		t.Fatalf("password in error: %v", err)
	}
	if time.Since(start) > 2500*time.Millisecond {
		t.Fatalf("took %v", time.Since(start))
	}
	t.Logf("wrong password: %v", err)

	octx, cancel = context.WithTimeout(ctx, 2*time.Second)
	_, err = distlock.Open(octx, "etcd://"+host)
	cancel()
	if err == nil {
		t.Fatal("Open without credentials on an auth-enabled server succeeded")
	}
	t.Logf("no credentials: %v", err)

	octx, cancel = context.WithTimeout(ctx, 5*time.Second)
	m, err := distlock.Open(octx, "etcd://root:root-pw@"+host)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tok, err := m.Acquire(ctx, "auth", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, "auth", tok); err != nil {
		t.Fatal(err)
	}
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
