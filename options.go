package distlock

import "time"

// Option configures a Manager (New, Open).
type Option func(*managerConfig)

type managerConfig struct {
	retry     RetryStrategy
	tokenGen  func(key string) string
	renewFrac float64

	handoffLimit int

	obs     obsConfig     // observe.go
	require []Requirement // see Require
}

// WithRetry sets the strategy Acquire, Lock and Do use while a key is held
// by another token. The default is DefaultRetry.
func WithRetry(s RetryStrategy) Option {
	return func(c *managerConfig) {
		if s != nil {
			c.retry = s
		}
	}
}

// WithTokenGenerator makes the Manager call gen for the token of each grant
// made without an explicit token, instead of generating 128 random bits.
// The generator must return distinct non-empty tokens for distinct callers
// or locks stop being exclusive between them.
func WithTokenGenerator(gen func(key string) string) Option {
	return func(c *managerConfig) { c.tokenGen = gen }
}

// WithRenewFraction sets when auto-renewal extends a lock, as a fraction of
// its TTL (default 1/3: a 30s lock is renewed every 10s). Values outside
// (0, 0.9] are ignored.
func WithRenewFraction(f float64) Option {
	return func(c *managerConfig) {
		if f > 0 && f <= 0.9 {
			c.renewFrac = f
		}
	}
}

// LockOption configures one Lock or Do call.
type LockOption func(*lockConfig)

type lockConfig struct {
	token     string
	hasToken  bool
	autoRenew bool
	retry     RetryStrategy
	minHold   time.Duration // see WithMinHold
	minHoldOK bool
}

// WithToken makes the call use token instead of a generated one. Locking
// again with the token that holds the lock resets its TTL.
func WithToken(token string) LockOption {
	return func(c *lockConfig) { c.token, c.hasToken = token, true }
}

// WithAutoRenew makes the Lock handle extend itself every TTL×fraction
// (see WithRenewFraction) until it is released or lost. Do always renews.
func WithAutoRenew() LockOption {
	return func(c *lockConfig) { c.autoRenew = true }
}

// WithLockRetry overrides the manager's retry strategy for one call.
func WithLockRetry(s RetryStrategy) LockOption {
	return func(c *lockConfig) {
		if s != nil {
			c.retry = s
		}
	}
}

// TryOnce makes one Lock or Do call a single attempt: if the key is held it
// fails at once with ErrNotAcquired instead of waiting. It is
// WithLockRetry(NoRetry()); a free key is always taken, even while other
// goroutines of the Manager wait for it. For every Acquire of a Manager use
// WithRetry(NoRetry()).
//
// With WithMinHold it makes a run-once job: of several replicas whose
// schedules fire at about the same time, the first runs the job and the
// others skip it.
func TryOnce() LockOption { return WithLockRetry(NoRetry()) }

// WithMinHold keeps the lock at least until d after it was acquired (the
// start of the request that granted it), even when the work finishes
// earlier — ShedLock's lockAtLeastFor. Use it for jobs that must run once
// per schedule across replicas whose clocks or schedules differ a little:
//
//	err := lm.Do(ctx, "nightly-report", time.Minute, report,
//		distlock.WithMinHold(10*time.Minute), distlock.TryOnce())
//
// When fn returns (Do) or Release is called (a Lock handle) before start+d,
// the lock is not deleted: its TTL is set to what remains of d (rounded up
// to the backend's MinTTL and Granularity; etcd keeps a longer lease it
// already has), auto-renewal stops, and the lock is left to expire by
// itself. Do and Release return at once, without waiting; the handle's Done
// closes and Err stays nil, as after any Release. From start+d on, Release
// deletes the lock as usual. The lock is kept for d even when fn fails.
//
// The lock then lives on the server, not in the process — except on
// PostgreSQL, whose advisory locks end with the holder's session: there a
// process that exits, or closes its Manager, frees the lock at once, hold
// or not. Keep that process running until the hold ends.
//
// d must be zero (no minimum) or positive, and at most MaxTTL; otherwise the
// call fails with ErrInvalidArgument, sending nothing.
func WithMinHold(d time.Duration) LockOption {
	return func(c *lockConfig) { c.minHold, c.minHoldOK = d, true }
}

// Limits on arguments, the same for every backend.
const (
	// MaxKeyLen is the longest key, in bytes.
	MaxKeyLen = 1024
	// MaxTokenLen is the longest token, in bytes.
	MaxTokenLen = 256
	// MaxTTL is the longest TTL accepted.
	MaxTTL = 365 * 24 * time.Hour
)
