package distlock_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/distlock/distlock"
	_ "github.com/distlock/distlock/backends/memory" // registers memory://
)

func Example() {
	ctx := context.Background()
	lm, err := distlock.Open(ctx, "memory://example") // or redis://, etcd://, postgres://
	if err != nil {
		panic(err)
	}
	defer lm.Close()

	token, err := lm.Acquire(ctx, "seat:42", 10*time.Second)
	if err != nil {
		panic(err)
	}
	// A second booking of the same seat is refused.
	_, err = lm.Acquire(ctx, "seat:42", 10*time.Second, "another-token")
	fmt.Println("second booking refused:", errors.Is(err, distlock.ErrNotAcquired))

	fmt.Println("release:", lm.Release(ctx, "seat:42", token))
	err = lm.Release(ctx, "seat:42", token)
	fmt.Println("second release is not held:", errors.Is(err, distlock.ErrNotHeld))
	// Output:
	// second booking refused: true
	// release: <nil>
	// second release is not held: true
}

func ExampleManager_Do() {
	ctx := context.Background()
	lm, _ := distlock.Open(ctx, "memory://example-do")
	defer lm.Close()

	// fn runs only while the lock is held; its ctx ends if the lock is lost.
	err := lm.Do(ctx, "nightly-report", 30*time.Second, func(ctx context.Context) error {
		fmt.Println("generating the report once across all pods")
		return nil
	})
	fmt.Println(err)
	// Output:
	// generating the report once across all pods
	// <nil>
}

func ExampleManager_Lock() {
	ctx := context.Background()
	lm, _ := distlock.Open(ctx, "memory://example-lock")
	defer lm.Close()

	l, err := lm.Lock(ctx, "payment:1234", 10*time.Second, distlock.WithAutoRenew())
	if err != nil {
		panic(err)
	}
	defer l.Release(ctx)
	// Hand the fence to the resource, so it can refuse a stale holder.
	fmt.Println("fence > 0:", l.Fence() > 0)
	select {
	case <-l.Done():
		fmt.Println("lost:", l.Err())
	default:
		fmt.Println("held")
	}
	// Output:
	// fence > 0: true
	// held
}

// A nightly job on several replicas runs once: the first replica to fire
// takes the lock and keeps it for the minimum hold even though the job is
// quick; a replica firing 200ms later skips it.
func ExampleWithMinHold() {
	ctx := context.Background()
	replica1, _ := distlock.Open(ctx, "memory://example-run-once")
	defer replica1.Close()
	replica2, _ := distlock.Open(ctx, "memory://example-run-once")
	defer replica2.Close()

	job := func(name string) func(context.Context) error {
		return func(context.Context) error { fmt.Println(name, "runs the nightly report"); return nil }
	}
	err := replica1.Do(ctx, "nightly-report", time.Minute, job("replica 1"),
		distlock.WithMinHold(10*time.Minute), distlock.TryOnce())
	fmt.Println("replica 1:", err)

	// The second replica's schedule fires a little later.
	err = replica2.Do(ctx, "nightly-report", time.Minute, job("replica 2"),
		distlock.WithMinHold(10*time.Minute), distlock.TryOnce())
	fmt.Println("replica 2 skipped:", errors.Is(err, distlock.ErrNotAcquired))
	// Output:
	// replica 1 runs the nightly report
	// replica 1: <nil>
	// replica 2 skipped: true
}

// Require makes Open refuse a backend that cannot keep a promise the
// program relies on.
func ExampleRequire() {
	ctx := context.Background()
	lm, err := distlock.Open(ctx, "memory://example-require",
		distlock.Require(distlock.Fencing(), distlock.CrossInstanceRelease(), distlock.MinTTLAtMost(100*time.Millisecond)))
	if err != nil {
		panic(err) // errors.Is(err, distlock.ErrUnsupported) names what is missing
	}
	defer lm.Close()
	fmt.Printf("%+v\n", lm.Capabilities())
	// Output:
	// {Name:memory Fencing:true CrossInstanceRelease:true MinTTL:1ms Granularity:0s ReadWrite:true Semaphore:true Election:true}
}

func ExampleManager_Inspect() {
	ctx := context.Background()
	lm, _ := distlock.Open(ctx, "memory://example-inspect")
	defer lm.Close()

	l, _ := lm.Lock(ctx, "deploy", time.Minute)
	info, err := lm.Inspect(ctx, "deploy") // changes nothing: no TTL reset
	if errors.Is(err, distlock.ErrUnsupported) {
		fmt.Println("this backend cannot inspect locks")
		return
	}
	fmt.Println("held:", info.Held, "fence matches:", info.Fence == l.Fence(), "ttl ≤ 1m:", info.TTL <= time.Minute)
	_ = l.Release(ctx)
	info, _ = lm.Inspect(ctx, "deploy")
	fmt.Println("held after release:", info.Held)
	// Output:
	// held: true fence matches: true ttl ≤ 1m: true
	// held after release: false
}
