package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
)

// waitSQL takes the advisory lock $1, waiting in the server's queue, then
// draws the fence and sets the idle bound $2 (in ms) on the session. The
// MATERIALIZED CTE runs the lock before anything else of the statement.
func waitSQL(seq string) string { return waitModeSQL(seq, "pg_advisory_lock", false, "") }

// waitModeSQL is waitSQL with lock, a blocking advisory lock function,
// notify (announce the grant of $1, see WatchMode) and after, CTEs (each
// starting with a comma) that run once the lock is granted: they read the
// fence and pid from f.
func waitModeSQL(seq, lock string, notify bool, after string) string {
	n := ""
	if notify {
		n = " + " + notifyIf("true", "$1")
	}
	return "WITH l AS MATERIALIZED (SELECT " + lock + "($1)), f AS MATERIALIZED (SELECT nextval(" + seqLit(seq) +
		")" + n + " AS fence, pg_backend_pid() AS pid, pg_is_in_recovery() AS rec," +
		" set_config('idle_session_timeout', $2, false) AS idle FROM l)" + after + " SELECT fence, pid, rec, idle FROM f"
}

// seqLit is the sequence's name as a string literal.
func seqLit(seq string) string {
	return "'" + strings.ReplaceAll(quoteIdent(seq), "'", "''") + "'"
}

// cancelTimeout bounds one cancel; cancelTries is how many are sent
// before the waiting connection is broken instead.
const (
	cancelTimeout = time.Second
	cancelTries   = 4
)

// AcquireWait implements driver.Queuer: it waits in PostgreSQL's own lock
// queue, with a blocking pg_advisory_lock on a connection of the pool
// (never on a holder session, which would stall the other keys on it), so
// each lock it grants costs a connection while it is held. When ctx ends
// the statement is cancelled (see cancelWait) before AcquireWait returns,
// and a grant that raced with it is unlocked. The connection that got the
// lock becomes a holder session of its own for as long as the lock is
// held (TTL, heartbeat, loss detection as on the other sessions), then
// goes back to the pool.
func (b *Backend) AcquireWait(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	// The Manager calls it for a key its last try found held (a free key
	// it tries with Acquire, on a holder session): go straight to the
	// server's queue, which grants a free key at once too.
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return driver.Grant{}, distlock.Unavailable(errClosed)
	}
	if h := b.liveLocked(key, time.Now()); h != nil && !h.pending && h.token == token {
		b.mu.Unlock() // a re-acquire
		g, err := b.refresh(ctx, key, token, ttl, distlock.ErrNotAcquired)
		if err != distlock.ErrNotAcquired {
			return g, err
		}
		b.mu.Lock() // lost meanwhile: queue
	}
	b.mu.Unlock()
	id := b.lockID(key)
	h := &held{key: key, id: id, token: token}
	return b.waitFor(ctx, h, ttl, b.waitSQL, nil, func() {
		b.forgetDeadLocked(key)
		// An entry still here is a try-once Acquire of this Backend whose
		// attempt is failing, or a lock whose lost session is not noticed
		// yet: the server just granted the key to this connection, so
		// neither holds it. Both drop their entry only if it is still
		// theirs.
		b.locks[key], b.ids[id] = h, h
	})
}

// waitFor waits in the server's queue for h (key, id, token and, for a
// primitive, its kind set) with the statement sql (see waitModeSQL; args
// follow its $1 and $2), on a connection of the pool that becomes h's
// session; install records h in the Backend's maps (called with b.mu
// held).
func (b *Backend) waitFor(ctx context.Context, h *held, ttl time.Duration, sql string, args []any, install func()) (driver.Grant, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return driver.Grant{}, distlock.Unavailable(errClosed)
	}
	b.wg.Add(1)
	b.mu.Unlock()
	defer b.wg.Done()

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(b.ctx, cancel)()
	ended := func(err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("postgres: waiting for the lock: %w", ctx.Err())
		}
		if b.ctx.Err() != nil {
			return distlock.Unavailable(errClosed)
		}
		return b.unavailable(err)
	}

	c, err := b.pool.Acquire(wctx)
	if err != nil {
		return driver.Grant{}, ended(describeConnError(err))
	}
	b.mu.Lock()
	migrated := b.migrated
	b.mu.Unlock()
	if !migrated { // first use: check the server, create the sequence
		if _, err := b.setup(wctx, c.Conn()); err != nil {
			closeConn(c)
			return driver.Grant{}, ended(err)
		}
	}
	id := h.id
	args = append([]any{id, strconv.FormatInt(b.cfg.idleTimeout.Milliseconds(), 10)}, args...)
	fence, pid, cancelled, reusable, err := b.queue(wctx, c, id, sql, args)
	if err != nil {
		if reusable && migrated {
			c.Release()
		} else {
			closeConn(c) // frees whatever the session may hold
		}
		if cancelled {
			return driver.Grant{}, ended(err)
		}
		return driver.Grant{}, b.unavailable(classifyErr(err))
	}
	s := newSession(b, -1)
	s.dedicated = true
	s.conn, s.pid, s.lastUse = c, pid, time.Now()
	b.mu.Lock()
	if b.closed || cancelled || wctx.Err() != nil {
		// The grant raced with the end of ctx (or Close): undo it.
		b.mu.Unlock()
		undo(c, id)
		return driver.Grant{}, ended(errClosed)
	}
	at := s.lastUse // the session's goroutine may change it once started
	h.s, h.fence, h.expiry, h.pid = s, fence, at.Add(ttl), pid
	h.timer = time.AfterFunc(ttl, func() { b.onExpiry(h) })
	install()
	s.held[h] = struct{}{}
	b.extra[s] = struct{}{}
	s.idleSent = true
	s.signal(s.idle) // watch the socket for loss once quiet
	// Most contended locks are released within moments: the session's
	// goroutine (heartbeat, loss watch, retiring) starts only if it is
	// still held after a quiet spell.
	s.start = time.AfterFunc(watchAfter, func() {
		b.mu.Lock()
		b.startLocked(s)
		b.mu.Unlock()
	})
	b.mu.Unlock()
	// The TTL counts from the moment the grant was seen, here as in the
	// Backend's own expiry timer.
	return driver.Grant{TTL: ttl, Fence: fence, At: at}, nil
}

// queue runs the waiting statement on c without a context (pgx would
// break the connection when it ends); when ctx ends, a cancel request
// takes the statement out of the server's queue, and if the server cannot
// be reached the connection is broken. sent tells whether a cancel
// was sent: the connection must not be reused then, as a cancel request
// can arrive late and cancel a later statement.
func (b *Backend) queue(ctx context.Context, c *pgxpool.Conn, id int64, sql string, args []any) (fence uint64, pid uint32, sent, reusable bool, err error) {
	pc := c.Conn().PgConn()
	finished := make(chan struct{})
	cancelled := make(chan struct{}) // closed when the cancelling is over
	var (
		tries            int
		confirmed, stray bool
	)
	stop := context.AfterFunc(ctx, func() {
		defer close(cancelled)
		for tries = 1; ; tries++ {
			var st bool
			confirmed, st = b.cancelWait(pc, id)
			stray = stray || st
			if !confirmed && tries == cancelTries {
				_ = pc.Conn().SetDeadline(time.Now()) // give up the connection
				return
			}
			// A cancel that reaches the server before the statement
			// does is ignored: send another unless the statement ends.
			t := time.NewTimer(time.Duration(tries) * 20 * time.Millisecond)
			select {
			case <-finished:
				t.Stop()
				return
			case <-t.C:
			}
		}
	})
	var (
		v          int64
		p          int32
		inRecovery bool
		idle       string
	)
	err = c.QueryRow(context.Background(), sql, args...).Scan(&v, &p, &inRecovery, &idle)
	close(finished)
	if sent = !stop(); sent {
		<-cancelled
	}
	switch {
	case err != nil:
		// One confirmed cancel that ended the statement leaves the
		// connection clean: no lock, no statement, no cancel to come.
		var pe *pgconn.PgError
		reusable = sent && tries == 1 && confirmed && !stray && errors.As(err, &pe) && pe.Code == "57014"
		return 0, 0, sent, reusable, err
	case inRecovery:
		err = errors.New("postgres: the server is a standby (in recovery): advisory locks there are not shared with the primary; connect to the primary")
	case uint32(p) != pc.PID() && !b.cfg.allowPooler:
		err = errPIDChanged
	}
	if err != nil {
		return 0, 0, sent, false, err // the caller closes c, freeing the lock
	}
	return uint64(v), uint32(p), sent, false, nil
}

// undo unlocks a grant nobody wants on c, then closes c (a cancel request
// may still be on its way to it).
func undo(c *pgxpool.Conn, id int64) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, _ = c.Exec(ctx, "SELECT pg_advisory_unlock($1)", id)
	closeConn(c)
}

// closeConn closes c and hands it back to the pool, which drops it. The
// server ends the session, freeing its locks.
func closeConn(c *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.Conn().Close(ctx)
	c.Release()
}

// cancelWait ends the wait of pc in the server's queue, and reports
// whether the server confirmed that it signalled pc's backend, and whether
// a cancel may still be on its way (stray): pg_cancel_backend on the key's
// holder session if it is connected (one round trip), else a cancel
// request (a connection of its own, for which the server starts a
// process). Through a pooler PIDs are not the server's: only the cancel
// request is used.
func (b *Backend) cancelWait(pc *pgconn.PgConn, id int64) (confirmed, stray bool) {
	ctx, cancel := context.WithTimeout(context.Background(), cancelTimeout)
	defer cancel()
	if s := b.sessionFor(id); s.connected.Load() && !b.cfg.allowPooler {
		o := &op{kind: opCancel, id: int64(pc.PID()), done: make(chan struct{})}
		b.mu.Lock()
		s.enqueueLocked(o)
		b.mu.Unlock()
		if err := b.wait(ctx, o); err != nil {
			stray = true // abandoned: it may still run
		} else if o.ok {
			return true, false
		}
	}
	return pc.CancelRequest(ctx) == nil, stray
}
