package distlock

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distlock/distlock/driver"
)

// Manager is the portable LockManager over one Backend. It validates
// arguments, generates tokens, retries while a key is held (waking on
// release where the backend can notify), wraps errors once, renews locks
// and reports lost ones — the same for every backend. It is safe for
// concurrent use.
type Manager struct {
	b          driver.Backend
	caps       Capabilities
	watcher    driver.LossWatcher
	transferer driver.Transferer
	queuer     driver.Queuer
	prims      driver.Primitives // nil unless the backend offers primitives
	cfg        managerConfig
	obs        *observer // logs, metrics, traces: observe.go
	unmet      error     // why the backend fails Require, if it does
	where      string    // scheme://host when opened by URL, for errors

	qmu    sync.Mutex
	queues map[string]*keyQueue // goroutines waiting for a key, see handoff.go
	// contended counts, for keys a recent plain attempt found held, the
	// acquires that still wait in the server's queue without trying first
	// (queue.go).
	contended map[string]int
	closing   chan struct{}   // closed by Close
	closeCtx  context.Context // cancelled by Close: ends waits in a backend's queue
	endAll    context.CancelFunc

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	mu    sync.Mutex
	sched scheduler // every live Lock handle; renews and expires them: renew.go
	wg    sync.WaitGroup
}

var _ LockManager = (*Manager)(nil)

// New returns a Manager over b. The Manager owns b and closes it on Close.
func New(b driver.Backend, opts ...Option) *Manager {
	m := &Manager{
		b:       b,
		caps:    b.Capabilities(),
		cfg:     managerConfig{retry: DefaultRetry, renewFrac: 1.0 / 3, handoffLimit: DefaultHandoffLimit},
		queues:  make(map[string]*keyQueue),
		closing: make(chan struct{}),
	}
	m.closeCtx, m.endAll = context.WithCancel(context.Background())
	m.watcher, _ = b.(driver.LossWatcher)
	m.transferer, _ = b.(driver.Transferer)
	m.queuer, _ = b.(driver.Queuer)
	m.prims, _ = b.(driver.Primitives)
	for _, o := range opts {
		if o != nil {
			o(&m.cfg)
		}
	}
	m.obs = newObserver(m, m.cfg.obs)
	if len(m.cfg.require) > 0 {
		m.unmet = satisfies(m.caps, m.cfg.require...)
	}
	return m
}

// Capabilities reports what the manager's backend supports.
func (m *Manager) Capabilities() Capabilities { return m.caps }

// Acquire implements LockManager.
func (m *Manager) Acquire(ctx context.Context, key string, ttl time.Duration, token ...string) (string, error) {
	if len(token) > 1 {
		return "", &Error{Op: "acquire", Key: key, Kind: ErrInvalidArgument, Err: errors.New("at most one token")}
	}
	var tok string
	if len(token) == 1 {
		tok = token[0]
	}
	ctx, oc := m.obs.begin(ctx, spanAcquire, key)
	tok, g, t0, err := m.acquire(ctx, key, ttl, tok, len(token) == 1, m.cfg.retry, oc)
	oc.acquired(ctx, "acquire", g, t0, err)
	return tok, err
}

// acquire is the wait loop shared by Acquire, Lock and Do. It returns the
// token, the grant, and when the successful attempt started (the base of
// the conservative expiry). oc observes the call (observe.go).
func (m *Manager) acquire(ctx context.Context, key string, ttl time.Duration, token string, explicit bool, retry RetryStrategy, oc *call) (string, driver.Grant, time.Time, error) {
	const op = "acquire"
	ttl, token, err := m.prepare(ctx, key, ttl, token, explicit, retry, nil)
	if err != nil {
		return "", driver.Grant{}, time.Time{}, err
	}
	if m.queuer != nil {
		if _, ok := retry.NextBackoff(1, 0); ok {
			return m.acquireQueued(ctx, key, ttl, token, explicit, retry, oc)
		}
	}

	var (
		start = time.Now()
		held  bool // some attempt of this call found the key held
		timer *time.Timer
		w     *waiter // this call's place in key's line, once it waits
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	// fail ends the call without the lock. A waiter leaves the line first;
	// a release that handed it the key meanwhile is passed on.
	fail := func(kind, c error) (string, driver.Grant, time.Time, error) {
		return m.giveUp(ctx, op, key, token, ttl, w, kind, c)
	}
	ctxEnded := func(err, kind, cerr error) (string, driver.Grant, time.Time, error) {
		if held {
			return fail(ErrNotAcquired, waitEnded(time.Since(start), cerr))
		}
		return fail(ErrUnavailable, joinCtx(cause(err, kind), cerr))
	}
	err, kind := error(ErrNotAcquired), error(ErrNotAcquired)
	if !explicit && m.Waiting(key) > 0 {
		// Others of this Manager already wait: take a place behind them
		// rather than slip in when the key is free for a moment. (An
		// explicit token tries first: it may be the holder's re-acquire.)
		if _, ok := retry.NextBackoff(1, 0); ok {
			w = m.enqueue(key, token, ttl)
			held = true
		}
	}
	for attempt := 1; ; attempt++ {
		if m.closed.Load() {
			return fail(ErrClosed, nil)
		}
		// Only the head of the line tries the backend; for the others a
		// turn counts as an attempt that found the key held.
		head := w == nil || m.isHead(w)
		if head {
			t0 := time.Now()
			var g driver.Grant
			g, err = m.b.Acquire(ctx, key, token, ttl)
			oc.attempt(ctx, err)
			if err == nil {
				if w != nil {
					// A transfer that landed meanwhile granted the same
					// token: the key is ours either way.
					m.leave(key, w)
				}
				if g.TTL < ttl {
					g.TTL = ttl
				}
				return token, g, t0, nil
			}
			kind = classify(err)
			if kind == ErrNotAcquired {
				held = true
			}
			if !explicit && ctx.Err() != nil {
				// Even a "taken" answer may hide a grant: go-redsync's
				// round can fail for the ctx while some of its requests
				// land on a quorum of Redlock masters.
				m.dropAbandoned(ctx, key, token, nil)
			}
		}
		if cerr := ctx.Err(); cerr != nil {
			return ctxEnded(err, kind, cerr)
		}
		d, gk, gc := afterFailure(retry, attempt, start, err, kind)
		if gk != nil {
			return fail(gk, gc)
		}
		if kind == ErrNotAcquired && w == nil {
			w = m.enqueue(key, token, ttl)
		}
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		var wake, got chan struct{}
		if w != nil {
			wake, got = w.wake, w.got
		}
		select {
		case <-ctx.Done():
			return ctxEnded(err, kind, ctx.Err())
		case <-m.closing:
			return fail(ErrClosed, nil)
		case <-got:
			if h := m.takeGrant(w); h != nil {
				return token, h.g, h.t0, nil
			}
		case <-timer.C:
		case <-wake:
		}
	}
}

// afterFailure decides what follows a failed attempt (err, classified as
// kind) of a wait that began at start: the delay before the next attempt,
// or the kind and cause the call gives up with.
func afterFailure(retry RetryStrategy, attempt int, start time.Time, err, kind error) (time.Duration, error, error) {
	if kind != ErrNotAcquired && kind != ErrUnavailable {
		return 0, kind, cause(err, kind)
	}
	d, ok := retry.NextBackoff(attempt, time.Since(start))
	switch {
	case ok:
		return max(d, MinRetryDelay), nil, nil
	case kind == ErrNotAcquired:
		return 0, kind, gaveUp(attempt, time.Since(start), cause(err, kind))
	}
	return 0, kind, cause(err, kind)
}

// prepare runs the checks of an acquire, before anything is sent: the
// Manager is open and meets its requirements, mode (nil for a plain lock)
// is offered, the strategy, key, TTL and token are valid, and ctx has not
// ended. It returns the TTL rounded for the backend and the token
// (generated unless explicit).
func (m *Manager) prepare(ctx context.Context, key string, ttl time.Duration, token string, explicit bool, retry RetryStrategy, mode *driver.Mode) (time.Duration, string, error) {
	const op = "acquire"
	switch {
	case m.closed.Load():
		return 0, "", &Error{Op: op, Key: key, Kind: ErrClosed}
	case m.unmet != nil:
		return 0, "", &Error{Op: op, Key: key, Kind: ErrUnsupported, Err: m.unmet}
	}
	if mode != nil {
		if err := m.checkMode(op, key, *mode); err != nil {
			return 0, "", err
		}
	}
	invalid := func(err error) (time.Duration, string, error) {
		return 0, "", &Error{Op: op, Key: key, Kind: ErrInvalidArgument, Err: err}
	}
	if err := checkRetry(retry); err != nil {
		return invalid(err)
	}
	if err := checkKey(key); err != nil {
		return invalid(err)
	}
	ttl, err := m.roundTTL(ttl)
	if err != nil {
		return invalid(err)
	}
	if !explicit {
		token = m.newToken(key)
	}
	if err := checkToken(token); err != nil {
		return invalid(err)
	}
	if err := ctx.Err(); err != nil {
		return 0, "", &Error{Op: op, Key: key, Kind: ErrNotAcquired, Err: err}
	}
	return ttl, token, nil
}

// abandonTimeout bounds the release of a grant that an Acquire cut off by
// its context may have left behind.
const abandonTimeout = 2 * time.Second

// abandonRecheck is when that release is sent a second time.
const abandonRecheck = 250 * time.Millisecond

// dropAbandoned releases token's grant of key in the background: the
// Acquire that tried it ended with its context while the request was in
// flight, so the server may have granted it after all, to a token nobody
// will ever use. Only generated tokens are dropped: an explicit token may
// be its holder's re-acquire. mode is the primitive's, nil for a plain
// lock. Close waits for it.
func (m *Manager) dropAbandoned(ctx context.Context, key, token string, mode *driver.Mode) {
	m.mu.Lock()
	if m.closed.Load() {
		m.mu.Unlock()
		return
	}
	m.wg.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abandonTimeout)
		defer cancel()
		_ = m.releaseAny(rctx, key, token, mode)
		// A request of the cut-off attempt may still be in flight on
		// another connection (go-redsync sends one per Redlock master)
		// and land after that release: release once more, later. The
		// token was generated for that call alone, so no later grant can
		// carry it.
		t := time.NewTimer(abandonRecheck)
		select {
		case <-t.C:
		case <-m.closing:
			t.Stop()
		}
		_ = m.releaseAny(rctx, key, token, mode)
	}()
}

// releaseAny releases token's hold of key: a plain lock (mode nil) or a
// primitive's.
func (m *Manager) releaseAny(ctx context.Context, key, token string, mode *driver.Mode) error {
	if mode == nil {
		return m.release(ctx, key, token)
	}
	return m.prims.ReleaseMode(ctx, key, token, *mode)
}

// Release implements LockManager.
func (m *Manager) Release(ctx context.Context, key, token string) error {
	const op = "release"
	if err := m.precheck(ctx, op, key, token); err != nil {
		return err
	}
	return m.wrap(ctx, op, key, m.release(ctx, key, token))
}

// release frees key, handing it to the first goroutine of this Manager
// waiting for it where it can (see handoff.go).
func (m *Manager) release(ctx context.Context, key, token string) error {
	done, wake, err := m.handOff(ctx, key, token)
	if done {
		return err
	}
	err = m.b.Release(ctx, key, token)
	if err == nil && wake {
		m.wakeHead(key)
	}
	return err
}

// Extend implements LockManager.
func (m *Manager) Extend(ctx context.Context, key, token string, ttl time.Duration) error {
	_, _, err := m.extend(ctx, "extend", key, token, ttl, nil)
	return err
}

// extend extends token's hold of key: a plain lock (mode nil) or a
// primitive's.
func (m *Manager) extend(ctx context.Context, op, key, token string, ttl time.Duration, mode *driver.Mode) (driver.Grant, time.Time, error) {
	if err := m.precheck(ctx, op, key, token); err != nil {
		return driver.Grant{}, time.Time{}, err
	}
	ttl, err := m.roundTTL(ttl)
	if err != nil {
		return driver.Grant{}, time.Time{}, &Error{Op: op, Key: key, Kind: ErrInvalidArgument, Err: err}
	}
	t0 := time.Now()
	var g driver.Grant
	if mode == nil {
		g, err = m.b.Extend(ctx, key, token, ttl)
	} else {
		g, err = m.prims.ExtendMode(ctx, key, token, ttl, *mode)
	}
	if err != nil {
		return driver.Grant{}, time.Time{}, m.wrap(ctx, op, key, err)
	}
	if g.TTL < ttl {
		g.TTL = ttl
	}
	return g, t0, nil
}

// precheck runs the checks shared by Release and Extend.
func (m *Manager) precheck(ctx context.Context, op, key, token string) error {
	if m.closed.Load() {
		return &Error{Op: op, Key: key, Kind: ErrClosed}
	}
	if m.unmet != nil {
		return &Error{Op: op, Key: key, Kind: ErrUnsupported, Err: m.unmet}
	}
	if err := checkKey(key); err != nil {
		return &Error{Op: op, Key: key, Kind: ErrInvalidArgument, Err: err}
	}
	if err := checkToken(token); err != nil {
		return &Error{Op: op, Key: key, Kind: ErrInvalidArgument, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return &Error{Op: op, Key: key, Err: err}
	}
	return nil
}

// wrap turns a backend error into an *Error, once.
func (m *Manager) wrap(ctx context.Context, op, key string, err error) error {
	if err == nil {
		return nil
	}
	kind := classify(err)
	c := cause(err, kind)
	if kind == ErrUnavailable {
		c = m.annotate(c)
	}
	if cerr := ctx.Err(); cerr != nil && kind != ErrNotHeld {
		c = joinCtx(c, cerr)
	}
	m.obs.failed(ctx, op, key, kind, c)
	return &Error{Op: op, Key: key, Kind: kind, Err: c}
}

// Close implements LockManager.
func (m *Manager) Close() error {
	m.closeOnce.Do(func() {
		m.closed.Store(true)
		close(m.closing)
		m.endAll()
		m.mu.Lock() // a Lock that saw m open has added its handle
		locks := m.sched.handles()
		m.mu.Unlock()
		for _, l := range locks {
			l.finish(&Error{Op: "close", Key: l.key, Kind: ErrLockLost, Err: ErrClosed})
		}
		m.sched.stop()
		m.wg.Wait()
		m.obs.close()
		m.closeErr = m.b.Close()
	})
	return m.closeErr
}

func (m *Manager) roundTTL(ttl time.Duration) (time.Duration, error) {
	if ttl <= 0 {
		return 0, errors.New("ttl must be positive")
	}
	if ttl > MaxTTL {
		return 0, errors.New("ttl exceeds MaxTTL")
	}
	return m.caps.RoundTTL(ttl), nil
}

func (m *Manager) newToken(key string) string {
	if m.cfg.tokenGen != nil {
		return m.cfg.tokenGen(key)
	}
	return NewToken()
}

// NewToken returns a random token of 128 bits, base64url-encoded (22 bytes).
func NewToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func checkKey(key string) error {
	switch {
	case key == "":
		return errors.New("empty key")
	case len(key) > MaxKeyLen:
		return errors.New("key longer than MaxKeyLen")
	}
	return nil
}

func checkToken(token string) error {
	switch {
	case token == "":
		return errors.New("empty token")
	case len(token) > MaxTokenLen:
		return errors.New("token longer than MaxTokenLen")
	}
	return nil
}

var kinds = [...]error{ErrNotAcquired, ErrNotHeld, ErrUnavailable, ErrInvalidArgument, ErrClosed, ErrLockLost, ErrUnsupported, ErrLimitMismatch, ErrNoLeader}

// classify maps a backend error to its sentinel; unknown errors count as
// ErrUnavailable.
func classify(err error) error {
	for _, k := range kinds {
		if errors.Is(err, k) {
			return k
		}
	}
	return ErrUnavailable
}

// cause is what an *Error keeps beside its kind: nothing for a bare
// sentinel, the error itself otherwise.
func cause(err, kind error) error {
	if err == kind {
		return nil
	}
	return err
}

func joinCtx(c, ctxErr error) error {
	switch {
	case c == nil:
		return ctxErr
	case errors.Is(c, ctxErr):
		return c
	}
	return errors.Join(c, ctxErr)
}
