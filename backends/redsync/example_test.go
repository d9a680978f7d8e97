package redsync_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/distlock/distlock"
	redsyncLocker "github.com/distlock/distlock/backends/redsync"
	"github.com/go-redsync/redsync/v4"
	"github.com/redis/go-redis/v9"
)

// The program of the go-common lockmanager blog post, with only its import
// path changed: redsync's tries and retry delay are honoured, another
// token cannot take the lock, and the second release is reported.
func Example_seedMigration() {
	// Initialize Redis client
	client := redis.NewClient(&redis.Options{
		Addr: os.Getenv("REDIS_ADDR"), // "localhost:6379" in the original
	})
	defer client.Close()

	// Create LockManager with optional token generator and redsync config
	locker := redsyncLocker.NewRedsyncLockManager(
		client,
		redsyncLocker.WithTokenGenerator(func(key string) string {
			return "token-for:" + key
		}),
		redsyncLocker.WithRedsyncOptions(
			redsync.WithTries(3),
			redsync.WithRetryDelay(100*time.Millisecond),
		),
	)

	ctx := context.Background()
	lockKey := "demo-lock-key"
	ttl := 2 * time.Second

	// Acquire lock
	token, err := locker.Acquire(ctx, lockKey, ttl)
	if err != nil {
		log.Fatalf("❌ Failed to acquire lock: %v", err)
	}
	fmt.Printf("✅ Lock acquired with token: %s\n", token)

	// Attempt to acquire the same lock again with a different token
	_, err = locker.Acquire(ctx, lockKey, ttl, "another-token")
	if err != nil {
		fmt.Printf("⛔ Re-acquire failed as expected: %v\n", err)
	}

	// Release lock
	if err := locker.Release(ctx, lockKey, token); err != nil {
		log.Fatalf("❌ Failed to release lock: %v", err)
	}
	fmt.Println("🔓 Lock released successfully")

	// Attempt releasing again (should be a no-op or handled gracefully)
	if err := locker.Release(ctx, lockKey, token); err != nil {
		fmt.Printf("🔁 Second release failed gracefully: %v\n", err)
	} else {
		fmt.Println("⚠️ Released again without error (already expired)")
	}
	// Output:
	// ✅ Lock acquired with token: token-for:demo-lock-key
	// ⛔ Re-acquire failed as expected: distlock: acquire "demo-lock-key": not acquired: held by another token: lock already taken, locked nodes: [0]
	// 🔓 Lock released successfully
	// 🔁 Second release failed gracefully: distlock: release "demo-lock-key": not held
}

// Opening the backend from a URL, the portable way: the scheme picks the
// backend, and the same code runs on etcd:// or postgres:// (with their
// packages imported).
func Example_open() {
	ctx := context.Background()
	lm, err := distlock.Open(ctx, "redis://"+os.Getenv("REDIS_ADDR")+"/0")
	if err != nil {
		log.Fatal(err)
	}
	defer lm.Close()

	// Do runs fn while the lock is held, renewing it, and releases it.
	err = lm.Do(ctx, "example:seat:42", 10*time.Second, func(ctx context.Context) error {
		fmt.Println("booking seat 42")
		return nil
	})
	fmt.Println("done:", err)

	l, err := lm.Lock(ctx, "example:seat:42", 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer l.Release(ctx)
	// Pass the fence to the resource you protect, so it can refuse a
	// writer whose lock has expired meanwhile.
	fmt.Println("fenced:", l.Fence() > 0)
	// Output:
	// booking seat 42
	// done: <nil>
	// fenced: true
}

// Redlock over independent masters: a grant needs 2 of 3.
func ExampleNewRedlockManager() {
	var clients []redis.UniversalClient
	for _, addr := range []string{"10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"} {
		clients = append(clients, redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true}))
	}
	lm, err := redsyncLocker.NewRedlockManager(clients, redsyncLocker.WithCloseClient())
	if err != nil {
		log.Fatal(err)
	}
	defer lm.Close()
	// The same with a URL: distlock.Open(ctx, "redlock://10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379")
}
