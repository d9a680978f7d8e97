package redsync

import (
	"context"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/distlock/distlock/driver"
	rsredis "github.com/go-redsync/redsync/v4/redis"
)

const (
	// reserveFor is how long a key handed to the head of its queue stays
	// reserved for it: the woken waiter claims it within a round trip,
	// and a waiter that has gone (crashed) delays the next one by at most
	// this much (plus pollEvery when nobody else polls sooner).
	reserveFor = 250 * time.Millisecond
	// pollNoPubSub bounds the wait between looks on pools without pub/sub
	// (redigo, rueidis, …): their waiters learn of a hand-over only by
	// looking.
	pollNoPubSub = 10 * time.Millisecond
	// queueLife is how long a queue outlives the last look of its
	// waiters: the queue of waiters that all crashed goes away.
	queueLife = 30 * time.Second
	// leaveTimeout bounds the clean-up of a wait whose ctx ended.
	leaveTimeout = 500 * time.Millisecond
)

// pollEvery bounds how long a queued waiter on a go-redis client waits for
// its wake-up before it looks again (a message lost while the pub/sub
// connection was down, a head that crashed); it also looks when the
// holder's TTL runs out, since an expiry tells nobody. Variable (atomic)
// for the tests only.
var pollEvery atomic.Int64

func init() { pollEvery.Store(int64(200 * time.Millisecond)) }

// AcquireWait implements driver.Queuer. It queues token in a list next to
// key (one script: a free key nobody queues for is granted at once, as
// Acquire does) and waits until a release hands it the key: the release
// reserves the key for the head of the queue and publishes on the channel
// of the head's backend only, so one release wakes one waiter, first come
// first served across processes. The woken waiter claims the key with one
// more script. Waiters also look again when the holder's TTL runs out, and
// at least every 200 ms (every 10 ms on pools without pub/sub). When ctx
// ends, the waiter leaves the queue and passes on a key reserved for it
// (or, fenced, granted by a call whose reply ctx cut off); a key handed to
// token by Transfer is left alone. With go-redsync options it is Acquire:
// go-redsync's own retry loop waits.
func (b *Backend) AcquireWait(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	if len(b.ropts) > 0 {
		return b.Acquire(ctx, key, token, ttl)
	}
	if err := b.checkKey(key); err != nil {
		return driver.Grant{}, err
	}
	woken := make(chan struct{}, 1)
	if b.wake != nil {
		defer b.wake.add(wakeName(key, token), woken)()
	}
	call := strconv.FormatUint(rand.Uint64(), 16)
	entry := b.pid + ":" + token
	args := b.queueArgs(key, token)
	subscribed, replied := b.wake == nil, false
	for {
		t0 := time.Now()
		code, n, err := b.evalPair(ctx, waitScript, append(args, ttl.Milliseconds(), entry, call, queueLife.Milliseconds())...)
		switch {
		case ctx.Err() != nil:
			// Whatever this call got (its reply may be lost) is given up.
			b.leave(ctx, args, entry, call)
			if err != nil && !replied {
				return driver.Grant{}, err // never reached the server: unavailable
			}
			return driver.Grant{}, ctx.Err()
		case err != nil:
			b.leave(ctx, args, entry, call) // best effort
			return driver.Grant{}, err
		case code == 0 || code == 1:
			return driver.Grant{TTL: ttl, Fence: uint64(n), At: t0}, nil
		}
		replied = true
		wait := time.Duration(pollEvery.Load())
		if b.wake == nil {
			wait = pollNoPubSub
		}
		if n >= 0 {
			wait = min(wait, time.Duration(n+1)*time.Millisecond)
		}
		if !subscribed {
			subscribed = true
			if ready := b.wake.subscribed(ctx); ready != nil && !isClosed(ready) {
				// First wait on this backend: a wake-up published before
				// the subscription was active is lost, so look again once
				// it is.
				t := time.NewTimer(time.Second)
				select {
				case <-ready:
				case <-ctx.Done():
				case <-t.C:
				}
				t.Stop()
				continue
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-woken:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
}

// queueArgs returns the keys and the leading arguments of the queue
// scripts (see queueLua) for token on key.
func (c *core) queueArgs(key, token string) []any {
	fenced := "0"
	if c.fenced {
		fenced = "1"
	}
	return []any{key, c.fenceKeyFor(key), c.queueKey(key), token, fenced, reserveFor.Milliseconds(), c.channelPrefix}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// leave takes an ended wait out of key's queue (see leaveScript), on a
// detached deadline of leaveTimeout if ctx has ended.
func (b *Backend) leave(ctx context.Context, args []any, entry, call string) {
	if ctx.Err() != nil {
		ctx = context.WithoutCancel(ctx)
	}
	ctx, cancel := context.WithTimeout(ctx, leaveTimeout)
	defer cancel()
	_, _ = b.eval(ctx, leaveScript, append(args, entry, call)...)
}

// evalPair runs a script replying {code, number}.
func (c *core) evalPair(ctx context.Context, s *rsredis.Script, keysAndArgs ...any) (int64, int64, error) {
	r, err := c.evalList(ctx, 2, s, keysAndArgs...)
	if err != nil {
		return 0, 0, err
	}
	code, ok1 := r[0].(int64)
	n, ok2 := r[1].(int64)
	if !ok1 || !ok2 {
		return 0, 0, errReply
	}
	return code, n, nil
}

// inspectQueued reads a single node's key and its queue in one script.
func (c *core) inspectQueued(ctx context.Context, key string) (driver.LockInfo, error) {
	r, err := c.evalList(ctx, 3, inspectScript, key, c.queueKey(key))
	if err != nil {
		return driver.LockInfo{}, err
	}
	val, _ := r[0].(string)
	ttl, _ := r[1].(int64)
	n, _ := r[2].(int64)
	info := driver.LockInfo{Waiters: int(n)}
	if val == "" || ttl == -2 {
		return info, nil
	}
	info.Held, info.Holder, info.TTL = true, strings.TrimPrefix(val, reserved), time.Duration(max(ttl, 0))*time.Millisecond
	if mark, tok, ok := strings.Cut(val, ":"); ok && c.fenced {
		digits := mark // then the mark, if any
		if i := strings.IndexFunc(mark, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
			digits = mark[:i]
		}
		info.Holder = tok
		info.Fence, _ = strconv.ParseUint(digits, 10, 64)
	}
	return info, nil
}
