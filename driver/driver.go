// Package driver defines the interface a distlock backend implements and
// its optional capabilities. Users of distlock never need it: they use
// distlock.Manager (or distlock.Open), which does validation, token
// generation, waiting, renewal, error wrapping and observability once for
// every backend, over a driver.Backend. Backend authors implement Backend
// and whichever optional interfaces their server supports; the conformance
// package tests the result.
//
// Errors: a backend returns distlock.ErrNotAcquired (held by another
// token), distlock.ErrNotHeld (token does not hold the key), or a failure
// wrapped with distlock.Unavailable. Any other error is treated as
// distlock.ErrUnavailable.
package driver

import (
	"context"
	"time"
)

// Backend is what a lock backend implements: one attempt per call, no
// retries, no argument validation beyond its own needs. The Manager does
// validation, token generation, retries, error wrapping, renewal and
// closed-checks once for every backend.
//
// Errors: see the package documentation. A backend must return promptly
// when ctx ends.
//
// Keys are arbitrary non-empty byte strings (binary and non-UTF-8 keys are
// distinct locks); tokens are non-empty strings. TTLs handed to a backend
// are already rounded up to its Capabilities' MinTTL and Granularity.
type Backend interface {
	// Acquire grants key to token for ttl if key is free or already held
	// by token (then it resets the TTL without a gap). If another token
	// holds key it returns ErrNotAcquired.
	Acquire(ctx context.Context, key, token string, ttl time.Duration) (Grant, error)
	// Extend resets key's TTL to ttl if token holds it, else returns
	// ErrNotHeld. It never re-creates an expired key.
	Extend(ctx context.Context, key, token string, ttl time.Duration) (Grant, error)
	// Release deletes key if token holds it, else returns ErrNotHeld.
	Release(ctx context.Context, key, token string) error
	// Capabilities declares what the backend supports.
	Capabilities() Capabilities
	// Close releases the backend's resources (not the user's client if the
	// backend was built on one). It is called once.
	Close() error
}

// Grant describes a successful Acquire or Extend.
type Grant struct {
	// TTL is the lease the server really granted, never shorter than the
	// one asked for. Zero means exactly the TTL asked for.
	TTL time.Duration
	// Valid, if set, is how long the grant can be relied on, measured from
	// before the request: shorter than TTL where the backend subtracts
	// round-trip time and clock drift (Redlock). Lock.Expiry uses it. Zero
	// means TTL.
	Valid time.Duration
	// Fence is the fencing number of this grant (strictly increasing across
	// grants of a key) where Capabilities.Fencing is true, else 0. A
	// re-acquire by the holder keeps the grant's fence.
	Fence uint64
	// At, if set, is when the TTL and Valid start counting: a time no
	// later than the server's grant, such as the start of the request that
	// made it. AcquireWait sets it, since its call may have begun long
	// before the grant; zero means the start of the call.
	At time.Time
}

// Capabilities declares what a backend supports; the conformance suite
// tests what is declared and docs/design.md shows the matrix.
type Capabilities struct {
	// Name is a short backend name such as "redis" or "etcd".
	Name string
	// Fencing: grants carry strictly increasing fencing numbers.
	Fencing bool
	// CrossInstanceRelease: a manager other than the one that acquired a
	// lock can release or extend it with the token.
	CrossInstanceRelease bool
	// MinTTL is the shortest lease the backend grants; shorter TTLs are
	// rounded up to it.
	MinTTL time.Duration
	// Granularity is the unit the backend counts leases in (1ms for Redis,
	// 1s for etcd); TTLs are rounded up to a multiple of it.
	Granularity time.Duration
	// ReadWrite, Semaphore and Election declare the primitives of
	// Primitives the backend offers: Read and Write, Permit, Leader.
	ReadWrite, Semaphore, Election bool
}

// RoundTTL returns ttl as the Manager hands it to the backend: raised to
// MinTTL and rounded up to a multiple of Granularity. It never shortens.
func (c Capabilities) RoundTTL(ttl time.Duration) time.Duration {
	ttl = max(ttl, c.MinTTL)
	if g := c.Granularity; g > 0 && ttl%g != 0 {
		ttl = (ttl/g + 1) * g
	}
	return ttl
}

// Queuer is implemented by backends whose server can queue the waiters of
// a key itself, so that a release hands the key to exactly one waiter, in
// the order they queued, across every process: etcd's create-revision
// queue, PostgreSQL's blocking pg_advisory_lock, a Redis list next to the
// key. The Manager calls AcquireWait for the first of its goroutines
// waiting for a key (the others wait in the Manager's own line, see
// distlock.WithHandoffLimit), instead of retrying Acquire. The backend
// keeps no waiter state beyond what the server's queue needs.
type Queuer interface {
	// AcquireWait grants key to token for ttl, waiting in the server's
	// queue behind the waiters that queued earlier while another token
	// holds key. If key is free and nobody queues, or key is already held
	// by token (a re-acquire), it returns at once as Acquire does. It
	// returns when the key is granted, or when ctx ends: then with an
	// error matching ctx.Err(), having left the queue and holding nothing
	// through this call (a grant that raced with the end of ctx is
	// released before it returns). A grant that reached token by other
	// means meanwhile (a Transfer to token by this backend) is left alone:
	// the Manager cancels the wait once it has handed the key over that
	// way. A server it cannot reach gives an error wrapped with
	// distlock.Unavailable; the Manager then retries per its strategy.
	AcquireWait(ctx context.Context, key, token string, ttl time.Duration) (Grant, error)
}

// LossWatcher is implemented by backends that learn by themselves when a
// held lock is gone (a session died, a lease was revoked). Lock handles use
// it to report a loss at once instead of at the next renewal or expiry.
type LossWatcher interface {
	// WatchLoss arranges for lost to be called, at most once, when the
	// grant of key to token is known to be lost (not when its holder
	// releases it). If the grant is not live any more, lost may be called
	// at once. lost never blocks, so the backend may call it with its own
	// locks held. stop ends the watch; lost may still run once concurrently
	// with stop, never after stop has returned.
	WatchLoss(key, token string, lost func()) (stop func())
}

// Transferer is implemented by backends that can pass a held lock from one
// token to another in one atomic step. The Manager uses it for in-process
// hand-offs: when a key is released while other goroutines of the same
// Manager wait for it, the lock goes straight to the first of them — one
// backend operation instead of a release and an acquire, and no moment in
// which the key is free.
type Transferer interface {
	// Transfer grants key to token to for ttl if token from holds it, as
	// one atomic operation: afterwards from holds nothing and to holds key
	// with a fresh TTL and, where the backend fences, a new fence greater
	// than from's. If from does not hold key it returns ErrNotHeld and
	// changes nothing. For a LossWatcher, a transfer ends from's grant the
	// way Release does (it is not a loss). from and to differ.
	Transfer(ctx context.Context, key, from, to string, ttl time.Duration) (Grant, error)
}

// Inspector is implemented by backends that can look at a lock without
// changing it: no TTL is reset, nothing is taken or released. The Manager
// exposes it as Manager.Inspect (distlock status uses it).
type Inspector interface {
	// Inspect reports whether key is held and, where the backend knows,
	// its remaining TTL and fence. It never changes the lock.
	Inspect(ctx context.Context, key string) (LockInfo, error)
}

// LockInfo is what Inspect learns about a lock.
type LockInfo struct {
	// Held reports whether some token holds the key.
	Held bool
	// TTL is the time left before the lock expires unless extended; zero
	// when the key is free or the backend cannot tell (PostgreSQL, for a
	// lock held through another instance).
	TTL time.Duration
	// Fence is the fencing number of the current grant; zero when the key
	// is free, the backend does not fence, or it cannot tell.
	Fence uint64
	// Holder is the token that holds the key, where the backend can tell
	// (empty when the key is free, or on PostgreSQL for a lock held through
	// another instance). Tokens release locks: treat it as a secret, as
	// the Manager does (it never logs or records one).
	Holder string
	// Waiters is how many waiters queue for the key on the server, where
	// the backend is a Queuer (in every process, the holder not counted);
	// zero otherwise.
	Waiters int
}
