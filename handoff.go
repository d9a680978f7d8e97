package distlock

import (
	"context"
	"time"

	"github.com/distlock/distlock/driver"
)

// In-process hand-off. Goroutines of one Manager that wait for the same key
// queue in arrival order. Only the first of them (the head) tries the
// backend and listens for releases; the others wait their turn without any
// backend traffic. When a goroutine of this Manager releases the key while
// others queue for it, the lock goes to the head:
//
//   - through Transferer, in one atomic backend operation (the key is
//     never free, so nobody can slip in between), at most
//     HandoffLimit times in a row, after which a plain release lets
//     waiters of every process race for the key;
//   - otherwise by a plain release after which the head tries at once,
//     without waiting for the backend's release notification.

// DefaultHandoffLimit is how many times in a row a Manager hands a key
// straight from one of its goroutines to the next (Transferer backends)
// before a release lets other processes' waiters race for it.
const DefaultHandoffLimit = 8

// WithHandoffLimit sets how many times in a row a key may be handed from one
// goroutine of the Manager to the next through the backend's atomic
// transfer, before a plain release gives waiters in other processes their
// chance (default DefaultHandoffLimit). 0 turns the transfer off: every
// release is a plain release (local waiters still queue in arrival order).
// Negative values are ignored.
func WithHandoffLimit(n int) Option {
	return func(c *managerConfig) {
		if n >= 0 {
			c.handoffLimit = n
		}
	}
}

// keyQueue is the line of one key's waiters in one Manager.
type keyQueue struct {
	ws     []*waiter // ws[0] is the head
	streak int       // transfers in a row to this line
	// holder is the token of a goroutine of this Manager that got the key
	// through this line and holds it until at most holdUntil, if any: the
	// head then waits for its release here rather than in the server's
	// queue (queue.go), so that a transfer needs no queue entry undone.
	holder    string
	holdUntil time.Time
}

// waiter is one goroutine in a keyQueue. Its fields are guarded by
// Manager.qmu.
type waiter struct {
	token string
	ttl   time.Duration
	head  bool
	// wake receives when w became the head or the key was released by
	// this Manager: try the backend now.
	wake chan struct{}
	// inflight is non-nil while a transfer to w runs; it is closed when
	// the transfer ends.
	inflight chan struct{}
	// granted is set when a transfer to w landed (w has left the line).
	granted *handoff
	got     chan struct{} // receives when granted is set
	// cancelWait, while w waits in the backend's queue (queue.go), ends
	// that wait: a transfer to w landed.
	cancelWait func()
}

type handoff struct {
	g  driver.Grant
	t0 time.Time
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Waiting reports how many goroutines of this Manager wait for key (in
// Acquire, Lock or Do), in its line. It is meant for tests and metrics.
func (m *Manager) Waiting(key string) int {
	m.qmu.Lock()
	defer m.qmu.Unlock()
	if q := m.queues[key]; q != nil {
		return len(q.ws)
	}
	return 0
}

// enqueue puts a new waiter for key at the end of its line.
func (m *Manager) enqueue(key, token string, ttl time.Duration) *waiter {
	w := &waiter{token: token, ttl: ttl, wake: make(chan struct{}, 1), got: make(chan struct{}, 1)}
	m.qmu.Lock()
	defer m.qmu.Unlock()
	q := m.queues[key]
	if q == nil {
		q = &keyQueue{}
		m.queues[key] = q
	}
	q.ws = append(q.ws, w)
	w.head = len(q.ws) == 1
	return w
}

// isHead reports whether w may try the backend: it heads the line and no
// transfer to it is under way (that one's outcome is worth waiting for).
func (m *Manager) isHead(w *waiter) bool {
	m.qmu.Lock()
	defer m.qmu.Unlock()
	return w.head && w.inflight == nil
}

// removeLocked takes w out of key's line and makes the next waiter the
// head. Called with qmu held.
func (m *Manager) removeLocked(key string, w *waiter) {
	q := m.queues[key]
	if q == nil {
		return
	}
	for i, x := range q.ws {
		if x != w {
			continue
		}
		q.ws = append(q.ws[:i], q.ws[i+1:]...)
		if len(q.ws) == 0 {
			delete(m.queues, key)
		} else if i == 0 {
			q.ws[0].head = true
			signal(q.ws[0].wake)
		}
		return
	}
}

// leave takes w out of key's line. If a transfer to w is running it waits
// for it, and returns the grant if it landed: the key is then held by
// w.token and the caller must keep or release it.
func (m *Manager) leave(key string, w *waiter) *handoff {
	m.qmu.Lock()
	defer m.qmu.Unlock()
	h := m.settleLocked(w)
	if h == nil {
		m.removeLocked(key, w)
	}
	return h
}

// settleLocked waits (releasing qmu meanwhile) for a transfer to w under
// way to end, and returns its grant if it landed (w has then left the
// line). Called with qmu held.
func (m *Manager) settleLocked(w *waiter) *handoff {
	for w.inflight != nil {
		ch := w.inflight
		m.qmu.Unlock()
		<-ch
		m.qmu.Lock()
	}
	return w.granted
}

// giveUp ends an acquire without the lock: w (if any) leaves key's line,
// and a grant a transfer handed it meanwhile is passed on.
func (m *Manager) giveUp(ctx context.Context, op, key, token string, ttl time.Duration, w *waiter, kind, c error) (string, driver.Grant, time.Time, error) {
	if w != nil && m.leave(key, w) != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(ttl, time.Second))
		_ = m.release(rctx, key, token)
		cancel()
	}
	if kind == ErrUnavailable {
		c = m.annotate(c)
	}
	return "", driver.Grant{}, time.Time{}, &Error{Op: op, Key: key, Kind: kind, Err: c}
}

// takeGrant returns the transferred grant of w, if one landed.
func (m *Manager) takeGrant(w *waiter) *handoff {
	m.qmu.Lock()
	defer m.qmu.Unlock()
	return w.granted
}

// handOff is the release of key by token when goroutines of this Manager
// wait for it. It reports whether it did the release (err is then its
// result); if not, the caller does a plain release, and then wakes the
// head if wake is true.
func (m *Manager) handOff(ctx context.Context, key, token string) (done, wake bool, err error) {
	m.qmu.Lock()
	q := m.queues[key]
	if q == nil || len(q.ws) == 0 {
		m.qmu.Unlock()
		return false, false, nil
	}
	if q.holder == token {
		q.holder = ""
	}
	w := q.ws[0]
	switch {
	case m.transferer == nil || m.cfg.handoffLimit == 0 || w.token == token:
		m.qmu.Unlock()
		return false, true, nil
	case w.inflight != nil: // another release of the key is transferring it
		m.qmu.Unlock()
		return false, false, nil
	case q.streak >= m.cfg.handoffLimit:
		// A plain release: the key goes to whoever waits first on the
		// server. A head that waits in the server's queue learns of it
		// there; one that waited here behind this holder joins it now.
		q.streak = 0
		m.qmu.Unlock()
		return false, m.queuer != nil, nil
	}
	q.streak++
	ch := make(chan struct{})
	w.inflight = ch
	m.qmu.Unlock()

	t0 := time.Now()
	g, err := m.transferer.Transfer(ctx, key, token, w.token, w.ttl)

	m.qmu.Lock()
	w.inflight = nil
	if err == nil {
		if g.TTL < w.ttl {
			g.TTL = w.ttl
		}
		w.granted = &handoff{g: g, t0: t0}
		m.removeLocked(key, w)
		if q := m.queues[key]; q != nil {
			q.holder, q.holdUntil = w.token, t0.Add(grantValid(g))
		}
		signal(w.got)
		if w.cancelWait != nil {
			w.cancelWait()
		}
		m.obs.handoff(ctx)
	} else {
		if q := m.queues[key]; q != nil && q.streak > 0 {
			q.streak--
		}
		signal(w.wake) // w waited for this transfer: let it try by itself
	}
	m.qmu.Unlock()
	close(ch)
	return true, false, err
}

// gotThroughLine records that token, which waited in key's line, now holds
// key until at most until, if others of this Manager still wait for it.
func (m *Manager) gotThroughLine(key, token string, until time.Time) {
	m.qmu.Lock()
	defer m.qmu.Unlock()
	if q := m.queues[key]; q != nil {
		q.holder, q.holdUntil = token, until
	}
}

// localHolder returns until when a goroutine of this Manager holds key
// after getting it through key's line, or the zero time.
func (m *Manager) localHolder(key string) time.Time {
	m.qmu.Lock()
	defer m.qmu.Unlock()
	if q := m.queues[key]; q != nil && q.holder != "" && time.Now().Before(q.holdUntil) {
		return q.holdUntil
	}
	return time.Time{}
}

// wakeHead tells key's head, if any, that this Manager released the key.
func (m *Manager) wakeHead(key string) {
	m.qmu.Lock()
	defer m.qmu.Unlock()
	if q := m.queues[key]; q != nil && len(q.ws) > 0 {
		signal(q.ws[0].wake)
	}
}
