package distlock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/distlock/distlock/driver"
)

// minHold is a Lock's WithMinHold state, allocated only for handles made
// WithMinHold.
type minHold struct {
	until time.Time // keep the lock until then

	mu   sync.Mutex // serializes a renewal with keep's Extend
	kept bool       // keep's Extend succeeded: the lock is left to expire
}

func checkMinHold(c lockConfig) error {
	if !c.minHoldOK {
		return nil
	}
	if c.minHold < 0 || c.minHold > MaxTTL {
		return fmt.Errorf("WithMinHold(%v): want zero or a positive duration up to MaxTTL", c.minHold)
	}
	return nil
}

// keep is Release for a handle made WithMinHold before its minimum hold has
// passed: it stops renewal and sets the lock's TTL to what remains of the
// hold, leaving it to expire then. It reports whether it handled the
// release (false: release as usual).
func (l *Lock) keep(ctx context.Context) (bool, error) {
	h := l.minHold
	if h == nil {
		return false, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.kept {
		return true, &Error{Op: "release", Key: l.key, Kind: ErrNotHeld, Err: errors.New("released already (kept until its minimum hold, WithMinHold)")}
	}
	rest := time.Until(h.until)
	if rest <= 0 {
		return false, nil
	}
	g, t0, err := l.m.extend(ctx, "release", l.key, l.token, rest, l.mode)
	switch {
	case err == nil:
		h.kept = true
		l.extended(g, t0)
		l.finish(nil)
	case errors.Is(err, ErrNotHeld):
		l.finish(&Error{Op: "release", Key: l.key, Kind: ErrLockLost, Err: err})
	default:
		l.releasing.Store(false)
	}
	return true, err
}

// renewOnce is one renewal of the lock for ttl. It reports kept (and does
// nothing) once a release under WithMinHold has set the lock's final TTL.
// The renewal ends with ctx or at the lock's expiry.
func (l *Lock) renewOnce(ctx context.Context, ttl time.Duration) (g driver.Grant, t0 time.Time, kept bool, err error) {
	if h := l.minHold; h != nil {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.kept {
			return driver.Grant{}, time.Time{}, true, nil
		}
	}
	ctx, cancel := context.WithDeadline(ctx, l.Expiry())
	defer cancel()
	g, t0, err = l.m.extend(ctx, "renew", l.key, l.token, ttl, l.mode)
	return g, t0, false, err
}
