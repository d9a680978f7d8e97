// Package etcd is the etcd v3 backend of distlock: each lock is a queue of
// entries under a prefix of its own, ordered by create revision as in
// etcd's concurrency.Mutex; the entry with the lowest create revision holds
// the lock. Each entry lives on a lease of the grant's TTL.
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
// goroutines of one Manager is one (Transfer). A waiter (AcquireWait) puts
// its entry in the queue and watches only the entry just before it, so a
// release wakes one waiter in whichever process it is. The fencing number
// is the revision of the write that made the grant. docs/etcd.md has the
// details and the benchmark figures.
package etcd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

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

// WithPrefix puts the lock keys under prefix instead of DefaultPrefix
// (see QueuePrefix).
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
// implements driver.Queuer, driver.Transferer, driver.Inspector and the
// primitives (driver.Primitives, ModeWaiter, ModeWatcher: see ModePrefix). It is
// not a driver.LossWatcher: a held Lock costs no watch and no goroutine,
// and learns of a loss (its entry deleted, its lease revoked) at its next
// renewal or at its expiry, as etcd's own concurrency.Mutex does at best.
// It is safe for concurrent use.
type Backend struct {
	cli        *clientv3.Client
	ownClient  bool
	prefix     string
	minTTL     time.Duration
	reqTimeout time.Duration
	id         string        // names this backend's queue entries
	seq        atomic.Uint64 // and this counts them

	ctx    context.Context // ends at Close; parent of the background work
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	pool    map[int64][]spareLease // keyless leases by requested seconds
	pooled  int
	grants  map[string]*grant // by queue prefix: the last grant made here
	sweepAt int
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
	entry     string // the holder's entry
	value     string // its value (see lockValue)
	createRev int64
	fence     int64
	rev       int64 // the revision the grant was known at
	queued    bool  // it came through the queue: others likely wait too
	lease     clientv3.LeaseID
	secs      int64 // requested seconds (the pool bucket)
	ttl       int64 // granted seconds
	fresh     time.Time
}

var (
	_ driver.Backend    = (*Backend)(nil)
	_ driver.Queuer     = (*Backend)(nil)
	_ driver.Transferer = (*Backend)(nil)
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
	var id [8]byte
	_, _ = rand.Read(id[:])
	return &Backend{
		cli:        cli,
		prefix:     c.prefix,
		minTTL:     c.minTTL,
		reqTimeout: c.reqTimeout,
		id:         hex.EncodeToString(id[:]) + "-",
		ctx:        ctx,
		cancel:     cancel,
		pool:       map[int64][]spareLease{},
		grants:     map[string]*grant{},
		sweepAt:    1024,
	}
}

// QueuePrefix returns the etcd key prefix under which the queue of key
// lives, for a backend with the given prefix: prefix, the length of key in
// decimal, ':', key byte for byte, and '/'. The length makes the mapping
// injective: the queues of "a", "a/x" and "a\x00" are disjoint. Each entry
// under it is one holder or waiter; the one with the lowest create
// revision holds the lock. An operator deletes that entry to break a lock.
func QueuePrefix(prefix, key string) string {
	return prefix + strconv.Itoa(len(key)) + ":" + key + "/"
}

func (b *Backend) newEntry(q string) string {
	return q + b.id + strconv.FormatUint(b.seq.Add(1), 36)
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
		ReadWrite:            true,
		Semaphore:            true,
		Election:             true,
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

// fail classifies the error of a request made under ctx: the caller's
// ctx.Err() if ctx ended, else ErrUnavailable.
func (b *Backend) fail(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return b.unavailable(op, err)
}

// errEntryLost: a waiter's entry went while it waited.
var errEntryLost = errors.New("queue entry deleted while waiting (lease expired or revoked, or deleted by hand)")

// Acquire implements driver.Backend with one transaction: if the key's
// queue is empty it puts an entry there (on a spare lease of ours when
// there is one, else a new one), else it reads the first entry — and if
// token holds the key, resets the TTL as Extend does (the fence stays). A
// refused Acquire writes nothing.
func (b *Backend) Acquire(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	return b.acquire(ctx, key, token, ttl, false)
}

// AcquireWait implements driver.Queuer: one transaction puts an entry in
// the key's queue and reads the first entry and the one just before its
// own. Unless its entry is first (or token already holds the key: then
// the entry goes and the TTL is reset as Extend does), it watches the
// entry before it until that one is deleted, and so on, keeping its own
// lease alive meanwhile. When ctx ends, its entry's lease is revoked,
// which deletes the entry whether or not the transaction that put it has
// landed yet, and keeps it from landing later.
func (b *Backend) AcquireWait(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	return b.acquire(ctx, key, token, ttl, true)
}

func (b *Backend) acquire(ctx context.Context, key, token string, ttl time.Duration, wait bool) (driver.Grant, error) {
	start := time.Now()
	q := QueuePrefix(b.prefix, key)
	secs := seconds(ttl)
	rctx, cancel := b.reqCtx(ctx)
	defer cancel()
	if g, ok, err := b.reacquireKnown(rctx, q, token, secs, start); err != nil || ok {
		return g, err
	}
	for try := 0; ; try++ {
		l, refreshed, err := b.leaseFor(rctx, secs)
		if err != nil {
			return driver.Grant{}, err
		}
		entry := b.newEntry(q)
		val := lockValue(token, 0)
		put := clientv3.OpPut(entry, val, clientv3.WithLease(l.id))
		first := clientv3.OpGet(q, clientv3.WithFirstCreate()...)
		txn := b.cli.Txn(rctx)
		if wait { // the first entry before ours is put, and the last two after
			txn = txn.Then(first, put, clientv3.OpGet(q, append(clientv3.WithLastCreate(), clientv3.WithLimit(2))...))
		} else {
			txn = txn.If(clientv3.Compare(clientv3.CreateRevision(q), "=", 0).WithPrefix()).Then(put).Else(first)
		}
		resp, err := txn.Commit()
		if err != nil {
			if refreshed != nil && try == 0 && errors.Is(err, rpctypes.ErrLeaseNotFound) {
				continue // the spare lease is gone after all: grant a new one
			}
			// The put may land, now or later, for a call that has ended.
			b.abandon(l)
			return driver.Grant{}, b.fail(ctx, "txn", err)
		}
		rev := resp.Header.Revision
		kvs := resp.Responses[0].GetResponseRange().GetKvs() // the first entry, unless ours is
		if len(kvs) == 0 {
			if err := b.awaitRefresh(ctx, refreshed, &l); err != nil {
				return driver.Grant{}, err
			}
			b.granted(q, &grant{token: token, entry: entry, value: val, createRev: rev, fence: rev, rev: rev,
				lease: l.id, secs: secs, ttl: l.ttl, fresh: l.fresh}, 0)
			return driver.Grant{TTL: time.Duration(l.ttl) * time.Second, Fence: uint64(rev)}, nil
		}
		if tokenOf(kvs[0].Value) == token { // a re-acquire: reset the TTL
			if wait {
				b.abandon(l) // our entry goes
			} else {
				b.putSpare(secs, l)
			}
			g, err := b.extendKV(rctx, q, kvs[0], token, secs)
			if errors.Is(err, distlock.ErrNotHeld) && try < 2 {
				continue // it expired just now: the key may be free
			}
			return g, err
		}
		if !wait {
			b.putSpare(secs, l)
			return driver.Grant{}, distlock.ErrNotAcquired
		}
		kvs = resp.Responses[2].GetResponseRange().GetKvs() // ours and the one before
		g, err := b.queued(ctx, q, entry, rev, string(kvs[len(kvs)-1].Key), 0, token, l, secs, plainTurn(q))
		if err != nil {
			b.abandon(l)
			return driver.Grant{}, err
		}
		return g, nil
	}
}

// turn says when a queue entry's turn comes: before reads the entries
// created before it (WithMaxCreateRev is added), and next names the one
// whose deletion it waits for, or "" when its turn has come (need > 0:
// need deletions in the queue key may bring it). gkey is where b.grants
// records the grant.
type turn struct {
	gkey   string
	before []clientv3.OpOption
	next   func(before []*mvccpb.KeyValue) (key string, need int)
}

// plainTurn is a plain lock's: the entry just before waits for nobody.
func plainTurn(q string) turn {
	return turn{gkey: q, before: clientv3.WithLastCreate(), next: func(kvs []*mvccpb.KeyValue) (string, int) {
		if len(kvs) == 0 {
			return "", 0
		}
		return string(kvs[0].Key), 0
	}}
}

// queued waits until the turn of entry, put at revision c behind pred (or
// need deletions under pred), comes, and makes it token's grant. Its fence is the
// revision of the release that handed the lock on (it wrote to the entry:
// see release); when the lock came free otherwise (its holder's lease
// expired; always for primitives), the entry is written once to get a
// revision above every earlier grant's.
func (b *Backend) queued(ctx context.Context, q, entry string, c int64, pred string, need int, token string, l spareLease, secs int64, t turn) (driver.Grant, error) {
	tick := time.NewTicker(max(time.Duration(l.ttl)*time.Second/3, 300*time.Millisecond))
	defer tick.Stop()
	rev := c
	for {
		if err := b.waitDelete(ctx, pred, need, rev, l.id, tick); err != nil {
			return driver.Grant{}, err
		}
		rctx, cancel := b.reqCtx(ctx)
		ka := b.renewAsync(rctx, l.id) // keeps the entry, and resets the TTL if it is first now
		resp, err := b.cli.Txn(rctx).Then(clientv3.OpGet(entry),
			clientv3.OpGet(q, append(t.before, clientv3.WithMaxCreateRev(c-1))...)).Commit()
		k := <-ka
		cancel()
		if err != nil {
			return driver.Grant{}, b.fail(ctx, "txn", err)
		}
		mine := resp.Responses[0].GetResponseRange().GetKvs()
		if len(mine) == 0 || errors.Is(k.err, rpctypes.ErrLeaseNotFound) {
			return driver.Grant{}, b.unavailable("wait", errEntryLost)
		}
		if k.err != nil {
			return driver.Grant{}, b.fail(ctx, "lease keep-alive", k.err)
		}
		if pred, need = t.next(resp.Responses[1].GetResponseRange().GetKvs()); pred != "" {
			rev = resp.Header.Revision
			continue
		}
		fence, rev := fenceOf(mine[0]), resp.Header.Revision
		if mine[0].ModRevision == c { // not handed on by a release
			rctx, cancel := b.reqCtx(ctx)
			tr, err := b.cli.Txn(rctx).If(clientv3.Compare(clientv3.CreateRevision(entry), "=", c)).
				Then(clientv3.OpPut(entry, "", clientv3.WithIgnoreValue(), clientv3.WithIgnoreLease())).Commit()
			cancel()
			if err != nil {
				return driver.Grant{}, b.fail(ctx, "txn", err)
			}
			if !tr.Succeeded {
				return driver.Grant{}, b.unavailable("wait", errEntryLost)
			}
			fence, rev = tr.Header.Revision, tr.Header.Revision
		}
		if err := ctx.Err(); err != nil {
			return driver.Grant{}, err
		}
		b.granted(t.gkey, &grant{token: token, entry: entry, value: string(mine[0].Value), createRev: c, fence: fence, rev: rev,
			queued: true, lease: l.id, secs: secs, ttl: k.ttl, fresh: k.at}, 0)
		return driver.Grant{TTL: time.Duration(k.ttl) * time.Second, Fence: uint64(fence), At: k.at}, nil
	}
}

// waitDelete waits until key is deleted after revision rev or, if need >
// 0, until need keys under it are (or the watch breaks: the caller looks
// again), renewing lease at each tick.
func (b *Backend) waitDelete(ctx context.Context, key string, need int, rev int64, lease clientv3.LeaseID, tick *time.Ticker) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithRev(rev + 1), clientv3.WithFilterPut()}
	if need > 0 {
		opts = append(opts, clientv3.WithPrefix())
	}
	need = max(need, 1)
	wch := b.cli.Watch(wctx, key, opts...)
	for {
		select {
		case wr, ok := <-wch:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if need -= len(wr.Events); !ok || wr.Err() != nil || need <= 0 {
				return nil
			}
		case <-tick.C:
			rctx, rcancel := b.reqCtx(ctx)
			_, err := b.renew(rctx, lease)
			rcancel()
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				return b.unavailable("wait", errEntryLost)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// abandon revokes the lease of an entry a call put or may yet put (the
// lease carries nothing else): that deletes the entry, and a put still
// in flight fails when it lands. It tries once before it returns, and
// goes on in the background, until the lease would have expired anyway,
// if that fails.
func (b *Backend) abandon(l spareLease) {
	revoke := func() bool {
		ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(b.ctx), time.Second)
		defer cancel()
		_, err := b.cli.Revoke(ctx, l.id)
		return err == nil || errors.Is(err, rpctypes.ErrLeaseNotFound)
	}
	if revoke() {
		return
	}
	until := time.Now().Add(time.Duration(l.ttl) * time.Second)
	b.background(func() {
		for time.Now().Before(until) && !revoke() {
			select {
			case <-b.ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	})
}

// background runs f in a goroutine that Close waits for, unless the
// backend is closed.
func (b *Backend) background(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f()
	}()
}

type keepAlive struct {
	ttl int64
	err error
	at  time.Time // when it was sent
}

// renewAsync renews lease id in the background; the result comes on the
// channel.
func (b *Backend) renewAsync(ctx context.Context, id clientv3.LeaseID) chan keepAlive {
	ch := make(chan keepAlive, 1)
	go func() {
		t := time.Now()
		ttl, err := b.renew(ctx, id)
		ch <- keepAlive{ttl, err, t}
	}()
	return ch
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

// leaseFor returns a lease for a new grant of secs seconds, as lease
// does. A spare lease was last refreshed before this call began: it is
// refreshed in the background, alongside the transaction (refreshed is
// not nil: see awaitRefresh), so that the grant lives ttl from after the
// call began, as the Manager assumes.
func (b *Backend) leaseFor(ctx context.Context, secs int64) (l spareLease, refreshed chan keepAlive, err error) {
	l, spare, err := b.lease(ctx, secs)
	if spare {
		refreshed = b.renewAsync(ctx, l.id)
	}
	return l, refreshed, err
}

// awaitRefresh takes the refresh of l that leaseFor sent, if any; if it
// failed, l is abandoned.
func (b *Backend) awaitRefresh(ctx context.Context, refreshed chan keepAlive, l *spareLease) error {
	if refreshed == nil {
		return nil
	}
	r := <-refreshed
	if r.err != nil {
		b.abandon(*l)
		return b.fail(ctx, "lease keep-alive", r.err)
	}
	l.ttl, l.fresh = r.ttl, r.at
	return nil
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

// granted records a grant; prevLease is the lease the entry was on before
// a re-acquire moved it (keyless now: a spare if it is ours).
func (b *Backend) granted(q string, g *grant, prevLease clientv3.LeaseID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if old := b.grants[q]; old != nil && prevLease != 0 && old.lease == prevLease && old.lease != g.lease {
		b.putSpareLocked(old.secs, spareLease{id: old.lease, ttl: old.ttl, fresh: old.fresh})
	}
	b.grants[q] = g
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

// reacquireKnown is a re-acquire by token of a grant this backend made for
// the same number of seconds: if a read shows the entry still on that
// grant, extendKV resets its TTL with a keep-alive — no raft write. A
// grant made or refreshed since the call started (a transfer to token
// landed meanwhile) needs neither. ok is false when the backend knows no
// such grant or the read shows another state.
func (b *Backend) reacquireKnown(ctx context.Context, q, token string, secs int64, start time.Time) (driver.Grant, bool, error) {
	b.mu.Lock()
	var g grant
	if p := b.grants[q]; p != nil && p.token == token && p.secs == secs && p.lease != clientv3.NoLease {
		g = *p
	}
	b.mu.Unlock()
	if g.token == "" {
		return driver.Grant{}, false, nil
	}
	if !g.fresh.Before(start) {
		return driver.Grant{TTL: time.Duration(g.ttl) * time.Second, Fence: uint64(g.fence)}, true, nil
	}
	resp, err := b.cli.Get(ctx, g.entry)
	if err != nil {
		return driver.Grant{}, false, b.unavailable("get", err)
	}
	if len(resp.Kvs) == 0 || string(resp.Kvs[0].Value) != g.value || resp.Kvs[0].CreateRevision != g.createRev {
		return driver.Grant{}, false, nil
	}
	gr, err := b.extendKV(ctx, q, resp.Kvs[0], token, secs)
	if errors.Is(err, distlock.ErrNotHeld) {
		return driver.Grant{}, false, nil // expired just now: the entry went with it
	}
	return gr, err == nil, err
}

// Extend implements driver.Backend: it reads the first entry, and if
// token holds it refreshes the entry's lease (a keep-alive: no raft
// write). A lease shorter than ttl is replaced by a new one in a
// transaction that compares the entry's value and old lease. It never
// re-creates an entry.
func (b *Backend) Extend(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	ctx, cancel := b.reqCtx(ctx)
	defer cancel()
	q := QueuePrefix(b.prefix, key)
	resp, err := b.cli.Get(ctx, q, clientv3.WithFirstCreate()...)
	if err != nil {
		return driver.Grant{}, b.unavailable("get", err)
	}
	if len(resp.Kvs) == 0 || tokenOf(resp.Kvs[0].Value) != token {
		return driver.Grant{}, distlock.ErrNotHeld
	}
	return b.extendKV(ctx, q, resp.Kvs[0], token, seconds(ttl))
}

// extendKV resets the TTL of the grant kv (q's first entry, which token
// holds) to secs, the fence written into the value if it moves.
func (b *Backend) extendKV(ctx context.Context, q string, kv *mvccpb.KeyValue, token string, secs int64) (driver.Grant, error) {
	fence := fenceOf(kv)
	return b.extendEntry(ctx, q, kv, token, secs, fence, lockValue(token, fence), false)
}

// extendEntry resets the TTL of the grant kv (recorded under gkey) to
// secs: a keep-alive of its lease or, if that lease is shorter (or force:
// the value changes), a put of val on a lease long enough, in a
// transaction that compares the entry's value and old lease. val writes
// the fence out, so that it stays.
func (b *Backend) extendEntry(ctx context.Context, gkey string, kv *mvccpb.KeyValue, token string, secs, fence int64, val string, force bool) (driver.Grant, error) {
	lease, l, spare := clientv3.LeaseID(kv.Lease), spareLease{}, false
	if lease != clientv3.NoLease {
		t := time.Now()
		ttl, err := b.renew(ctx, lease)
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			return driver.Grant{}, distlock.ErrNotHeld // expired or revoked: the entry went with it
		case err != nil:
			return driver.Grant{}, b.unavailable("lease keep-alive", err)
		}
		b.refreshed(gkey, lease, t)
		if ttl >= secs && !force {
			return driver.Grant{TTL: time.Duration(ttl) * time.Second, Fence: uint64(fence)}, nil
		}
		if ttl >= secs {
			l = spareLease{id: lease, ttl: ttl, fresh: t}
		}
	}
	if l.id == clientv3.NoLease {
		var err error
		if l, spare, err = b.lease(ctx, secs); err != nil {
			return driver.Grant{}, err
		}
	}
	entry := string(kv.Key)
	tr, err := b.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(entry), "=", string(kv.Value)), clientv3.Compare(clientv3.CreateRevision(entry), "=", kv.CreateRevision),
			clientv3.Compare(clientv3.LeaseValue(entry), "=", lease)).
		Then(clientv3.OpPut(entry, val, clientv3.WithLease(l.id))).Commit()
	if err != nil {
		return driver.Grant{}, b.unavailable("txn", err)
	}
	if !tr.Succeeded {
		if l.id != lease {
			b.putSpare(secs, l)
		}
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
	b.granted(gkey, &grant{token: token, entry: entry, value: val, createRev: kv.CreateRevision, fence: fence, rev: tr.Header.Revision,
		lease: l.id, secs: secs, ttl: l.ttl, fresh: l.fresh}, lease)
	return driver.Grant{TTL: time.Duration(l.ttl) * time.Second, Fence: uint64(fence)}, nil
}

func (b *Backend) refreshed(q string, lease clientv3.LeaseID, t time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if g := b.grants[q]; g != nil && g.lease == lease && t.After(g.fresh) {
		g.fresh = t
	}
}

// Release implements driver.Backend: one transaction deletes token's
// entry if it is the first, and touches the next entry (a put that
// changes neither its value nor its lease) so that its waiter's fence is
// the release's revision, above every earlier grant's. A read of the
// first two entries comes first, unless the grant was made here without
// waiting: then a transaction that finds others queued behind it reads
// them instead of deleting. The lease, keyless now, is kept for the
// next grant when it is ours; otherwise it expires.
func (b *Backend) Release(ctx context.Context, key, token string) error {
	ctx, cancel := b.reqCtx(ctx)
	defer cancel()
	q := QueuePrefix(b.prefix, key)
	lease, err := b.release(ctx, q, token)
	if err != nil {
		return err
	}
	b.released(q, token, lease)
	return nil
}

func (b *Backend) release(ctx context.Context, q, token string) (clientv3.LeaseID, error) {
	var kvs []*mvccpb.KeyValue // the first two entries, as last seen
	alone := false             // kvs[0] is a grant made here without waiting: try it alone
	b.mu.Lock()
	if g := b.grants[q]; g != nil && g.token == token && !g.queued {
		kvs, alone = []*mvccpb.KeyValue{{Key: []byte(g.entry), Value: []byte(g.value), CreateRevision: g.createRev, Lease: int64(g.lease)}}, true
	}
	b.mu.Unlock()
	firstTwo := clientv3.OpGet(q, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(2))
	for try := 0; ; try++ {
		if kvs == nil {
			resp, err := b.cli.Do(ctx, firstTwo)
			if err != nil {
				return 0, b.unavailable("get", err)
			}
			kvs = resp.Get().Kvs
		}
		if len(kvs) == 0 || tokenOf(kvs[0].Value) != token {
			return 0, distlock.ErrNotHeld
		}
		first := string(kvs[0].Key)
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.Value(first), "=", string(kvs[0].Value)),
			clientv3.Compare(clientv3.CreateRevision(first), "=", kvs[0].CreateRevision)}
		if alone {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(q), "<", kvs[0].CreateRevision+1).WithPrefix())
		}
		ops := []clientv3.Op{clientv3.OpDelete(first)}
		if len(kvs) > 1 {
			next := string(kvs[1].Key)
			ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(next), "=", kvs[1].CreateRevision)},
				[]clientv3.Op{clientv3.OpPut(next, "", clientv3.WithIgnoreValue(), clientv3.WithIgnoreLease())}, nil))
		}
		resp, err := b.cli.Txn(ctx).If(cmps...).Then(ops...).Else(firstTwo).Commit()
		if err != nil {
			return 0, b.unavailable("txn", err)
		}
		if resp.Succeeded {
			return clientv3.LeaseID(kvs[0].Lease), nil
		}
		if try >= 2 {
			return 0, b.unavailable("txn", errors.New("the holder's entry keeps changing"))
		}
		kvs, alone = resp.Responses[0].GetResponseRange().GetKvs(), false
	}
}

// released forgets the grant and keeps its lease as a spare.
func (b *Backend) released(q, token string, lease clientv3.LeaseID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if g := b.grants[q]; g != nil && g.token == token {
		delete(b.grants, q)
		if lease != clientv3.NoLease && g.lease == lease {
			b.putSpareLocked(g.secs, spareLease{id: g.lease, ttl: g.ttl, fresh: g.fresh})
		}
	}
}

// Close implements driver.Backend: it stops the loss watches and, if the
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
	b.mu.Unlock()
	b.cancel()
	b.wg.Wait()
	if b.ownClient {
		return b.cli.Close()
	}
	return nil
}

// renew refreshes lease id and returns its TTL in seconds; the lease lives
// at least that long after the moment renew was called.
func (b *Backend) renew(ctx context.Context, id clientv3.LeaseID) (int64, error) {
	ka, err := b.cli.KeepAliveOnce(ctx, id)
	if err != nil {
		return 0, err
	}
	return ka.TTL, nil
}
