package distlock_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/distlock/distlock"
)

func ExampleRWMutex() {
	ctx := context.Background()
	lm, _ := distlock.Open(ctx, "memory://example-rw")
	defer lm.Close()
	catalog := lm.RWMutex("catalog")

	r1, _ := catalog.RLock(ctx, 10*time.Second)
	r2, err := catalog.RLock(ctx, 10*time.Second)
	fmt.Println("two readers at once:", err == nil)

	_, err = catalog.Lock(ctx, 10*time.Second, distlock.TryOnce())
	fmt.Println("writer beside readers refused:", errors.Is(err, distlock.ErrNotAcquired))

	_ = r1.Release(ctx)
	_ = r2.Release(ctx)
	w, err := catalog.Lock(ctx, 10*time.Second, distlock.WithAutoRenew())
	fmt.Println("writer once the readers left:", err == nil)
	_ = w.Release(ctx)
	// Output:
	// two readers at once: true
	// writer beside readers refused: true
	// writer once the readers left: true
}

func ExampleSemaphore() {
	ctx := context.Background()
	lm, _ := distlock.Open(ctx, "memory://example-sem")
	defer lm.Close()
	gpus := lm.Semaphore("gpu", 2) // every participant says 2

	a, _ := gpus.Acquire(ctx, time.Minute)
	b, _ := gpus.Acquire(ctx, time.Minute)
	_, err := gpus.Acquire(ctx, time.Minute, distlock.TryOnce())
	fmt.Println("third of 2 refused:", errors.Is(err, distlock.ErrNotAcquired))

	_, err = lm.Semaphore("gpu", 3).Acquire(ctx, time.Minute)
	fmt.Println("another limit:", errors.Is(err, distlock.ErrLimitMismatch))

	_ = a.Release(ctx)
	_ = b.Release(ctx)
	// Output:
	// third of 2 refused: true
	// another limit: true
}

func ExampleElection() {
	ctx := context.Background()
	lm, _ := distlock.Open(ctx, "memory://example-elect")
	defer lm.Close()
	election := lm.Election("scheduler", 10*time.Second)

	lead, err := election.Campaign(ctx, "node-a:8080") // waits until this process leads
	if err != nil {
		panic(err)
	}
	info, _ := election.Leader(ctx)
	fmt.Println("leader:", info.Value)

	go func() {
		<-lead.Done() // closes when leadership ends: resign, or lost
	}()
	_ = lead.Resign(ctx)
	_, err = election.Leader(ctx)
	fmt.Println("after resigning:", errors.Is(err, distlock.ErrNoLeader))
	// Output:
	// leader: node-a:8080
	// after resigning: true
}
