package redsync

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// keptConnAge is how long a connection stays set aside for lock commands
// before it goes back to the client's pool; at most keptConnAge after its
// last use, an idle one goes back too.
//
// go-redis v9 checks a connection's health with a system call each time it
// takes one from its pool, and (RESP3) peeks at the socket for push
// notifications when the connection last came back to the pool more than
// 5 s before. A lock operation is one short command, so on loopback those
// calls were 5–6 % of an uncontended acquire+release (interleaved A/B
// here: the bare fenced script 1.08–1.09× the raw floor through the pool,
// 1.02–1.03× on a kept connection returned to the pool every 4 s, and
// 1.07× on one kept for good, which pays the peek again). A kept
// connection is health-checked once each time it leaves the pool, so it
// is never more than keptConnAge past its last check.
const keptConnAge = 4 * time.Second

// connKeeper sets a few of a single-node client's connections aside for
// the batcher's requests, so that each request costs its write and read
// and nothing more. It keeps none for a Cluster, a Ring or any client that
// is not a *redis.Client: those route each command to a node and keep
// their own pools. It never keeps more than a quarter of the client's
// pool, nor more than maxInFlight, so the application's own commands
// still find connections.
type connKeeper struct {
	client *redis.Client // nil: keep none
	max    int
	age    time.Duration // keptConnAge (shorter in tests)

	warmed atomic.Bool // the client answered through its own pool

	mu      sync.Mutex
	idle    []keptConn // last used last
	n       int        // kept: idle and in use
	trimmer *time.Timer
	trimSet bool // trimmer armed
	closed  bool
}

// keptConn is a connection set aside at since.
type keptConn struct {
	conn  *redis.Conn
	since time.Time
	used  time.Time // last put back
}

// init sets k up for client c.
func (k *connKeeper) init(c redis.UniversalClient) {
	rc, ok := c.(*redis.Client)
	if !ok {
		return
	}
	if k.max = min(maxInFlight, rc.Options().PoolSize/4); k.max > 0 {
		k.client, k.age = rc, keptConnAge
	}
}

// take returns a kept connection, setting a new one aside if none is idle
// and fewer than max are kept; ok is false when the caller should use the
// client's pool.
func (k *connKeeper) take() (kc keptConn, ok bool) {
	if k.client == nil || !k.warmed.Load() {
		return keptConn{}, false
	}
	now := time.Now()
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return keptConn{}, false
	}
	var stale *redis.Conn
	if n := len(k.idle); n > 0 {
		kc = k.idle[n-1]
		k.idle = k.idle[:n-1]
		if now.Sub(kc.since) < k.age {
			k.mu.Unlock()
			return kc, true
		}
		stale = kc.conn // replaced below, keeping the count
	} else if k.n < k.max {
		k.n++
	} else {
		k.mu.Unlock()
		return keptConn{}, false
	}
	k.mu.Unlock()
	if stale != nil {
		_ = stale.Close() // back to the pool, which checks it when next taken
	}
	return keptConn{conn: k.client.Conn(), since: now}, true
}

// warm records that a request through the client's pool ended with err:
// once the server has answered one, connections may be set aside. Until
// then none is: a go-redis Conn that dials a new connection settles the
// client's shared options (it turns maintenance notifications off when
// the server lacks them) under a lock of its own rather than the
// client's, which races with the client doing the same; once the client
// has settled them on a connection of its own, nobody writes them again.
func (k *connKeeper) warm(err error) {
	if k.client != nil && keepAfter(err) && !k.warmed.Load() {
		k.warmed.Store(true)
	}
}

// put gives kc back after a request that ended with err. A connection
// that failed (anything but a reply from the server) or is due back in the
// pool is closed, which returns it to the pool or drops it.
func (k *connKeeper) put(kc keptConn, err error) {
	now := time.Now()
	k.mu.Lock()
	if k.closed || !keepAfter(err) || now.Sub(kc.since) >= k.age {
		k.n--
		k.mu.Unlock()
		_ = kc.conn.Close()
		return
	}
	kc.used = now
	k.idle = append(k.idle, kc)
	if !k.trimSet {
		k.trimSet = true
		if k.trimmer == nil {
			k.trimmer = time.AfterFunc(k.age, k.trim)
		} else {
			k.trimmer.Reset(k.age)
		}
	}
	k.mu.Unlock()
}

// trim gives the connections idle for keptConnAge back to the pool, so
// that an application that stopped locking does not hold them.
func (k *connKeeper) trim() {
	now := time.Now()
	var done []keptConn
	k.mu.Lock()
	keep := k.idle[:0]
	for _, kc := range k.idle {
		if now.Sub(kc.used) >= k.age || now.Sub(kc.since) >= k.age {
			done = append(done, kc)
		} else {
			keep = append(keep, kc)
		}
	}
	clear(k.idle[len(keep):])
	k.idle = keep
	k.n -= len(done)
	k.trimSet = len(k.idle) > 0 && !k.closed
	if k.trimSet {
		k.trimmer.Reset(k.age)
	}
	k.mu.Unlock()
	for _, kc := range done {
		_ = kc.conn.Close()
	}
}

// close returns the idle connections to the pool; those in use go back
// when their requests end.
func (k *connKeeper) close() {
	k.mu.Lock()
	k.closed = true
	idle := k.idle
	k.idle = nil
	k.n -= len(idle)
	if k.trimmer != nil {
		k.trimmer.Stop()
	}
	k.mu.Unlock()
	for _, kc := range idle {
		_ = kc.conn.Close()
	}
}

// keepAfter reports whether a connection is fit for more requests after
// one that ended with err: after success, or after an error the server
// replied (other than one that says it is no longer the primary).
func keepAfter(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return true
	}
	var reply redis.Error
	return errors.As(err, &reply) && !redis.HasErrorPrefix(err, "READONLY") &&
		!redis.HasErrorPrefix(err, "LOADING") && !redis.HasErrorPrefix(err, "MASTERDOWN")
}

// retryElsewhere reports whether a request that failed with err on a kept
// connection should be sent again through the client's pool, while the
// caller's context still runs: when the connection broke (the server
// restarted or closed it while it was set aside, which the pool's health
// check would have caught first), or the server refused the command
// without running it because it is not, or not yet, a usable primary (a
// Sentinel failover the pool has already followed). go-redis sends a
// command again after a broken connection too (Options.MaxRetries). The
// lock scripts are safe to repeat for the same token, except that a
// release or transfer that did land before the connection broke then
// reports the key not held.
func retryElsewhere(ctx context.Context, err error) bool {
	return ctx.Err() == nil && !keepAfter(err)
}
