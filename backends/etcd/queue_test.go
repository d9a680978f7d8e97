package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distlock/distlock/backends/etcd"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/driver"
	"github.com/distlock/distlock/internal/testwait"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// countingBackend returns a backend on a client of its own whose KV Txn
// requests are counted.
func countingBackend(t *testing.T, endpoints []string) (*etcd.Backend, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	icpt := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == "/etcdserverpb.KV/Txn" {
			n.Add(1)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(icpt)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	b := etcd.New(cli, etcd.WithMinTTL(time.Second))
	t.Cleanup(func() { b.Close() })
	return b, &n
}

func waiters(t *testing.T, b *etcd.Backend, key string) int {
	t.Helper()
	info, err := b.Inspect(ctxT(t, 5*time.Second), key)
	if err != nil {
		t.Fatal(err)
	}
	return info.Waiters
}

// Locks whose keys are prefixes of one another, or differ only in a NUL or
// a '/', are distinct: their queues do not overlap.
func TestQueueKeysDistinct(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	b, _ := countingBackend(t, srv.Endpoints)
	ctx := ctxT(t, 20*time.Second)
	keys := []string{"a", "a/x", "a\x00", "a/", "a/x/", "1:a", "a/1:a/", "\x00", "/"}
	for i, k := range keys {
		if _, err := b.Acquire(ctx, k, fmt.Sprint("tok-", i), 5*time.Second); err != nil {
			t.Fatalf("acquire %q: %v", k, err)
		}
	}
	for i, k := range keys {
		info, err := b.Inspect(ctx, k)
		if err != nil || !info.Held || info.Holder != fmt.Sprint("tok-", i) || info.Waiters != 0 {
			t.Fatalf("inspect %q: %+v %v", k, info, err)
		}
		if n := queueLen(t, b.Client(), k); n != 1 {
			t.Fatalf("%d entries in the queue of %q, want 1", n, k)
		}
	}
	for i, k := range keys {
		if err := b.Release(ctx, k, fmt.Sprint("tok-", i)); err != nil {
			t.Fatalf("release %q: %v", k, err)
		}
	}
}

// Waiters of several backends are served in the order they queued, and a
// release wakes only the next one: each waiter sends two transactions in
// all (its put, and one read when the entry before it goes), however
// many wait behind the holder.
func TestAcquireWaitOrderAndOneWake(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	holder, _ := countingBackend(t, srv.Endpoints)
	ctx := ctxT(t, 30*time.Second)
	const key, n = "fifo", 5
	g0, err := holder.Acquire(ctx, key, "holder", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		i int
		g driver.Grant
	}
	got := make(chan result, n)
	var counts []*atomic.Int64
	var bs []*etcd.Backend
	for i := range n {
		b, c := countingBackend(t, srv.Endpoints)
		bs, counts = append(bs, b), append(counts, c)
		go func() {
			g, err := b.AcquireWait(ctx, key, fmt.Sprint("w-", i), 5*time.Second)
			if err != nil {
				t.Error(err)
			}
			got <- result{i, g}
		}()
		testwait.For(t, 10*time.Second, fmt.Sprintf("waiter %d to queue", i), func() bool { return waiters(t, holder, key) == i+1 })
	}
	prev, from := g0.Fence, holder
	tok := "holder"
	for i := range n {
		if err := from.Release(ctx, key, tok); err != nil {
			t.Fatal(err)
		}
		r := <-got
		if r.i != i {
			t.Fatalf("waiter %d got the key, want %d", r.i, i)
		}
		if r.g.Fence <= prev {
			t.Fatalf("fence %d after %d", r.g.Fence, prev)
		}
		prev, from, tok = r.g.Fence, bs[i], fmt.Sprint("w-", i)
	}
	if err := from.Release(ctx, key, tok); err != nil {
		t.Fatal(err)
	}
	for i, c := range counts {
		// Each waiter's last transaction is its own release (one).
		if got := c.Load(); got != 3 {
			t.Errorf("waiter %d sent %d transactions, want 3 (put, read, release)", i, got)
		}
	}
}

// Transfers while another backend's waiter queues give fences above the
// waiter's entry's create revision; the waiter still gets a greater one,
// whether the lock is released to it or its holder's lease expires.
func TestFenceTransferThenQueued(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	a, _ := countingBackend(t, srv.Endpoints)
	w, _ := countingBackend(t, srv.Endpoints)
	ctx := ctxT(t, 30*time.Second)
	for _, expire := range []bool{false, true} {
		key := fmt.Sprint("fence-", expire)
		g, err := a.Acquire(ctx, key, "t0", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan driver.Grant, 1)
		go func() {
			g, err := w.AcquireWait(ctx, key, "waiter", 5*time.Second)
			if err != nil {
				t.Error(err)
			}
			got <- g
		}()
		testwait.For(t, 10*time.Second, "the waiter to queue", func() bool { return waiters(t, a, key) == 1 })
		last := g.Fence
		for i := range 5 {
			g, err := a.Transfer(ctx, key, fmt.Sprint("t", i), fmt.Sprint("t", i+1), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if g.Fence <= last {
				t.Fatalf("transfer fence %d after %d", g.Fence, last)
			}
			last = g.Fence
		}
		if !expire {
			if err := a.Release(ctx, key, "t5"); err != nil {
				t.Fatal(err)
			}
		} // else the 1s lease of t5 runs out
		gw := <-got
		if gw.Fence <= last {
			t.Fatalf("expire=%v: the waiter's fence %d is not above the last transfer's %d", expire, gw.Fence, last)
		}
		info, err := w.Inspect(ctx, key)
		if err != nil || info.Fence != gw.Fence || info.Holder != "waiter" {
			t.Fatalf("inspect: %+v %v, want fence %d", info, err, gw.Fence)
		}
		if err := w.Release(ctx, key, "waiter"); err != nil {
			t.Fatal(err)
		}
	}
}

// A waiter that leaves (ctx cancelled while it waits, or cut off within
// microseconds) blocks nobody: the waiter behind it gets the key as soon
// as the holder releases, and then a try-once Acquire of the free key
// succeeds at once.
func TestWaiterLeavesBlocksNobody(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	a, _ := countingBackend(t, srv.Endpoints)
	w1, _ := countingBackend(t, srv.Endpoints)
	w2, _ := countingBackend(t, srv.Endpoints)
	ctx := ctxT(t, 30*time.Second)
	const key = "leave"
	if _, err := a.Acquire(ctx, key, "holder", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// Cut off within microseconds, many times: nothing stays queued.
	for i := range 50 {
		cctx, cancel := context.WithTimeout(ctx, time.Duration(i%10)*50*time.Microsecond)
		_, err := w1.AcquireWait(cctx, key, "cut", 5*time.Second)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("cut-off AcquireWait: %v", err)
		}
		if n := waiters(t, a, key); n != 0 {
			t.Fatalf("%d waiters left after a cut-off AcquireWait returned", n)
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	left := make(chan error, 1)
	go func() {
		_, err := w1.AcquireWait(wctx, key, "leaver", 5*time.Second)
		left <- err
	}()
	testwait.For(t, 10*time.Second, "the first waiter to queue", func() bool { return waiters(t, a, key) == 1 })
	got := make(chan error, 1)
	go func() {
		_, err := w2.AcquireWait(ctx, key, "next", 5*time.Second)
		got <- err
	}()
	testwait.For(t, 10*time.Second, "the second waiter to queue", func() bool { return waiters(t, a, key) == 2 })
	cancel()
	if err := <-left; !errors.Is(err, context.Canceled) {
		t.Fatalf("leaver: %v", err)
	}
	if n := waiters(t, a, key); n != 1 {
		t.Fatalf("%d waiters after one left, want 1", n)
	}
	if err := a.Release(ctx, key, "holder"); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if err := w2.Release(ctx, key, "next"); err != nil {
		t.Fatal(err)
	}
	if _, err := w1.Acquire(ctx, key, "probe", 5*time.Second); err != nil {
		t.Fatalf("try-once Acquire of the free key: %v", err)
	}
	if err := w1.Release(ctx, key, "probe"); err != nil {
		t.Fatal(err)
	}
}
