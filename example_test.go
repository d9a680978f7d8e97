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
