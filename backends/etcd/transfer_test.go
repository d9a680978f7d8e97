package etcd_test

import (
	"errors"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/etcd"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/internal/testwait"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// newBackend returns a backend on a client of its own (as a separate
// process would have), closed when the test ends.
func newBackend(t *testing.T, srv *distlocktest.EtcdServer) (*etcd.Backend, *clientv3.Client) {
	t.Helper()
	cli := newClient(t, srv.Endpoints)
	b := etcd.New(cli, etcd.WithMinTTL(time.Second))
	t.Cleanup(func() { b.Close() })
	return b, cli
}

// leaseTTL returns the granted TTL (seconds) of the lease key k is on.
func leaseTTL(t *testing.T, cli *clientv3.Client, k string) int64 {
	t.Helper()
	ctx := ctxT(t, 5*time.Second)
	resp, err := cli.Get(ctx, k, clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get %q: %v %v", k, resp, err)
	}
	lt, err := cli.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil {
		t.Fatal(err)
	}
	return lt.GrantedTTL
}

// TestTransfer: the holder hands the key to another token in one step: the
// new holder has a greater fence and the TTL it asked for, the old token
// holds nothing, and the new grant behaves as any other (extend and
// re-acquire keep its fence, a later grant's fence is greater still).
func TestTransfer(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	b, cli := newBackend(t, srv)
	other, _ := newBackend(t, srv) // cross-instance: knows nothing of the grants
	ctx := ctxT(t, 30*time.Second)
	const key = "transfer"
	k := etcd.QueuePrefix(etcd.DefaultPrefix, key)

	g1, err := b.Acquire(ctx, key, "from", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Same TTL: the key keeps its lease.
	g2, err := b.Transfer(ctx, key, "from", "to", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if g2.Fence <= g1.Fence {
		t.Fatalf("transfer fence %d, not above the first grant's %d", g2.Fence, g1.Fence)
	}
	if g2.TTL < 2*time.Second {
		t.Fatalf("transfer TTL %v, asked for 2s", g2.TTL)
	}
	if _, err := b.Extend(ctx, key, "from", 2*time.Second); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("old token's Extend after the transfer: %v", err)
	}
	if err := b.Release(ctx, key, "from"); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("old token's Release after the transfer: %v", err)
	}
	if _, err := b.Transfer(ctx, key, "from", "third", 2*time.Second); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("old token's Transfer after the transfer: %v", err)
	}
	if _, err := other.Acquire(ctx, key, "third", time.Second); !errors.Is(err, distlock.ErrNotAcquired) {
		t.Fatalf("acquire by a third token after the transfer: %v", err)
	}
	// The new holder extends (through another instance too) and
	// re-acquires: same fence, key never dropped.
	if g, err := other.Extend(ctx, key, "to", 2*time.Second); err != nil || g.Fence != g2.Fence {
		t.Fatalf("new holder's Extend: %+v %v (transfer fence %d)", g, err, g2.Fence)
	}
	if g, err := b.Acquire(ctx, key, "to", 3*time.Second); err != nil || g.Fence != g2.Fence {
		t.Fatalf("new holder's re-acquire: %+v %v (transfer fence %d)", g, err, g2.Fence)
	}
	if ttl := leaseTTL(t, cli, k); ttl < 3 {
		t.Fatalf("lease of %ds after a re-acquire for 3s", ttl)
	}

	// A longer TTL than the holder's lease: the key moves to a lease of
	// that TTL. Through the other instance, which must read the key first.
	g3, err := other.Transfer(ctx, key, "to", "next", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if g3.Fence <= g2.Fence || g3.TTL < 5*time.Second {
		t.Fatalf("second transfer: %+v after fence %d", g3, g2.Fence)
	}
	if ttl := leaseTTL(t, cli, k); ttl < 5 {
		t.Fatalf("lease of %ds after a transfer for 5s", ttl)
	}
	if _, err := b.Extend(ctx, key, "to", time.Second); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("Extend by the previous holder: %v", err)
	}

	// Released, then granted anew: the fence is above the transfers'.
	if err := b.Release(ctx, key, "next"); err != nil {
		t.Fatal(err)
	}
	g4, err := other.Acquire(ctx, key, "last", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if g4.Fence <= g3.Fence {
		t.Fatalf("grant after the transfers: fence %d, not above %d", g4.Fence, g3.Fence)
	}
	if err := b.Release(ctx, key, "last"); err != nil {
		t.Fatal(err)
	}
}

// TestTransferExpires: a transferred grant lives by the TTL of the
// transfer, not the old grant's.
func TestTransferExpires(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	b, cli := newBackend(t, srv)
	ctx := ctxT(t, 30*time.Second)
	if _, err := b.Acquire(ctx, "exp", "from", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Transfer(ctx, "exp", "from", "to", time.Second); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testwait.For(t, 10*time.Second, "the transferred grant to expire", func() bool {
		resp, err := cli.Get(ctx, etcd.QueuePrefix(etcd.DefaultPrefix, "exp"), clientv3.WithFirstCreate()...)
		return err == nil && len(resp.Kvs) == 0
	})
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("a transfer for 1s expired after %v", d)
	}
	if _, err := b.Extend(ctx, "exp", "to", time.Second); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("Extend of an expired transferred grant: %v", err)
	}
}

// TestTransferNotHeld: a transfer by a token that does not hold the key,
// or of a free key, is ErrNotHeld and changes nothing.
func TestTransferNotHeld(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	b, cli := newBackend(t, srv)
	other, _ := newBackend(t, srv)
	ctx := ctxT(t, 30*time.Second)
	k := etcd.QueuePrefix(etcd.DefaultPrefix, "held")
	g, err := b.Acquire(ctx, "held", "holder", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	before, err := cli.Get(ctx, k, clientv3.WithFirstCreate()...)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range []*etcd.Backend{b, other} {
		for _, from := range []string{"not-the-holder", "holde", "holder;", "to"} {
			if _, err := tb.Transfer(ctx, "held", from, "to", 5*time.Second); !errors.Is(err, distlock.ErrNotHeld) {
				t.Fatalf("Transfer from %q: %v", from, err)
			}
		}
	}
	after, err := cli.Get(ctx, k, clientv3.WithFirstCreate()...)
	if err != nil || len(after.Kvs) != 1 {
		t.Fatal(after, err)
	}
	if kv := after.Kvs[0]; kv.ModRevision != before.Kvs[0].ModRevision || string(kv.Value) != string(before.Kvs[0].Value) {
		t.Fatalf("a refused transfer changed the key: %v → %v", before.Kvs[0], kv)
	}
	if g2, err := b.Extend(ctx, "held", "holder", 5*time.Second); err != nil || g2.Fence != g.Fence {
		t.Fatalf("holder's Extend after refused transfers: %+v %v", g2, err)
	}

	// A free key: nothing is created.
	for _, tb := range []*etcd.Backend{b, other} {
		if _, err := tb.Transfer(ctx, "free", "from", "to", time.Second); !errors.Is(err, distlock.ErrNotHeld) {
			t.Fatalf("Transfer of a free key: %v", err)
		}
	}
	if resp, err := cli.Get(ctx, etcd.QueuePrefix(etcd.DefaultPrefix, "free"), clientv3.WithFirstCreate()...); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("Transfer of a free key created it: %v %v", resp, err)
	}

	// Released: the old holder cannot transfer it.
	if err := b.Release(ctx, "held", "holder"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Transfer(ctx, "held", "holder", "to", time.Second); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatalf("Transfer after release: %v", err)
	}
	if resp, err := cli.Get(ctx, k, clientv3.WithFirstCreate()...); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("Transfer after release created the key: %v %v", resp, err)
	}
}

// TestTransferStaleGrant: the backend's record of the holder's grant is
// out of date (the holder re-acquired through another instance, moving the
// key to another lease): the transfer still goes through.
func TestTransferStaleGrant(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	b, cli := newBackend(t, srv)
	other, _ := newBackend(t, srv)
	ctx := ctxT(t, 30*time.Second)
	g1, err := b.Acquire(ctx, "stale", "from", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Acquire(ctx, "stale", "from", 4*time.Second); err != nil {
		t.Fatal(err)
	}
	g2, err := b.Transfer(ctx, "stale", "from", "to", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if g2.Fence <= g1.Fence {
		t.Fatalf("fence %d after %d", g2.Fence, g1.Fence)
	}
	if _, err := other.Extend(ctx, "stale", "to", time.Second); err != nil {
		t.Fatal(err)
	}
	if ttl := leaseTTL(t, cli, etcd.QueuePrefix(etcd.DefaultPrefix, "stale")); ttl < 1 {
		t.Fatalf("lease TTL %d", ttl)
	}
}

// TestTransferManager: goroutines of one Manager waiting for a key get it
// by transfer, in turn, each with a greater fence.
func TestTransferManager(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	m := open(t, srv)
	ctx := ctxT(t, 30*time.Second)
	const n = 4
	first, err := m.Lock(ctx, "hand", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	fences := make(chan uint64, n)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			l, err := m.Lock(ctx, "hand", 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			fences <- l.Fence()
			time.Sleep(10 * time.Millisecond)
			if err := l.Release(ctx); err != nil {
				errs <- err
				return
			}
			if l.Err() != nil {
				errs <- l.Err()
				return
			}
			errs <- nil
		}()
		testwait.For(t, 5*time.Second, "the waiter to queue", func() bool { return m.Waiting("hand") == i+1 })
	}
	if err := first.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if first.Err() != nil {
		t.Fatalf("first holder's handle after the hand-off: %v", first.Err())
	}
	prev := first.Fence()
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		f := <-fences
		if f <= prev {
			t.Fatalf("fence %d after %d", f, prev)
		}
		prev = f
	}
}
