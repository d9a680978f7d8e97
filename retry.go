package distlock

import (
	"math/rand/v2"
	"time"
)

// RetryStrategy decides how long Acquire waits before its next attempt on a
// lock held by someone else. It is stateless: the Manager keeps the state of
// each call (attempt count and time waited) and passes it in, so one
// strategy value is safely shared by every call and goroutine.
type RetryStrategy interface {
	// NextBackoff is called after attempt failed attempts (1, 2, …) and
	// waited time since the call began. It returns the delay before the
	// next attempt, or false to give up.
	NextBackoff(attempt int, waited time.Duration) (time.Duration, bool)
}

// DefaultRetry is the strategy a Manager uses unless told otherwise:
// jittered exponential backoff from 2ms up to 100ms between attempts, giving
// up after 5 seconds of waiting (or earlier, when ctx ends). On backends that
// notify releases the backoff is only the fallback poll: waiters wake as soon
// as the lock is released.
var DefaultRetry RetryStrategy = LimitWait(ExponentialBackoff(2*time.Millisecond, 100*time.Millisecond), 5*time.Second)

type retryFunc func(attempt int, waited time.Duration) (time.Duration, bool)

func (f retryFunc) NextBackoff(attempt int, waited time.Duration) (time.Duration, bool) {
	return f(attempt, waited)
}

// NoRetry makes a single attempt: Acquire fails at once if the key is held.
func NoRetry() RetryStrategy {
	return retryFunc(func(int, time.Duration) (time.Duration, bool) { return 0, false })
}

// LinearBackoff waits d between attempts, forever (until ctx ends).
func LinearBackoff(d time.Duration) RetryStrategy {
	return retryFunc(func(int, time.Duration) (time.Duration, bool) { return d, true })
}

// ExponentialBackoff doubles the wait from min up to max, with equal jitter
// (each wait is uniformly drawn from [d/2, d]), forever (until ctx ends).
func ExponentialBackoff(min, max time.Duration) RetryStrategy {
	if min <= 0 {
		min = time.Millisecond
	}
	if max < min {
		max = min
	}
	return retryFunc(func(attempt int, _ time.Duration) (time.Duration, bool) {
		d := min
		for i := 1; i < attempt && d < max; i++ {
			d *= 2
		}
		if d > max {
			d = max
		}
		half := d / 2
		return half + rand.N(d-half+1), true
	})
}

// LimitRetry gives up after tries attempts in all (the first one included).
func LimitRetry(s RetryStrategy, tries int) RetryStrategy {
	return retryFunc(func(attempt int, waited time.Duration) (time.Duration, bool) {
		if attempt >= tries {
			return 0, false
		}
		return s.NextBackoff(attempt, waited)
	})
}

// LimitWait gives up once the total wait would exceed max.
func LimitWait(s RetryStrategy, max time.Duration) RetryStrategy {
	return retryFunc(func(attempt int, waited time.Duration) (time.Duration, bool) {
		d, ok := s.NextBackoff(attempt, waited)
		if !ok || waited >= max {
			return 0, false
		}
		if waited+d > max {
			d = max - waited
		}
		return d, true
	})
}
