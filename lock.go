// Package distlock is a portable distributed lock library.
//
// One LockManager interface covers every backend: Redis (through
// go-redsync), etcd, PostgreSQL advisory locks and an in-process memory
// backend. Every backend passes the same conformance suite, so an
// application swaps backends by changing one URL:
//
//	lm, err := distlock.Open(ctx, os.Getenv("LOCK_URL")) // redis://, etcd://, postgres://, memory://
//	token, err := lm.Acquire(ctx, "seat:42", 10*time.Second)
//	defer lm.Release(ctx, "seat:42", token)
//
// The Manager type is the portable layer: it validates arguments, generates
// tokens, runs the retry/wait loop, classifies and wraps errors once, renews
// leases and reports lost locks. Backends implement the small Backend
// interface: one attempt per call, no retries.
package distlock

//go:generate go tool mockgen -destination=distlockmock/lockmanager.go -package=distlockmock -typed . LockManager

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// LockManager is the portable distributed lock interface. *Manager
// implements it for every backend; distlockmock holds a gomock mock of it.
//
// Acquire and Release keep the shape of go-common's lockmanager, so code
// written against it compiles unchanged.
type LockManager interface {
	// Acquire takes the lock on key for ttl, waiting per the manager's
	// retry strategy while another token holds it. It returns the token
	// that holds the lock: the explicit token if one is given, otherwise a
	// generated one (128 random bits). Acquiring again with the token that
	// holds the lock succeeds and resets the TTL without ever dropping it.
	//
	// When the lock stays taken it returns an error matching
	// ErrNotAcquired (and ctx.Err() when ctx ended the wait).
	Acquire(ctx context.Context, key string, ttl time.Duration, token ...string) (string, error)

	// Release frees the lock if token holds it. Otherwise it returns an
	// error matching ErrNotHeld and changes nothing.
	Release(ctx context.Context, key, token string) error

	// Extend resets the lock's TTL to ttl if token holds it. Otherwise it
	// returns an error matching ErrNotHeld; it never re-creates an expired
	// lock.
	Extend(ctx context.Context, key, token string, ttl time.Duration) error

	// Lock acquires key like Acquire and returns a handle that knows its
	// token, fence and expiry, can renew itself (WithAutoRenew) and
	// reports through Done when the lock is lost.
	Lock(ctx context.Context, key string, ttl time.Duration, opts ...LockOption) (*Lock, error)

	// Do acquires key, runs fn while the lock is held, renewing it
	// automatically, and releases it when fn returns (with WithMinHold,
	// not before the minimum hold has passed: see there). fn's context is
	// cancelled the moment the lock is lost; Do then returns an error
	// matching ErrLockLost.
	Do(ctx context.Context, key string, ttl time.Duration, fn func(ctx context.Context) error, opts ...LockOption) error

	// Capabilities reports what the backend supports: fencing,
	// cross-instance release, its minimum TTL and granularity. Code that
	// depends on one of them can check it here, or have Open refuse a
	// backend without it (Require).
	Capabilities() Capabilities

	// Close stops auto-renewal, closes the backend and makes every later
	// call return ErrClosed. Held locks are not released explicitly: they
	// expire by their TTL, or sooner where closing the backend ends them
	// (PostgreSQL session locks end with their session). Close may be
	// called more than once.
	Close() error
}

// Sentinel errors. Every error returned by a Manager is an *Error whose
// Kind is one of these; test with errors.Is.
var (
	// ErrNotAcquired: the lock is held by another token and the wait
	// ended (retries exhausted or ctx done).
	ErrNotAcquired = errors.New("not acquired")
	// ErrNotHeld: the token does not hold the lock (wrong token, expired,
	// released, never held).
	ErrNotHeld = errors.New("not held")
	// ErrUnavailable: the backend could not be reached or failed; the
	// cause is wrapped alongside.
	ErrUnavailable = errors.New("backend unavailable")
	// ErrInvalidArgument: a bad key, ttl, token, option or URL; nothing
	// was sent to the backend.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrClosed: the manager has been closed.
	ErrClosed = errors.New("manager closed")
	// ErrLockLost: a held lock was lost (expired without renewal, taken
	// away, or the backend dropped it). Reported by Lock.Err and Do.
	ErrLockLost = errors.New("lock lost")
	// ErrUnsupported: the backend cannot do what was asked — Inspect on a
	// backend that is no Inspector, or Open with a Require the backend's
	// Capabilities do not meet. It also matches errors.ErrUnsupported.
	ErrUnsupported = fmt.Errorf("not supported by the backend (%w)", errors.ErrUnsupported)
	// ErrNotOwnerInstance refines ErrNotHeld (an error matching it matches
	// ErrNotHeld too): Release or Extend reached a backend without
	// cross-instance release (Capabilities.CrossInstanceRelease is false,
	// as with PostgreSQL advisory locks) while the lock is held through
	// another instance — another Manager or process. Whatever the token,
	// only the instance that acquired the lock can release or extend it; it
	// is otherwise freed when its TTL passes. A wrong token on the instance
	// that holds the lock, or a lock nobody holds, gives plain ErrNotHeld.
	ErrNotOwnerInstance error = notOwnerInstance{}
	// ErrLimitMismatch: a semaphore was acquired with a limit other than
	// the one its current holders agreed on. Every participant of a
	// semaphore must use the same limit; nothing was taken.
	ErrLimitMismatch = errors.New("semaphore limit differs from its holders'")
	// ErrNoLeader: Election.Leader found nobody leading the election.
	ErrNoLeader = errors.New("no leader")
)

type notOwnerInstance struct{}

func (notOwnerInstance) Error() string {
	return "not held by this instance: the lock is held through another instance (Manager or process), and this backend lets only that instance release or extend it"
}
func (notOwnerInstance) Is(target error) bool { return target == ErrNotHeld }

// Error is the error type every Manager method returns. Kind is one of the
// sentinel errors (nil for a bare context error on Release or Extend) and
// Err the underlying cause, if any. errors.Is matches both.
type Error struct {
	Op   string // "acquire", "release", "extend", "renew", "open"
	Key  string // the lock key, if any
	Kind error  // a sentinel such as ErrNotAcquired; may be nil
	Err  error  // the cause; may be nil
}

// Error formats the error as "distlock: op "key": kind: cause".
func (e *Error) Error() string {
	msg := "distlock: " + e.Op
	if e.Key != "" {
		k := e.Key
		if len(k) > 64 {
			k = k[:64] + "…"
		}
		msg += fmt.Sprintf(" %q", k)
	}
	if e.Kind != nil && (e.Err == nil || !strings.HasPrefix(e.Err.Error(), e.Kind.Error())) {
		msg += ": " + e.Kind.Error()
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the kind and the cause, so errors.Is matches either.
func (e *Error) Unwrap() []error {
	switch {
	case e.Kind == nil:
		return []error{e.Err}
	case e.Err == nil:
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// Unavailable wraps a backend failure so that it matches ErrUnavailable
// while its message stays the cause's own. Backends use it to classify
// connection and server errors.
func Unavailable(cause error) error {
	if cause == nil {
		return ErrUnavailable
	}
	return unavailableError{cause}
}

type unavailableError struct{ cause error }

func (u unavailableError) Error() string        { return u.cause.Error() }
func (u unavailableError) Unwrap() error        { return u.cause }
func (u unavailableError) Is(target error) bool { return target == ErrUnavailable }
