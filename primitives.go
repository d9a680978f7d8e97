package distlock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/distlock/distlock/driver"
)

// Read-write locks, semaphores and elections: the primitives beyond the
// mutex. Each lives in a key space of its own on the server, so the
// read-write lock "a", the semaphore "a", the election "a" and the lock "a"
// are independent. Each hold is a *Lock with the token, TTL, renewal, loss
// signal and fence of a plain one; the Manager waits for them the same way
// for every backend: in the server's queue where the backend has one
// (driver.ModeWaiter), else by retrying per the retry strategy, woken early
// where the backend announces changes (driver.ModeWatcher).

// MaxValueLen is the longest value a leader publishes, in bytes.
const MaxValueLen = 4096

// RWMutex is a distributed read-write lock on a key: many readers, or one
// writer. Writers are preferred: once a writer waits, new readers wait
// behind it, so a stream of readers cannot starve writers (readers already
// holding finish first). Get one with Manager.RWMutex; it is a small value
// that holds no state and is safe for concurrent use.
type RWMutex struct {
	m   *Manager
	key string
}

// RWMutex returns the read-write lock on key. Nothing is sent until RLock
// or Lock.
func (m *Manager) RWMutex(key string) *RWMutex { return &RWMutex{m: m, key: key} }

// RLock takes a read (shared) hold of the lock for ttl, waiting per the
// retry strategy while a writer holds it or waits for it. The handle
// renews itself WithAutoRenew and reports a loss through Done, as a Lock
// does. It needs Capabilities().ReadWrite (else ErrUnsupported).
func (rw *RWMutex) RLock(ctx context.Context, ttl time.Duration, opts ...LockOption) (*Lock, error) {
	return rw.m.lockMode(ctx, spanRLock, rw.key, ttl, driver.Mode{Kind: driver.Read}, opts, false)
}

// Lock takes the write (exclusive) hold of the lock for ttl, waiting per
// the retry strategy while readers or another writer hold it. While it
// waits, new readers are refused. Its fence is greater than every earlier
// hold's, read or write, where the backend fences.
func (rw *RWMutex) Lock(ctx context.Context, ttl time.Duration, opts ...LockOption) (*Lock, error) {
	return rw.m.lockMode(ctx, spanWLock, rw.key, ttl, driver.Mode{Kind: driver.Write}, opts, false)
}

// Inspect reports the lock's holders without changing anything: Holders
// readers, or a writer (Exclusive, with its fence and TTL where known).
func (rw *RWMutex) Inspect(ctx context.Context) (HoldersInfo, error) {
	return rw.m.inspectMode(ctx, rw.key, driver.Mode{Kind: driver.Write})
}

// Semaphore is a distributed counting semaphore: at most Limit holders of
// its key at once, each with its own token, TTL and renewal. Every
// participant must use the same limit: an Acquire with another limit than
// the current holders' fails with ErrLimitMismatch, taking nothing. Get
// one with Manager.Semaphore.
type Semaphore struct {
	m     *Manager
	key   string
	limit int
}

// Semaphore returns the semaphore on key allowing limit holders (at least
// 1; a smaller one makes Acquire fail with ErrInvalidArgument).
func (m *Manager) Semaphore(key string, limit int) *Semaphore {
	return &Semaphore{m: m, key: key, limit: limit}
}

// Acquire takes one of the semaphore's permits for ttl, waiting per the
// retry strategy while Limit others hold one. It needs
// Capabilities().Semaphore (else ErrUnsupported).
func (s *Semaphore) Acquire(ctx context.Context, ttl time.Duration, opts ...LockOption) (*Lock, error) {
	return s.m.lockMode(ctx, spanSemaphore, s.key, ttl, driver.Mode{Kind: driver.Permit, Limit: s.limit}, opts, false)
}

// Inspect reports how many hold a permit and the limit they agreed on.
func (s *Semaphore) Inspect(ctx context.Context) (HoldersInfo, error) {
	return s.m.inspectMode(ctx, s.key, driver.Mode{Kind: driver.Permit, Limit: s.limit})
}

// HoldersInfo is what RWMutex.Inspect and Semaphore.Inspect learn (see
// driver.ModeInfo for the fields).
type HoldersInfo = driver.ModeInfo

// Election is a leader election among processes: one participant at a
// time leads, publishing a value the others can read. Leadership is a
// lease of the election's TTL, renewed while the leader lives; a leader
// that crashes or is cut off loses it when the TTL passes. Get one with
// Manager.Election.
type Election struct {
	m    *Manager
	name string
	ttl  time.Duration
}

// Election returns the election called name whose leadership is a lease
// of ttl (renewed every ttl/3 while leading; a crashed leader is replaced
// after at most ttl).
func (m *Manager) Election(name string, ttl time.Duration) *Election {
	return &Election{m: m, name: name, ttl: ttl}
}

// Leadership is a won election: the leader's hold of the election, a
// *Lock (renewed automatically) whose Done closes when the leadership
// ends: Resign, or lost (Err then matches ErrLockLost).
type Leadership struct {
	*Lock
	value string
}

// Campaign waits until this participant leads the election, publishing
// value, and returns its leadership, which renews itself until Resign or
// loss. It waits until ctx ends (then ErrNotAcquired and ctx.Err()),
// whatever the Manager's retry strategy. It needs
// Capabilities().Election (else ErrUnsupported).
func (e *Election) Campaign(ctx context.Context, value string, opts ...LockOption) (*Leadership, error) {
	if len(value) > MaxValueLen {
		return nil, &Error{Op: "campaign", Key: e.name, Kind: ErrInvalidArgument, Err: errors.New("value longer than MaxValueLen")}
	}
	opts = append(opts, WithAutoRenew())
	l, err := e.m.lockMode(ctx, spanCampaign, e.name, e.ttl, driver.Mode{Kind: driver.Leader, Value: value}, opts, true)
	if err != nil {
		return nil, err
	}
	return &Leadership{Lock: l, value: value}, nil
}

// Value returns the value this leader published.
func (ld *Leadership) Value() string { return ld.value }

// Resign gives the leadership up, so that another participant can lead at
// once: Release under the election's name. It returns ErrNotHeld if the
// leadership was already lost.
func (ld *Leadership) Resign(ctx context.Context) error { return ld.Release(ctx) }

// LeaderInfo describes the current leader of an election.
type LeaderInfo struct {
	// Value is what the leader published.
	Value string
	// Fence is the leadership's fencing number, where the backend fences.
	Fence uint64
	// TTL is what remains of the leader's lease, where the backend can
	// tell.
	TTL time.Duration
}

// Leader returns the current leader, or an error matching ErrNoLeader when
// nobody leads.
func (e *Election) Leader(ctx context.Context) (LeaderInfo, error) {
	info, err := e.m.inspectMode(ctx, e.name, driver.Mode{Kind: driver.Leader})
	if err != nil {
		return LeaderInfo{}, err
	}
	if !info.Exclusive {
		return LeaderInfo{}, &Error{Op: "leader", Key: e.name, Kind: ErrNoLeader}
	}
	return LeaderInfo{Value: info.Value, Fence: info.Fence, TTL: info.TTL}, nil
}

// Observe sends the election's leader on the returned channel: the current
// one first, then each change (a new leader, or none: the zero
// LeaderInfo), until ctx ends or the Manager closes; then it closes the
// channel. A slow reader
// skips intermediate leaders but always gets the latest. Where the backend
// announces changes (driver.ModeWatcher) observers learn of them at once;
// otherwise, and for expiries the server does not announce, Observe looks
// every ttl/4 (at least 10ms, at most 1s). Errors reaching the backend are
// retried at that pace and not sent.
func (e *Election) Observe(ctx context.Context) <-chan LeaderInfo {
	out := make(chan LeaderInfo, 1)
	poll := min(max(e.ttl/4, 10*time.Millisecond), time.Second)
	go func() {
		defer close(out)
		wake := make(chan struct{}, 1)
		if w, ok := e.m.b.(driver.ModeWatcher); ok && e.m.caps.Election {
			if stop, err := w.WatchMode(ctx, e.name, driver.Mode{Kind: driver.Leader}, func() {
				select {
				case wake <- struct{}{}:
				default:
				}
			}); err == nil {
				defer stop()
			}
		}
		t := time.NewTicker(poll)
		defer t.Stop()
		var last driver.ModeInfo
		first := true
		for {
			cur, err := e.m.inspectMode(ctx, e.name, driver.Mode{Kind: driver.Leader})
			switch {
			case err == nil:
				if !cur.Exclusive {
					cur = driver.ModeInfo{}
				}
				if first || cur.Token != last.Token || cur.Value != last.Value || cur.Fence != last.Fence {
					first, last = false, cur
					select { // keep only the latest
					case <-out:
					default:
					}
					out <- LeaderInfo{Value: cur.Value, Fence: cur.Fence, TTL: cur.TTL}
				}
			case errors.Is(err, ErrClosed), errors.Is(err, ErrUnsupported), errors.Is(err, ErrInvalidArgument):
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-e.m.closing:
				return
			case <-wake:
			case <-t.C:
			}
		}
	}()
	return out
}

// Span names of the primitives.
const (
	spanRLock     = "distlock.RWMutex.RLock"
	spanWLock     = "distlock.RWMutex.Lock"
	spanSemaphore = "distlock.Semaphore.Acquire"
	spanCampaign  = "distlock.Election.Campaign"
)

// declared reports whether the backend offers kind.
func (m *Manager) declared(k driver.Kind) bool {
	if m.prims == nil {
		return false
	}
	switch k {
	case driver.Read, driver.Write:
		return m.caps.ReadWrite
	case driver.Permit:
		return m.caps.Semaphore
	case driver.Leader:
		return m.caps.Election
	}
	return false
}

// checkMode refuses what no backend may be sent: an undeclared kind, a
// semaphore limit below 1.
func (m *Manager) checkMode(op, key string, mode driver.Mode) error {
	if !m.declared(mode.Kind) {
		return &Error{Op: op, Key: key, Kind: ErrUnsupported, Err: fmt.Errorf("backend %q does not offer %s holds (Capabilities)", m.caps.Name, mode.Kind)}
	}
	if mode.Kind == driver.Permit && mode.Limit < 1 {
		return &Error{Op: op, Key: key, Kind: ErrInvalidArgument, Err: fmt.Errorf("semaphore limit %d: want at least 1", mode.Limit)}
	}
	return nil
}

// lockMode acquires key in mode and returns its handle: the wait of
// RWMutex, Semaphore and Election. forever waits until ctx ends, whatever
// the retry strategy (Campaign).
func (m *Manager) lockMode(ctx context.Context, span, key string, ttl time.Duration, mode driver.Mode, opts []LockOption, forever bool) (*Lock, error) {
	cfg, err := m.lockOptions(key, opts)
	if err != nil {
		return nil, err
	}
	if forever {
		cfg.retry = ExponentialBackoff(2*time.Millisecond, 100*time.Millisecond)
	}
	ttl, token, err := m.prepare(ctx, key, ttl, cfg.token, cfg.hasToken, cfg.retry, &mode)
	if err != nil {
		return nil, err
	}
	ctx, oc := m.obs.begin(ctx, span, key)
	g, t0, err := m.waitMode(ctx, key, token, ttl, mode, cfg.hasToken, cfg.retry, oc)
	oc.acquired(ctx, "lock", g, t0, err)
	if err != nil {
		return nil, err
	}
	return m.newHandle(key, token, g, t0, cfg, &mode)
}

// waitMode is the wait loop of lockMode. Each attempt is one AcquireMode,
// or on a ModeWaiter one AcquireModeWait bounded by what remains of the
// retry strategy's total. Between attempts it waits the strategy's delay,
// or less when the backend announces a change.
func (m *Manager) waitMode(ctx context.Context, key, token string, ttl time.Duration, mode driver.Mode, explicit bool, retry RetryStrategy, oc *call) (driver.Grant, time.Time, error) {
	const op = "acquire"
	start := time.Now()
	waiter, _ := m.b.(driver.ModeWaiter)
	budget, bounded := waitBudget(retry)
	if _, ok := retry.NextBackoff(1, 0); !ok {
		waiter = nil // a single try
	} else if waiter == nil && mode.Kind == driver.Write {
		mode.Waiting = true // a refused try holds new readers off until we give up
	}
	var (
		wake  chan struct{}
		timer *time.Timer
		held  bool
		cut   bool // ctx ended while an attempt was in flight
		err   error
		kind  error
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	fail := func(k, c error) (driver.Grant, time.Time, error) {
		// A refused writer leaves a mark: drop it before returning. An
		// attempt cut off by ctx may have been granted after all: drop
		// that too, and again later in the background for a request
		// still in flight. Only this call's own token: an explicit one
		// may be a holder's.
		if !explicit && (cut || mode.Waiting) {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abandonTimeout)
			_ = m.prims.ReleaseMode(rctx, key, token, mode)
			cancel()
			if cut {
				m.dropAbandoned(ctx, key, token, &mode)
			}
		}
		e := &Error{Op: op, Key: key, Kind: k, Err: c}
		if k == ErrUnavailable {
			e.Err = m.annotate(c)
		}
		return driver.Grant{}, time.Time{}, e
	}
	for attempt := 1; ; attempt++ {
		if m.closed.Load() {
			return fail(ErrClosed, nil)
		}
		t0 := time.Now()
		var g driver.Grant
		if waiter != nil {
			wctx, cancel := ctx, context.CancelFunc(func() {})
			if bounded {
				wctx, cancel = context.WithTimeout(ctx, max(budget-time.Since(start), 0))
			}
			stop := context.AfterFunc(m.closeCtx, cancel)
			g, err = waiter.AcquireModeWait(wctx, key, token, ttl, mode)
			werr := wctx.Err() // before cancel, which ends it
			stop()
			cancel()
			if errors.Is(err, errors.ErrUnsupported) { // no server queue for this kind: retry
				waiter = nil
				if mode.Kind == driver.Write {
					mode.Waiting = true
				}
				attempt--
				continue
			}
			// The budget (or Close) ended the wait: not a failure of the
			// server, and no other refusal (a limit mismatch) either.
			if err != nil && ctx.Err() == nil && werr != nil && (errors.Is(err, werr) || classify(err) == ErrNotAcquired) {
				if m.closed.Load() {
					return fail(ErrClosed, nil)
				}
				return fail(ErrNotAcquired, gaveUpQueued(time.Since(start)))
			}
		} else {
			g, err = m.prims.AcquireMode(ctx, key, token, ttl, mode)
		}
		oc.attempt(ctx, err)
		if err == nil {
			if !g.At.IsZero() && g.At.After(t0) {
				t0 = g.At
			}
			if g.TTL < ttl {
				g.TTL = ttl
			}
			return g, t0, nil
		}
		kind = classify(err)
		if kind == ErrNotAcquired {
			held = true
		}
		if cerr := ctx.Err(); cerr != nil {
			cut = waiter == nil // AcquireModeWait leaves nothing when ctx ends
			if held {
				return fail(ErrNotAcquired, waitEnded(time.Since(start), cerr))
			}
			return fail(ErrUnavailable, joinCtx(cause(err, kind), cerr))
		}
		d, gk, gc := afterFailure(retry, attempt, start, err, kind)
		if gk != nil {
			return fail(gk, gc)
		}
		if wake == nil && waiter == nil && kind == ErrNotAcquired && mode.Kind != driver.Permit {
			// Wake on the next change rather than on the next poll, and
			// look again at once: a change may have come before the
			// watch. Not for permits: a release frees one, and waking
			// every waiter for it measured 0.3× (PostgreSQL) and 0.7×
			// (Redis) the grants per second of retrying per the
			// strategy (bench: BenchmarkPrimitivesSemaphore).
			if w, ok := m.b.(driver.ModeWatcher); ok {
				wake = make(chan struct{}, 1)
				if stop, werr := w.WatchMode(ctx, key, mode, func() {
					select {
					case wake <- struct{}{}:
					default:
					}
				}); werr == nil {
					defer stop()
					continue
				}
			}
		}
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		select {
		case <-ctx.Done():
			return fail(ErrNotAcquired, waitEnded(time.Since(start), ctx.Err()))
		case <-m.closing:
			return fail(ErrClosed, nil)
		case <-timer.C:
		case <-wake:
		}
	}
}

// inspectMode is Inspect for a primitive's key.
func (m *Manager) inspectMode(ctx context.Context, key string, mode driver.Mode) (driver.ModeInfo, error) {
	const op = "inspect"
	if m.closed.Load() {
		return driver.ModeInfo{}, &Error{Op: op, Key: key, Kind: ErrClosed}
	}
	if err := m.checkMode(op, key, mode); err != nil {
		return driver.ModeInfo{}, err
	}
	if err := checkKey(key); err != nil {
		return driver.ModeInfo{}, &Error{Op: op, Key: key, Kind: ErrInvalidArgument, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return driver.ModeInfo{}, &Error{Op: op, Key: key, Err: err}
	}
	info, err := m.prims.InspectMode(ctx, key, mode)
	if err != nil {
		return driver.ModeInfo{}, m.wrap(ctx, op, key, err)
	}
	return info, nil
}
