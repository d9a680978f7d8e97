package etcd_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/etcd"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/internal/testwait"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// lineLen counts the entries in the waiters' line of key (default prefix).
func lineLen(t *testing.T, cli *clientv3.Client, key string) int {
	t.Helper()
	k := etcd.DefaultPrefix + key
	lk := "distlock0line/" + fmt.Sprint(len(k)) + ":" + k + "/"
	resp, err := cli.Get(context.Background(), lk, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return int(resp.Count)
}

// Waiters of different backends (processes) get the lock in the order they
// started waiting, and a newcomer does not jump the line.
func TestLineOrderAcrossBackends(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	admin := newClient(t, srv.Endpoints)
	ctx := ctxT(t, 30*time.Second)
	holder := open(t, srv)
	tok, err := holder.Acquire(ctx, "line", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	const n = 4
	order := make(chan int, n)
	for i := range n {
		m := open(t, srv, distlock.WithRetry(distlock.LinearBackoff(20*time.Millisecond)))
		go func() {
			tok, err := m.Acquire(ctx, "line", 30*time.Second)
			if err != nil {
				t.Error(err)
				order <- -1
				return
			}
			order <- i
			if err := m.Release(ctx, "line", tok); err != nil {
				t.Error(err)
			}
		}()
		testwait.For(t, 10*time.Second, fmt.Sprintf("waiter %d in line", i), func() bool { return lineLen(t, admin, "line") == i+1 })
	}
	// A newcomer of yet another backend must not take the lock ahead of them.
	newcomer := open(t, srv, distlock.WithRetry(distlock.NoRetry()))
	if err := holder.Release(ctx, "line", tok); err != nil {
		t.Fatal(err)
	}
	if _, err := newcomer.Acquire(ctx, "line", time.Second); err == nil {
		t.Log("newcomer got the lock (all waiters were already through)")
	}
	for want := range n {
		select {
		case got := <-order:
			if got != want {
				t.Fatalf("waiter %d got the lock in turn %d", got, want)
			}
		case <-ctx.Done():
			t.Fatal("waiters stuck")
		}
	}
	testwait.For(t, 10*time.Second, "the line to empty", func() bool { return lineLen(t, admin, "line") == 0 })
}

// An entry whose owner never acts (a stuck process) delays the others by
// the grace period, no more.
func TestLineStaleEntry(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	admin := newClient(t, srv.Endpoints)
	ctx := ctxT(t, 30*time.Second)
	k := etcd.DefaultPrefix + "stale"
	lease, err := admin.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Put(ctx, "distlock0line/"+fmt.Sprint(len(k))+":"+k+"/ghost", "", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	// A newcomer finds the line not empty: it joins it, waits for the
	// ghost's grace, and goes ahead.
	holder := open(t, srv)
	start := time.Now()
	tok, err := holder.Acquire(ctx, "stale", 30*time.Second)
	if err != nil {
		t.Fatalf("acquire with a ghost in line: %v", err)
	}
	t.Logf("acquired behind a ghost after %v", time.Since(start))

	waiter := open(t, srv)
	done := make(chan time.Time, 1)
	go func() {
		tok, err := waiter.Acquire(ctx, "stale", 30*time.Second)
		done <- time.Now()
		if err != nil {
			t.Error(err)
			return
		}
		_ = waiter.Release(ctx, "stale", tok)
	}()
	testwait.For(t, 10*time.Second, "waiter in line", func() bool { return lineLen(t, admin, "stale") == 2 })
	released := time.Now()
	if err := holder.Release(ctx, "stale", tok); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-done:
		d := at.Sub(released)
		t.Logf("waiter behind a ghost got the lock %v after the release", d)
		if d > 3*time.Second {
			t.Fatalf("waiter behind a ghost waited %v", d)
		}
	case <-ctx.Done():
		t.Fatal("waiter stuck behind a ghost entry")
	}
}

// A backend's entry in the line goes to the back when one of its waiters
// gets the lock, is taken over by its next waiter (no leaving and joining
// again per hand-off), and leaves with the release, in the same write,
// when nobody there waits any more.
func TestLineEntryFollowsTheLock(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	admin := newClient(t, srv.Endpoints)
	ctx := ctxT(t, 30*time.Second)
	holder := open(t, srv)
	tok, err := holder.Acquire(ctx, "follow", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waiter := open(t, srv, distlock.WithRetry(distlock.LinearBackoff(20*time.Millisecond)))
	got := make(chan string, 1)
	go func() {
		tok, err := waiter.Acquire(ctx, "follow", 30*time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- tok
	}()
	testwait.For(t, 10*time.Second, "the waiter in line", func() bool { return lineLen(t, admin, "follow") == 1 })
	if err := holder.Release(ctx, "follow", tok); err != nil {
		t.Fatal(err)
	}
	wtok := <-got
	if wtok == "" {
		t.FailNow()
	}
	// Held by the waiter's backend, which has nobody waiting: its entry
	// stays (moved to the back) in case another of its goroutines queues.
	time.Sleep(300 * time.Millisecond)
	if n := lineLen(t, admin, "follow"); n != 1 {
		t.Fatalf("%d entries in line while the waiter's backend holds the key, want 1", n)
	}
	// Released: the entry leaves in the release's own transaction.
	if err := waiter.Release(ctx, "follow", wtok); err != nil {
		t.Fatal(err)
	}
	if n := lineLen(t, admin, "follow"); n != 0 {
		t.Fatalf("%d entries in line right after the release, want 0", n)
	}
}
