package distlock

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// RetryStrategy decides how long Acquire waits before its next attempt on a
// lock held by someone else. It is stateless: the Manager keeps the state of
// each call (attempt count and time waited) and passes it in, so one
// strategy value is safely shared by every call and goroutine.
//
// A delay shorter than MinRetryDelay is waited as MinRetryDelay, so that no
// strategy, including one of your own, can turn a wait into a busy loop.
// The strategies built here reject such delays outright: see LinearBackoff.
type RetryStrategy interface {
	// NextBackoff is called after attempt failed attempts (1, 2, …) and
	// waited time since the call began. It returns the delay before the
	// next attempt, or false to give up.
	NextBackoff(attempt int, waited time.Duration) (time.Duration, bool)
}

// MinRetryDelay is the shortest wait between two attempts of one call. A
// strategy that asks for less (a custom one returning zero, say) waits this
// long instead.
const MinRetryDelay = time.Millisecond

// DefaultRetry is the strategy a Manager uses unless told otherwise:
// jittered exponential backoff from 2ms up to 100ms between attempts, giving
// up after 5 seconds of waiting (or earlier, when ctx ends). On backends that
// notify releases the backoff is only the fallback poll: waiters wake as soon
// as the lock is released.
var DefaultRetry RetryStrategy = LimitWait(ExponentialBackoff(2*time.Millisecond, 100*time.Millisecond), 5*time.Second)

// strategy is a RetryStrategy built by this package. err, if set, says why
// its arguments are invalid: the Manager refuses it with ErrInvalidArgument
// before sending anything (see checkRetry).
type strategy struct {
	next func(attempt int, waited time.Duration) (time.Duration, bool)
	err  error
}

func (s *strategy) NextBackoff(attempt int, waited time.Duration) (time.Duration, bool) {
	if s.err != nil {
		return 0, false
	}
	return s.next(attempt, waited)
}

// invalid returns a strategy that never retries and that the Manager
// refuses, with err saying why.
func invalid(format string, args ...any) RetryStrategy {
	return &strategy{err: fmt.Errorf(format, args...)}
}

// checkRetry returns why s cannot be used (an invalid argument to one of
// this package's constructors, maybe inside LimitRetry or LimitWait), or
// nil.
func checkRetry(s RetryStrategy) error {
	if st, ok := s.(*strategy); ok && st.err != nil {
		return st.err
	}
	return nil
}

// NoRetry makes a single attempt: Acquire fails at once if the key is held.
// See also TryOnce, the same for one Lock or Do call.
func NoRetry() RetryStrategy {
	return &strategy{next: func(int, time.Duration) (time.Duration, bool) { return 0, false }}
}

// LinearBackoff waits d between attempts, forever (until ctx ends). d must
// be at least MinRetryDelay: a Manager given LinearBackoff(0) (or a
// negative d) refuses it with ErrInvalidArgument, sending nothing — a zero
// delay would hammer the backend.
func LinearBackoff(d time.Duration) RetryStrategy {
	if d < MinRetryDelay {
		return invalid("LinearBackoff(%v): the delay must be at least %v", d, MinRetryDelay)
	}
	return &strategy{next: func(int, time.Duration) (time.Duration, bool) { return d, true }}
}

// ExponentialBackoff doubles the wait from min up to max, with equal jitter
// (each wait is uniformly drawn from [d/2, d]), forever (until ctx ends).
// min must be at least MinRetryDelay, else a Manager refuses the strategy
// with ErrInvalidArgument; a max below min means min.
func ExponentialBackoff(min, max time.Duration) RetryStrategy {
	if min < MinRetryDelay {
		return invalid("ExponentialBackoff(%v, %v): the minimum delay must be at least %v", min, max, MinRetryDelay)
	}
	if max < min {
		max = min
	}
	return &strategy{next: func(attempt int, _ time.Duration) (time.Duration, bool) {
		d := min
		for i := 1; i < attempt && d < max; i++ {
			d *= 2
		}
		if d > max {
			d = max
		}
		half := d / 2
		return half + rand.N(d-half+1), true
	}}
}

// LimitRetry gives up after tries attempts in all (the first one included).
// tries must be at least 1 (1 means no retry), else a Manager refuses the
// strategy with ErrInvalidArgument.
func LimitRetry(s RetryStrategy, tries int) RetryStrategy {
	if err := inner("LimitRetry", s); err != nil {
		return invalid("%w", err)
	}
	if tries < 1 {
		return invalid("LimitRetry(…, %d): want at least 1 try", tries)
	}
	return &strategy{next: func(attempt int, waited time.Duration) (time.Duration, bool) {
		if attempt >= tries {
			return 0, false
		}
		return s.NextBackoff(attempt, waited)
	}}
}

// LimitWait gives up once the total wait would exceed max. A negative max
// makes a Manager refuse the strategy with ErrInvalidArgument; zero means
// one attempt.
func LimitWait(s RetryStrategy, max time.Duration) RetryStrategy {
	if err := inner("LimitWait", s); err != nil {
		return invalid("%w", err)
	}
	if max < 0 {
		return invalid("LimitWait(…, %v): want a wait of zero or more", max)
	}
	return &strategy{next: func(attempt int, waited time.Duration) (time.Duration, bool) {
		d, ok := s.NextBackoff(attempt, waited)
		if !ok || waited >= max {
			return 0, false
		}
		if waited+d > max {
			d = max - waited
		}
		return d, true
	}}
}

// inner checks the strategy a combinator wraps.
func inner(name string, s RetryStrategy) error {
	if s == nil {
		return errors.New(name + "(nil, …): no strategy to limit")
	}
	return checkRetry(s)
}
