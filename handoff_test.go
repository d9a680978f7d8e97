package distlock_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/memory"
	"github.com/distlock/distlock/internal/testwait"
)

var patient = distlock.WithRetry(distlock.LimitWait(distlock.ExponentialBackoff(time.Millisecond, 50*time.Millisecond), time.Minute))

// Without transfers (WithHandoffLimit(0)) the waiters of one Manager still
// get the key in arrival order: the head of the line is woken by the
// release and the others never try.
func TestHandoffArrivalOrderWithoutTransfer(t *testing.T) {
	ctx := t.Context()
	m := memory.NewManager(patient, distlock.WithHandoffLimit(0))
	defer m.Close()
	tok, err := m.Acquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	const n = 6
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			tok, err := m.Acquire(ctx, "k", time.Minute)
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			order <- i
			if err := m.Release(ctx, "k", tok); err != nil {
				t.Errorf("waiter %d release: %v", i, err)
			}
		})
		testwait.For(t, 5*time.Second, "the waiter to queue", func() bool { return m.Waiting("k") == i+1 })
	}
	if err := m.Release(ctx, "k", tok); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(order)
	want := 0
	for got := range order {
		if got != want {
			t.Fatalf("grant %d went to waiter %d", want, got)
		}
		want++
	}
}

// Waiters that give up (deadline, cancel) while the key is handed around
// never leave a grant behind: once everyone is done the key is free at
// once, not after a TTL.
func TestHandoffGivingUpLeavesNoGrant(t *testing.T) {
	for _, limit := range []int{0, 1, distlock.DefaultHandoffLimit} {
		store := memory.NewStore()
		m := distlock.New(store.Backend(), patient, distlock.WithHandoffLimit(limit))
		var wg sync.WaitGroup
		for g := range 16 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(g), uint64(limit)))
				for range 60 {
					ctx, cancel := context.WithTimeout(t.Context(), time.Duration(200+r.IntN(1500))*time.Microsecond)
					tok, err := m.Acquire(ctx, "k", time.Hour)
					cancel()
					if err != nil {
						if !errors.Is(err, distlock.ErrNotAcquired) {
							t.Errorf("Acquire: %v", err)
						}
						continue
					}
					time.Sleep(time.Duration(r.IntN(300)) * time.Microsecond)
					if err := m.Release(t.Context(), "k", tok); err != nil {
						t.Errorf("Release: %v", err)
					}
				}
			})
		}
		wg.Wait()
		if n := m.Waiting("k"); n != 0 {
			t.Errorf("limit %d: %d waiters left in the line", limit, n)
		}
		probe := distlock.New(store.Backend(), distlock.WithRetry(distlock.NoRetry()))
		if tok, err := probe.Acquire(t.Context(), "k", time.Second); err != nil {
			t.Errorf("limit %d: key still held after every goroutine ended: %v", limit, err)
		} else {
			_ = probe.Release(t.Context(), "k", tok)
		}
		_ = m.Close()
		_ = probe.Close()
	}
}

// Close ends every wait in the line with ErrClosed at once.
func TestHandoffCloseEndsWaits(t *testing.T) {
	store := memory.NewStore()
	holder := distlock.New(store.Backend())
	defer holder.Close()
	if _, err := holder.Acquire(t.Context(), "k", time.Hour); err != nil {
		t.Fatal(err)
	}
	m := distlock.New(store.Backend(), patient)
	errs := make(chan error, 3)
	for i := range 3 {
		go func() {
			_, err := m.Acquire(t.Context(), "k", time.Minute)
			errs <- err
		}()
		testwait.For(t, 5*time.Second, "the waiter to queue", func() bool { return m.Waiting("k") == i+1 })
	}
	_ = m.Close()
	for range 3 {
		select {
		case err := <-errs:
			if !errors.Is(err, distlock.ErrClosed) {
				t.Errorf("waiter after Close: %v, want ErrClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a waiter still waits 10s after Close")
		}
	}
}

// A holder's re-acquire with its explicit token is not queued behind the
// goroutines waiting for it (that would wait for itself).
func TestHandoffHolderReacquireSkipsLine(t *testing.T) {
	m := memory.NewManager(patient)
	defer m.Close()
	ctx := t.Context()
	if _, err := m.Acquire(ctx, "k", time.Minute, "holder"); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		tok, err := m.Acquire(ctx, "k", time.Minute)
		if err == nil {
			_ = m.Release(ctx, "k", tok)
		}
	}()
	testwait.For(t, 5*time.Second, "the waiter to queue", func() bool { return m.Waiting("k") == 1 })
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := m.Acquire(rctx, "k", time.Minute, "holder"); err != nil {
		t.Fatalf("holder re-acquire with waiters in line: %v", err)
	}
	if err := m.Release(ctx, "k", "holder"); err != nil {
		t.Fatal(err)
	}
	<-done
}

// Only the head of a Manager's line waits in the server's queue, and only
// while another process may hold the key: once the key moves along the
// line by transfers, the next head waits for the hand-off here, so the
// backend sees nothing but the transfers and the last release.
func TestHandoffHeadWaitsHereBehindItsOwnManager(t *testing.T) {
	ctx := t.Context()
	store := memory.NewStore()
	m := distlock.New(store.Backend(), patient)
	defer m.Close()
	tok, err := m.Acquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3
	locks := make(chan *distlock.Lock, n)
	for i := range n {
		go func() {
			l, err := m.Lock(ctx, "k", time.Minute)
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
				close(locks)
				return
			}
			locks <- l
		}()
		testwait.For(t, 5*time.Second, "the waiter to join the line", func() bool { return m.Waiting("k") == i+1 })
	}
	testwait.For(t, 5*time.Second, "the head to queue in the store", func() bool {
		info, err := m.Inspect(ctx, "k")
		return err == nil && info.Waiters == 1
	})
	before := store.Calls()
	if err := m.Release(ctx, "k", tok); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		l, ok := <-locks
		if !ok {
			t.Fatal("a waiter failed")
		}
		if i < n-1 {
			// The next head must not join the store's queue behind a
			// holder of its own Manager.
			testwait.For(t, 5*time.Second, "the next head", func() bool { return m.Waiting("k") == n-1-i })
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// n transfers and one plain release; each head waiting in the store's
	// queue again would add n-1 calls.
	if got := store.Calls() - before; got != n+1 {
		t.Fatalf("%d backend calls for %d hand-offs and a release, want %d", got, n, n+1)
	}
}
