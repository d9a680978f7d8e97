package redsync_test

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/distlock/distlock"
	redsyncLocker "github.com/distlock/distlock/backends/redsync"
	"github.com/distlock/distlock/distlocktest"
	"github.com/redis/go-redis/v9"
)

// queueKey is the name of key's queue on a single node with the default
// fence key: under the fence key, which no lock key may begin with.
func queueKey(key string) string { return redsyncLocker.DefaultFenceKey + ":q:" + key }

// waitQueued waits until n waiters queue for key.
func waitQueued(t *testing.T, b *redsyncLocker.Backend, key string, n int) {
	t.Helper()
	eventually(t, 10*time.Second, strconv.Itoa(n)+" waiters to queue", func() error {
		info, err := b.Inspect(t.Context(), key)
		if err == nil && info.Waiters != n {
			err = errors.New("waiters: " + strconv.Itoa(info.Waiters))
		}
		return err
	})
}

var evalshaCalls = regexp.MustCompile(`cmdstat_evalsha:calls=(\d+),`)

// scriptCalls returns how many scripts the server ran since its stats were
// reset (the scripts go through EVALSHA once the server knows them).
func scriptCalls(t *testing.T, raw *redis.Client) int {
	t.Helper()
	m := evalshaCalls.FindStringSubmatch(raw.Info(t.Context(), "commandstats").Val())
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestQueueOneWakePerRelease: 8 backends (own clients, as 8 processes)
// wait for one key, each taking it 10 times; every release hands the key
// to one waiter and wakes that one only. Counted on the server: each grant
// costs at most one script that queues, one that claims and the release,
// where waking every waiter (a herd) would cost up to 7 more attempts per
// release.
func TestQueueOneWakePerRelease(t *testing.T) {
	defer redsyncLocker.SetPollEvery(time.Hour)() // wake-ups only, no polls
	const waiters, rounds = 8, 10
	ctx := ctxTimeout(t, 60*time.Second)
	srv := distlocktest.StartRedis(t, distlocktest.RedisOptions{})
	raw := newClient(t, srv.Addr)
	key := uniqueKey(t)
	bs := make([]*redsyncLocker.Backend, waiters)
	for i := range bs {
		bs[i] = redsyncLocker.NewBackend(newClient(t, srv.Addr))
		t.Cleanup(func() { _ = bs[i].Close() })
	}
	holder := redsyncLocker.NewBackend(newClient(t, srv.Addr))
	defer holder.Close()
	if _, err := holder.Acquire(ctx, key, "first", time.Minute); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i, b := range bs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok := "w" + strconv.Itoa(i)
			for range rounds {
				if _, err := b.AcquireWait(ctx, key, tok, time.Minute); err != nil {
					t.Error(err)
					return
				}
				if err := b.Release(ctx, key, tok); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	waitQueued(t, holder, key, waiters)
	// Every waiter has subscribed once it queues again after its first
	// look: the measured part starts with all of them queued.
	raw.ConfigResetStat(ctx)
	if err := holder.Release(ctx, key, "first"); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	grants := waiters * rounds
	calls := scriptCalls(t, raw)
	releases := grants + 1
	attempts := calls - releases // AcquireWait scripts
	perRelease := float64(attempts-grants) / float64(releases)
	t.Logf("%d releases, %d grants, %d AcquireWait scripts: %.2f failed attempts per release", releases, grants, attempts, perRelease)
	if perRelease > 1.5 {
		t.Fatalf("%.2f failed attempts per release, want about 1 (a queue entry each), not a herd", perRelease)
	}
	if n := raw.Exists(ctx, key, queueKey(key)).Val(); n != 0 {
		t.Fatalf("%d of the key and its queue left after the last release", n)
	}
}

// TestQueueFirstComeFirstServed: waiters get the key in the order they
// queued, woken by the release over pub/sub (their fallback poll is an
// hour away), fenced or not.
func TestQueueFirstComeFirstServed(t *testing.T) {
	bothFencings(t, testFirstComeFirstServed)
}

func testFirstComeFirstServed(t *testing.T, fenced bool) {
	defer redsyncLocker.SetPollEvery(time.Hour)()
	var opts []redsyncLocker.Option
	if !fenced {
		opts = append(opts, redsyncLocker.WithoutFencing())
	}
	ctx := ctxTimeout(t, 30*time.Second)
	key := uniqueKey(t)
	holder := redsyncLocker.NewBackend(newClient(t, sharedAddr), opts...)
	defer holder.Close()
	if _, err := holder.Acquire(ctx, key, "h", time.Minute); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 4)
	for i := range 4 {
		b := redsyncLocker.NewBackend(newClient(t, sharedAddr), opts...)
		t.Cleanup(func() { _ = b.Close() })
		tok := "w" + strconv.Itoa(i)
		go func() {
			if _, err := b.AcquireWait(ctx, key, tok, time.Minute); err != nil {
				t.Error(err)
			}
			got <- tok
		}()
		waitQueued(t, holder, key, i+1)
	}
	if n := newClient(t, sharedAddr).LLen(ctx, queueKey(key)).Val(); n != 4 {
		t.Fatalf("queue %q holds %d entries, want 4", queueKey(key), n)
	}
	prev := "h"
	for i := range 4 {
		if err := holder.Release(ctx, key, prev); err != nil {
			t.Fatal(err)
		}
		select {
		case tok := <-got:
			if want := "w" + strconv.Itoa(i); tok != want {
				t.Fatalf("grant %d went to %s, want %s", i, tok, want)
			}
			prev = tok
		case <-ctx.Done():
			t.Fatal("no waiter woke")
		}
	}
	if err := holder.Release(ctx, key, prev); err != nil {
		t.Fatal(err)
	}
}

// TestQueueLeave: a waiter whose ctx ends leaves the queue and blocks
// nobody; a waiter cut off in mid-request leaves nothing behind; a
// crashed waiter's turn passes to the next within the reservation bound.
func TestQueueLeave(t *testing.T) {
	ctx := ctxTimeout(t, 30*time.Second)
	raw := newClient(t, sharedAddr)
	holder := redsyncLocker.NewBackend(newClient(t, sharedAddr))
	defer holder.Close()
	waiter := redsyncLocker.NewBackend(newClient(t, sharedAddr))
	defer waiter.Close()

	t.Run("Cancelled", func(t *testing.T) {
		key := uniqueKey(t)
		if _, err := holder.Acquire(ctx, key, "h", time.Minute); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { _, err := waiter.AcquireWait(wctx, key, "w", time.Minute); done <- err }()
		waitQueued(t, holder, key, 1)
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled wait: got %v, want context.Canceled", err)
		}
		if n := raw.Exists(ctx, queueKey(key)).Val(); n != 0 {
			t.Fatal("the queue outlived its only waiter")
		}
		if err := holder.Release(ctx, key, "h"); err != nil {
			t.Fatal(err)
		}
		if _, err := holder.Acquire(ctx, key, "next", time.Minute); err != nil {
			t.Fatalf("try-once acquire of the freed key: %v", err)
		}
	})

	t.Run("CutOff", func(t *testing.T) {
		key := uniqueKey(t)
		for i := range 50 {
			wctx, cancel := context.WithTimeout(ctx, time.Duration(i)*5*time.Microsecond)
			g, err := waiter.AcquireWait(wctx, key, "w", time.Minute)
			cancel()
			if err == nil {
				if err := waiter.Release(ctx, key, "w"); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("cut-off wait: grant %+v, got %v, want context.DeadlineExceeded", g, err)
			}
			if n := raw.Exists(ctx, key, queueKey(key)).Val(); n != 0 {
				t.Fatalf("a wait cut off after %d µs left %d keys behind", i*5, n)
			}
		}
	})

	t.Run("Crashed", func(t *testing.T) {
		key := uniqueKey(t)
		if _, err := holder.Acquire(ctx, key, "h", time.Minute); err != nil {
			t.Fatal(err)
		}
		// A waiter of a process that is gone: nobody will claim its turn.
		raw.RPush(ctx, queueKey(key), "0123456789abcdef:ghost")
		done := make(chan error, 1)
		go func() { _, err := waiter.AcquireWait(ctx, key, "w", time.Minute); done <- err }()
		waitQueued(t, holder, key, 2)
		if err := holder.Release(ctx, key, "h"); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("the waiter behind a crashed one: %v", err)
		}
		_ = waiter.Release(ctx, key, "w")
	})
}

// TestQueueTransferToWaiter: the Manager hands a key to its own queued
// waiter with Transfer and then cancels its wait: the wait leaves the
// queue and the transferred grant stays.
func TestQueueTransferToWaiter(t *testing.T) {
	ctx := ctxTimeout(t, 30*time.Second)
	b := redsyncLocker.NewBackend(newClient(t, sharedAddr))
	defer b.Close()
	key := uniqueKey(t)
	if _, err := b.Acquire(ctx, key, "from", time.Minute); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := b.AcquireWait(wctx, key, "to", time.Minute); done <- err }()
	waitQueued(t, b, key, 1)
	g, err := b.Transfer(ctx, key, "from", "to", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	info, err := b.Inspect(ctx, key)
	if err != nil || !info.Held || info.Holder != "to" || info.Fence != g.Fence || info.Waiters != 0 {
		t.Fatalf("after the transfer and the cancelled wait: %+v, %v", info, err)
	}
	if err := b.Release(ctx, key, "to"); err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx, key, "to"); !errors.Is(err, distlock.ErrNotHeld) {
		t.Fatal("released twice")
	}
}
