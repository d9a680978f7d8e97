package etcd_test

import (
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/etcd"
	"github.com/distlock/distlock/distlocktest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestDurableWritesPerCycle pins the cost of an uncontended acquire+release
// in raft log entries (each a durable write with an fsync): two once the
// backend has a spare lease (the put and the delete; the lease is refreshed
// by a keep-alive, which the leader answers without raft), three for the
// very first cycle (the lease grant).
// raftIndex returns a func reporting the raft index of a private member,
// after letting the member finish its own start-up entries (cluster
// version, member attributes).
func raftIndex(t *testing.T, cli *clientv3.Client, endpoint string) func() uint64 {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	index := func() uint64 {
		st, err := cli.Status(ctx, endpoint)
		if err != nil {
			t.Fatal(err)
		}
		return st.RaftIndex
	}
	if _, err := cli.Put(ctx, "warm-up", "x"); err != nil {
		t.Fatal(err)
	}
	for i, last := 0, index(); ; i++ {
		time.Sleep(50 * time.Millisecond)
		now := index()
		if now == last {
			break
		}
		if i == 100 {
			t.Fatal("raft index does not settle")
		}
		last = now
	}
	return index
}

// TestDurableWritesPerCycle pins the cost of an uncontended acquire+release
// in raft log entries (each a durable write with an fsync): two once the
// backend has a spare lease (the put and the delete; the lease is refreshed
// by a keep-alive, which the leader answers without raft), three for the
// very first cycle (the lease grant).
func TestDurableWritesPerCycle(t *testing.T) {
	srv := distlocktest.EtcdCluster(t, 1) // a private member: nobody else writes
	cli := newClient(t, srv.Endpoints)
	m := distlock.New(etcd.New(cli, etcd.WithMinTTL(time.Second)))
	defer m.Close()
	ctx := ctxT(t, 30*time.Second)
	cycle := func(key string) {
		tok, err := m.Acquire(ctx, key, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Release(ctx, key, tok); err != nil {
			t.Fatal(err)
		}
	}
	index := raftIndex(t, cli, srv.Endpoints[0])
	before := index()
	cycle("first")
	if got := index() - before; got != 3 {
		t.Errorf("first cycle: %d raft entries, want 3 (grant, put, delete)", got)
	}
	const n = 50
	before = index()
	for i := range n {
		cycle([]string{"a", "b"}[i%2])
	}
	got := index() - before
	t.Logf("%d cycles: %d raft entries (%.2f per cycle)", n, got, float64(got)/n)
	if got != 2*n {
		t.Errorf("%d raft entries for %d cycles, want %d (put + delete each)", got, n, 2*n)
	}

	// Extend is a keep-alive: no raft entry.
	tok, err := m.Acquire(ctx, "ext", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	before = index()
	for range 10 {
		if err := m.Extend(ctx, "ext", tok, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if got := index() - before; got != 0 {
		t.Errorf("10 extends: %d raft entries, want 0", got)
	}

	// So is a re-acquire by the holder for the grant's own TTL.
	before = index()
	for range 10 {
		if _, err := m.Acquire(ctx, "ext", 10*time.Second, tok); err != nil {
			t.Fatal(err)
		}
	}
	if got := index() - before; got != 0 {
		t.Errorf("10 re-acquires for the same TTL: %d raft entries, want 0", got)
	}
}

// TestDurableWritesPerTransfer: a transfer is one raft entry — one
// transaction; the lease is the old grant's (same TTL) or a spare,
// refreshed by keep-alives — and a refused one writes nothing.
func TestDurableWritesPerTransfer(t *testing.T) {
	srv := distlocktest.EtcdCluster(t, 1)
	cli := newClient(t, srv.Endpoints)
	b := etcd.New(cli, etcd.WithMinTTL(time.Second))
	defer b.Close()
	ctx := ctxT(t, 30*time.Second)
	index := raftIndex(t, cli, srv.Endpoints[0])

	if _, err := b.Acquire(ctx, "t", "tok-0", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	const n = 20
	before := index()
	for i := range n {
		if _, err := b.Transfer(ctx, "t", "tok-"+itoa(i), "tok-"+itoa(i+1), 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if got := index() - before; got != n {
		t.Errorf("%d transfers with the same TTL: %d raft entries, want %d", n, got, n)
	}

	// Another TTL, with a spare lease of that TTL at hand: still one.
	if _, err := b.Acquire(ctx, "s", "spare", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx, "s", "spare"); err != nil {
		t.Fatal(err)
	}
	before = index()
	if _, err := b.Transfer(ctx, "t", "tok-"+itoa(n), "short", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := index() - before; got != 1 {
		t.Errorf("transfer to another TTL with a spare lease: %d raft entries, want 1", got)
	}

	// Refused (not the holder, or a free key): no write at all when the
	// backend has no grant of the key to that token.
	before = index()
	for _, from := range []string{"tok-0", "nobody"} {
		if _, err := b.Transfer(ctx, "t", from, "x", 10*time.Second); err == nil {
			t.Fatalf("transfer from %q succeeded", from)
		}
	}
	if _, err := b.Transfer(ctx, "free", "a", "b", 10*time.Second); err == nil {
		t.Fatal("transfer of a free key succeeded")
	}
	if got := index() - before; got != 0 {
		t.Errorf("refused transfers: %d raft entries, want 0", got)
	}
}
