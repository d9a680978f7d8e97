package etcd_test

import (
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/etcd"
	"github.com/distlock/distlock/internal/testserver"
)

// TestDurableWritesPerCycle pins the cost of an uncontended acquire+release
// in raft log entries (each a durable write with an fsync): two once the
// backend has a spare lease (the put and the delete; the lease is refreshed
// by a keep-alive, which the leader answers without raft), three for the
// very first cycle (the lease grant).
func TestDurableWritesPerCycle(t *testing.T) {
	srv := testserver.EtcdCluster(t, 1) // a private member: nobody else writes
	cli := newClient(t, srv.Endpoints)
	m := distlock.New(etcd.New(cli, etcd.WithMinTTL(time.Second)))
	defer m.Close()
	ctx := ctxT(t, 30*time.Second)
	index := func() uint64 {
		st, err := cli.Status(ctx, srv.Endpoints[0])
		if err != nil {
			t.Fatal(err)
		}
		return st.RaftIndex
	}
	cycle := func(key string) {
		tok, err := m.Acquire(ctx, key, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Release(ctx, key, tok); err != nil {
			t.Fatal(err)
		}
	}
	// Let the fresh member finish its own start-up entries (cluster
	// version, member attributes) before counting.
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
}
