package distlockmock_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/mock/gomock"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/distlockmock"
)

// book is code under test that takes a LockManager.
func book(ctx context.Context, lm distlock.LockManager, seat string) error {
	token, err := lm.Acquire(ctx, "seat:"+seat, 10*time.Second)
	if err != nil {
		return err
	}
	return lm.Release(ctx, "seat:"+seat, token)
}

type reporter struct{}

func (reporter) Errorf(format string, args ...any) { fmt.Printf(format+"\n", args...) }
func (reporter) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }

func Example() {
	ctrl := gomock.NewController(reporter{}) // in a test: gomock.NewController(t)
	defer ctrl.Finish()
	lm := distlockmock.NewMockLockManager(ctrl)
	lm.EXPECT().Acquire(gomock.Any(), "seat:42", 10*time.Second).
		Return("", &distlock.Error{Op: "acquire", Key: "seat:42", Kind: distlock.ErrNotAcquired})

	err := book(context.Background(), lm, "42")
	fmt.Println(errors.Is(err, distlock.ErrNotAcquired))
	// Output: true
}
