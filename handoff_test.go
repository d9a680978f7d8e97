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
