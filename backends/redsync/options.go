package redsync

import (
	"github.com/distlock/distlock"
	rs "github.com/go-redsync/redsync/v4"
)

// Option configures NewRedsyncLockManager, NewBackend, NewRedlock, New and
// their Manager variants. Options that only make sense for a Manager
// (token generator, manager options) are ignored by the backend
// constructors.
type Option func(*config)

type config struct {
	fenceKey      string
	channelPrefix string
	tokenGen      func(key string) string
	redsync       []rs.Option
	manager       []distlock.Option
	closeClient   bool
	noFence       bool
	cluster       bool
}

func newConfig(opts []Option) *config {
	c := &config{fenceKey: DefaultFenceKey, channelPrefix: DefaultChannelPrefix}
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	return c
}

// WithTokenGenerator makes the Manager call gen for the token of each
// grant made without an explicit token (as go-common's lockmanager did).
// gen must return distinct tokens for distinct callers, or they will all
// hold the lock together.
func WithTokenGenerator(gen func(key string) string) Option {
	return func(c *config) { c.tokenGen = gen }
}

// WithRedsyncOptions hands go-redsync Mutex options to go-redsync itself:
// every Acquire then runs a go-redsync Mutex built with them and calls its
// LockContext, so go-redsync's own retry loop (redsync.WithTries,
// WithRetryDelay, WithRetryDelayFunc; go-redsync's defaults, 32 tries
// 50–250 ms apart, where they are not given), quorum, drift
// (WithDriftFactor), per-node timeout (WithTimeoutFactor), fail-fast and
// pool shuffling apply as go-redsync documents them. Managers built by
// NewRedsyncLockManager and NewRedlockManager then make one call per
// Acquire (distlock.NoRetry) instead of waiting again on top of
// go-redsync's loop; waiters poll at go-redsync's delay rather than wake
// on release.
//
// The TTL and the token stay arguments of every call: redsync.WithExpiry,
// WithValue and WithGenValueFunc have no effect on them (use
// WithTokenGenerator for tokens). redsync.WithSetNXOnExtend is neutralised
// on purpose: extending an expired lock must never re-create it.
func WithRedsyncOptions(opts ...rs.Option) Option {
	return func(c *config) { c.redsync = append(c.redsync, opts...) }
}

// WithManagerOptions passes options to the Manager built by
// NewRedsyncLockManager, NewRedlockManager or NewManager, such as
// distlock.WithRetry. They apply after the options this package derives.
func WithManagerOptions(opts ...distlock.Option) Option {
	return func(c *config) { c.manager = append(c.manager, opts...) }
}

// WithCloseClient makes the backend's Close (and so the Manager's) close
// the go-redis client(s) it was given too.
func WithCloseClient() Option {
	return func(c *config) { c.closeClient = true }
}

// WithoutFencing makes a single-node backend grant locks without fencing
// numbers (Capabilities.Fencing false, Lock.Fence 0): acquire and extend
// are then go-redsync Mutex operations with one pool (SET NX PX, its extend
// script), the release is distlock's queue-aware script, and the lock's
// value is the bare token, as go-redsync stores it. Redlock never fences.
func WithoutFencing() Option {
	return func(c *config) { c.noFence = true }
}

// WithFenceKey names the fencing counter key (default DefaultFenceKey).
// Lock keys that begin with it are refused with ErrInvalidArgument, so no
// lock can ever be named like the counter. Every manager sharing locks
// must use the same fence key.
func WithFenceKey(key string) Option {
	return func(c *config) {
		if key != "" {
			c.fenceKey = key
		}
	}
}

// WithChannelPrefix sets the prefix of the backend's wake-up channel
// (default DefaultChannelPrefix), on which releases in every process tell
// this backend's queued waiters that they have the key. Every client
// sharing locks must use the same prefix, or waiters fall back to polling.
func WithChannelPrefix(prefix string) Option {
	return func(c *config) {
		if prefix != "" {
			c.channelPrefix = prefix
		}
	}
}

// WithCluster tells a backend built on a go-redsync pool (New,
// NewPoolBackend) that the pool reaches a Redis Cluster, so that each
// key's fence counter lives in the key's own hash slot. Backends built on a
// go-redis *redis.ClusterClient know it already.
func WithCluster() Option {
	return func(c *config) { c.cluster = true }
}

// managerOptions returns the distlock options c implies.
func (c *config) managerOptions() []distlock.Option {
	var out []distlock.Option
	if len(c.redsync) > 0 {
		out = append(out, distlock.WithRetry(distlock.NoRetry()))
	}
	if c.tokenGen != nil {
		out = append(out, distlock.WithTokenGenerator(c.tokenGen))
	}
	return append(out, c.manager...)
}
