package distlock

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
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
	minHold   minHold // WithMinHold

	mu      sync.Mutex
	ttl     time.Duration
	expiry  time.Time
	timer   *time.Timer // fires at expiry
	done    chan struct{}
	err     error
	ended   bool
	unwatch func()
}

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
func (l *Lock) Done() <-chan struct{} { return l.done }

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
	g, t0, err := l.m.extend(ctx, "extend", l.key, l.token, ttl)
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
	err := l.m.Release(ctx, l.key, l.token)
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
	cfg := lockConfig{retry: m.cfg.retry}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if err := checkMinHold(cfg); err != nil {
		return nil, &Error{Op: "acquire", Key: key, Kind: ErrInvalidArgument, Err: err}
	}
	ctx, oc := m.obs.begin(ctx, spanLock, key)
	token, g, t0, err := m.acquire(ctx, key, ttl, cfg.token, cfg.hasToken, cfg.retry, oc)
	oc.acquired(ctx, "lock", g, t0, err)
	if err != nil {
		return nil, err
	}
	l := &Lock{m: m, key: key, token: token, fence: g.Fence, ttl: g.TTL, expiry: t0.Add(g.valid()), done: make(chan struct{})}
	if cfg.minHold > 0 {
		l.minHold.until = t0.Add(cfg.minHold)
	}

	m.mu.Lock()
	if m.closed.Load() { // Close ran while we acquired: do not leave goroutines behind
		m.mu.Unlock()
		return nil, &Error{Op: "acquire", Key: key, Kind: ErrClosed}
	}
	m.locks[l] = struct{}{}
	l.mu.Lock()
	l.timer = time.AfterFunc(time.Until(l.expiry), l.onExpiry)
	if m.watcher != nil {
		l.unwatch = m.watcher.WatchLoss(key, token, func() {
			// Called by the backend, maybe under its locks: finish (which
			// calls unwatch) must run elsewhere.
			go l.finish(&Error{Op: "watch", Key: key, Kind: ErrLockLost, Err: errors.New("backend reported the lock gone")})
		})
	}
	if cfg.autoRenew {
		m.wg.Add(1)
		go l.renew()
	}
	l.mu.Unlock()
	m.mu.Unlock()
	return l, nil
}

func (l *Lock) currentTTL() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ttl
}

// extended records a successful extension started at t0.
func (l *Lock) extended(g Grant, t0 time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return
	}
	l.ttl = g.TTL
	if exp := t0.Add(g.valid()); exp.After(l.expiry) {
		l.expiry = exp
		l.timer.Reset(time.Until(exp))
	}
}

func (l *Lock) onExpiry() {
	l.mu.Lock()
	if wait := time.Until(l.expiry); wait > 0 && !l.ended { // extended meanwhile
		l.timer.Reset(wait)
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	l.finish(&Error{Op: "renew", Key: l.key, Kind: ErrLockLost, Err: errors.New("ttl expired")})
}

// finish marks the lock as no longer held, once.
func (l *Lock) finish(reason error) {
	l.mu.Lock()
	if l.ended {
		l.mu.Unlock()
		return
	}
	l.ended = true
	l.err = reason
	l.m.obs.ended(l, reason) // before Done, so whoever waits on it sees the loss counted
	close(l.done)
	if l.timer != nil {
		l.timer.Stop()
	}
	unwatch := l.unwatch
	l.mu.Unlock()
	if unwatch != nil {
		unwatch()
	}
	l.m.mu.Lock()
	delete(l.m.locks, l)
	l.m.mu.Unlock()
}

// renew extends the lock every ttl×fraction until it ends, with the TTL of
// the last grant or extension (so an Extend to a longer TTL is kept). A
// failed renewal that is not ErrNotHeld is retried sooner; the expiry timer
// declares the lock lost if none succeeds in time.
func (l *Lock) renew() {
	defer l.m.wg.Done()
	ttl := l.currentTTL()
	interval := time.Duration(float64(ttl) * l.m.cfg.renewFrac)
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-t.C:
		}
		ttl = l.currentTTL()
		g, t0, kept, err := l.renewOnce(ttl)
		if kept {
			return
		}
		l.m.obs.renewed(l, err)
		switch {
		case err == nil:
			l.extended(g, t0)
			interval = time.Duration(float64(ttl) * l.m.cfg.renewFrac)
		case errors.Is(err, ErrNotHeld):
			if !l.releasing.Load() { // else Release is ending the lock itself
				l.finish(&Error{Op: "renew", Key: l.key, Kind: ErrLockLost, Err: err})
			}
			return
		case errors.Is(err, ErrClosed):
			return
		default: // transient: try again soon, until the expiry timer gives up
			interval = max(ttl/10, 5*time.Millisecond)
		}
		t.Reset(interval)
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
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		select {
		case <-l.done:
			if lerr := l.Err(); lerr != nil {
				cancel(lerr)
			}
		case <-fctx.Done():
		}
	}()
	ferr := fn(fctx)
	cancel(nil)
	<-watchDone
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
