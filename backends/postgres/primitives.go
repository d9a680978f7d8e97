package postgres

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
)

// The primitives (driver.Primitives) on advisory locks. Every hold is an
// entry of b.modes with its own token, TTL, fence and timer, held on a
// holder session (or, after AcquireModeWait, on the connection that waited)
// exactly as a plain lock is: the machinery of postgres.go, session.go and
// wait.go serves both. The advisory lock keys of the primitives come from
// hash domains of their own (ModeLockID), apart from LockID's.
//
//   - Read and Write: pg_try_advisory_lock_shared / pg_try_advisory_lock on
//     the key's read-write id. Advisory locks stack per session, so each
//     reader of a session takes (and releases) its own share.
//   - Permit: pg_try_advisory_lock on one of Limit slot ids, plus two shared
//     locks that every holder takes: the semaphore's "held" id and its
//     "limit" id (a hash of key and limit). Live holders agree on the limit
//     when as many sessions hold the limit id as hold the held id.
//   - Leader: pg_try_advisory_lock on the election's id; the leader's
//     token, value, fence and expiry are written to the table (WithTable)
//     in the same statement, and read back joined with pg_locks, so the row
//     of a leader whose session is gone is never reported.
//
// A refused Write with Mode.Waiting records its token as a waiting writer
// in the table until its TTL passes (or ReleaseMode(Write)); a Read by a
// new token is refused while such a mark lives. Waits (AcquireModeWait)
// queue in the server's lock manager, which lets no new shared request
// overtake a waiting exclusive one. Every change of holders notifies
// NotifyChannel (WatchMode).

// MaxPermits is the largest semaphore limit the backend accepts: every
// acquire offers the server the slots it may take.
const MaxPermits = 4096

// modeKey names a key of a primitive: space is 'r' (read-write lock), 'p'
// (semaphore) or 'l' (election).
type modeKey struct {
	space byte
	key   string
}

func spaceOf(k driver.Kind) byte {
	switch k {
	case driver.Read, driver.Write:
		return 'r'
	case driver.Permit:
		return 'p'
	}
	return 'l'
}

// Hash domains of the primitives' advisory lock keys.
const (
	domainRW     = "distlock/rw/v1"
	domainLeader = "distlock/leader/v1"
	domainHeld   = "distlock/sem-held/v1"
	domainLimit  = "distlock/sem-limit/v1"
	domainSlot   = "distlock/sem-slot/v1"
)

// ModeLockID returns the advisory lock key that every holder of key in
// kind's key space holds in namespace: the read-write lock's (Read, Write;
// shared by readers, exclusive for a writer), the election's (Leader,
// exclusive), or the semaphore's "held" key (Permit, shared by every
// holder). It is computed as LockID is, with a domain of its own:
//
//	SHA-256(domain || "\x00" || uint32be(len(namespace)) || namespace || uint32be(0) || key)
//
// with domain "distlock/rw/v1", "distlock/leader/v1" or
// "distlock/sem-held/v1", so no plain lock's key can reach it. It returns 0
// for another kind.
func ModeLockID(namespace string, kind driver.Kind, key string) int64 {
	switch kind {
	case driver.Read, driver.Write:
		return modeID(namespace, domainRW, 0, key)
	case driver.Leader:
		return modeID(namespace, domainLeader, 0, key)
	case driver.Permit:
		return modeID(namespace, domainHeld, 0, key)
	}
	return 0
}

func modeID(namespace, domain string, part uint32, key string) int64 {
	h := sha256.New()
	var n [4]byte
	h.Write([]byte(domain))
	h.Write([]byte{0})
	binary.BigEndian.PutUint32(n[:], uint32(len(namespace)))
	h.Write(n[:])
	h.Write([]byte(namespace))
	binary.BigEndian.PutUint32(n[:], part)
	h.Write(n[:])
	h.Write([]byte(key))
	var sum [sha256.Size]byte
	return int64(binary.BigEndian.Uint64(h.Sum(sum[:0])[:8]))
}

func (b *Backend) modeID(domain string, part uint32, key string) int64 {
	return modeID(b.cfg.namespace, domain, part, key)
}

var (
	_ driver.Primitives = (*Backend)(nil)
	_ driver.ModeWaiter = (*Backend)(nil)
)

// createTable creates the table of waiting writers and leaders.
func createTable(ctx context.Context, c *pgx.Conn, table string) error {
	_, err := c.Exec(ctx, "CREATE UNLOGGED TABLE IF NOT EXISTS "+quoteIdent(table)+" (id bigint NOT NULL, token bytea NOT NULL,"+
		" value bytea NOT NULL DEFAULT '', fence bigint NOT NULL DEFAULT 0, pid int NOT NULL DEFAULT 0,"+
		" expires timestamptz NOT NULL, PRIMARY KEY (id, token))")
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "42P07") {
		return nil // created concurrently
	}
	if err != nil {
		return fmt.Errorf("postgres: creating table %s: %w", table, err)
	}
	return nil
}

// lockMatch is the pg_locks condition of the bigint advisory lock whose
// high and low 32 bits are the parameters hi and lo.
func lockMatch(hi, lo string) string {
	return advisoryHere + " AND classid = " + hi + "::int8::oid AND objid = " + lo + "::int8::oid"
}

// advisoryHere is the pg_locks condition of bigint advisory locks in this
// database.
const advisoryHere = "locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND objsubid = 1"

func hiLo(id int64) (int64, int64) {
	return int64(uint32(uint64(id) >> 32)), int64(uint32(id))
}

// The statements of the primitives. Each returns a bigint (a fence, or 0
// when refused, or -1 for a limit mismatch) and the backend PID.
func (b *Backend) tbl() string { return quoteIdent(b.cfg.table) }

const ttlExpr = "clock_timestamp() + %s::int8 * interval '1 millisecond'"

// readSQL: $1 id, $2/$3 its halves, $4 whether this session holds a share
// already (its own lock table would grant another at once, even behind a
// waiting writer: ask pg_locks), $5 token. A waiting writer's mark
// (fence 0) refuses it; a reader is recorded with its fence (see
// readerCTE).
func (b *Backend) readSQL() string {
	return "WITH l AS MATERIALIZED (SELECT CASE" +
		" WHEN EXISTS (SELECT 1 FROM " + b.tbl() + " WHERE id = $1 AND fence = 0 AND expires > clock_timestamp()) THEN false" +
		" WHEN $4::bool AND EXISTS (SELECT 1 FROM pg_locks WHERE " + lockMatch("$2", "$3") + " AND NOT granted) THEN false" +
		" ELSE pg_try_advisory_lock_shared($1) END AS ok)," +
		" f AS MATERIALIZED (SELECT CASE WHEN ok THEN nextval(" + seqLit(b.cfg.sequence) + ") ELSE 0 END AS fence FROM l)" +
		b.readerCTE("$5", "pg_backend_pid()") + " SELECT fence + " + notifyIf("fence > 0", "$1") + ", pg_backend_pid() FROM f"
}

// readerCTE records a reader once f has its fence, so that every process
// can count readers exactly (pg_locks shows one share per session, however
// many readers it holds): its row lives while its session holds the
// share, and goes with its release, or the next writer's grant.
func (b *Backend) readerCTE(token, pid string) string {
	return ", i AS (INSERT INTO " + b.tbl() + " (id, token, fence, pid, expires) SELECT $1, " + token + "::bytea, fence, " + pid +
		", 'infinity' FROM f WHERE fence > 0 ON CONFLICT (id, token) DO UPDATE SET fence = excluded.fence, pid = excluded.pid, expires = excluded.expires)"
}

// writeSQL: $1 id, $2 token, $3 ttl in ms, $4 whether to try the lock, $5
// whether to mark: if not tried, or refused, token is marked as a waiting
// writer; granted, its mark goes, with the rows of readers gone.
func (b *Backend) writeSQL() string {
	return "WITH l AS MATERIALIZED (SELECT CASE WHEN $4::bool THEN pg_try_advisory_lock($1) ELSE false END AS ok)," +
		" f AS MATERIALIZED (SELECT CASE WHEN ok THEN nextval(" + seqLit(b.cfg.sequence) + ") ELSE 0 END AS fence FROM l)," +
		" m AS (INSERT INTO " + b.tbl() + " (id, token, expires) SELECT $1, $2::bytea, " + fmt.Sprintf(ttlExpr, "$3") +
		" FROM l WHERE NOT ok AND $5::bool ON CONFLICT (id, token) DO UPDATE SET expires = excluded.expires)," +
		" d AS (DELETE FROM " + b.tbl() + " WHERE id = $1 AND (token = $2 OR fence > 0) AND (SELECT ok FROM l))" +
		" SELECT fence + " + notifyIf("fence > 0", "$1") + ", pg_backend_pid() FROM f"
}

// leaderCTEs records the leader once f has its fence: $1 id, and the
// parameters of token, value and ttl (ms).
func (b *Backend) leaderCTEs(token, value, ttl, pid string) string {
	return ", d AS (DELETE FROM " + b.tbl() + " WHERE id = $1 AND token <> " + token + "::bytea AND (SELECT fence FROM f) > 0)," +
		" i AS (INSERT INTO " + b.tbl() + " (id, token, value, fence, pid, expires) SELECT $1, " + token + "::bytea, " + value +
		"::bytea, fence, " + pid + ", " + fmt.Sprintf(ttlExpr, ttl) + " FROM f WHERE fence > 0" +
		" ON CONFLICT (id, token) DO UPDATE SET value = excluded.value, fence = excluded.fence, pid = excluded.pid, expires = excluded.expires)"
}

// leaderSQL: $1 id, $2 token, $3 value, $4 ttl in ms.
func (b *Backend) leaderSQL() string {
	return "WITH l AS MATERIALIZED (SELECT pg_try_advisory_lock($1) AS ok)," +
		" f AS MATERIALIZED (SELECT CASE WHEN ok THEN nextval(" + seqLit(b.cfg.sequence) + ") ELSE 0 END AS fence FROM l)" +
		b.leaderCTEs("$2", "$3", "$4", "pg_backend_pid()") + " SELECT fence + " + notifyIf("fence > 0", "$1") + ", pg_backend_pid() FROM f"
}

// leaderUpdateSQL: the leader $2 of $1 publishes $3 and lives $4 ms more;
// $5 tells whether to notify (a re-acquire may publish a new value).
func (b *Backend) leaderUpdateSQL() string {
	return "WITH u AS (UPDATE " + b.tbl() + " SET value = $3, expires = " + fmt.Sprintf(ttlExpr, "$4") +
		" WHERE id = $1 AND token = $2 RETURNING 1) SELECT count(*) + " + notifyIf("$5::bool", "$1") + ", pg_backend_pid() FROM u"
}

// permitSQL: $1 the held id, $2 the limit id, $3..$6 their halves, $7 the
// slot ids to try in order. It takes both shared locks, the limit's first,
// then checks that every session holding the held lock holds the limit's
// (else -1, undone), then takes the first free slot (else 0, undone).
// Third column: the slot's id. The order matters: a session is never seen
// holding the held lock without its limit's, except when its limit
// differs, so of two acquirers with different limits the later sees the
// earlier (at worst both back off), and a release drops the held lock
// first.
func (b *Backend) permitSQL() string {
	both := "(pg_advisory_unlock_shared($1)::int & pg_advisory_unlock_shared($2)::int)"
	return "WITH c AS MATERIALIZED (SELECT CASE" +
		" WHEN NOT pg_try_advisory_lock_shared($2) THEN 0" +
		" WHEN NOT pg_try_advisory_lock_shared($1) THEN 0 * pg_advisory_unlock_shared($2)::int" +
		// One read of pg_locks: two would not see the same moment.
		" WHEN (SELECT count(*) FILTER (WHERE classid = $3::int8::oid AND objid = $4::int8::oid) >" +
		" count(*) FILTER (WHERE classid = $5::int8::oid AND objid = $6::int8::oid) FROM pg_locks WHERE " +
		advisoryHere + " AND granted) THEN -" + both +
		" ELSE -2 END AS st)," +
		// The session's own slots (of a concurrent acquire of this
		// Backend): a try would take them again.
		" own AS MATERIALIZED (SELECT classid::int8 << 32 | objid::int8 AS id FROM pg_locks" +
		" WHERE " + advisoryHere + " AND pid = pg_backend_pid() AND mode = 'ExclusiveLock' AND granted)," +
		" sl AS MATERIALIZED (SELECT u.id FROM unnest($7::int8[]) AS u(id) WHERE CASE WHEN (SELECT st FROM c) = -2" +
		" AND u.id NOT IN (SELECT id FROM own) THEN pg_try_advisory_lock(u.id) ELSE false END LIMIT 1)" +
		" SELECT CASE WHEN st <> -2 THEN st WHEN NOT EXISTS (SELECT 1 FROM sl) THEN 0 * " + both +
		" ELSE nextval(" + seqLit(b.cfg.sequence) + ") + " + notifyIf("true", "$1") + " END, pg_backend_pid(), coalesce((SELECT id FROM sl), 0) FROM c"
}

// unlockMode returns what ends h on its session: CTEs to run first, and
// an int expression that is 1 if the lock was held (and notifies).
func (b *Backend) unlockMode(h *held) (with, expr string, args []any) {
	with, expr, args = b.unlockModeQuiet(h)
	watched := "$1"
	if h.kind == driver.Permit {
		watched = "$2"
	}
	return with, "(" + expr + " + " + notifyIf("true", watched) + ")", args
}

func (b *Backend) unlockModeQuiet(h *held) (with, expr string, args []any) {
	switch h.kind {
	case driver.Read:
		return "WITH d AS (DELETE FROM " + b.tbl() + " WHERE id = $1 AND token = $2) ", "pg_advisory_unlock_shared($1)::int", []any{h.id, []byte(h.token)}
	case driver.Permit:
		return "", "(pg_advisory_unlock($1)::int & pg_advisory_unlock_shared($2)::int & pg_advisory_unlock_shared($3)::int)",
			[]any{h.id, h.pair[0], h.pair[1]}
	case driver.Leader:
		return "WITH d AS (DELETE FROM " + b.tbl() + " WHERE id = $1 AND token = $2) ", "pg_advisory_unlock($1)::int", []any{h.id, []byte(h.token)}
	}
	return "", "pg_advisory_unlock($1)::int", []any{h.id}
}

// currentLocked reports whether h is still the Backend's entry of its key
// (and token). Called with b.mu held.
func (b *Backend) currentLocked(h *held) bool {
	if h.kind == 0 {
		return b.locks[h.key] == h
	}
	return b.modes[h.mk][h.token] == h
}

// forgetModeLocked removes h from b.modes. Called with b.mu held.
func (b *Backend) forgetModeLocked(h *held) {
	hs := b.modes[h.mk]
	if hs[h.token] == h {
		delete(hs, h.token)
	}
	if len(hs) == 0 {
		delete(b.modes, h.mk)
	}
}

// holdsLocked returns the live holds of mk by token, expiring those whose
// TTL has passed. Called with b.mu held.
func (b *Backend) holdsLocked(mk modeKey, now time.Time) map[string]*held {
	for _, h := range b.modes[mk] {
		if !h.pending && !now.Before(h.expiry) {
			b.expireLocked(h)
		}
	}
	return b.modes[mk]
}

func checkMode(m driver.Mode) error {
	switch m.Kind {
	case driver.Read, driver.Write, driver.Leader:
		return nil
	case driver.Permit:
		if m.Limit < 1 || m.Limit > MaxPermits {
			return fmt.Errorf("%w: postgres: semaphore limit %d outside 1..%d", distlock.ErrInvalidArgument, m.Limit, MaxPermits)
		}
		return nil
	}
	return distlock.ErrUnsupported
}

// needTable makes sure the table exists before a statement uses it: a
// failing statement would end its session, with the other locks on it.
func (b *Backend) needTable(ctx context.Context, k driver.Kind) error {
	if k == driver.Permit {
		return nil
	}
	b.mu.Lock()
	ok := b.tableOK
	b.mu.Unlock()
	if ok {
		return nil
	}
	c, err := b.pool.Acquire(ctx)
	if err != nil {
		return b.unavailable(describeConnError(err))
	}
	defer c.Release()
	if err := c.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", b.tbl()).Scan(&ok); err != nil {
		return b.unavailable(classifyErr(err))
	}
	if !ok && b.cfg.migrate {
		if err := createTable(ctx, c.Conn(), b.cfg.table); err != nil {
			return b.unavailable(err)
		}
		ok = true
	}
	if !ok {
		return b.unavailable(fmt.Errorf("postgres: table %s does not exist: call postgres.Migrate or allow auto-migration", b.cfg.table))
	}
	b.mu.Lock()
	b.tableOK = true
	b.mu.Unlock()
	return nil
}

func ms(d time.Duration) int64 { return max(d.Milliseconds(), 1) }

// AcquireMode implements driver.Primitives: one statement on the key's
// holder session (see the package's Primitives documentation).
func (b *Backend) AcquireMode(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode) (driver.Grant, error) {
	return b.acquireMode(ctx, key, token, ttl, m, m.Waiting)
}

// acquireMode is AcquireMode; mark tells whether a refused Write marks
// token as a waiting writer (not when it goes on to wait in the server's
// queue, which keeps the order itself).
func (b *Backend) acquireMode(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode, mark bool) (driver.Grant, error) {
	if err := checkMode(m); err != nil {
		return driver.Grant{}, err
	}
	if err := b.needTable(ctx, m.Kind); err != nil {
		return driver.Grant{}, err
	}
	mk := modeKey{spaceOf(m.Kind), key}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return driver.Grant{}, distlock.Unavailable(errClosed)
	}
	hs := b.holdsLocked(mk, time.Now())
	if h := hs[token]; h != nil {
		b.mu.Unlock()
		switch {
		case h.pending || h.kind != m.Kind:
			return driver.Grant{}, distlock.ErrNotAcquired
		case m.Kind == driver.Permit && h.limit != m.Limit:
			return driver.Grant{}, distlock.ErrLimitMismatch
		}
		return b.refreshMode(ctx, key, token, ttl, m, distlock.ErrNotAcquired)
	}
	h := &held{key: key, token: token, pending: true, kind: m.Kind, mk: mk, value: m.Value, limit: m.Limit}
	o := &op{kind: opLock, h: h, ttl: ttl, done: make(chan struct{})}
	route := int64(0) // the id that picks the session
	switch m.Kind {
	case driver.Read:
		h.id = b.modeID(domainRW, 0, key)
		route = h.id
		local := false
		for _, x := range hs {
			if x.kind == driver.Write {
				b.mu.Unlock()
				return driver.Grant{}, distlock.ErrNotAcquired
			}
			local = local || x.s == b.sessionFor(route)
		}
		hi, lo := hiLo(h.id)
		o.sql, o.args = b.readSQL(), []any{h.id, hi, lo, local, []byte(token)}
	case driver.Write:
		h.id = b.modeID(domainRW, 0, key)
		route = h.id
		o.sql, o.args = b.writeSQL(), []any{h.id, []byte(token), ms(ttl), len(hs) == 0, mark}
		if len(hs) > 0 && !mark {
			b.mu.Unlock()
			return driver.Grant{}, distlock.ErrNotAcquired
		}
		if len(hs) > 0 { // held here (the server would let this session in): mark only
			o = &op{kind: opSQL, sql: o.sql, args: o.args, done: make(chan struct{})}
			b.sessionFor(route).enqueueLocked(o)
			b.mu.Unlock()
			if err := b.wait(ctx, o); err != nil {
				return driver.Grant{}, err
			}
			if o.err != nil {
				return driver.Grant{}, b.unavailable(o.err)
			}
			return driver.Grant{}, distlock.ErrNotAcquired
		}
	case driver.Leader:
		h.id = b.modeID(domainLeader, 0, key)
		route = h.id
		if len(hs) > 0 {
			b.mu.Unlock()
			return driver.Grant{}, distlock.ErrNotAcquired
		}
		o.sql, o.args = b.leaderSQL(), []any{h.id, []byte(token), []byte(m.Value), ms(ttl)}
	case driver.Permit:
		taken := map[int64]bool{}
		for _, x := range hs {
			if x.limit != m.Limit {
				b.mu.Unlock()
				return driver.Grant{}, distlock.ErrLimitMismatch
			}
			taken[x.id] = true
		}
		h.pair = [2]int64{b.modeID(domainHeld, 0, key), b.modeID(domainLimit, uint32(m.Limit), key)}
		route = h.pair[0]
		// Start at a random slot: concurrent acquirers rarely collide.
		ids := make([]int64, 0, m.Limit)
		for i, start := 0, rand.IntN(m.Limit); i < m.Limit; i++ {
			if id := b.modeID(domainSlot, uint32((start+i)%m.Limit), key); !taken[id] {
				ids = append(ids, id)
			}
		}
		if len(ids) == 0 {
			b.mu.Unlock()
			return driver.Grant{}, distlock.ErrNotAcquired
		}
		ahi, alo := hiLo(h.pair[0])
		lhi, llo := hiLo(h.pair[1])
		o.sql, o.args, o.withAux = b.permitSQL(), []any{h.pair[0], h.pair[1], ahi, alo, lhi, llo, ids}, true
	}
	h.s = b.sessionFor(route)
	o.id = h.id
	if hs == nil {
		hs = map[string]*held{}
		b.modes[mk] = hs
	}
	hs[token] = h
	h.s.enqueueLocked(o)
	b.mu.Unlock()

	if err := b.wait(ctx, o); err != nil {
		return driver.Grant{}, err
	}
	switch {
	case o.err != nil:
		return driver.Grant{}, b.unavailable(o.err)
	case o.ok:
		// The TTL counts from when the grant was seen, as the Backend's
		// own expiry does: the handle's ends with it, not before.
		return driver.Grant{TTL: ttl, Fence: o.fence, At: o.at}, nil
	case o.val < 0:
		return driver.Grant{}, distlock.ErrLimitMismatch
	}
	return driver.Grant{}, distlock.ErrNotAcquired
}

// refreshMode resets the TTL of token's hold of key in m (a leader
// re-acquiring publishes m.Value), else returns notHeld.
func (b *Backend) refreshMode(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode, notHeld error) (driver.Grant, error) {
	mk := modeKey{spaceOf(m.Kind), key}
	r := refreshOf{
		find: func(now time.Time) *held {
			if h := b.holdsLocked(mk, now)[token]; h != nil && h.kind == m.Kind {
				return h
			}
			return nil
		},
		missing: func(bool) error { return notHeld },
		stamp:   true,
	}
	if m.Kind == driver.Leader {
		r.req = func(h *held) *op {
			if notHeld == distlock.ErrNotAcquired { // a re-acquire
				h.value = m.Value
			}
			return &op{kind: opSQL, sql: b.leaderUpdateSQL(), args: []any{h.id, []byte(token), []byte(h.value), ms(ttl), notHeld == distlock.ErrNotAcquired},
				done: make(chan struct{})}
		}
	}
	return b.refreshHeld(ctx, token, ttl, notHeld, r)
}

// ExtendMode implements driver.Primitives.
func (b *Backend) ExtendMode(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode) (driver.Grant, error) {
	if err := checkMode(driver.Mode{Kind: m.Kind, Limit: max(m.Limit, 1)}); err != nil {
		return driver.Grant{}, err
	}
	return b.refreshMode(ctx, key, token, ttl, m, distlock.ErrNotHeld)
}

// ReleaseMode implements driver.Primitives. In Write, a token holding
// nothing has its waiting-writer mark removed (and gets ErrNotHeld).
func (b *Backend) ReleaseMode(ctx context.Context, key, token string, m driver.Mode) error {
	if err := checkMode(driver.Mode{Kind: m.Kind, Limit: max(m.Limit, 1)}); err != nil {
		return err
	}
	mk := modeKey{spaceOf(m.Kind), key}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return distlock.Unavailable(errClosed)
	}
	h := b.holdsLocked(mk, time.Now())[token]
	if h == nil || h.pending || h.kind != m.Kind {
		b.mu.Unlock()
		if m.Kind != driver.Write || h != nil {
			return distlock.ErrNotHeld
		}
		if err := b.needTable(ctx, m.Kind); err != nil {
			return err
		}
		id := b.modeID(domainRW, 0, key)
		b.mu.Lock()
		o := &op{kind: opSQL, done: make(chan struct{}),
			sql: "WITH d AS (DELETE FROM " + b.tbl() + " WHERE id = $1 AND token = $2 RETURNING 1) SELECT count(*) + " +
				notifyIf("count(*) > 0", "$1") + ", pg_backend_pid() FROM d",
			args: []any{id, []byte(token)}}
		b.sessionFor(id).enqueueLocked(o)
		b.mu.Unlock()
		if err := b.wait(ctx, o); err != nil {
			return err
		}
		if o.err != nil {
			return b.unavailable(o.err)
		}
		return distlock.ErrNotHeld
	}
	o := &op{kind: opUnlock, id: h.id, h: h, done: make(chan struct{})}
	h.s.enqueueLocked(o)
	h.released = true
	b.dropLocked(h, false)
	b.mu.Unlock()
	if err := b.wait(ctx, o); err != nil {
		return err
	}
	if o.err != nil {
		return b.unavailable(o.err)
	}
	if !o.ok {
		return distlock.ErrNotHeld
	}
	return nil
}

// AcquireModeWait implements driver.ModeWaiter. Read, Write and Leader try
// once on the holder session (a refused Write leaves no mark), then wait
// in the server's lock queue as AcquireWait does (a connection of the pool
// per waiter, which becomes the hold's session); the server serves
// writers queued before a reader first. Permit has no single queue to
// wait in (any slot will do): it returns errors.ErrUnsupported, and the
// Manager retries AcquireMode, woken by WatchMode.
func (b *Backend) AcquireModeWait(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode) (driver.Grant, error) {
	if err := checkMode(m); err != nil {
		return driver.Grant{}, err
	}
	if m.Kind == driver.Permit {
		return driver.Grant{}, errPermitNoQueue
	}
	if err := b.needTable(ctx, m.Kind); err != nil {
		return driver.Grant{}, err
	}
	mk := modeKey{spaceOf(m.Kind), key}
	b.mu.Lock()
	mine := b.holdsLocked(mk, time.Now())[token] != nil
	b.mu.Unlock()
	g, err := b.acquireMode(ctx, key, token, ttl, m, false)
	if mine || !errors.Is(err, distlock.ErrNotAcquired) { // granted, failed, or a refusal of a holder (another kind)
		return g, err
	}
	h := &held{key: key, token: token, kind: m.Kind, mk: mk, value: m.Value}
	var (
		sql  string
		args []any
	)
	switch m.Kind {
	case driver.Read:
		h.id = b.modeID(domainRW, 0, key)
		sql = waitModeSQL(b.cfg.sequence, "pg_advisory_lock_shared", true, b.readerCTE("$3", "pid"))
		args = []any{[]byte(token)}
	case driver.Write:
		h.id = b.modeID(domainRW, 0, key)
		sql = waitModeSQL(b.cfg.sequence, "pg_advisory_lock", true, ", d AS (DELETE FROM "+b.tbl()+" WHERE id = $1 AND (token = $3 OR fence > 0))")
		args = []any{[]byte(token)}
	case driver.Leader:
		h.id = b.modeID(domainLeader, 0, key)
		sql = waitModeSQL(b.cfg.sequence, "pg_advisory_lock", true, b.leaderCTEs("$3", "$4", "$5", "pid"))
		args = []any{[]byte(token), []byte(m.Value), ms(ttl)}
	}
	g, err = b.waitFor(ctx, h, ttl, sql, args, func() {
		hs := b.modes[mk]
		if hs == nil {
			hs = map[string]*held{}
			b.modes[mk] = hs
		}
		hs[token] = h
	})
	return g, waitEnded(ctx, err)
}

// waitEnded makes the error of a wait that ctx ended, after a try found
// the key held, match distlock.ErrNotAcquired as well as ctx.Err().
func waitEnded(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) && !errors.Is(err, distlock.ErrNotAcquired) {
		return fmt.Errorf("%w: %w", distlock.ErrNotAcquired, err)
	}
	return err
}

// errPermitNoQueue is AcquireModeWait's answer for a permit.
var errPermitNoQueue = fmt.Errorf("postgres: permits have no server queue: %w", errors.ErrUnsupported)

// InspectMode implements driver.Primitives with one read of pg_locks and
// the table, on a connection of the pool. Holders of this Backend are
// described from memory (token, fence, TTL); a writer of another process
// by Holders and Exclusive only. Permit needs m.Limit to count slots;
// without it, Holders counts the sessions holding permits and Limit is 0.
func (b *Backend) InspectMode(ctx context.Context, key string, m driver.Mode) (driver.ModeInfo, error) {
	if err := checkMode(driver.Mode{Kind: m.Kind, Limit: max(m.Limit, 1)}); err != nil {
		return driver.ModeInfo{}, err
	}
	if err := b.needTable(ctx, m.Kind); err != nil {
		return driver.ModeInfo{}, err
	}
	mk := modeKey{spaceOf(m.Kind), key}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return driver.ModeInfo{}, distlock.Unavailable(errClosed)
	}
	now := time.Now()
	var mine []*held
	pids := []int32{}
	for _, h := range b.holdsLocked(mk, now) {
		if !h.pending {
			mine = append(mine, h)
			pids = append(pids, int32(h.pid))
		}
	}
	b.mu.Unlock()
	c, err := b.pool.Acquire(ctx)
	if err != nil {
		return driver.ModeInfo{}, b.unavailable(describeConnError(err))
	}
	defer c.Release()
	var info driver.ModeInfo
	mineInfo := func(h *held) {
		info = driver.ModeInfo{Holders: 1, Exclusive: true, Token: h.token, Value: h.value, Fence: h.fence, TTL: h.expiry.Sub(now)}
	}
	switch m.Kind {
	case driver.Read, driver.Write:
		id := b.modeID(domainRW, 0, key)
		hi, lo := hiLo(id)
		var readers, writers int
		err = c.QueryRow(ctx, "WITH s AS (SELECT pid, mode FROM pg_locks WHERE "+lockMatch("$1", "$2")+" AND granted AND pid <> ALL($3::int4[]))"+
			" SELECT (SELECT count(*) FROM "+b.tbl()+" WHERE id = $4 AND fence > 0 AND pid IN (SELECT pid FROM s WHERE mode = 'ShareLock')),"+
			" (SELECT count(*) FROM s WHERE mode = 'ExclusiveLock')", hi, lo, pids, id).Scan(&readers, &writers)
		for _, h := range mine {
			if h.kind == driver.Write {
				mineInfo(h)
				return info, nil
			}
			readers++
		}
		if writers > 0 {
			return driver.ModeInfo{Holders: 1, Exclusive: true}, classifyErr(err)
		}
		info.Holders = readers
	case driver.Leader:
		id := b.modeID(domainLeader, 0, key)
		if len(mine) > 0 {
			mineInfo(mine[0])
			return info, nil
		}
		hi, lo := hiLo(id)
		var (
			ttlMS        int64
			token, value []byte
		)
		err = c.QueryRow(ctx, "SELECT token, value, fence, ceil(extract(epoch FROM expires - clock_timestamp()) * 1000)::int8 FROM "+b.tbl()+
			" WHERE id = $1 AND expires > clock_timestamp() AND pid IN (SELECT pid FROM pg_locks WHERE "+lockMatch("$2", "$3")+
			" AND granted AND mode = 'ExclusiveLock') ORDER BY fence DESC LIMIT 1", id, hi, lo).Scan(&token, &value, &info.Fence, &ttlMS)
		if errors.Is(err, pgx.ErrNoRows) {
			return driver.ModeInfo{}, nil
		}
		info.Holders, info.Exclusive, info.TTL = 1, true, time.Duration(ttlMS)*time.Millisecond
		info.Token, info.Value = string(token), string(value)
	case driver.Permit:
		ahi, alo := hiLo(b.modeID(domainHeld, 0, key))
		var lhi, llo int64
		ids := []int64{}
		if m.Limit > 0 {
			lhi, llo = hiLo(b.modeID(domainLimit, uint32(m.Limit), key))
			for i := range m.Limit {
				ids = append(ids, b.modeID(domainSlot, uint32(i), key))
			}
		}
		var sessions, agree, slots int
		err = c.QueryRow(ctx, "SELECT count(*) FILTER (WHERE classid = $1::int8::oid AND objid = $2::int8::oid),"+
			" count(*) FILTER (WHERE classid = $3::int8::oid AND objid = $4::int8::oid),"+
			" count(*) FILTER (WHERE mode = 'ExclusiveLock' AND (classid::int8 << 32 | objid::int8) = ANY($5::int8[]))"+
			" FROM pg_locks WHERE "+advisoryHere+" AND granted",
			ahi, alo, lhi, llo, ids).Scan(&sessions, &agree, &slots)
		info.Holders = sessions
		if m.Limit > 0 && sessions > 0 && sessions == agree {
			info.Holders, info.Limit = slots, m.Limit
		}
	}
	return info, classifyErr(err)
}

// NotifyChannel is the LISTEN/NOTIFY channel on which the statements of the
// primitives announce a change of a key's holders (payload: the key's
// ModeLockID in decimal), for WatchMode.
const NotifyChannel = "distlock_modes"

// notifyIf is an int expression, 0, that notifies NotifyChannel of the
// key whose id is the bigint param when cond holds. The notification is
// delivered when the statement commits, after its locks changed.
func notifyIf(cond, param string) string {
	return "CASE WHEN " + cond + " THEN length(pg_notify('" + NotifyChannel + "', " + param + "::int8::text)::text) ELSE 0 END"
}

var _ driver.ModeWatcher = (*Backend)(nil)

// notifier is a Backend's listener: one connection of the pool, taken at
// the first WatchMode and kept until Close, LISTENing on NotifyChannel.
type notifier struct {
	mu      sync.Mutex
	subs    map[int64]map[*func()]struct{}
	running bool
}

// WatchMode implements driver.ModeWatcher with LISTEN/NOTIFY: every grant
// and release (and expiry, and a leader publishing a new value, and a
// waiting writer's mark removed) of a primitive notifies NotifyChannel in
// the statement that makes it. What the server does alone is not
// announced: a holder's session ending, a mark expiring. While the
// listening connection is down and when it comes back, every watcher is
// called (spuriously, perhaps), as notifications may have been missed.
func (b *Backend) WatchMode(ctx context.Context, key string, m driver.Mode, changed func()) (func(), error) {
	if err := checkMode(driver.Mode{Kind: m.Kind, Limit: max(m.Limit, 1)}); err != nil {
		return nil, err
	}
	id := ModeLockID(b.cfg.namespace, m.Kind, key)
	n := &b.notes
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.running {
		c, err := b.listen(ctx)
		if err != nil {
			return nil, err
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			closeConn(c)
			return nil, distlock.Unavailable(errClosed)
		}
		b.wg.Add(1)
		b.mu.Unlock()
		n.running = true
		go b.dispatch(c)
	}
	if n.subs == nil {
		n.subs = map[int64]map[*func()]struct{}{}
	}
	if n.subs[id] == nil {
		n.subs[id] = map[*func()]struct{}{}
	}
	f := &changed
	n.subs[id][f] = struct{}{}
	return func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		delete(n.subs[id], f)
		if len(n.subs[id]) == 0 {
			delete(n.subs, id)
		}
	}, nil
}

// listen takes a connection of the pool and LISTENs on it.
func (b *Backend) listen(ctx context.Context) (*pgxpool.Conn, error) {
	c, err := b.pool.Acquire(ctx)
	if err != nil {
		return nil, b.unavailable(describeConnError(err))
	}
	if _, err := c.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
		closeConn(c)
		return nil, b.unavailable(classifyErr(err))
	}
	return c, nil
}

// dispatch calls the watchers of each notification until Close; it
// reconnects (calling every watcher) when the connection is lost.
func (b *Backend) dispatch(c *pgxpool.Conn) {
	defer b.wg.Done()
	n := &b.notes
	all := func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		for _, fs := range n.subs {
			for f := range fs {
				(*f)()
			}
		}
	}
	wait := 10 * time.Millisecond
	for {
		for c == nil {
			t := time.NewTimer(wait)
			select {
			case <-b.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(b.ctx, b.cfg.opTimeout)
			c, _ = b.listen(ctx)
			cancel()
			wait = min(2*wait, time.Second)
			if c != nil {
				wait = 10 * time.Millisecond
				all() // what happened while nobody listened
			}
		}
		note, err := c.Conn().WaitForNotification(b.ctx)
		if err != nil {
			closeConn(c)
			c = nil
			if b.ctx.Err() != nil {
				return
			}
			all()
			continue
		}
		id, err := strconv.ParseInt(note.Payload, 10, 64)
		if err != nil {
			continue
		}
		n.mu.Lock()
		for f := range n.subs[id] {
			(*f)()
		}
		n.mu.Unlock()
	}
}
