// Package etcd is the etcd v3 backend of distlock: a lease per grant, a
// create-if-absent transaction, the key's create revision as the fencing
// number (a transfer writes its fence into the value), and a watch that
// wakes waiters when a held key is released.
//
// Build a backend on your own client with New, or open one by URL after
// importing this package (the blank import registers the schemes):
//
//	import _ "github.com/distlock/distlock/backends/etcd"
//
//	lm, err := distlock.Open(ctx, "etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379?prefix=myapp/locks/")
//
// URL forms (see docs/etcd.md):
//
//	etcd://[user:password@]host[:port][,host[:port]…][?options]   plain gRPC
//	etcds://[user:password@]host[:port][,host[:port]…][?options]  TLS
//
// Options: prefix (key prefix, default "distlock/"), dial_timeout (bounds
// all of Open, default DefaultConnectTimeout = 5s) and request_timeout (Go
// durations), ca, cert, key (PEM files for etcds://), server_name (TLS
// server name). The port defaults to 2379.
//
// Leases are whole seconds and the server grants at least its minimum (2s
// with etcd's default timing, 1s with a 100ms election timeout); the
// Manager rounds TTLs up accordingly and Grant reports the real TTL.
//
// An uncontended acquire and release cost two raft writes (the put and the
// delete: leases are reused, refreshed by keep-alives); a hand-off between
// goroutines of one Manager is one (Transfer). Waiters of one
// backend share one watch per key and take turns; waiters of different
// backends queue in etcd, in a "line" of keys under the prefix with its
// last byte incremented ("distlock0line/…" for the default prefix), so a
// release wakes one transaction, not one per process. docs/etcd.md has the
// details and the benchmark figures.
package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultPrefix is the key prefix locks live under unless WithPrefix says
// otherwise: the lock "seat:42" is the etcd key "distlock/seat:42".
const DefaultPrefix = "distlock/"

// DefaultMinTTL is the shortest lease New assumes the server grants: etcd's
// minimum with its default timing (1.5 × the 1s election timeout, rounded
// up to whole seconds). Open asks the server instead.
const DefaultMinTTL = 2 * time.Second

// DefaultRequestTimeout bounds each request to etcd when the caller's
// context has no earlier deadline.
const DefaultRequestTimeout = 5 * time.Second

// Option configures New.
type Option func(*config)

type config struct {
	prefix     string
	minTTL     time.Duration
	reqTimeout time.Duration
}

// WithPrefix puts the lock keys under prefix instead of DefaultPrefix.
// Keys are appended to it byte for byte, so binary keys are safe.
func WithPrefix(prefix string) Option {
	return func(c *config) { c.prefix = prefix }
}

// WithMinTTL declares the server's minimum lease TTL (see DetectMinTTL) so
// that the Manager rounds TTLs up to it. Values below one second are
// raised to one second.
func WithMinTTL(d time.Duration) Option {
	return func(c *config) { c.minTTL = d }
}

// WithRequestTimeout bounds each request to etcd (default
// DefaultRequestTimeout) when the caller's context has no earlier deadline,
// so that an unreachable cluster yields ErrUnavailable rather than a hang.
// Zero or negative means no bound beyond the caller's context.
func WithRequestTimeout(d time.Duration) Option {
	return func(c *config) { c.reqTimeout = d }
}

// Backend is the etcd implementation of driver.Backend. It also
// implements driver.ReleaseNotifier, driver.LossWatcher and
// driver.Transferer. It is safe for concurrent use.
type Backend struct {
	cli        *clientv3.Client
	ownClient  bool
	prefix     string
	minTTL     time.Duration
	reqTimeout time.Duration

	ctx    context.Context // ends at Close; parent of the watches
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	pool    map[int64][]spareLease // keyless leases by requested seconds
	pooled  int
	grants  map[string]*grant // by etcd key: the last grant made here
	sweepAt int
	hubs    map[string]*hub             // by etcd key
	flights map[flightKey]chan struct{} // transfers in progress: closed when done

	rn renewer // the keep-alive stream

	lprefix string     // where the waiters' lines live ("" for none)
	sprefix string     // where stop marks live ("" for none; see cutoff.go)
	sessMu  sync.Mutex // serializes the session grant
	sess    clientv3.LeaseID
	seq     uint64
}

// spareLease is a lease of ours that has no key attached: reused by the
// next grant of the same length instead of granting a new lease.
type spareLease struct {
	id    clientv3.LeaseID
	ttl   int64     // seconds, as granted
	fresh time.Time // the lease lives at least until fresh + ttl
}

// grant is what this backend remembers of a lock it granted.
type grant struct {
	token     string
	value     string // the key's value (see lockValue)
	createRev int64  // the key's create revision
	fence     int64  // createRev, or the fence in the value
	rev       int64  // the revision of the write that made (or moved) it
	lease     clientv3.LeaseID
	secs      int64 // requested seconds (the pool bucket)
	ttl       int64 // granted seconds
	fresh     time.Time
}

var (
	_ driver.Backend         = (*Backend)(nil)
	_ driver.ReleaseNotifier = (*Backend)(nil)
	_ driver.LossWatcher     = (*Backend)(nil)
	_ driver.Transferer      = (*Backend)(nil)
)

const (
	maxPooledPerTTL = 64
	maxPooled       = 1024
)

// New returns a backend on the user's client. Close does not close the
// client. The server's minimum lease TTL is assumed to be DefaultMinTTL
// unless WithMinTTL says otherwise (DetectMinTTL asks the server).
func New(cli *clientv3.Client, opts ...Option) *Backend {
	c := config{prefix: DefaultPrefix, minTTL: DefaultMinTTL, reqTimeout: DefaultRequestTimeout}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.minTTL < time.Second {
		c.minTTL = time.Second
	}
	c.minTTL = ceilSecond(c.minTTL)
	ctx, cancel := context.WithCancel(context.Background())
	return &Backend{
		cli:        cli,
		prefix:     c.prefix,
		minTTL:     c.minTTL,
		reqTimeout: c.reqTimeout,
		ctx:        ctx,
		cancel:     cancel,
		pool:       map[int64][]spareLease{},
		grants:     map[string]*grant{},
		sweepAt:    1024,
		hubs:       map[string]*hub{},
		flights:    map[flightKey]chan struct{}{},
		lprefix:    linePrefix(c.prefix),
		sprefix:    stopPrefix(c.prefix),
	}
}

// DetectMinTTL asks the server for the shortest lease it grants, by
// granting (and revoking) a one-second lease: pass the result to
// WithMinTTL.
func DetectMinTTL(ctx context.Context, cli *clientv3.Client) (time.Duration, error) {
	resp, err := cli.Grant(clientv3.WithRequireLeader(ctx), 1)
	if err != nil {
		return 0, err
	}
	_, _ = cli.Revoke(ctx, resp.ID) // best effort: it expires anyway
	return time.Duration(resp.TTL) * time.Second, nil
}

// Client returns the etcd client the backend uses.
func (b *Backend) Client() *clientv3.Client { return b.cli }

// Capabilities implements driver.Backend.
func (b *Backend) Capabilities() driver.Capabilities {
	return driver.Capabilities{
		Name:                 "etcd",
		Fencing:              true,
		CrossInstanceRelease: true,
		MinTTL:               b.minTTL,
		Granularity:          time.Second,
	}
}

// reqCtx bounds one request: the caller's ctx, at most reqTimeout, and it
// fails fast when the member has no leader.
func (b *Backend) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx = clientv3.WithRequireLeader(ctx)
	if b.reqTimeout > 0 {
		return context.WithTimeout(ctx, b.reqTimeout)
	}
	return context.WithCancel(ctx)
}

func seconds(ttl time.Duration) int64 {
	s := int64((ttl + time.Second - 1) / time.Second)
	return max(s, 1)
}

func ceilSecond(d time.Duration) time.Duration {
	return time.Duration(seconds(d)) * time.Second
}

// unavailable classifies an etcd or transport failure, naming the
// endpoints (never credentials) and what failed.
func (b *Backend) unavailable(op string, err error) error {
	return distlock.Unavailable(fmt.Errorf("etcd %s: %s: %w", strings.Join(b.cli.Endpoints(), ","), op, err))
}

// Acquire implements driver.Backend: a lease (a spare one of ours when
// there is one, else a new grant) and one transaction that creates the key
// if absent, or moves it to the new lease if token already holds it (the
// key is never deleted, so there is no gap and the fence stays). A
// re-acquire of a grant this backend made, for the same TTL, is a read and
// a keep-alive of its lease: no write.
func (b *Backend) Acquire(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	start := time.Now()
	ctx, cancel := b.reqCtx(ctx)
	defer cancel()
	k := b.prefix + key
	secs := seconds(ttl)

	// A transfer to token through this backend is landing: its outcome
	// decides what this call is (with the Manager, the first of its
	// waiters may try just as the key is handed to it).
	if err := b.awaitTransfer(ctx, k, token); err != nil {
		return driver.Grant{}, b.unavailable("acquire", err)
	}
	if g, ok, err := b.reacquireKnown(ctx, k, token, secs, start); err != nil || ok {
		return g, err
	}

	switch a := b.admit(k, token); a {
	case admitWait:
		return driver.Grant{}, distlock.ErrNotAcquired
	case admitJoin, admitLine:
		ok, err := b.readLine(ctx, k, token, a == admitJoin)
		if err != nil {
			return driver.Grant{}, b.unavailable("line", err)
		}
		if !ok {
			return driver.Grant{}, distlock.ErrNotAcquired
		}
	case admitPeek:
		ok, err := b.peek(ctx, k, token)
		if err != nil {
			return driver.Grant{}, b.unavailable("get", err)
		}
		if !ok {
			return driver.Grant{}, distlock.ErrNotAcquired
		}
	case admitCheck:
		// Test before test-and-set: the watch says another token holds
		// the key, and a failed transaction would cost a raft write, a
		// linearizable read does not.
		resp, err := b.cli.Get(ctx, k)
		if err != nil {
			return driver.Grant{}, b.unavailable("get", err)
		}
		if len(resp.Kvs) > 0 && tokenOf(resp.Kvs[0].Value) != token {
			return driver.Grant{}, distlock.ErrNotAcquired
		}
	}

	for try := 0; ; try++ {
		l, spare, err := b.lease(ctx, secs)
		if err != nil {
			return driver.Grant{}, err
		}
		var refreshed chan keepAlive
		if spare {
			// The spare lease was last refreshed before this call began:
			// refresh it, alongside the transaction, so that the lock
			// lives ttl from after the call began, as the Manager assumes.
			refreshed = make(chan keepAlive, 1)
			go func() {
				t := time.Now()
				ttl, err := b.renew(ctx, l.id)
				refreshed <- keepAlive{ttl, err, t}
			}()
		}
		lineCmps, lineOps, entry, nextEntry := b.lineTxn(k)
		val := lockValue(token, 0)
		// The whole transaction is guarded by the attempt's stop mark (see
		// cutoff.go): if the call ends before it learns the outcome, the
		// mark is written, after which the transaction cannot apply.
		stop := b.stopMark(l.id)
		acquire := clientv3.OpTxn(
			append([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k), "=", 0)}, lineCmps...),
			append([]clientv3.Op{clientv3.OpPut(k, val, clientv3.WithLease(l.id))}, lineOps...),
			[]clientv3.Op{clientv3.OpTxn(
				holds(k, token),
				// The value (and the fence in it) stays as it is.
				[]clientv3.Op{clientv3.OpPut(k, "", clientv3.WithIgnoreValue(), clientv3.WithLease(l.id), clientv3.WithPrevKV())},
				nil,
			)},
		)
		var unstopped []clientv3.Cmp
		if stop != "" {
			unstopped = append(unstopped, clientv3.Compare(clientv3.CreateRevision(stop), "=", 0))
		}
		outer, err := b.cli.Txn(ctx).If(unstopped...).Then(acquire).Commit()
		if err != nil {
			if spare && try == 0 && errors.Is(err, rpctypes.ErrLeaseNotFound) {
				continue // the spare lease is gone after all: grant a new one
			}
			// Ambiguous: the transaction may apply, now or later, for a
			// call that has ended. Stop it, and undo what it did.
			b.undoCut(cutAttempt{k: k, value: val, lease: l.id, stop: stop, entry: entry, next: nextEntry})
			return driver.Grant{}, b.unavailable("txn", err)
		}
		if !outer.Succeeded {
			// Stop marks are unique: only a bug (or an operator) makes one.
			return driver.Grant{}, b.unavailable("txn", errors.New("acquire stopped by its own mark"))
		}
		resp := (*clientv3.TxnResponse)(outer.Responses[0].GetResponseTxn())
		resp.Header = outer.Header
		var cur held
		var prevLease clientv3.LeaseID
		if resp.Succeeded {
			cur = held{token: token, value: val, fence: resp.Header.Revision, createRev: resp.Header.Revision}
			if entry != "" {
				b.mu.Lock()
				b.movedLocked(k, entry, nextEntry, resp.Header.Revision)
				b.mu.Unlock()
			}
		} else {
			inner := resp.Responses[0].GetResponseTxn()
			if inner == nil || !inner.Succeeded {
				b.putSpare(secs, l)
				if entry != "" { // maybe not first after all: read the line next time
					b.mu.Lock()
					if h := b.hubs[k]; h != nil && h.line.entry == entry {
						h.line.first, h.line.stale = false, true
					}
					b.mu.Unlock()
				}
				return driver.Grant{}, distlock.ErrNotAcquired
			}
			prev := inner.Responses[0].GetResponsePut().GetPrevKv()
			if prev == nil {
				return driver.Grant{}, b.unavailable("txn", errors.New("re-acquire without previous key"))
			}
			cur, prevLease = heldBy(prev), clientv3.LeaseID(prev.Lease)
		}
		if spare {
			r := <-refreshed
			if r.err != nil {
				if resp.Succeeded {
					// The caller will not learn of this grant: undo it
					// rather than leave it to expire.
					uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
					_, _ = b.cli.Txn(uctx).
						If(clientv3.Compare(clientv3.Value(k), "=", val), clientv3.Compare(clientv3.CreateRevision(k), "=", cur.createRev)).
						Then(clientv3.OpDelete(k)).Commit()
					ucancel()
				}
				return driver.Grant{}, b.unavailable("lease keep-alive", r.err)
			}
			l.ttl, l.fresh = r.ttl, r.at
		}
		b.granted(k, &grant{token: token, value: cur.value, createRev: cur.createRev, fence: cur.fence, rev: resp.Header.Revision,
			lease: l.id, secs: secs, ttl: l.ttl, fresh: l.fresh}, prevLease)
		return driver.Grant{TTL: time.Duration(l.ttl) * time.Second, Fence: uint64(cur.fence)}, nil
	}
}

type keepAlive struct {
	ttl int64
	err error
	at  time.Time // when it was sent
}

// lease returns a lease of secs seconds for a new grant: a spare one
// (spare is true; it must be refreshed once used) or a new one.
func (b *Backend) lease(ctx context.Context, secs int64) (spareLease, bool, error) {
	if l, ok := b.takeSpare(secs); ok {
		return l, true, nil
	}
	t := time.Now()
	resp, err := b.cli.Grant(ctx, secs)
	if err != nil {
		return spareLease{}, false, b.unavailable("lease grant", err)
	}
	return spareLease{id: resp.ID, ttl: resp.TTL, fresh: t}, false, nil
}

// takeSpare returns a spare lease of secs seconds that has at least half
// its TTL left.
func (b *Backend) takeSpare(secs int64) (spareLease, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	ls := b.pool[secs]
	for len(ls) > 0 {
		l := ls[len(ls)-1]
		ls = ls[:len(ls)-1]
		b.pooled--
		if now.Before(l.fresh.Add(time.Duration(l.ttl) * time.Second / 2)) {
			b.pool[secs] = ls
			return l, true
		}
	}
	delete(b.pool, secs)
	return spareLease{}, false
}

// putSpare keeps a keyless lease for reuse, if it has time left and the
// pool has room; otherwise the lease simply expires.
func (b *Backend) putSpare(secs int64, l spareLease) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.putSpareLocked(secs, l)
}

func (b *Backend) putSpareLocked(secs int64, l spareLease) {
	if b.closed || b.pooled >= maxPooled || len(b.pool[secs]) >= maxPooledPerTTL {
		return
	}
	if !time.Now().Before(l.fresh.Add(time.Duration(l.ttl) * time.Second / 2)) {
		return
	}
	b.pool[secs] = append(b.pool[secs], l)
	b.pooled++
}

// granted records a grant; prevLease is the lease the key was on before a
// re-acquire moved it (keyless now: a spare if it is ours).
func (b *Backend) granted(k string, g *grant, prevLease clientv3.LeaseID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.grantedLocked(k, g, prevLease)
}

func (b *Backend) grantedLocked(k string, g *grant, prevLease clientv3.LeaseID) {
	if old := b.grants[k]; old != nil && prevLease != 0 && old.lease == prevLease && old.lease != g.lease {
		b.putSpareLocked(old.secs, spareLease{id: old.lease, ttl: old.ttl, fresh: old.fresh})
	}
	b.grants[k] = g
	b.dequeueLocked(k, g.token)
	if h := b.hubs[k]; h != nil && h.known && g.rev > h.rev {
		// Known before the watch reports it (see idleLineLocked).
		h.rev, h.present, h.token, h.fence = g.rev, true, g.token, g.fence
		for w := range h.losses {
			checkLoss(h, w)
		}
	}
	if len(b.grants) > b.sweepAt {
		now := time.Now()
		for key, g := range b.grants {
			if now.After(g.fresh.Add(time.Duration(g.ttl)*time.Second + time.Second)) {
				delete(b.grants, key)
			}
		}
		b.sweepAt = 2*len(b.grants) + 1024
	}
}

// Extend implements driver.Backend: it reads the key, and if token holds
// it refreshes the key's lease (a keep-alive: no raft write). A lease
// shorter than ttl is replaced by a new one in a transaction that compares
// the token and the old lease. It never re-creates a key.
func (b *Backend) Extend(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	ctx, cancel := b.reqCtx(ctx)
	defer cancel()
	k := b.prefix + key
	secs := seconds(ttl)
	resp, err := b.cli.Get(ctx, k)
	if err != nil {
		return driver.Grant{}, b.unavailable("get", err)
	}
	if len(resp.Kvs) == 0 {
		return driver.Grant{}, distlock.ErrNotHeld
	}
	kv := resp.Kvs[0]
	cur := heldBy(kv)
	if cur.token != token {
		return driver.Grant{}, distlock.ErrNotHeld
	}
	old := cur.lease
	if old != clientv3.NoLease {
		t := time.Now()
		ttl, err := b.renew(ctx, old)
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			return driver.Grant{}, distlock.ErrNotHeld // expired or revoked: the key went with it
		case err != nil:
			return driver.Grant{}, b.unavailable("lease keep-alive", err)
		}
		b.refreshed(k, old, t)
		if ttl >= secs {
			return driver.Grant{TTL: time.Duration(ttl) * time.Second, Fence: uint64(cur.fence)}, nil
		}
	}
	// The lease is shorter than ttl (or the key has none): move the key to
	// a new lease, only if token still holds it on the same lease.
	l, spare, err := b.lease(ctx, secs)
	if err != nil {
		return driver.Grant{}, err
	}
	tr, err := b.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(k), "=", cur.value), clientv3.Compare(clientv3.CreateRevision(k), "=", cur.createRev),
			clientv3.Compare(clientv3.LeaseValue(k), "=", old)).
		Then(clientv3.OpPut(k, cur.value, clientv3.WithLease(l.id))).Commit()
	if err != nil {
		return driver.Grant{}, b.unavailable("txn", err)
	}
	if !tr.Succeeded {
		b.putSpare(secs, l)
		return driver.Grant{}, distlock.ErrNotHeld
	}
	if spare {
		t := time.Now()
		ttl, err := b.renew(ctx, l.id)
		if err != nil {
			return driver.Grant{}, b.unavailable("lease keep-alive", err)
		}
		l.ttl, l.fresh = ttl, t
	}
	b.granted(k, &grant{token: token, value: cur.value, createRev: cur.createRev, fence: cur.fence, rev: tr.Header.Revision,
		lease: l.id, secs: secs, ttl: l.ttl, fresh: l.fresh}, old)
	return driver.Grant{TTL: time.Duration(l.ttl) * time.Second, Fence: uint64(cur.fence)}, nil
}

func (b *Backend) refreshed(k string, lease clientv3.LeaseID, t time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if g := b.grants[k]; g != nil && g.lease == lease && t.After(g.fresh) {
		g.fresh = t
	}
}

// Release implements driver.Backend: one transaction deletes the key if
// token holds it. The lease, keyless now, is kept for the next grant when
// it is ours; otherwise it expires.
func (b *Backend) Release(ctx context.Context, key, token string) error {
	ctx, cancel := b.reqCtx(ctx)
	defer cancel()
	k := b.prefix + key
	b.releasing(k, token, +1)
	ops := []clientv3.Op{clientv3.OpDelete(k, clientv3.WithPrevKV())}
	// An entry of this backend left in the key's line for a waiter that
	// never came leaves with the release, in the same write.
	entry := b.takeIdleEntry(k)
	if entry != "" {
		ops = append(ops, clientv3.OpDelete(entry))
	}
	resp, err := b.cli.Txn(ctx).If(holds(k, token)...).Then(ops...).Commit()
	if err != nil || !resp.Succeeded {
		b.releasing(k, token, -1)
		if entry != "" {
			b.mu.Lock()
			b.leaveLocked(entry)
			b.mu.Unlock()
		}
		if err != nil {
			return b.unavailable("txn", err)
		}
		return distlock.ErrNotHeld
	}
	var prevLease clientv3.LeaseID
	if dr := resp.Responses[0].GetResponseDeleteRange(); dr != nil && len(dr.PrevKvs) > 0 {
		prevLease = clientv3.LeaseID(dr.PrevKvs[0].Lease)
	}
	b.released(k, token, prevLease, resp.Header.Revision)
	return nil
}

// released forgets the grant, keeps its lease as a spare and ends the
// loss watchers of token on k without reporting a loss.
func (b *Backend) released(k, token string, lease clientv3.LeaseID, rev int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if g := b.grants[k]; g != nil && g.token == token {
		delete(b.grants, k)
		if lease != clientv3.NoLease && g.lease == lease {
			b.putSpareLocked(g.secs, spareLease{id: g.lease, ttl: g.ttl, fresh: g.fresh})
		}
	}
	if h := b.hubs[k]; h != nil {
		for w := range h.losses {
			if w.token == token {
				w.released = true
			}
		}
		// The key is free as of rev: tell the waiters here now rather
		// than when the watch reports it.
		if h.known && rev > h.rev {
			b.freedLocked(h)
			h.line.stale = true
			h.rev, h.present, h.token, h.fence = rev, false, "", 0
			for w := range h.losses {
				checkLoss(h, w)
			}
			wakeAll(h)
		}
	}
}

// Close implements driver.Backend: it stops the watches and, if the
// backend was opened from a URL, closes its client. Spare leases are left
// to expire (they hold no keys).
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.pool, b.pooled = map[int64][]spareLease{}, 0
	sess := b.sess
	for _, h := range b.hubs {
		if h.refs == 0 {
			b.endLocked(h)
		}
	}
	b.mu.Unlock()
	b.cancel()
	b.wg.Wait()
	b.revokeSession(sess)
	if b.ownClient {
		return b.cli.Close()
	}
	return nil
}
