package postgres

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/distlock/distlock/driver"
)

type opKind uint8

const (
	opLock   opKind = iota // pg_try_advisory_lock + nextval
	opUnlock               // pg_advisory_unlock
	opPing                 // liveness check
	opProbe                // is id held by another session? (read-only)
	opCancel               // pg_cancel_backend(id): end a wait in the server's queue
	opSQL                  // op.sql: a statement of the primitives
)

// op is one request to a holder session. Its results are set, and done
// closed, by the session with Backend.mu held.
type op struct {
	kind opKind
	id   int64
	h    *held         // opLock: the pending entry
	ttl  time.Duration // opLock
	done chan struct{} // nil: nobody waits (the session goroutine runs it)
	s    *session
	// sql and args replace the statement of an opLock or opSQL (the
	// primitives); with aux it returns a third bigint column, into aux.
	sql     string
	args    []any
	withAux bool

	finished  bool
	abandoned bool // the caller stopped waiting
	ok        bool
	fence     uint64
	waiters   int // opProbe
	val, aux  int64
	at        time.Time // opLock: when the grant was seen, the TTL's start
	err       error
}

// session is one holder session: a connection pinned out of the pool while
// it holds locks. Requests are queued in the order the Backend's state
// changes; whoever finds the session free (a caller, or the session's own
// goroutine) sends everything queued in one pipelined batch, so a caller on
// an idle session talks to the server directly and callers on a busy one
// share round trips. The session goroutine heartbeats, and watches the
// idle socket for the server ending the session.
type session struct {
	b   *Backend
	idx int

	qmu   sync.Mutex
	queue []*op

	wake    chan struct{} // the session goroutine has work
	idle    chan struct{} // the connection went idle unwatched
	closing chan struct{}
	exited  chan struct{}      // closed when run returns
	freeze  chan chan struct{} // tests: pause the session

	held map[*held]struct{} // guarded by b.mu

	// dedicated: the session of one lock granted by AcquireWait, on the
	// connection that waited for it. It never reconnects; once the lock is
	// gone it returns the connection to the pool and retires (guarded by
	// b.mu), after which nothing is queued on it.
	dedicated bool
	retired   bool
	started   bool        // its goroutine runs (a dedicated one starts late)
	start     *time.Timer // starts the goroutine of a dedicated session

	// execMu is held by whoever uses the connection; it guards the rest.
	execMu    sync.Mutex
	connected atomic.Bool // conn != nil, readable without execMu
	conn      *pgxpool.Conn
	pid       uint32
	lastUse   time.Time
	watch     *watch // the background read of the idle socket, if any
	idleSent  bool
}

// watch is one background read of an idle connection.
type watch struct {
	done chan struct{}
	err  error
}

func newSession(b *Backend, idx int) *session {
	return &session{
		b:       b,
		idx:     idx,
		wake:    make(chan struct{}, 1),
		idle:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		exited:  make(chan struct{}),
		freeze:  make(chan chan struct{}),
		held:    map[*held]struct{}{},
	}
}

// enqueueLocked queues o; called with b.mu held, so requests are ordered
// as the Backend's state changes are. A caller that waits for o then calls
// submit; requests nobody waits for go to the session goroutine.
func (s *session) enqueueLocked(o *op) {
	o.s = s
	if s.b.closed || s.retired {
		s.b.finishLocked(s, o, 0, errClosed)
		return
	}
	s.qmu.Lock()
	s.queue = append(s.queue, o)
	s.qmu.Unlock()
	if o.done == nil {
		s.b.startLocked(s)
		s.signal(s.wake)
	}
}

func (s *session) signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (s *session) take() []*op {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	ops := s.queue
	s.queue = nil
	return ops
}

func (s *session) queued() bool {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	return len(s.queue) > 0
}

// submit runs the queue on the caller's goroutine if the session is free.
// Whoever holds execMu checks the queue again after releasing it, so a
// request queued meanwhile is never stranded.
func (s *session) submit(o *op) {
	for range 3 {
		if !s.execMu.TryLock() {
			return // the holder runs o, or hands it to the session goroutine
		}
		s.drain()
		s.execMu.Unlock()
		if !s.queued() {
			return
		}
	}
	s.signal(s.wake) // keep serving others no longer: the session goroutine will
}

// drain runs queued requests until none is left. Called with execMu held.
func (s *session) drain() {
	for {
		ops := s.take()
		if len(ops) == 0 {
			break
		}
		s.stopWatch()
		s.exec(ops)
	}
	if s.conn != nil && s.watch == nil && !s.idleSent {
		s.idleSent = true
		s.signal(s.idle)
	}
	if s.dedicated {
		s.b.mu.Lock()
		idle := len(s.held) == 0
		early := idle && !s.started && !s.retired && !s.queued()
		if early { // released before its goroutine started: retire here
			s.retired = true
			s.start.Stop()
			delete(s.b.extra, s)
		}
		s.b.mu.Unlock()
		switch {
		case early:
			if s.conn != nil {
				s.conn.Release() // its unlock reset idle_session_timeout
				s.conn = nil
				s.connected.Store(false)
			}
		case idle:
			s.signal(s.wake) // the session goroutine retires
		}
	}
}

// startLocked starts the goroutine of s if it has not started (a
// dedicated session's starts after a quiet spell, when its lock is held
// for longer than a moment, or when work is queued for it). Called with
// b.mu held.
func (b *Backend) startLocked(s *session) {
	if s.started || s.retired || (b.closed && s.dedicated) {
		return
	}
	s.started = true
	if s.start != nil {
		s.start.Stop()
	}
	b.wg.Add(1)
	go s.run()
}

func (s *session) run() {
	defer s.b.wg.Done()
	defer close(s.exited)
	tick := time.NewTicker(s.b.cfg.heartbeat)
	defer tick.Stop()
	// The idle socket is watched only after a quiet spell: starting and
	// interrupting the background read around every request of a busy
	// session would cost more than the requests.
	quiet := time.NewTimer(time.Hour)
	quiet.Stop()
	defer quiet.Stop()
	var w *watch // the watch this goroutine started (only it starts them)
	for {
		if s.dedicated && s.retire() {
			return
		}
		var watchDone chan struct{}
		if w != nil {
			watchDone = w.done
		}

		select {
		case <-s.wake:
			s.locked(s.drain)
		case <-s.idle:
			quiet.Reset(watchAfter)
		case <-quiet.C:
			s.locked(func() {
				s.drain()
				if s.conn == nil || s.watch != nil {
					s.idleSent = false
					return
				}
				if wait := watchAfter - time.Since(s.lastUse); wait > 0 {
					quiet.Reset(wait)
					return
				}
				s.idleSent = false
				s.startWatch()
				w = s.watch
			})
		case <-tick.C:
			s.locked(func() {
				s.drain()
				s.stopWatch()
				s.heartbeat()
				if s.conn != nil && !s.idleSent {
					s.idleSent = true
					quiet.Reset(watchAfter)
				}
			})
		case <-watchDone:
			s.locked(func() {
				defer func() { w = nil }()
				if s.watch != w {
					return // stopped by whoever used the connection
				}
				s.watch = nil
				if w.err != nil {
					s.lostConn()
				}
				// a notification (nobody LISTENs here): watch again later
				if s.conn != nil && !s.idleSent {
					s.idleSent = true
					quiet.Reset(watchAfter)
				}
			})
		case f := <-s.freeze:
			s.execMu.Lock()
			s.stopWatch()
			select {
			case <-f:
				s.execMu.Unlock()
				s.signal(s.wake)
			case <-s.closing:
				s.shutdown()
				s.execMu.Unlock()
				return
			}
		case <-s.closing:
			s.execMu.Lock()
			s.stopWatch()
			s.shutdown()
			s.execMu.Unlock()
			return
		}
	}
}

// locked runs f with execMu held, then serves what was queued meanwhile.
func (s *session) locked(f func()) {
	s.execMu.Lock()
	f()
	s.execMu.Unlock()
	if s.queued() {
		s.signal(s.wake)
	}
}

// watchAfter is the quiet spell after which an idle session's socket is
// watched for the server ending the session.
const watchAfter = 5 * time.Millisecond

// startWatch reads from the idle connection in the background, so that the
// server ending the session (pg_terminate_backend, shutdown, the idle
// bound) is noticed at once. Called with execMu held.
func (s *session) startWatch() {
	w := &watch{done: make(chan struct{})}
	s.watch = w
	pc := s.conn.Conn().PgConn()
	go func() {
		w.err = pc.WaitForNotification(context.Background())
		close(w.done)
	}()
}

// stopWatch interrupts the background read with a past deadline. Called
// with execMu held.
func (s *session) stopWatch() {
	w := s.watch
	if w == nil {
		return
	}
	s.watch = nil
	nc := s.conn.Conn().PgConn().Conn()
	_ = nc.SetReadDeadline(time.Now())
	<-w.done
	_ = nc.SetReadDeadline(time.Time{})
	if w.err != nil && !isTimeout(w.err) {
		s.lostConn()
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return pgconn.Timeout(err) || errors.As(err, &ne) && ne.Timeout()
}

// heartbeat keeps a session holding locks alive within the idle bound and
// returns an idle one to the pool. Called with execMu held.
func (s *session) heartbeat() {
	if s.conn == nil {
		return
	}
	s.b.mu.Lock()
	idle := len(s.held) == 0
	s.b.mu.Unlock()
	if idle && s.dedicated {
		return // retiring
	}
	if idle && time.Since(s.lastUse) >= s.b.cfg.heartbeat {
		s.giveBack()
		return
	}
	s.exec([]*op{{kind: opPing}})
}

var errPIDChanged = errors.New("postgres: the server backend PID changed within a session: a transaction-pooling proxy (PgBouncer pool_mode=transaction?) is in between, and session advisory locks do not work through it")

// exec sends ops in one pipelined batch and records the results.
func (s *session) exec(ops []*op) {
	if s.conn == nil {
		if err := s.connect(); err != nil {
			s.complete(ops, nil, nil, err)
			return
		}
	}
	s.lastUse = time.Now()
	// The round trip is bounded by a socket deadline rather than a
	// context: pgx watches a cancellable context with a goroutine per
	// query. A timeout breaks the session (see below).
	ctx := context.Background()
	nc := s.conn.Conn().PgConn().Conn()
	_ = nc.SetDeadline(s.lastUse.Add(s.b.cfg.opTimeout))
	defer func() {
		if s.conn != nil {
			_ = nc.SetDeadline(time.Time{})
		}
	}()
	vals := make([]int64, len(ops))
	var auxs []int64 // only for the primitives' statements that return a third column
	for _, o := range ops {
		if o.withAux {
			auxs = make([]int64, len(ops))
			break
		}
	}
	dest := func(i int, pid *int32) []any {
		if ops[i].withAux {
			return []any{&vals[i], pid, &auxs[i]}
		}
		return []any{&vals[i], pid}
	}
	var err error
	if len(ops) == 1 {
		// One request: a plain query is cheaper than a pipeline.
		sql, args := s.statement(ops[0])
		var pid int32
		err = s.conn.QueryRow(ctx, sql, args...).Scan(dest(0, &pid)...)
		if err == nil && uint32(pid) != s.pid {
			err = errPIDChanged
		}
	} else {
		batch := &pgx.Batch{}
		for _, o := range ops {
			sql, args := s.statement(o)
			batch.Queue(sql, args...)
		}
		br := s.conn.SendBatch(ctx, batch)
		for i := range ops {
			var pid int32
			if err = br.QueryRow().Scan(dest(i, &pid)...); err != nil {
				break
			}
			if uint32(pid) != s.pid {
				err = errPIDChanged
				break
			}
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		// The session's state is unknown now (a lock may have been
		// taken by a statement whose result we did not read): end the
		// session, which frees all its locks, and report them lost.
		s.lostConn()
		err = classifyErr(err)
	}
	s.complete(ops, vals, auxs, err)
}

// statement returns the SQL of o. Every statement returns a bigint and the
// server backend PID, which must stay the session's.
func (s *session) statement(o *op) (string, []any) {
	if o.sql != "" {
		return o.sql, o.args
	}
	switch o.kind {
	case opLock:
		return s.b.lockSQL, []any{o.id}
	case opUnlock:
		with, expr, args := "", "pg_advisory_unlock($1)::int", []any{o.id}
		if o.h != nil && o.h.kind != 0 {
			with, expr, args = s.b.unlockMode(o.h)
		}
		if s.dedicated { // its only lock: undo what AcquireWait set up, too
			return with + "SELECT CASE WHEN set_config('idle_session_timeout', NULL, false) IS NULL THEN 0" +
				" ELSE " + expr + " END::int8, pg_backend_pid()", args
		}
		return with + "SELECT " + expr + "::int8, pg_backend_pid()", args
	case opProbe:
		return probeSQL, probeArgs(o.id)
	case opCancel:
		return "SELECT pg_cancel_backend($1::int)::int::int8, pg_backend_pid()", []any{o.id}
	}
	return "SELECT 1::int8, pg_backend_pid()", nil
}

// complete records results (or err) for ops.
func (s *session) complete(ops []*op, vals, auxs []int64, err error) {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	for i, o := range ops {
		var v int64
		if vals != nil {
			v = vals[i]
		}
		if auxs != nil {
			o.aux = auxs[i]
		}
		s.b.finishLocked(s, o, v, err)
	}
}

// finishLocked records the result v (or err) of o. Called with b.mu held.
func (b *Backend) finishLocked(s *session, o *op, v int64, err error) {
	o.finished = true
	o.err = err
	o.val = v
	switch o.kind {
	case opLock:
		h := o.h
		if h.kind == driver.Permit && v > 0 {
			h.id = o.aux // the slot taken
		}
		switch {
		case err != nil || v <= 0:
			b.dropLocked(h, false)
		case o.abandoned || b.closed || h.gone || !b.currentLocked(h):
			// Nobody wants this grant any more: undo it.
			b.dropLocked(h, false)
			s.enqueueLocked(&op{kind: opUnlock, id: o.id, h: h})
		default:
			h.pending = false
			h.pid = s.pid
			h.fence = uint64(v)
			o.at = time.Now()
			h.expiry = o.at.Add(o.ttl)
			h.timer = time.AfterFunc(o.ttl, func() { b.onExpiry(h) })
			s.held[h] = struct{}{}
			o.ok, o.fence = true, h.fence
		}
	case opUnlock, opSQL:
		o.ok = err == nil && v > 0
	case opPing:
		o.ok = err == nil
	case opProbe:
		o.ok = err == nil && v>>32 > 0
		o.waiters = int(uint32(v))
	case opCancel:
		o.ok = err == nil && v > 0
	}
	if o.done != nil {
		close(o.done)
	}
}

// connect takes a connection from the pool and sets it up as a holder
// session.
func (s *session) connect() error {
	if s.dedicated {
		return errSessionLost
	}
	ctx, cancel := context.WithTimeout(s.b.ctx, s.b.cfg.opTimeout)
	defer cancel()
	c, err := s.b.pool.Acquire(ctx)
	if err != nil {
		return classifyErr(err)
	}
	pid, err := s.b.setup(ctx, c.Conn())
	if err != nil {
		_ = c.Conn().Close(ctx)
		c.Release()
		return err
	}
	s.conn, s.pid, s.lastUse, s.idleSent = c, pid, time.Now(), false
	s.connected.Store(true)
	return nil
}

// lostConn ends the session: its locks are reported lost and the
// connection is closed (the server frees its locks).
func (s *session) lostConn() {
	s.b.mu.Lock()
	for h := range s.held {
		s.b.dropLocked(h, true)
		s.b.buryLocked(h)
	}
	s.b.mu.Unlock()
	if s.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.conn.Conn().Close(ctx)
	s.conn.Release()
	s.conn = nil
	s.connected.Store(false)
}

// giveBack returns an idle session (no locks) to the pool, resetting what
// setup changed.
func (s *session) giveBack() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.conn.Exec(ctx, "SELECT pg_advisory_unlock_all(); RESET idle_session_timeout"); err != nil {
		_ = s.conn.Conn().Close(ctx)
	}
	s.conn.Release()
	s.conn = nil
	s.connected.Store(false)
}

// errSessionLost is the cause of a request to the retired session of a
// lock granted by AcquireWait.
var errSessionLost = errors.New("postgres: the session that held the lock was lost")

// retire returns the connection of a dedicated session to the pool once
// its lock is gone and nothing is queued, and reports whether it did.
func (s *session) retire() bool {
	s.b.mu.Lock()
	held := len(s.held) > 0
	s.b.mu.Unlock()
	if held {
		return false
	}
	s.execMu.Lock()
	defer s.execMu.Unlock()
	s.b.mu.Lock()
	if len(s.held) > 0 || s.queued() {
		s.b.mu.Unlock()
		s.signal(s.wake) // serve what is queued first
		return false
	}
	s.retired = true
	delete(s.b.extra, s)
	s.b.mu.Unlock()
	s.stopWatch()
	if s.conn != nil {
		s.conn.Release() // its unlock reset idle_session_timeout
		s.conn = nil
		s.connected.Store(false)
	}
	return true
}

func (s *session) shutdown() {
	ops := s.take()
	s.b.mu.Lock()
	for _, o := range ops {
		s.b.finishLocked(s, o, 0, errClosed)
	}
	for h := range s.held {
		s.b.dropLocked(h, true)
	}
	s.b.mu.Unlock()
	if s.conn != nil {
		s.giveBack()
	}
}
