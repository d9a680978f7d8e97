// Package postgres is the PostgreSQL backend of distlock: session advisory
// locks held on a few pinned connections, with fencing numbers from a
// sequence.
//
// # How it works
//
// A lock key becomes one 64-bit advisory lock key (see LockID) and is taken
// with pg_try_advisory_lock on a holder session: a connection taken from the
// pool and kept out of it while it holds locks. A Backend has a bounded
// number of holder sessions (WithSessions, default 4) and a key always maps
// to the same one, so many locks share a session. A caller that finds its
// session free sends its statement itself; requests that queue up while the
// session is busy go together in one pipelined round trip. An acquire is one
// statement: pg_try_advisory_lock and, if granted, nextval for the fence.
//
// Advisory locks know nothing of tokens, so the Backend keeps, per held key,
// the token, the fence and the expiry in memory. The token is checked there:
// a wrong token gets ErrNotHeld (release, extend) or ErrNotAcquired
// (acquire) without a round trip; acquiring again with the holding token
// checks the session is alive and resets the TTL without ever unlocking.
// Two Backends (two Managers) never share a session, so they exclude each
// other like separate processes.
//
// # TTL and server-side force
//
// A held lock expires after its TTL: the Backend unlocks it when the TTL
// passes without Extend. Should the holder process stall (paused, starved,
// cut off from the network) so that it cannot unlock, the server ends it:
// every holder session runs with idle_session_timeout set to the idle bound
// (WithIdleTimeout, default 10s) and sends a heartbeat every third of it, so
// a session that sends nothing for longer than the bound is terminated by
// the server and all its locks are freed. A lock of a stalled holder is thus
// free at the latest at max(expiry, stall start + idle bound). A holder
// process that dies (or whose session is killed) frees its locks at once:
// PostgreSQL drops a session's advisory locks when the session ends.
//
// # Fencing
//
// Each grant takes nextval of a sequence (default distlock_fence) in the
// same statement as the lock, so fences strictly increase across grants of
// every key, across managers and processes. The sequence is created on
// first use (CREATE SEQUENCE IF NOT EXISTS) unless WithoutAutoMigrate is
// given; then call Migrate once, with a role allowed to create it.
//
// # Lock loss
//
// When a holder session dies (pg_terminate_backend, server restart, network
// error, the idle bound passed) the Backend notices at once while the session
// is idle (after 5ms without requests it waits on the socket) or at its next
// request, and reports every lock of that session lost
// (driver.LossWatcher): the handles' Done channels close.
//
// # Waiting and Close
//
// Waiters wait in PostgreSQL's own lock queue (driver.Queuer): AcquireWait
// first tries the key on its holder session, as Acquire does, and if
// another session holds it (or waiters queue for it: the server lets
// nobody overtake them) sends a blocking pg_advisory_lock on a connection
// of the pool. The server grants the key to its waiters one at a time, in
// the order they queued, across every process. The connection that got
// the key becomes a holder session of its own (TTL, heartbeat, loss
// detection, Release, Extend and Inspect as on the others) until the key
// is released, then goes back to the pool: size the pool for the holder
// sessions plus one connection per key waited for at once. A wait whose
// context ends is cancelled (pg_cancel_backend from the key's holder
// session, or a cancel request) before AcquireWait returns, and a grant
// that raced with it is unlocked. Close unlocks whatever the Backend still
// holds, as a process exit would.
//
// # Read-write locks, semaphores, elections
//
// Backend implements driver.Primitives (Read, Write, Permit, Leader),
// driver.ModeWaiter and driver.ModeWatcher on advisory locks of their own
// (ModeLockID), held like plain locks on the same sessions with their own
// tokens, TTLs and fences; readers, waiting writers and leaders are
// recorded in an unlogged table (WithTable), and changes are announced
// on NotifyChannel. See primitives.go and docs/postgres.md.
//
// # Cross-instance release
//
// Not supported (Capabilities.CrossInstanceRelease is false): only the
// session that holds an advisory lock can unlock it, and another process
// can only end the whole session, which would drop unrelated locks. Release
// or Extend through another Manager, when another session holds the key,
// returns distlock.ErrNotOwnerInstance (which also matches ErrNotHeld),
// saying so; a wrong token on the holding Manager, or a key nobody holds,
// is plain ErrNotHeld.
//
// # Inspect
//
// Backend implements driver.Inspector with one read-only query of
// pg_locks: whether the key is held and how many sessions wait for it;
// a lock held through this Backend adds its TTL, fence and holder from
// memory.
//
// # Poolers and standbys
//
// Session advisory locks need a real session. PgBouncer in transaction (or
// statement) pooling mode hands each transaction to any server connection,
// so locks would be taken and unlocked on unrelated sessions; a standby
// (hot standby, or a replica a failover promotes) does not share the
// primary's locks. The Backend refuses a session whose server-side backend
// PID differs from the one announced at connect (a pooler sits in between;
// WithAllowPooler accepts a session-mode pooler), notices when the PID
// changes between statements (transaction pooling) and drops the session
// with its locks, and refuses servers in recovery.
//
// # URLs
//
// Importing the package registers the schemes postgres:// and
// postgresql:// with distlock.Open. The URL is a libpq connection URL
// (sslmode, sslrootcert, application_name, connect_timeout and the other
// libpq settings, PG* environment variables and ~/.pgpass are honoured)
// plus these parameters, removed before connecting:
//
//	distlock_namespace=NAME    see WithNamespace
//	distlock_sessions=N        see WithSessions
//	distlock_idle_timeout=10s  see WithIdleTimeout
//	distlock_sequence=NAME     see WithSequence
//	distlock_table=NAME        see WithTable
//	distlock_migrate=false     see WithoutAutoMigrate
//	distlock_allow_pooler=true see WithAllowPooler
//
// connect_timeout (or PGCONNECT_TIMEOUT) bounds each connection and all
// of Open; when neither is set it is DefaultConnectTimeout (5s), whatever
// Open's context. A Backend opened from a URL owns its pool (sized to its
// sessions plus DefaultWaitConns, unless pool_max_conns is given) and
// closes it on Close.
package postgres

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
)

func init() {
	distlock.Register("postgres", openURL)
	distlock.Register("postgresql", openURL)
}

// Defaults.
const (
	// DefaultSessions is the number of holder sessions of a Backend.
	DefaultSessions = 4
	// DefaultIdleTimeout is the idle bound: a holder session that sends
	// nothing for this long is terminated by the server.
	DefaultIdleTimeout = 10 * time.Second
	// DefaultSequence is the sequence fences are drawn from.
	DefaultSequence = "distlock_fence"
	// DefaultTable is the table of read-write locks' waiting writers and
	// elections' leaders (see Primitives in docs/postgres.md).
	DefaultTable = "distlock_state"
	// DefaultOpTimeout bounds one round trip on a holder session.
	DefaultOpTimeout = 30 * time.Second
	// DefaultWaitConns is how many connections a Backend opened from a URL
	// has in its pool beyond its holder sessions, unless the URL sets
	// pool_max_conns: each waiter for a contended key (AcquireWait) uses
	// one, and keeps it while it holds the key.
	DefaultWaitConns = 16
	// DefaultConnectTimeout bounds each connection attempt, and Open as a
	// whole, when the URL has no connect_timeout (and PGCONNECT_TIMEOUT is
	// not set).
	DefaultConnectTimeout = 5 * time.Second
)

// MinIdleTimeout is the shortest idle bound accepted.
const MinIdleTimeout = 100 * time.Millisecond

// Option configures a Backend.
type Option func(*config)

type config struct {
	namespace   string
	sessions    int
	idleTimeout time.Duration
	heartbeat   time.Duration
	sequence    string
	table       string
	migrate     bool
	allowPooler bool
	opTimeout   time.Duration
}

func defaultConfig() config {
	return config{
		sessions:    DefaultSessions,
		idleTimeout: DefaultIdleTimeout,
		sequence:    DefaultSequence,
		table:       DefaultTable,
		migrate:     true,
		opTimeout:   DefaultOpTimeout,
	}
}

// WithNamespace sets the namespace mixed into every advisory lock key (see
// LockID), so that applications sharing a database do not collide with each
// other or with other users of advisory locks. Managers must use the same
// namespace to exclude each other. The default is "".
func WithNamespace(ns string) Option { return func(c *config) { c.namespace = ns } }

// WithSessions sets how many holder sessions (pinned connections) the
// Backend uses at most; values below 1 are ignored. Every lock key maps to
// one of them. Holder sessions are taken from the pool, so leave room in
// the pool's MaxConns for the application.
func WithSessions(n int) Option {
	return func(c *config) {
		if n >= 1 {
			c.sessions = n
		}
	}
}

// WithIdleTimeout sets the idle bound (default 10s, at least
// MinIdleTimeout): holder sessions run with idle_session_timeout set to it
// and send a heartbeat every third of it, so the server terminates the
// session of a holder that stalls for longer, freeing its locks.
func WithIdleTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.idleTimeout = max(d, MinIdleTimeout)
		}
	}
}

// WithSequence sets the (optionally schema-qualified, dot-separated)
// name of the sequence fences come from. The default is distlock_fence in
// the session's search_path.
func WithSequence(name string) Option {
	return func(c *config) {
		if name != "" {
			c.sequence = name
		}
	}
}

// WithTable sets the (optionally schema-qualified) name of the table in
// which waiting writers of read-write locks and the leaders of elections
// are recorded. The default is distlock_state. Plain locks never use it.
func WithTable(name string) Option {
	return func(c *config) {
		if name != "" {
			c.table = name
		}
	}
}

// WithoutAutoMigrate stops the Backend from creating the fence sequence on
// first use; call Migrate beforehand. Sessions fail with a clear error
// while the sequence is missing.
func WithoutAutoMigrate() Option { return func(c *config) { c.migrate = false } }

// WithAllowPooler accepts holder sessions that reach PostgreSQL through a
// connection pooler in session mode (PgBouncer pool_mode=session). The
// Backend still drops a session whose server PID changes between
// statements, which is what transaction pooling looks like.
func WithAllowPooler() Option { return func(c *config) { c.allowPooler = true } }

// WithOpTimeout bounds one round trip on a holder session (default 30s). A
// round trip that takes longer ends the session, and its locks are
// reported lost.
func WithOpTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.opTimeout = d
		}
	}
}

// LockID returns the 64-bit advisory lock key that key takes in namespace:
// the first 8 bytes, read as a big-endian two's-complement int64, of
//
//	SHA-256("distlock/v1\x00" || uint32be(len(namespace)) || namespace || key)
//
// The formula is stable across releases; other programs can compute it to
// interoperate. Distinct keys collide with probability about n²/2⁶⁵ for n
// keys in use at once (one in 37 million for a million keys); a collision
// makes two keys exclude each other, never lets two holders share a key.
func LockID(namespace, key string) int64 {
	h := sha256.New()
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(namespace)))
	h.Write([]byte("distlock/v1\x00"))
	h.Write(n[:])
	h.Write([]byte(namespace))
	h.Write([]byte(key))
	var sum [sha256.Size]byte
	return int64(binary.BigEndian.Uint64(h.Sum(sum[:0])[:8]))
}

// Migrate creates the fence sequence (default distlock_fence) and the table
// of the primitives (default distlock_state; pass the same options as to
// New) if they do not exist. It is idempotent and safe to run concurrently.
func Migrate(ctx context.Context, pool *pgxpool.Pool, opts ...Option) error {
	cfg := defaultConfig()
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	c, err := pool.Acquire(ctx)
	if err != nil {
		return describeConnError(err)
	}
	defer c.Release()
	if err := createSequence(ctx, c.Conn(), cfg.sequence); err != nil {
		return err
	}
	return createTable(ctx, c.Conn(), cfg.table)
}

func createSequence(ctx context.Context, c *pgx.Conn, seq string) error {
	_, err := c.Exec(ctx, "CREATE SEQUENCE IF NOT EXISTS "+quoteIdent(seq)+" AS bigint MINVALUE 1")
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "42P07") {
		return nil // created concurrently
	}
	if err != nil {
		return fmt.Errorf("postgres: creating fence sequence %s: %w", seq, err)
	}
	return nil
}

func quoteIdent(name string) string {
	return pgx.Identifier(strings.Split(name, ".")).Sanitize()
}

// Backend is the PostgreSQL driver.Backend. Wrap it with distlock.New.
type Backend struct {
	pool     *pgxpool.Pool
	ownPool  bool
	cfg      config
	sessions []*session
	lockSQL  string
	waitSQL  string

	mu       sync.Mutex
	locks    map[string]*held
	ids      map[int64]*held
	modes    map[modeKey]map[string]*held // holds of the primitives, by token
	dead     map[string]*held             // locks lost with their session, until their TTL passes
	extra    map[*session]struct{}        // sessions of locks granted by AcquireWait
	closed   bool
	migrated bool
	tableOK  bool // the table of the primitives exists

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	notes notifier // WatchMode's listener

	lockID func(key string) int64 // LockID in the namespace; tests replace it
	where  string                 // host:port of the server, for errors

	closeOnce sync.Once
	wg        sync.WaitGroup
}

var (
	_ driver.Backend     = (*Backend)(nil)
	_ driver.Queuer      = (*Backend)(nil)
	_ driver.LossWatcher = (*Backend)(nil)
	_ driver.Inspector   = (*Backend)(nil)
)

// held is a lock this Backend holds (or is acquiring: pending).
type held struct {
	key      string
	id       int64
	token    string
	s        *session
	pending  bool // the acquire is in flight
	fence    uint64
	expiry   time.Time
	timer    *time.Timer
	watch    map[*lossCB]struct{} // WatchLoss callbacks, called when the lock is lost (not on release)
	gone     bool
	released bool // gone by Release

	// The primitives (kind != 0; see primitives.go).
	kind  driver.Kind
	mk    modeKey
	value string   // Leader: the value published
	limit int      // Permit: the limit agreed on
	pair  [2]int64 // Permit: the shared "held" and "limit" locks
	pid   uint32   // the server backend PID of the session holding it
}

// New returns a Backend taking its holder sessions from pool. The pool
// stays the caller's: Close returns the sessions but does not close it.
// New does no I/O; connection problems surface as ErrUnavailable on use.
func New(pool *pgxpool.Pool, opts ...Option) *Backend {
	cfg := defaultConfig()
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if cfg.heartbeat == 0 {
		cfg.heartbeat = cfg.idleTimeout / 3
	}
	b := &Backend{
		pool:  pool,
		cfg:   cfg,
		locks: map[string]*held{},
		ids:   map[int64]*held{},
		modes: map[modeKey]map[string]*held{},
		dead:  map[string]*held{},
		extra: map[*session]struct{}{},
		lockSQL: "SELECT CASE WHEN pg_try_advisory_lock($1) THEN nextval('" +
			strings.ReplaceAll(quoteIdent(cfg.sequence), "'", "''") + "') ELSE 0 END, pg_backend_pid()",
		waitSQL: waitSQL(cfg.sequence),
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.lockID = func(key string) int64 { return LockID(cfg.namespace, key) }
	if pc := pool.Config().ConnConfig; pc != nil {
		b.where = net.JoinHostPort(pc.Host, strconv.Itoa(int(pc.Port)))
	}
	b.sessions = make([]*session, cfg.sessions)
	for i := range b.sessions {
		s := newSession(b, i)
		s.started = true
		b.sessions[i] = s
		b.wg.Add(1)
		go s.run()
	}
	return b
}

// NewManager returns a distlock.Manager over New(pool, opts...).
func NewManager(pool *pgxpool.Pool, opts ...Option) *distlock.Manager {
	return distlock.New(New(pool, opts...))
}

// errClosed is the cause of ErrUnavailable for calls racing Close.
var errClosed = errors.New("postgres backend closed")

func (b *Backend) sessionFor(id int64) *session {
	return b.sessions[uint64(id)%uint64(len(b.sessions))]
}

// liveLocked returns the current, unexpired entry of key, expiring it if its
// TTL has passed. Called with b.mu held.
func (b *Backend) liveLocked(key string, now time.Time) *held {
	h := b.locks[key]
	if h != nil && !h.pending && !now.Before(h.expiry) {
		b.expireLocked(h)
		return nil
	}
	return h
}

// dropLocked forgets h; lost tells whether its holder loses it (expiry,
// session death) rather than releasing it. Expired locks still held by a
// live session are unlocked in the session's queue order, before anything
// queued later. Called with b.mu held.
func (b *Backend) dropLocked(h *held, lost bool) {
	if h.gone {
		return
	}
	h.gone = true
	if h.kind != 0 {
		b.forgetModeLocked(h)
	} else {
		if b.locks[h.key] == h {
			delete(b.locks, h.key)
		}
		if b.ids[h.id] == h {
			delete(b.ids, h.id)
		}
	}
	if h.timer != nil {
		h.timer.Stop()
	}
	if !h.pending {
		delete(h.s.held, h)
	}
	if lost {
		for cb := range h.watch {
			cb.fn()
		}
	}
	h.watch = nil
}

func (b *Backend) onExpiry(h *held) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if h.gone || h.pending || time.Now().Before(h.expiry) {
		return
	}
	b.expireLocked(h)
}

// expireLocked ends h at its TTL: it is lost to its holder and unlocked on
// its session, ahead of anything queued later there (a new acquire of the
// key goes to the same session). Called with b.mu held.
func (b *Backend) expireLocked(h *held) {
	if h.gone {
		return
	}
	b.dropLocked(h, true)
	h.s.enqueueLocked(&op{kind: opUnlock, id: h.id, h: h})
}

// Acquire implements driver.Backend.
func (b *Backend) Acquire(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	id := b.lockID(key)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return driver.Grant{}, distlock.Unavailable(errClosed)
	}
	if h := b.liveLocked(key, time.Now()); h != nil {
		if h.pending || h.token != token {
			b.mu.Unlock()
			return driver.Grant{}, distlock.ErrNotAcquired
		}
		b.mu.Unlock()
		return b.refresh(ctx, key, token, ttl, distlock.ErrNotAcquired)
	}
	if b.ids[id] != nil { // another key with the same LockID: contention
		b.mu.Unlock()
		return driver.Grant{}, distlock.ErrNotAcquired
	}
	b.forgetDeadLocked(key)
	s := b.sessionFor(id)
	h := &held{key: key, id: id, token: token, s: s, pending: true}
	b.locks[key], b.ids[id] = h, h
	o := &op{kind: opLock, id: id, h: h, ttl: ttl, done: make(chan struct{})}
	s.enqueueLocked(o)
	b.mu.Unlock()

	if err := b.wait(ctx, o); err != nil {
		return driver.Grant{}, err
	}
	if o.err != nil {
		return driver.Grant{}, b.unavailable(o.err)
	}
	if !o.ok {
		return driver.Grant{}, distlock.ErrNotAcquired
	}
	return driver.Grant{TTL: ttl, Fence: o.fence}, nil
}

// wait waits for o, or abandons it when ctx ends first (its outcome is then
// undone by the session: a lock taken for nobody is unlocked).
func (b *Backend) wait(ctx context.Context, o *op) error {
	o.s.submit(o)
	select {
	case <-o.done:
		return nil
	case <-ctx.Done():
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if o.finished {
		return nil
	}
	o.abandoned = true
	return b.unavailable(fmt.Errorf("no answer before the context ended: %w", ctx.Err()))
}

// refresh resets the TTL of key held by token after checking, with a round
// trip, that the holder session is alive. notHeld is returned when it is
// not held.
func (b *Backend) refresh(ctx context.Context, key, token string, ttl time.Duration, notHeld error) (driver.Grant, error) {
	return b.refreshHeld(ctx, token, ttl, notHeld, refreshOf{
		find: func(now time.Time) *held { return b.liveLocked(key, now) },
		missing: func(local bool) error {
			if notHeld == distlock.ErrNotHeld {
				return b.deadCheck(ctx, key, token, local)
			}
			return notHeld
		},
	})
}

// refreshOf says what refreshHeld refreshes: find returns the live entry
// (called with b.mu held), missing answers when token does not hold it,
// and req, if set, is the request that checks the session and records
// the new TTL on the server (called with b.mu held; default a ping).
type refreshOf struct {
	find    func(now time.Time) *held
	missing func(local bool) error
	req     func(h *held) *op
	stamp   bool // set Grant.At: the new TTL's start
}

// refreshHeld resets the TTL of the entry r finds for token after checking,
// with a round trip, that its session is alive.
func (b *Backend) refreshHeld(ctx context.Context, token string, ttl time.Duration, notHeld error, r refreshOf) (driver.Grant, error) {
	b.mu.Lock()
	h := r.find(time.Now())
	if h == nil || h.pending || h.token != token {
		b.mu.Unlock()
		return driver.Grant{}, r.missing(h != nil)
	}
	o := &op{kind: opPing, done: make(chan struct{})}
	if r.req != nil {
		o = r.req(h)
	}
	h.s.enqueueLocked(o)
	b.mu.Unlock()
	if err := b.wait(ctx, o); err != nil {
		return driver.Grant{}, err
	}
	if o.err != nil {
		return driver.Grant{}, b.unavailable(o.err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if h.released && notHeld == distlock.ErrNotHeld {
		// Released by its token while this extend was in flight: the
		// two calls overlapped, and extend-then-release is a valid
		// order. (The auto-renewal of a handle being released lands
		// here; reporting ErrNotHeld would mark it lost.)
		return driver.Grant{TTL: ttl, Fence: h.fence}, nil
	}
	now := time.Now()
	if h.gone || !now.Before(h.expiry) {
		b.expireLocked(h)
		return driver.Grant{}, notHeld
	}
	h.expiry = now.Add(ttl)
	h.timer.Reset(ttl)
	g := driver.Grant{TTL: ttl, Fence: h.fence}
	if r.stamp {
		g.At = now
	}
	return g, nil
}

// Extend implements driver.Backend.
func (b *Backend) Extend(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	return b.refresh(ctx, key, token, ttl, distlock.ErrNotHeld)
}

// Release implements driver.Backend.
func (b *Backend) Release(ctx context.Context, key, token string) error {
	b.mu.Lock()
	h := b.liveLocked(key, time.Now())
	if h == nil || h.pending || h.token != token {
		b.mu.Unlock()
		return b.deadCheck(ctx, key, token, h != nil)
	}
	o := &op{kind: opUnlock, id: h.id, done: make(chan struct{})}
	// Queue the unlock first: a local waiter woken by dropLocked queues
	// its attempt behind it on the same session.
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
	if !o.ok { // the session was replaced: the lock had been lost
		return distlock.ErrNotHeld
	}
	return nil
}

// buryLocked remembers h, lost with its session, until its TTL passes: a
// Release or Extend with its token then reports ErrUnavailable while the
// server cannot be reached, rather than a confident ErrNotHeld. Called
// with b.mu held.
func (b *Backend) buryLocked(h *held) {
	wait := time.Until(h.expiry)
	if wait <= 0 || b.closed || h.kind != 0 {
		return
	}
	b.forgetDeadLocked(h.key)
	b.dead[h.key] = h
	h.timer = time.AfterFunc(wait, func() {
		b.mu.Lock()
		if b.dead[h.key] == h {
			delete(b.dead, h.key)
		}
		b.mu.Unlock()
	})
}

func (b *Backend) forgetDeadLocked(key string) {
	if d := b.dead[key]; d != nil {
		d.timer.Stop()
		delete(b.dead, key)
	}
}

// deadCheck answers a Release or Extend by token of a key this Backend does
// not hold (local: it holds it for another token). If token held it until
// its session was lost, the answer is ErrNotHeld only once the server
// answers again. A key held here for another token is ErrNotHeld; a key
// this Backend knows nothing of is ErrNotOwnerInstance when another
// session holds it (see notOwner), else ErrNotHeld.
func (b *Backend) deadCheck(ctx context.Context, key, token string, local bool) error {
	b.mu.Lock()
	d := b.dead[key]
	if d == nil || d.token != token {
		b.mu.Unlock()
		if local {
			return distlock.ErrNotHeld
		}
		return b.notOwner(ctx, key)
	}
	o := &op{kind: opPing, done: make(chan struct{})}
	b.sessionFor(d.id).enqueueLocked(o) // d.s may be a retired AcquireWait session
	b.mu.Unlock()
	if err := b.wait(ctx, o); err != nil {
		return err
	}
	if o.err != nil {
		return b.unavailable(o.err)
	}
	b.mu.Lock()
	if b.dead[key] == d {
		b.forgetDeadLocked(key)
	}
	b.mu.Unlock()
	return distlock.ErrNotHeld
}

// Capabilities implements driver.Backend.
func (b *Backend) Capabilities() driver.Capabilities {
	return driver.Capabilities{
		Name:                 "postgres",
		Fencing:              true,
		CrossInstanceRelease: false,
		MinTTL:               time.Millisecond,
		Granularity:          time.Millisecond,
		ReadWrite:            true,
		Semaphore:            true,
		Election:             true,
	}
}

// Close unlocks every lock still held, returns the holder sessions to the
// pool (closing the pool if the Backend opened it) and stops its
// goroutines. Locks are freed at once, as when a process exits.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		for _, h := range b.locks {
			if h.timer != nil {
				h.timer.Stop()
			}
		}
		for _, hs := range b.modes {
			for _, h := range hs {
				if h.timer != nil {
					h.timer.Stop()
				}
			}
		}
		for k := range b.dead {
			b.forgetDeadLocked(k)
		}
		all := append([]*session(nil), b.sessions...)
		for s := range b.extra {
			b.startLocked(s) // its goroutine gives the connection back
			all = append(all, s)
		}
		b.closed = true
		b.mu.Unlock()
		for _, s := range all {
			close(s.closing)
		}
		b.cancel() // ends a connect waiting on an exhausted pool
		b.wg.Wait()
		if b.ownPool {
			b.pool.Close()
		}
	})
	return nil
}

// lossCB is one WatchLoss registration.
type lossCB struct{ fn func() }

// WatchLoss implements driver.LossWatcher: lost is called when the lock
// expires or its holder session dies.
func (b *Backend) WatchLoss(key, token string, lost func()) func() {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.liveLocked(key, time.Now())
	if h == nil || h.pending || h.token != token {
		lost()
		return func() {}
	}
	cb := &lossCB{fn: lost}
	if h.watch == nil {
		h.watch = map[*lossCB]struct{}{}
	}
	h.watch[cb] = struct{}{}
	return func() {
		b.mu.Lock()
		delete(h.watch, cb)
		b.mu.Unlock()
	}
}

// openURL is the distlock.OpenFunc of postgres:// and postgresql://.
func openURL(ctx context.Context, u *url.URL) (driver.Backend, error) {
	var opts []Option
	q := u.Query()
	for k, vs := range q {
		if !strings.HasPrefix(k, "distlock_") {
			continue
		}
		v := ""
		if len(vs) > 0 {
			v = vs[len(vs)-1]
		}
		q.Del(k)
		bad := func(err error) error {
			return fmt.Errorf("%w: postgres: parameter %s: %v", distlock.ErrInvalidArgument, k, err)
		}
		switch k {
		case "distlock_namespace":
			opts = append(opts, WithNamespace(v))
		case "distlock_sessions":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return nil, bad(errors.New("want a positive integer"))
			}
			opts = append(opts, WithSessions(n))
		case "distlock_idle_timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d < MinIdleTimeout {
				return nil, bad(fmt.Errorf("want a duration of at least %v", MinIdleTimeout))
			}
			opts = append(opts, WithIdleTimeout(d))
		case "distlock_sequence":
			if v == "" {
				return nil, bad(errors.New("empty"))
			}
			opts = append(opts, WithSequence(v))
		case "distlock_table":
			if v == "" {
				return nil, bad(errors.New("empty"))
			}
			opts = append(opts, WithTable(v))
		case "distlock_migrate", "distlock_allow_pooler":
			f, err := strconv.ParseBool(v)
			if err != nil {
				return nil, bad(errors.New("want true or false"))
			}
			if k == "distlock_migrate" && !f {
				opts = append(opts, WithoutAutoMigrate())
			}
			if k == "distlock_allow_pooler" && f {
				opts = append(opts, WithAllowPooler())
			}
		default:
			return nil, bad(errors.New("unknown parameter"))
		}
	}
	c := *u
	c.RawQuery = q.Encode()
	pc, err := pgxpool.ParseConfig(c.String())
	if err != nil {
		return nil, fmt.Errorf("%w: postgres: %v", distlock.ErrInvalidArgument, err)
	}
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if !q.Has("pool_max_conns") {
		pc.MaxConns = int32(cfg.sessions + DefaultWaitConns)
	}
	pc.MinConns = 0
	timeout := pc.ConnConfig.ConnectTimeout
	if !q.Has("connect_timeout") && os.Getenv("PGCONNECT_TIMEOUT") == "" {
		timeout = DefaultConnectTimeout
		pc.ConnConfig.ConnectTimeout = timeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("%w: postgres: %v", distlock.ErrInvalidArgument, err)
	}
	b := New(pool, opts...)
	b.ownPool = true
	cctx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	if err := b.check(cctx); err != nil {
		b.Close()
		if cctx.Err() != nil && ctx.Err() == nil {
			err = distlock.Unavailable(fmt.Errorf("no answer as PostgreSQL within the connect timeout of %v (wrong host or port? a server that is not PostgreSQL may say nothing; on a slow network raise connect_timeout= in the URL): %w", timeout, err))
		}
		return nil, err
	}
	return b, nil
}

// check connects once and runs the session checks, so that Open reports a
// wrong password, a server that is not PostgreSQL, a pooler or a standby.
func (b *Backend) check(ctx context.Context) error {
	c, err := b.pool.Acquire(ctx)
	if err != nil {
		return b.unavailable(describeConnError(err))
	}
	defer c.Release()
	if _, err := b.setup(ctx, c.Conn()); err != nil {
		return err
	}
	_, err = c.Exec(ctx, "RESET idle_session_timeout")
	return classifyErr(err)
}

// setup checks a new holder session and sets its idle bound. It returns the
// session's server backend PID.
func (b *Backend) setup(ctx context.Context, c *pgx.Conn) (uint32, error) {
	var (
		version    int
		inRecovery bool
		pid        uint32
		seqOK      bool
		tableOK    bool
	)
	err := c.QueryRow(ctx, "SELECT current_setting('server_version_num')::int, pg_is_in_recovery(), pg_backend_pid(), to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
		quoteIdent(b.cfg.sequence), quoteIdent(b.cfg.table)).Scan(&version, &inRecovery, &pid, &seqOK, &tableOK)
	if err != nil {
		return 0, classifyErr(err)
	}
	switch {
	case version < 140000:
		return 0, fmt.Errorf("postgres: server version %d is too old: idle_session_timeout needs PostgreSQL 14 or newer", version)
	case inRecovery:
		return 0, errors.New("postgres: the server is a standby (in recovery): advisory locks there are not shared with the primary; connect to the primary")
	case pid != c.PgConn().PID() && !b.cfg.allowPooler:
		return 0, errors.New("postgres: a connection pooler sits between client and server (backend PID differs from the one announced at connect): session advisory locks need a direct connection or a session-mode pooler (then use distlock_allow_pooler=true / WithAllowPooler)")
	}
	if !seqOK {
		b.mu.Lock()
		migrated := b.migrated
		b.mu.Unlock()
		if !b.cfg.migrate && !migrated {
			return 0, fmt.Errorf("postgres: fence sequence %s does not exist: call postgres.Migrate or allow auto-migration", b.cfg.sequence)
		}
		if err := createSequence(ctx, c, b.cfg.sequence); err != nil {
			return 0, classifyErr(err)
		}
	}
	if !tableOK && b.cfg.migrate { // else the primitives that need it fail, naming it
		if err := createTable(ctx, c, b.cfg.table); err != nil {
			return 0, classifyErr(err)
		}
		tableOK = true
	}
	b.mu.Lock()
	b.tableOK = b.tableOK || tableOK
	b.migrated = true
	b.mu.Unlock()
	_, err = c.Exec(ctx, "SELECT set_config('idle_session_timeout', $1, false)", strconv.FormatInt(b.cfg.idleTimeout.Milliseconds(), 10))
	if err != nil {
		return 0, classifyErr(err)
	}
	return pid, nil
}

// classifyErr turns a driver error into a backend error: connection-level
// failures get a description; every failure is ErrUnavailable.
func classifyErr(err error) error {
	if err == nil {
		return nil
	}
	return distlock.Unavailable(describeConnError(err))
}

// describeConnError adds what a user needs to a connection error: whether
// the address is unreachable, the server refused us, or it is not
// PostgreSQL at all. Passwords never appear (pgconn redacts them).
func describeConnError(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return err
	}
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) {
		return err
	}
	var ne *net.OpError
	if errors.As(err, &ne) && ne.Op == "dial" {
		return fmt.Errorf("postgres: cannot reach server: %w", err)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("postgres: no answer as PostgreSQL in time (wrong host or port? a server that is not PostgreSQL may say nothing): %w", err)
	}
	return fmt.Errorf("postgres: the server did not answer as PostgreSQL (wrong host or port?): %w", err)
}
