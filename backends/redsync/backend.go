// Package redsync is the distlock backend for Redis, running on go-redsync.
//
// Transport: go-redsync's redis.Pool. Every go-redsync adaptor works — go-redis
// v9 (single node, Sentinel, Cluster), redigo, rueidis, valkey-go — and
// NewBackend and NewRedlock take go-redis clients directly. One pool is a
// single Redis deployment (Backend); several are independent Redlock masters
// (Redlock).
//
// What runs on go-redsync: every Redlock operation, and every unfenced
// acquire and extend, is a go-redsync Mutex call (TryLockContext or
// LockContext, ExtendContext, UnlockContext) with go-redsync's quorum,
// drift, per-node timeout, fail-fast and shuffling, configured by the
// caller's go-redsync options (WithRedsyncOptions). distlock adds its
// contract on top through the pool it hands the Mutex: where go-redsync's
// SET NX finds the key taken, a short script checks whether the caller's
// own token holds it and then resets its TTL in place, so a holder's
// re-acquire never drops the lock and go-redsync's failure cleanup (which
// deletes only the caller's token) never deletes a lock its holder still
// has.
//
// What is distlock's own: the fenced single-node grant (a counter and the
// grant in one script, which go-redsync cannot do) and its extend; on a
// single node, fenced or not, the release, the in-process transfer and the
// queue of waiters (AcquireWait), sent as scripts through the same pool;
// and, where a go-redis client is at hand, the pub/sub subscription on
// which a queued waiter is told that a release handed it the key. Waiters
// on other pools poll the queue; Redlock waiters poll.
//
// On a single node (not Redlock) the Backend also offers read-write locks,
// semaphores and elections (driver.Primitives, one script per operation,
// see primitives.go) and, on a go-redis client, tells watchers of their
// changes over pub/sub (driver.ModeWatcher).
package redsync

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
	rs "github.com/go-redsync/redsync/v4"
	rsredis "github.com/go-redsync/redsync/v4/redis"
	goredispool "github.com/go-redsync/redsync/v4/redis/goredis/v9"
	"github.com/redis/go-redis/v9"
)

// Default names of the key and channels the backend uses beside the lock
// keys themselves (which are the caller's keys, unprefixed, as go-redsync
// stores them).
const (
	// DefaultFenceKey is the counter that numbers grants on a single
	// Redis server. On Redis Cluster there is one counter per hash slot,
	// named DefaultFenceKey + ":{tag}" with a tag in the lock key's slot.
	// Lock keys beginning with the fence key are refused.
	DefaultFenceKey = "distlock:fence"
	// DefaultChannelPrefix prefixes the pub/sub channel of each backend
	// (one per process and client) on which its queued waiters are told
	// that a release handed them a key.
	DefaultChannelPrefix = "distlock:release:"
)

// core is what the single-node Backend and Redlock share.
type core struct {
	pools         []rsredis.Pool // the caller's pools
	rsync         *rs.Redsync    // over the pools wrapped by grantPool
	plain         *rs.Redsync    // over the pools as they are (release)
	quorum        int
	fenced        bool // single node only
	cluster       bool
	fenceKey      string
	channelPrefix string
	ropts         []rs.Option // the caller's go-redsync options
	pid           string      // names this backend's queue entries and channel
	wake          *waker      // single node on go-redis: wake-ups of queued waiters
	watch         modeWatchers
	owned         []redis.UniversalClient

	closeOnce sync.Once
	closeErr  error
}

func newCore(pools []rsredis.Pool, cfg *config) *core {
	c := &core{
		pools:         pools,
		quorum:        len(pools)/2 + 1,
		fenced:        !cfg.noFence && len(pools) == 1,
		cluster:       cfg.cluster,
		fenceKey:      cfg.fenceKey,
		channelPrefix: cfg.channelPrefix,
		ropts:         cfg.redsync,
		pid:           newProcessID(),
	}
	wrapped := make([]rsredis.Pool, len(pools))
	for i, p := range pools {
		wrapped[i] = &grantPool{Pool: p, c: c, i: i}
	}
	c.rsync, c.plain = rs.New(wrapped...), rs.New(pools...)
	return c
}

// Backend is the distlock backend over one Redis deployment: a single
// server, a Sentinel-managed primary or a Redis Cluster, reached through
// one go-redsync pool. Grants are fenced unless WithoutFencing is given.
// Wrap it with distlock.New, or use NewRedsyncLockManager or NewManager.
type Backend struct{ *core }

var (
	_ driver.Backend    = (*Backend)(nil)
	_ driver.Queuer     = (*Backend)(nil)
	_ driver.Transferer = (*Backend)(nil)
	_ driver.Inspector  = (*Backend)(nil)
	_ driver.Backend    = (*Redlock)(nil)
	_ driver.Inspector  = (*Redlock)(nil)
)

// Redlock is the distlock backend over N independent Redis masters, run by
// go-redsync's Mutex: a grant needs a quorum of N/2+1 masters within the
// lock's validity (TTL minus the time the round took minus go-redsync's
// clock-drift allowance).
//
// Redlock grants carry no fencing number (Capabilities.Fencing is false):
// counters on independent masters do not form one order, and a master that
// restarts without persistence forgets its counter, so no number derived
// from them is guaranteed to increase. Use a single-node Backend (or
// etcd/PostgreSQL) when the protected resource needs fencing.
//
// Redlock offers no read-write locks, semaphores or elections
// (Capabilities.ReadWrite, Semaphore and Election are false; it does not
// implement driver.Primitives): go-redsync's Mutex has none of them, and a
// quorum of independent per-master holder sets cannot be honest about
// exclusion — a master that fails over or restarts without persistence
// forgets its readers or permits, and per-holder expiries drift apart
// between masters, so two quorums could admit a writer beside readers or
// one permit too many. Use a single-node Backend for them.
type Redlock struct{ *core }

// NewBackend returns a single-node backend over a go-redis client (a
// server, redis.NewFailoverClient or redis.NewClusterClient), through
// go-redsync's go-redis pool. Queued waiters are woken over the client's
// pub/sub. The client stays the caller's: Close does not close it unless
// WithCloseClient is given.
//
// For ctx deadlines to interrupt a command to a stalled server, create the
// client with ContextTimeoutEnabled: true (URL-opened clients have it).
func NewBackend(client redis.UniversalClient, opts ...Option) *Backend {
	cfg := newConfig(opts)
	if _, ok := client.(*redis.ClusterClient); ok {
		cfg.cluster = true
	}
	c := newCore([]rsredis.Pool{goredispool.NewPool(client)}, cfg)
	c.wake = &waker{client: client, channel: c.channelPrefix + c.pid}
	if cfg.closeClient {
		c.owned = []redis.UniversalClient{client}
	}
	return &Backend{c}
}

// NewPoolBackend returns a single-node backend over any go-redsync pool
// (redigo, rueidis, valkey-go, go-redis, or your own). Without a go-redis
// client there is no pub/sub: queued waiters poll the queue (see
// AcquireWait). Use WithCluster if the pool
// reaches a Redis Cluster.
func NewPoolBackend(pool rsredis.Pool, opts ...Option) (*Backend, error) {
	if isNil(pool) {
		return nil, fmt.Errorf("%w: nil go-redsync pool", distlock.ErrInvalidArgument)
	}
	return &Backend{newCore([]rsredis.Pool{pool}, newConfig(opts))}, nil
}

// NewRedsyncLockManager returns a distlock Manager over client: the
// constructor of go-common's lockmanager/redsync, kept so that code written
// for it compiles with only its import path changed. Options:
// WithTokenGenerator, WithRedsyncOptions (go-redsync's tries and retry
// delay then do the waiting), WithManagerOptions.
func NewRedsyncLockManager(client redis.UniversalClient, opts ...Option) *distlock.Manager {
	return distlock.New(NewBackend(client, opts...), newConfig(opts).managerOptions()...)
}

// NewRedlock returns a Redlock over go-redis clients, one per independent
// master (not replicas of one another). Two clients of the same address are
// ErrInvalidArgument. The clients stay the caller's unless WithCloseClient
// is given.
func NewRedlock(clients []redis.UniversalClient, opts ...Option) (*Redlock, error) {
	cfg := newConfig(opts)
	pools := make([]rsredis.Pool, len(clients))
	seen := make(map[string]bool, len(clients))
	for i, c := range clients {
		if isNil(c) {
			return nil, fmt.Errorf("%w: nil redis client", distlock.ErrInvalidArgument)
		}
		if c, ok := c.(*redis.Client); ok {
			addr := strings.ToLower(c.Options().Addr)
			if seen[addr] {
				return nil, fmt.Errorf("%w: redlock lists master %s twice: its masters must be independent servers", distlock.ErrInvalidArgument, addr)
			}
			seen[addr] = true
		}
		pools[i] = goredispool.NewPool(c)
	}
	r, err := newRedlock(pools, cfg)
	if err != nil {
		return nil, err
	}
	if cfg.closeClient {
		r.owned = clients
	}
	return r, nil
}

// NewPoolRedlock returns a Redlock over go-redsync pools, one per
// independent master. The same pool given twice is ErrInvalidArgument.
func NewPoolRedlock(pools []rsredis.Pool, opts ...Option) (*Redlock, error) {
	return newRedlock(pools, newConfig(opts))
}

func newRedlock(pools []rsredis.Pool, cfg *config) (*Redlock, error) {
	if len(pools) == 0 {
		return nil, fmt.Errorf("%w: redlock needs at least one master", distlock.ErrInvalidArgument)
	}
	for i, p := range pools {
		if isNil(p) {
			return nil, fmt.Errorf("%w: nil go-redsync pool", distlock.ErrInvalidArgument)
		}
		for _, q := range pools[:i] {
			if same(p, q) {
				return nil, fmt.Errorf("%w: redlock lists master %d twice: its masters must be independent servers", distlock.ErrInvalidArgument, i)
			}
		}
	}
	cfg.noFence = true
	return &Redlock{newCore(pools, cfg)}, nil
}

// NewRedlockManager returns a distlock Manager over a Redlock of go-redis
// clients (see NewRedlock).
func NewRedlockManager(clients []redis.UniversalClient, opts ...Option) (*distlock.Manager, error) {
	r, err := NewRedlock(clients, opts...)
	if err != nil {
		return nil, err
	}
	return distlock.New(r, newConfig(opts).managerOptions()...), nil
}

// New returns a backend over go-redsync pools the way redsync.New takes
// them: one pool is a single node (a *Backend), several are Redlock masters
// (a *Redlock).
func New(pools []rsredis.Pool, opts ...Option) (driver.Backend, error) {
	if len(pools) == 1 {
		return NewPoolBackend(pools[0], opts...)
	}
	return NewPoolRedlock(pools, opts...)
}

// NewManager returns a distlock Manager over New(pools, opts...).
func NewManager(pools []rsredis.Pool, opts ...Option) (*distlock.Manager, error) {
	b, err := New(pools, opts...)
	if err != nil {
		return nil, err
	}
	return distlock.New(b, newConfig(opts).managerOptions()...), nil
}

// Quorum returns how many masters must agree on a grant.
func (r *Redlock) Quorum() int { return r.quorum }

// Acquire grants key to token for ttl. Fenced (single node): one script,
// in which a free key gets the next fencing number, a key held by token has
// its TTL reset in place and keeps its fence, and a key held by another
// token gives ErrNotAcquired. Otherwise, and whenever go-redsync options
// were given: a go-redsync Mutex round (see the package doc).
func (c *core) Acquire(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	if err := c.checkKey(key); err != nil {
		return driver.Grant{}, err
	}
	if c.fenced && len(c.ropts) == 0 {
		f, err := c.eval(ctx, acquireScript, key, c.fenceKeyFor(key), token, ttl.Milliseconds())
		if err != nil {
			return driver.Grant{}, err
		}
		if f == -1 {
			return driver.Grant{}, distlock.ErrNotAcquired
		}
		return driver.Grant{TTL: ttl, Fence: uint64(reacquired(f))}, nil
	}
	r := &round{}
	r.created = r.one[:]
	if len(c.pools) > 1 {
		r.created = make([]atomic.Bool, len(c.pools))
	}
	rctx := context.WithValue(ctx, roundKey{}, r)
	m := c.rsync.NewMutex(key, c.mutexOptions(ttl,
		rs.WithGenValueFunc(func() (string, error) { return token, nil }))...)
	start := time.Now()
	var err error
	if len(c.ropts) > 0 {
		err = m.LockContext(rctx)
	} else {
		err = m.TryLockContext(rctx)
	}
	if err != nil {
		return driver.Grant{}, c.failure(err, distlock.ErrNotAcquired)
	}
	return driver.Grant{TTL: ttl, Valid: m.Until().Sub(start), Fence: uint64(r.fence.Load())}, nil
}

// Extend resets key's TTL if token holds it, else returns ErrNotHeld; an
// expired lock is never re-created.
func (c *core) Extend(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	if err := c.checkKey(key); err != nil {
		return driver.Grant{}, err
	}
	if c.fenced {
		f, err := c.eval(ctx, extendScript, key, token, ttl.Milliseconds())
		if err != nil {
			return driver.Grant{}, err
		}
		if f < 0 {
			return driver.Grant{}, distlock.ErrNotHeld
		}
		return driver.Grant{TTL: ttl, Fence: uint64(f)}, nil
	}
	m := c.rsync.NewMutex(key, c.mutexOptions(ttl, rs.WithValue(token))...)
	start := time.Now()
	if ok, err := m.ExtendContext(ctx); !ok {
		return driver.Grant{}, c.failure(err, distlock.ErrNotHeld)
	}
	return driver.Grant{TTL: ttl, Valid: m.Until().Sub(start)}, nil
}

// Release deletes key if token holds it, else returns ErrNotHeld. A fenced
// release hands the key to the first waiter of its queue instead, if any,
// and wakes that waiter only.
func (c *core) Release(ctx context.Context, key, token string) error {
	if err := c.checkKey(key); err != nil {
		return err
	}
	if len(c.pools) == 1 {
		n, err := c.eval(ctx, releaseScript, c.queueArgs(key, token)...)
		if err != nil {
			return err
		}
		if n == 0 {
			return distlock.ErrNotHeld
		}
		return nil
	}
	var m *rs.Mutex
	if len(c.ropts) == 0 {
		m = c.plain.NewMutex(key, rs.WithValue(token))
	} else {
		m = c.plain.NewMutex(key, append(c.ropts[:len(c.ropts):len(c.ropts)], rs.WithValue(token))...)
	}
	if ok, err := m.UnlockContext(ctx); !ok {
		return c.failure(err, distlock.ErrNotHeld)
	}
	return nil
}

// Inspect implements driver.Inspector with GET and PTTL on every master
// (read-only: nothing is written, no TTL reset). On Redlock the key is held
// when a quorum of masters hold the same token; the TTL is the shortest
// among them. A fenced backend reads the key and its queue in one script
// and reports the number of waiters; a key reserved for a woken waiter is
// held by that waiter.
func (c *core) Inspect(ctx context.Context, key string) (driver.LockInfo, error) {
	if err := c.checkKey(key); err != nil {
		return driver.LockInfo{}, err
	}
	if len(c.pools) == 1 {
		return c.inspectQueued(ctx, key)
	}
	held := make(map[string]int, len(c.pools)) // value → masters holding it
	ttls := make(map[string]time.Duration, len(c.pools))
	var failed []error
	for _, p := range c.pools {
		v, ttl, err := inspectOne(ctx, p, key)
		if err != nil {
			failed = append(failed, err)
		} else if v != "" && ttl != -2 && ttl != -2*time.Millisecond { // -2 (go-redis, redigo): gone meanwhile
			if held[v]++; held[v] == 1 || ttl < ttls[v] {
				ttls[v] = max(ttl, 0)
			}
		}
	}
	for v, n := range held {
		if n < c.quorum {
			continue
		}
		return driver.LockInfo{Held: true, Holder: v, TTL: ttls[v]}, nil
	}
	if len(failed) > len(c.pools)-c.quorum {
		return driver.LockInfo{}, classify(errors.Join(failed...))
	}
	return driver.LockInfo{}, nil
}

// inspectOne reads key's value ("" if absent) and TTL on one master.
func inspectOne(ctx context.Context, p rsredis.Pool, key string) (string, time.Duration, error) {
	conn, err := p.Get(ctx)
	if err != nil {
		return "", 0, err
	}
	defer conn.Close()
	v, err := conn.Get(key)
	if err != nil || v == "" {
		return "", 0, err
	}
	ttl, err := conn.PTTL(key)
	return v, ttl, err
}

// Capabilities reports fencing (single node unless WithoutFencing),
// cross-instance release, millisecond TTLs (Redlock: at least 10 ms, so
// that a round leaves the lock some validity) and, on a single node only,
// read-write locks, semaphores and elections (see Backend.AcquireMode).
func (c *core) Capabilities() driver.Capabilities {
	single := len(c.pools) == 1
	caps := driver.Capabilities{
		Name:                 "redis",
		Fencing:              c.fenced,
		CrossInstanceRelease: true,
		MinTTL:               time.Millisecond,
		Granularity:          time.Millisecond,
		ReadWrite:            single,
		Semaphore:            single,
		Election:             single,
	}
	if !single {
		caps.Name, caps.MinTTL = "redlock", 10*time.Millisecond
	}
	return caps
}

// Close ends the pub/sub subscription and closes the go-redis clients the
// backend opened (from a URL) or was told to close (WithCloseClient).
func (c *core) Close() error {
	c.closeOnce.Do(func() {
		if c.wake != nil {
			c.wake.close()
		}
		c.watch.close()
		for _, cl := range c.owned {
			c.closeErr = errors.Join(c.closeErr, cl.Close())
		}
	})
	return c.closeErr
}

// Transfer implements driver.Transferer: if from holds key, key goes to
// to for ttl in one script (atomic on the server), with a new fencing
// number greater than from's (0 unfenced); the key is never free in
// between. Otherwise it returns ErrNotHeld and changes nothing.
func (b *Backend) Transfer(ctx context.Context, key, from, to string, ttl time.Duration) (driver.Grant, error) {
	if err := b.checkKey(key); err != nil {
		return driver.Grant{}, err
	}
	f, err := b.eval(ctx, transferScript, append(b.queueArgs(key, from), to, ttl.Milliseconds())...)
	if err != nil {
		return driver.Grant{}, err
	}
	if f < 0 {
		return driver.Grant{}, distlock.ErrNotHeld
	}
	return driver.Grant{TTL: ttl, Fence: uint64(f)}, nil
}

// checkKey refuses the keys the backend keeps for itself.
func (c *core) checkKey(key string) error {
	if strings.HasPrefix(key, c.fenceKey) {
		return fmt.Errorf("%w: keys beginning with %q are reserved for the fence counter", distlock.ErrInvalidArgument, c.fenceKey)
	}
	return nil
}

// fenceKeyFor returns the counter key for key: one for a whole server, or
// one per hash slot on Redis Cluster so the acquire script's two keys
// always share a slot.
func (c *core) fenceKeyFor(key string) string { return fenceKeyFor(c.fenceKey, c.cluster, key) }

func fenceKeyFor(fenceKey string, cluster bool, key string) string {
	if !cluster {
		return fenceKey
	}
	return fenceKey + ":{" + slotTag(keySlot(key)) + "}"
}

// queueKey returns the name of key's queue of waiters: beside the fence
// counter (so in key's slot, and unreachable from lock keys, which may not
// begin with the fence key).
func (c *core) queueKey(key string) string { return c.fenceKeyFor(key) + ":q:" + key }

// eval runs one of distlock's scripts on the single node's pool and
// returns its integer reply.
func (c *core) eval(ctx context.Context, s *rsredis.Script, keysAndArgs ...any) (int64, error) {
	r, err := c.evalList(ctx, 1, s, keysAndArgs...)
	if err != nil {
		return 0, err
	}
	n, ok := r[0].(int64)
	if !ok {
		return 0, errReply
	}
	return n, nil
}

var errReply = distlock.Unavailable(errors.New("redis: unexpected script reply"))

// evalList runs one of distlock's scripts on the single node's pool and
// returns its reply as a list of n elements (an integer reply is a list
// of one); integers are int64, strings string (whatever the pool).
func (c *core) evalList(ctx context.Context, n int, s *rsredis.Script, keysAndArgs ...any) ([]any, error) {
	conn, err := c.pools[0].Get(ctx)
	if err != nil {
		return nil, classify(err)
	}
	defer conn.Close()
	v, err := conn.Eval(s, keysAndArgs...)
	if err != nil {
		return nil, classify(err)
	}
	r, ok := v.([]any)
	if !ok {
		r = []any{v}
	}
	if len(r) != n {
		return nil, errReply
	}
	for i, e := range r {
		if b, ok := e.([]byte); ok { // redigo
			r[i] = string(b)
		}
	}
	return r, nil
}

// minNodeTimeout is the least a Mutex round waits for each master unless
// the caller set redsync.WithTimeoutFactor: go-redsync waits TTL×0.05,
// which for the short TTLs distlock accepts would be well under a network
// round trip.
const minNodeTimeout = 50 * time.Millisecond

// mutexOptions are the options of a go-redsync Mutex for one call: the
// per-node timeout floor, then the caller's go-redsync options, then the
// call's own TTL and token (own), which always win.
func (c *core) mutexOptions(ttl time.Duration, own rs.Option) []rs.Option {
	opts := make([]rs.Option, 0, len(c.ropts)+3)
	if f := float64(minNodeTimeout) / float64(ttl); f > 0.05 {
		opts = append(opts, rs.WithTimeoutFactor(min(f, 1)))
	}
	opts = append(opts, c.ropts...)
	return append(opts, rs.WithExpiry(ttl), own)
}

// failure turns a failed go-redsync Mutex call into distlock's kinds:
// notKind (ErrNotAcquired or ErrNotHeld) when enough masters answered that
// the key is not the caller's, ErrUnavailable when too many masters failed
// for the round to be decided.
func (c *core) failure(err error, notKind error) error {
	if err == nil {
		return notKind
	}
	var taken, failed int
	walk := func(e error) {
		var rerr *rs.RedisError
		var nt *rs.ErrNodeTaken
		var t *rs.ErrTaken
		switch {
		case errors.As(e, &t):
			taken += len(t.Nodes)
		case errors.Is(e, rs.ErrLockAlreadyExpired):
			taken++
		case errors.As(e, &nt):
			taken++
		case errors.As(e, &rerr):
			failed++
		}
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			walk(e)
		}
	} else {
		walk(err)
	}
	if failed > 0 && taken < c.quorum {
		return classify(err)
	}
	return kindError{notKind, err}
}

// kindError is go-redsync's error err, in its own words, matching kind.
type kindError struct{ kind, err error }

func (k kindError) Error() string   { return k.err.Error() }
func (k kindError) Unwrap() []error { return []error{k.kind, k.err} }

// grantPool is the pool a go-redsync Mutex of this backend runs on: the
// caller's pool i, with distlock's grant in place of go-redsync's plain SET
// NX while the Mutex runs an acquire round (see grantConn).
type grantPool struct {
	rsredis.Pool
	c *core
	i int
}

// round is the state of one Acquire's Mutex rounds, carried to the pools in
// the context go-redsync hands them.
type round struct {
	one     [1]atomic.Bool
	created []atomic.Bool // by pool: this round's grant is there to undo
	fence   atomic.Int64  // fenced single node: the grant's fence
}

type roundKey struct{}

func (p *grantPool) Get(ctx context.Context) (rsredis.Conn, error) {
	conn, err := p.Pool.Get(ctx)
	if err != nil {
		return nil, err
	}
	r, _ := ctx.Value(roundKey{}).(*round)
	return &grantConn{Conn: conn, p: p, r: r}, nil
}

// grantConn is a go-redsync connection that keeps distlock's contract:
//
//   - SetNX: a key already held by the same token is re-acquired in place
//     (its TTL reset, never deleted); on a fenced backend the grant is the
//     fenced script.
//   - go-redsync's cleanup after a failed round deletes only what the
//     round itself created (or, on Redlock, re-acquired): a lock the token
//     came to hold another way meanwhile — an in-process transfer to it —
//     is never deleted, and a fenced grant is released by the fenced
//     script.
//   - go-redsync's extend-or-re-create script (redsync.WithSetNXOnExtend)
//     becomes a plain extend: distlock never re-creates an expired lock.
type grantConn struct {
	rsredis.Conn
	p *grantPool
	r *round // nil outside acquire rounds
}

func (c *grantConn) SetNX(name, value string, expiry time.Duration) (bool, error) {
	if c.r == nil {
		return c.Conn.SetNX(name, value, expiry)
	}
	if c.p.c.fenced {
		v, err := c.Conn.Eval(acquireScript, name, c.p.c.fenceKeyFor(name), value, expiry.Milliseconds())
		f, ok := v.(int64)
		if err != nil || !ok || f == -1 {
			return false, err
		}
		if f >= 0 {
			c.r.created[c.p.i].Store(true)
		} else {
			f = reacquired(f)
		}
		c.r.fence.Store(f)
		return true, nil
	}
	ok, err := c.Conn.SetNX(name, value, expiry)
	if err != nil || ok {
		c.r.created[c.p.i].Store(ok)
		return ok, err
	}
	v, err := c.Conn.Eval(reacquireScript, name, value, expiry.Milliseconds())
	if ok = v == int64(1); ok && len(c.p.c.pools) > 1 {
		c.r.created[c.p.i].Store(true)
	}
	return ok, err
}

func (c *grantConn) Eval(s *rsredis.Script, keysAndArgs ...any) (any, error) {
	switch {
	case c.r != nil: // go-redsync's cleanup of a failed round
		if !c.r.created[c.p.i].CompareAndSwap(true, false) {
			return int64(0), nil
		}
		if len(c.p.c.pools) == 1 && len(keysAndArgs) == 2 {
			name, _ := keysAndArgs[0].(string)
			token, _ := keysAndArgs[1].(string)
			return c.Conn.Eval(releaseScript, c.p.c.queueArgs(name, token)...)
		}
	case strings.Contains(s.Src, "PEXPIRE") && strings.Contains(s.Src, "NX"):
		s = touchScript
	}
	return c.Conn.Eval(s, keysAndArgs...)
}

// reacquired decodes the acquire script's reply: a fence >= 0 for a new
// grant, -1 for a key held by another token, -2-fence for a re-acquire by
// the holder.
func reacquired(f int64) int64 {
	if f < -1 {
		return -2 - f
	}
	return f
}

// isNil reports whether v is nil or a nil *redis.Client.
func isNil(v any) bool {
	c, ok := v.(*redis.Client)
	return v == nil || ok && c == nil
}

// same reports whether two pools are the same value; pools of types that
// cannot be compared are taken as distinct.
func same(a, b rsredis.Pool) (eq bool) {
	defer func() {
		if recover() != nil {
			eq = false
		}
	}()
	return a == b
}

// classify wraps a go-redis error so that it matches ErrUnavailable, and
// names the usual configuration mistakes.
func classify(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return distlock.Unavailable(err)
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "NOAUTH"), strings.Contains(msg, "WRONGPASS"),
		strings.Contains(msg, "invalid password"), strings.Contains(msg, "invalid username-password"):
		return distlock.Unavailable(fmt.Errorf("redis authentication failed: %w", err))
	case strings.Contains(msg, "READONLY"):
		return distlock.Unavailable(fmt.Errorf("redis replica is read-only (point the client at the primary): %w", err))
	}
	return distlock.Unavailable(err)
}
