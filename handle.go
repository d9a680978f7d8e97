package distlock

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distlock/distlock/driver"
)

// Lock is a held lock: the handle returned by Manager.Lock. It knows its
// token, fencing number and expiry, can be extended and released, renews
// itself when made WithAutoRenew, and closes Done when the lock is no
// longer held (released, expired, taken away, or the backend reported it
// lost). A Lock is safe for concurrent use.
type Lock struct {
	m     *Manager
	key   string
	token string
	fence uint64

	releasing atomic.Bool
	// idx, renewNext and at are the handle's place in the Manager's
	// scheduler (renew.go), guarded by m.sched.mu.
	idx       int32 // index in the heap; -1 when not in it
	renewNext bool  // the event at at is a renewal, else the expiry
	ended     bool  // guarded by mu (kept here, where it packs)
	at        int64 // the next event, in ns since the scheduler's epoch

	minHold *minHold     // WithMinHold; nil without
	mode    *driver.Mode // the primitive held (primitives.go); nil for a plain lock

	mu      sync.Mutex
	ttl     time.Duration
	expiry  time.Time
	done    chan struct{} // made by the first Done, or closedChan by finish
	err     error
	unwatch func()
	onLost  func(error) // Do: cancels fn's context
}

// closedChan is the Done channel of a handle that ended before anyone
// asked for one.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Key returns the lock's key.
func (l *Lock) Key() string { return l.key }

// Token returns the token that holds the lock.
func (l *Lock) Token() string { return l.token }

// Fence returns the grant's fencing number, strictly increasing across
// grants of the key, or 0 where the backend does not support fencing (see
// Capabilities.Fencing). Pass it to the resource you protect so it can
// reject writes from a holder whose lock has expired.
func (l *Lock) Fence() uint64 { return l.fence }

// Expiry returns when the lock expires unless extended. It is measured from
// before the request that granted or last extended the lock, so the server's
// expiry is never earlier than this.
func (l *Lock) Expiry() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.expiry
}

// Done returns a channel closed when the lock is no longer held: after
// Release, or when it is lost.
func (l *Lock) Done() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done == nil {
		if l.ended {
			l.done = closedChan
		} else {
			l.done = make(chan struct{})
		}
	}
	return l.done
}

// Err returns nil while the lock is held and after a clean Release; once the
// lock is lost it returns an error matching ErrLockLost, wrapping the cause.
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Extend resets the lock's TTL to ttl. If the lock turns out not to be held
// any more it returns ErrNotHeld and the handle reports the loss.
func (l *Lock) Extend(ctx context.Context, ttl time.Duration) error {
	g, t0, err := l.m.extend(ctx, "extend", l.key, l.token, ttl, l.mode)
	if err != nil {
		if errors.Is(err, ErrNotHeld) {
			l.finish(&Error{Op: "extend", Key: l.key, Kind: ErrLockLost, Err: err})
		}
		return err
	}
	l.extended(g, t0)
	return nil
}

// Release frees the lock. If it was not held any more Release returns
// ErrNotHeld (and the handle reports the loss). For a handle made
// WithMinHold, Release before the minimum hold has passed does not delete
// the lock: it stops renewal and leaves the lock to expire at the end of
// the hold (see WithMinHold); Done closes all the same.
func (l *Lock) Release(ctx context.Context) error {
	l.releasing.Store(true) // a renewal racing with this release must not report a loss
	if kept, err := l.keep(ctx); kept {
		return err
	}
	var err error
	if l.mode == nil {
		err = l.m.Release(ctx, l.key, l.token)
	} else if err = l.m.precheck(ctx, "release", l.key, l.token); err == nil {
		err = l.m.wrap(ctx, "release", l.key, l.m.prims.ReleaseMode(ctx, l.key, l.token, *l.mode))
	}
	switch {
	case err == nil:
		l.finish(nil)
	case errors.Is(err, ErrNotHeld):
		l.finish(&Error{Op: "release", Key: l.key, Kind: ErrLockLost, Err: err})
	default:
		l.releasing.Store(false)
	}
	return err
}

// Lock implements LockManager.
func (m *Manager) Lock(ctx context.Context, key string, ttl time.Duration, opts ...LockOption) (*Lock, error) {
	cfg, err := m.lockOptions(key, opts)
	if err != nil {
		return nil, err
	}
	ctx, oc := m.obs.begin(ctx, spanLock, key)
	token, g, t0, err := m.acquire(ctx, key, ttl, cfg.token, cfg.hasToken, cfg.retry, oc)
	oc.acquired(ctx, "lock", g, t0, err)
	if err != nil {
		return nil, err
	}
	return m.newHandle(key, token, g, t0, cfg, nil)
}

// lockOptions applies the options of a Lock (or a primitive's) call.
func (m *Manager) lockOptions(key string, opts []LockOption) (lockConfig, error) {
	cfg := lockConfig{retry: m.cfg.retry}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if err := checkMinHold(cfg); err != nil {
		return cfg, &Error{Op: "acquire", Key: key, Kind: ErrInvalidArgument, Err: err}
	}
	return cfg, nil
}

// newHandle makes the handle of a grant started at t0 and hands it to the
// scheduler: the end of Lock and of the primitives' calls.
func (m *Manager) newHandle(key, token string, g driver.Grant, t0 time.Time, cfg lockConfig, mode *driver.Mode) (*Lock, error) {
	l := &Lock{m: m, key: key, token: token, fence: g.Fence, ttl: g.TTL, expiry: t0.Add(grantValid(g)), idx: -1, mode: mode}
	if cfg.minHold > 0 {
		l.minHold = &minHold{until: t0.Add(cfg.minHold)}
	}
	var renewAfter time.Duration
	if cfg.autoRenew {
		renewAfter = time.Duration(float64(g.TTL) * m.cfg.renewFrac)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed.Load() { // Close ran while we acquired: leave nothing behind
		return nil, &Error{Op: "acquire", Key: key, Kind: ErrClosed}
	}
	if m.watcher != nil && mode == nil {
		// A loss reported at once waits for unwatch; finish waits for
		// m.mu, so it takes l out of the scheduler after add.
		l.mu.Lock()
		l.unwatch = m.watcher.WatchLoss(key, token, l.lostByBackend)
		l.mu.Unlock()
	}
	m.sched.add(l, l.expiry, renewAfter)
	return l, nil
}

// lostByBackend is the handle's LossWatcher callback. The backend may call
// it under its own locks: finish (which calls unwatch) runs elsewhere.
func (l *Lock) lostByBackend() {
	go l.finish(&Error{Op: "watch", Key: l.key, Kind: ErrLockLost, Err: errors.New("backend reported the lock gone")})
}

// extended records a successful extension started at t0.
func (l *Lock) extended(g driver.Grant, t0 time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return
	}
	l.ttl = g.TTL
	// The scheduler finds the new expiry when the old one comes.
	if exp := t0.Add(grantValid(g)); exp.After(l.expiry) {
		l.expiry = exp
	}
}

// finish marks the lock as no longer held, once, and takes it out of the
// Manager and its scheduler.
func (l *Lock) finish(reason error) {
	l.mu.Lock()
	if l.ended {
		l.mu.Unlock()
		return
	}
	l.ended = true
	l.err = reason
	l.m.obs.ended(l, reason) // before Done, so whoever waits on it sees the loss counted
	if l.done == nil {
		l.done = closedChan
	} else {
		close(l.done)
	}
	unwatch, onLost := l.unwatch, l.onLost
	l.mu.Unlock()
	if onLost != nil && reason != nil {
		onLost(reason)
	}
	if unwatch != nil {
		unwatch()
	}
	l.m.mu.Lock() // after Lock's add
	l.m.sched.remove(l)
	l.m.mu.Unlock()
}

// whenLost arranges for lost to be called with the cause once the lock is
// lost: at once if it has been lost already. Do uses it to cancel fn's
// context without a goroutine of its own.
func (l *Lock) whenLost(lost func(error)) {
	l.mu.Lock()
	if !l.ended {
		l.onLost = lost
		l.mu.Unlock()
		return
	}
	err := l.err
	l.mu.Unlock()
	if err != nil {
		lost(err)
	}
}

// Do implements LockManager.
func (m *Manager) Do(ctx context.Context, key string, ttl time.Duration, fn func(ctx context.Context) error, opts ...LockOption) (err error) {
	ctx, oc := m.obs.begin(ctx, spanDo, key)
	defer func() { oc.done(err) }()
	if fn == nil {
		return &Error{Op: "do", Key: key, Kind: ErrInvalidArgument, Err: errors.New("nil fn")}
	}
	l, err := m.Lock(ctx, key, ttl, append(opts, WithAutoRenew())...)
	if err != nil {
		return err
	}
	oc.locked(l)
	fctx, cancel := context.WithCancelCause(ctx)
	l.whenLost(cancel)
	ferr := fn(fctx)
	cancel(nil)
	if lerr := l.Err(); lerr != nil {
		return errors.Join(ferr, lerr)
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), max(ttl, time.Second))
	defer rcancel()
	rerr := l.Release(rctx)
	if ferr != nil {
		return ferr
	}
	return rerr
}
