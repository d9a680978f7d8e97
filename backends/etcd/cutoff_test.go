package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/etcd"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/internal/testwait"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// roundTrip measures how long an uncontended acquire and release take
// through m (the median of a few), so that deadlines can be chosen to end
// while requests are in flight, on a fast machine or a loaded one.
func roundTrip(t testing.TB, m *distlock.Manager) time.Duration {
	t.Helper()
	var ds []time.Duration
	for i := range 9 {
		key := fmt.Sprintf("round-trip-%d", i)
		start := time.Now()
		tok, err := m.Acquire(context.Background(), key, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, time.Since(start))
		if err := m.Release(context.Background(), key, tok); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// cutOff is a deadline that often ends while a request is in flight: from
// a tenth of a round trip to twice one.
func cutOff(rt time.Duration) time.Duration {
	return rt/10 + time.Duration(rand.Int64N(int64(2*rt)))
}

// freeFor reports whether a try-once Acquire through probe gets key, and
// releases it if so.
func freeFor(t *testing.T, probe *distlock.Manager, key string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tok, err := probe.Acquire(ctx, key, 5*time.Second)
	if err != nil {
		if !errors.Is(err, distlock.ErrNotAcquired) {
			t.Fatalf("probe: %v", err)
		}
		return false
	}
	if err := probe.Release(ctx, key, tok); err != nil {
		t.Fatalf("probe release: %v", err)
	}
	return true
}

// Waiters of several managers (each on its own client, as processes are)
// that give up after a few milliseconds — cut off while they join the
// key's queue, while they wait in it, or while they read it — leave
// nothing in the queue: once the holder releases, a try-once Acquire of
// another manager gets the free key at once. (With the line of waiters
// this backend had before the queue, it used to be refused until the
// waiters' managers were closed.)
func TestGiveUpLeavesLineEmpty(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	admin := newClient(t, srv.Endpoints)
	holder := open(t, srv)
	probe := open(t, srv, distlock.WithRetry(distlock.NoRetry()))
	const managers, goroutines, rounds = 3, 4, 20
	var ms []*distlock.Manager
	for range managers {
		ms = append(ms, open(t, srv, distlock.WithRetry(distlock.LinearBackoff(time.Millisecond))))
	}
	rt := roundTrip(t, ms[0])
	ctx := ctxT(t, 60*time.Second)
	for r := range 5 {
		key := fmt.Sprintf("give-up-%d", r)
		tok, err := holder.Acquire(ctx, key, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for _, m := range ms {
			for range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range rounds {
						actx, cancel := context.WithTimeout(ctx, cutOff(4*rt))
						l, err := m.Lock(actx, key, 30*time.Second)
						cancel()
						if err == nil {
							t.Errorf("Lock got a key that is held")
							_ = l.Release(ctx)
						}
					}
				}()
			}
		}
		wg.Wait()
		if err := holder.Release(ctx, key, tok); err != nil {
			t.Fatal(err)
		}
		// Nobody waits any more: the key is free for a newcomer that tries
		// once, within the lingering of an idle entry (lineLinger) and a
		// few round trips, never after the waiters' managers are closed.
		testwait.For(t, 3*time.Second, "a try-once Acquire to get the free key "+key,
			func() bool { return freeFor(t, probe, key) })
		testwait.For(t, 3*time.Second, "the queue of "+key+" to empty",
			func() bool { return queueLen(t, admin, key) == 0 })
		// And for one of the managers whose waiters gave up.
		l, err := ms[0].Lock(ctx, key, 30*time.Second, distlock.WithLockRetry(distlock.NoRetry()))
		if err != nil {
			t.Fatalf("try-once Lock of the free key %s by a manager whose waiters gave up: %v", key, err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// An Acquire cut off by its deadline while its transaction is in flight
// leaves no grant behind, even with nobody to release it: the backend
// itself takes back a grant that lands for a call that has ended, whether
// the transaction landed before or after the call gave up. Without that
// the key stayed held by a token nobody had, for the whole TTL.
func TestCutOffAcquireLeavesNoGrant(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	// An empty prefix works as well as the default one.
	for _, prefix := range []string{etcd.DefaultPrefix, ""} {
		t.Run(fmt.Sprintf("prefix=%q", prefix), func(t *testing.T) {
			cutOffAcquires(t, srv, prefix)
		})
	}
}

func cutOffAcquires(t *testing.T, srv *distlocktest.EtcdServer, prefix string) {
	cli := newClient(t, srv.Endpoints)
	b := etcd.New(cli, etcd.WithPrefix(prefix))
	t.Cleanup(func() { b.Close() })
	probe := distlock.New(etcd.New(newClient(t, srv.Endpoints), etcd.WithPrefix(prefix)), distlock.WithRetry(distlock.NoRetry()))
	t.Cleanup(func() { probe.Close() })
	rt := roundTrip(t, probe)
	ctx := ctxT(t, 60*time.Second)
	// Warm up: the connection and a spare lease.
	if _, err := b.Acquire(ctx, "warm", "w", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx, "warm", "w"); err != nil {
		t.Fatal(err)
	}
	const n, par = 40, 4
	var (
		mu  sync.Mutex
		cut []string
		wg  sync.WaitGroup
	)
	for p := range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n / par {
				key := fmt.Sprintf("cut-%d-%d", p, i)
				tok := distlock.NewToken()
				actx, cancel := context.WithTimeout(ctx, cutOff(rt))
				_, err := b.Acquire(actx, key, tok, 30*time.Second)
				cancel()
				if err == nil {
					if err := b.Release(ctx, key, tok); err != nil {
						t.Error(err)
					}
					continue
				}
				mu.Lock()
				cut = append(cut, key)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d of %d acquires cut off (round trip %v)", len(cut), n, rt)
	for _, key := range cut {
		testwait.For(t, 5*time.Second, "the key of a cut-off Acquire to be free: "+key,
			func() bool { return freeFor(t, probe, key) })
	}
	// The cut-off grants' leases do not carry lock keys any more.
	for _, key := range cut {
		resp, err := cli.Get(ctx, etcd.QueuePrefix(prefix, key), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if resp.Count != 0 {
			t.Fatalf("%d entries left in the queue of the cut-off key %s", resp.Count, key)
		}
	}
}

// holdKey marks (in a context) an Acquire whose transaction the test
// client holds back, as a loaded server may: see holdingClient.
type holdKey struct{}

// hold is one held-back transaction: the first that match accepts (any,
// if nil). held is closed once it is held, the test closes gate to let it
// reach the server, and done reports its outcome.
type hold struct {
	match      func(*pb.TxnRequest) bool
	taken      atomic.Bool
	held, gate chan struct{}
	done       chan error
}

func newHold(match func(*pb.TxnRequest) bool) *hold {
	return &hold{match: match, held: make(chan struct{}), gate: make(chan struct{}), done: make(chan error, 1)}
}

// holdingClient returns a client whose KV Txn requests made with a
// context carrying a *hold (holdKey) reach the server only when the
// test opens the hold's gate, although their caller gives up when its
// context ends: the order a busy server may apply a request that was
// cancelled client-side in, after requests sent later.
func holdingClient(t *testing.T, endpoints []string) *clientv3.Client {
	t.Helper()
	icpt := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		h, ok := ctx.Value(holdKey{}).(*hold)
		if !ok || method != "/etcdserverpb.KV/Txn" || (h.match != nil && !h.match(req.(*pb.TxnRequest))) || !h.taken.CompareAndSwap(false, true) {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		go func() {
			<-h.gate
			h.done <- invoker(context.WithoutCancel(ctx), method, req, new(pb.TxnResponse), cc, opts...)
		}()
		close(h.held)
		<-ctx.Done()
		return ctx.Err()
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(icpt)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// The failure the conformance case Context/CutOffLeavesNothing saw once
// under load, made certain: an Acquire is cut off while its transaction
// is in flight, the portable layer releases the token it generated (as
// Manager.dropAbandoned does) and finds nothing, and only then does the
// server apply the transaction. The key must not stay held by a token
// nobody has: the backend stops or undoes the transaction itself.
func TestCutOffGrantLandsAfterRelease(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	b := etcd.New(holdingClient(t, srv.Endpoints))
	t.Cleanup(func() { b.Close() })
	probe := open(t, srv, distlock.WithRetry(distlock.NoRetry()))
	ctx := ctxT(t, 60*time.Second)
	for i := range 5 {
		key := fmt.Sprintf("late-%d", i)
		tok := distlock.NewToken()
		h := newHold(nil)
		actx, cancel := context.WithCancel(context.WithValue(ctx, holdKey{}, h))
		go func() {
			<-h.held // in flight: cut the call off
			cancel()
		}()
		if _, err := b.Acquire(actx, key, tok, 30*time.Second); err == nil {
			t.Fatal("Acquire succeeded although its transaction was held back")
		}
		cancel()
		if err := b.Release(ctx, key, tok); !errors.Is(err, distlock.ErrNotHeld) {
			t.Fatalf("release of the cut-off token: %v, want ErrNotHeld", err)
		}
		close(h.gate) // the server applies the transaction now
		if err := <-h.done; err != nil {
			t.Logf("held transaction: %v", err)
		}
		testwait.For(t, 5*time.Second, "the key of an Acquire that landed after its release to be free: "+key,
			func() bool { return freeFor(t, probe, key) })
	}
}

// A waiter cut off while its request to join the key's queue is in
// flight, the put reaching the server only after the call has ended: no
// entry stays in the queue (the waiter revoked the entry's lease, so the
// late put fails), and once the holder releases, a try-once Acquire gets
// the free key at once.
func TestCutOffJoinLeavesLineEmpty(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	admin := newClient(t, srv.Endpoints)
	holder := open(t, srv)
	probe := open(t, srv, distlock.WithRetry(distlock.NoRetry()))
	waiter := etcd.New(holdingClient(t, srv.Endpoints), etcd.WithRequestTimeout(500*time.Millisecond))
	t.Cleanup(func() { waiter.Close() })
	ctx := ctxT(t, 60*time.Second)
	isJoin := func(r *pb.TxnRequest) bool {
		p := r.GetSuccess()
		return len(r.GetCompare()) == 0 && len(p) == 3 && p[1].GetRequestPut() != nil
	}
	for i := range 3 {
		key := fmt.Sprintf("join-late-%d", i)
		tok, err := holder.Acquire(ctx, key, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		h := newHold(isJoin)
		wctx, cancel := context.WithCancel(context.WithValue(ctx, holdKey{}, h))
		go func() {
			<-h.held // joining: cut the waiter off
			cancel()
		}()
		if _, err := waiter.AcquireWait(wctx, key, distlock.NewToken(), 30*time.Second); !errors.Is(err, context.Canceled) {
			t.Fatalf("waiter: %v, want context.Canceled", err)
		}
		cancel()
		close(h.gate) // the join reaches the server now
		if err := <-h.done; err != nil {
			t.Logf("held join: %v", err)
		}
		if err := holder.Release(ctx, key, tok); err != nil {
			t.Fatal(err)
		}
		testwait.For(t, 5*time.Second, "a try-once Acquire to get the free key "+key,
			func() bool { return freeFor(t, probe, key) })
		testwait.For(t, 5*time.Second, "the queue of "+key+" to empty",
			func() bool { return queueLen(t, admin, key) == 0 })
	}
}
