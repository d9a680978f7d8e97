package redsync

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
	rsredis "github.com/go-redsync/redsync/v4/redis"
	"github.com/redis/go-redis/v9"
)

// Read-write locks, semaphores and elections (driver.Primitives) on a
// single Redis deployment: a server, a Sentinel-managed primary or a
// Cluster. Each key of a primitive is three server keys beside the fence
// counter (so unreachable from lock keys, and in the key's Cluster slot):
//
//	<fence key>:<space>:<key>    ZSET of holders' tokens, scored by expiry (server ms)
//	<fence key>:<space>h:<key>   HASH: "t"+token → kind letter + fence; "l" limit; "v" leader value
//	<fence key>:<space>w:<key>   ZSET of waiting writers, scored by expiry (rw only)
//
// where <space> is "rw" (Read and Write), "sem" (Permit) or "lead"
// (Leader), and <fence key> is the backend's fence key, on Cluster with the
// key's slot tag (see fenceKeyFor). Every operation is one script: it reads
// the server's clock (TIME), drops the holders and marks whose expiry has
// passed, decides, and sets each server key to expire with its last
// holder, so an abandoned key space vanishes by itself. Grants take their
// fence from the key's fence counter, the one plain locks use.

// The spaces and kind letters the scripts know.
var (
	spaceOf = map[driver.Kind]string{driver.Read: "rw", driver.Write: "rw", driver.Permit: "sem", driver.Leader: "lead"}
	letter  = map[driver.Kind]string{driver.Read: "r", driver.Write: "w", driver.Permit: "p", driver.Leader: "l"}
)

// ModeKeys returns the server keys that hold key's primitive of kind (its
// holders, its metadata, its waiting writers) on a single-node backend
// configured with opts (WithFenceKey, WithCluster matter), or nil for an
// unknown kind. Deleting them revokes every hold, as an operator would.
func ModeKeys(key string, kind driver.Kind, opts ...Option) []string {
	cfg := newConfig(opts)
	return modeKeys(fenceKeyFor(cfg.fenceKey, cfg.cluster, key), key, kind)
}

// ModeChannel returns the pub/sub channel on which a backend configured
// with opts (WithChannelPrefix matters) announces that the holders of
// key's primitive of kind may have changed (see Backend.WatchMode).
func ModeChannel(key string, kind driver.Kind, opts ...Option) string {
	return modeChannel(newConfig(opts).channelPrefix, key, kind)
}

func modeKeys(fk, key string, kind driver.Kind) []string {
	s, ok := spaceOf[kind]
	if !ok {
		return nil
	}
	return []string{fk + ":" + s + ":" + key, fk + ":" + s + "h:" + key, fk + ":" + s + "w:" + key}
}

// modeLua is what the mode scripts share. KEYS: 1 holders, 2 metadata,
// 3 waiting writers, 4 fence counter; ARGV: 1 token, 2 ttl in ms, 3 kind
// letter, 4 limit, 5 value, 6 "1" if fenced, 7 channel told of changes,
// 8 "1" if a refused Write marks its token as waiting.
// prune drops expired holders and marks; done sets the keys' expiry (or
// deletes them once empty), publishes if the holders changed, and replies.
const modeLua = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tok, kind = ARGV[1], ARGV[3]
local changed = false
local function prune()
  local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  for _, m in ipairs(gone) do
    redis.call('HDEL', KEYS[2], 't' .. m)
  end
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    changed = true
  end
  if redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now) > 0 then
    changed = true
  end
end
local function keep(z, h)
  local top = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
  if #top == 0 then
    redis.call('DEL', z, h)
    return
  end
  local ms = tonumber(top[2]) - now
  redis.call('PEXPIRE', z, ms)
  redis.call('PEXPIRE', h, ms)
end
local function done(code, f)
  keep(KEYS[1], KEYS[2])
  keep(KEYS[3], KEYS[3])
  if changed then
    redis.call('PUBLISH', ARGV[7], '')
  end
  return {code, f}
end
prune()
local cur = redis.call('HGET', KEYS[2], 't' .. tok)
local held = cur and string.sub(cur, 1, 1) == kind
local fence = cur and tonumber(string.sub(cur, 2)) or 0
`

// modeAcquireScript replies {0, fence} for a new grant, {1, fence} for the
// holder's re-acquire (TTL reset in place, fence kept; a leader's value
// replaced), {-1, 0} when refused (a Write refused marks token as a
// waiting writer until its ttl passes, if asked to), {-2, 0} for a limit
// other than the live permit holders'.
var modeAcquireScript = script(4, modeLua+`
if cur then
  if not held then
    return done(-1, 0)
  end
  redis.call('ZADD', KEYS[1], now + ARGV[2], tok)
  if kind == 'l' and redis.call('HGET', KEYS[2], 'v') ~= ARGV[5] then
    redis.call('HSET', KEYS[2], 'v', ARGV[5])
    changed = true
  end
  return done(1, fence)
end
local n = redis.call('ZCARD', KEYS[1])
if kind == 'r' then
  if redis.call('ZCARD', KEYS[3]) > 0 then
    return done(-1, 0)
  end
  if n == 1 then
    local m = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
    if string.sub(redis.call('HGET', KEYS[2], 't' .. m) or '', 1, 1) == 'w' then
      return done(-1, 0)
    end
  end
elseif kind == 'w' then
  if n > 0 then
    if ARGV[8] == '1' then
      redis.call('ZADD', KEYS[3], now + ARGV[2], tok)
    end
    return done(-1, 0)
  end
  redis.call('ZREM', KEYS[3], tok)
elseif kind == 'p' then
  if n > 0 and redis.call('HGET', KEYS[2], 'l') ~= ARGV[4] then
    return done(-2, 0)
  end
  if n >= tonumber(ARGV[4]) then
    return done(-1, 0)
  end
  redis.call('HSET', KEYS[2], 'l', ARGV[4])
else
  if n > 0 then
    return done(-1, 0)
  end
  redis.call('HSET', KEYS[2], 'v', ARGV[5])
end
if ARGV[6] == '1' then
  fence = redis.call('INCR', KEYS[4])
end
redis.call('HSET', KEYS[2], 't' .. tok, kind .. fence)
redis.call('ZADD', KEYS[1], now + ARGV[2], tok)
changed = true
return done(0, fence)
`)

// modeExtendScript resets the TTL of token's live hold in kind: {1,
// fence}, else {-1, 0} (never re-creating an expired hold).
var modeExtendScript = script(4, modeLua+`
if not held then
  return done(-1, 0)
end
redis.call('ZADD', KEYS[1], 'XX', now + ARGV[2], tok)
return done(1, fence)
`)

// modeReleaseScript ends token's live hold in kind: {1, 0}, else {-1, 0}.
// In Write it also drops token's waiting mark.
var modeReleaseScript = script(4, modeLua+`
if kind == 'w' and redis.call('ZREM', KEYS[3], tok) > 0 then
  changed = true
end
if not held then
  return done(-1, 0)
end
redis.call('ZREM', KEYS[1], tok)
redis.call('HDEL', KEYS[2], 't' .. tok)
changed = true
return done(1, 0)
`)

// modeInspectScript: KEYS 1 holders, 2 metadata. Changes nothing. Replies
// {live holders, first live holder's kind letter + fence, its token, its
// ms left, limit, leader value}; the holder fields are empty unless
// exactly one holds.
var modeInspectScript = script(2, `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
if n == 0 then
  return {0, '', '', 0, '', ''}
end
local info, tok, ttl = '', '', 0
if n == 1 then
  local m = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
  tok, ttl = m[1], tonumber(m[2]) - now
  info = redis.call('HGET', KEYS[2], 't' .. tok) or ''
end
return {n, info, tok, ttl, redis.call('HGET', KEYS[2], 'l') or '', redis.call('HGET', KEYS[2], 'v') or ''}
`)

var (
	_ driver.Primitives  = (*Backend)(nil)
	_ driver.ModeWatcher = (*Backend)(nil)
)

// modeCall checks m and returns the keys and arguments of a mode script
// for key and token.
func (b *Backend) modeCall(key, token string, ttl time.Duration, m driver.Mode) ([]any, error) {
	if _, ok := spaceOf[m.Kind]; !ok {
		return nil, fmt.Errorf("%w: primitive kind %d", distlock.ErrUnsupported, m.Kind)
	}
	if m.Kind == driver.Permit && m.Limit < 1 {
		return nil, fmt.Errorf("%w: semaphore limit %d: want at least 1", distlock.ErrInvalidArgument, m.Limit)
	}
	fk := b.fenceKeyFor(key)
	out := make([]any, 0, 12)
	for _, k := range modeKeys(fk, key, m.Kind) {
		out = append(out, k)
	}
	return append(out, fk, token, ttl.Milliseconds(), letter[m.Kind], strconv.Itoa(m.Limit), m.Value,
		flag(b.fenced), b.modeChannel(key, m.Kind), flag(marks(m))), nil
}

// marks reports whether a refused AcquireMode in m leaves a waiting-writer
// mark: a Write by a caller that will try again (Mode.Waiting).
func marks(m driver.Mode) bool { return m.Kind == driver.Write && m.Waiting }

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// modeChannel is the pub/sub channel on which the scripts announce that
// the holders of key's primitive of kind may have changed.
func (c *core) modeChannel(key string, kind driver.Kind) string {
	return modeChannel(c.channelPrefix, key, kind)
}

func modeChannel(prefix, key string, kind driver.Kind) string {
	return prefix + "mode:" + spaceOf[kind] + ":" + key
}

// modeEval runs a mode script and returns its reply code and fence.
func (b *Backend) modeEval(ctx context.Context, s *rsredis.Script, key, token string, ttl time.Duration, m driver.Mode) (int64, uint64, error) {
	args, err := b.modeCall(key, token, ttl, m)
	if err != nil {
		return 0, 0, err
	}
	r, err := b.evalList(ctx, 2, s, args...)
	if err != nil {
		return 0, 0, err
	}
	code, ok1 := r[0].(int64)
	f, ok2 := r[1].(int64)
	if !ok1 || !ok2 {
		return 0, 0, errReply
	}
	return code, uint64(max(f, 0)), nil
}

// AcquireMode implements driver.Primitives: one script that grants key
// to token in m (see driver.Primitives for when), with a fence from the
// key's fence counter when the backend fences. A Write with Mode.Waiting
// refused marks token as a waiting writer for ttl, which holds new readers
// off; a try-once Write leaves nothing.
func (b *Backend) AcquireMode(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode) (driver.Grant, error) {
	code, f, err := b.modeEval(ctx, modeAcquireScript, key, token, ttl, m)
	switch {
	case err != nil:
		return driver.Grant{}, err
	case code == -2:
		return driver.Grant{}, distlock.ErrLimitMismatch
	case code < 0:
		return driver.Grant{}, distlock.ErrNotAcquired
	}
	return driver.Grant{TTL: ttl, Fence: f}, nil
}

// ExtendMode implements driver.Primitives: it resets the TTL of token's
// live hold of key in m.Kind, else returns ErrNotHeld.
func (b *Backend) ExtendMode(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode) (driver.Grant, error) {
	code, f, err := b.modeEval(ctx, modeExtendScript, key, token, ttl, m)
	switch {
	case err != nil:
		return driver.Grant{}, err
	case code < 0:
		return driver.Grant{}, distlock.ErrNotHeld
	}
	return driver.Grant{TTL: ttl, Fence: f}, nil
}

// ReleaseMode implements driver.Primitives: it ends token's hold of key
// in m.Kind (in Write also its waiting mark), else returns ErrNotHeld.
func (b *Backend) ReleaseMode(ctx context.Context, key, token string, m driver.Mode) error {
	code, _, err := b.modeEval(ctx, modeReleaseScript, key, token, time.Millisecond, m)
	switch {
	case err != nil:
		return err
	case code < 0:
		return distlock.ErrNotHeld
	}
	return nil
}

// InspectMode implements driver.Primitives with a read-only script.
func (b *Backend) InspectMode(ctx context.Context, key string, m driver.Mode) (driver.ModeInfo, error) {
	if _, ok := spaceOf[m.Kind]; !ok {
		return driver.ModeInfo{}, fmt.Errorf("%w: primitive kind %d", distlock.ErrUnsupported, m.Kind)
	}
	keys := modeKeys(b.fenceKeyFor(key), key, m.Kind)
	r, err := b.evalList(ctx, 6, modeInspectScript, keys[0], keys[1])
	if err != nil {
		return driver.ModeInfo{}, err
	}
	n, ok1 := r[0].(int64)
	info, ok2 := r[1].(string)
	tok, ok3 := r[2].(string)
	ms, ok4 := r[3].(int64)
	limit, ok5 := r[4].(string)
	value, ok6 := r[5].(string)
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 {
		return driver.ModeInfo{}, errReply
	}
	out := driver.ModeInfo{Holders: int(n)}
	if m.Kind == driver.Permit && n > 0 {
		out.Limit, _ = strconv.Atoi(limit)
	}
	if info != "" && (info[0] == 'w' || info[0] == 'l') {
		f, _ := strconv.ParseUint(info[1:], 10, 64)
		out.Exclusive, out.Token, out.Fence, out.TTL = true, tok, f, time.Duration(ms)*time.Millisecond
		if info[0] == 'l' {
			out.Value = value
		}
	}
	return out, nil
}

// WatchMode implements driver.ModeWatcher over the go-redis client's
// pub/sub: every script that changes the holders of a key's primitive
// publishes on the key's channel (channel prefix + "mode:" + space + ":" +
// key), and changed is called for each such message, and once more after
// each reconnection of the subscription (messages sent while it was down
// are lost). Expiries are not announced. It returns once the server has
// confirmed the subscription. A backend built on a go-redsync pool
// (NewPoolBackend) has no pub/sub: it returns ErrUnsupported.
func (b *Backend) WatchMode(ctx context.Context, key string, m driver.Mode, changed func()) (func(), error) {
	if _, ok := spaceOf[m.Kind]; !ok {
		return nil, fmt.Errorf("%w: primitive kind %d", distlock.ErrUnsupported, m.Kind)
	}
	if b.wake == nil {
		return nil, fmt.Errorf("%w: watching needs a go-redis client (NewBackend)", distlock.ErrUnsupported)
	}
	return b.watch.add(ctx, b.wake.client, b.modeChannel(key, m.Kind), changed)
}

// modeWatch is one WatchMode call.
type modeWatch struct{ changed func() }

// modeWatchers is the pub/sub connection of a backend's WatchMode calls,
// opened by the first and kept until Close: one SUBSCRIBE per channel
// watched, however many watches share it, and UNSUBSCRIBE when its last
// watch stops.
type modeWatchers struct {
	sub sync.Mutex // orders SUBSCRIBE and UNSUBSCRIBE

	mu       sync.Mutex
	ps       *redis.PubSub
	watches  map[string]map[*modeWatch]struct{} // by channel
	pending  map[string]chan struct{}           // closed on the server's confirmation
	closed   bool
	loopDone chan struct{}
}

var errWatchClosed = distlock.Unavailable(errors.New("redis: backend closed"))

// add subscribes to channel (unless already subscribed) and registers
// changed on it.
func (w *modeWatchers) add(ctx context.Context, client redis.UniversalClient, channel string, changed func()) (func(), error) {
	w.sub.Lock()
	defer w.sub.Unlock()
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil, errWatchClosed
	}
	if w.ps == nil {
		w.ps = client.Subscribe(context.WithoutCancel(ctx))
		w.watches = make(map[string]map[*modeWatch]struct{})
		w.pending = make(map[string]chan struct{})
		w.loopDone = make(chan struct{})
		go w.receive(w.ps.ChannelWithSubscriptions(redis.WithChannelSize(256)))
	}
	set := w.watches[channel]
	if set == nil {
		set = make(map[*modeWatch]struct{})
		w.watches[channel] = set
	}
	mw := &modeWatch{changed: changed}
	set[mw] = struct{}{}
	var confirmed chan struct{}
	if len(set) == 1 {
		confirmed = make(chan struct{})
		w.pending[channel] = confirmed
	}
	ps := w.ps
	w.mu.Unlock()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			w.sub.Lock()
			w.remove(channel, mw)
			w.sub.Unlock()
		})
	}
	if confirmed == nil {
		return stop, nil
	}
	err := ps.Subscribe(ctx, channel)
	if err == nil {
		select {
		case <-confirmed:
			w.mu.Lock()
			closed := w.closed
			w.mu.Unlock()
			if !closed {
				return stop, nil
			}
			err = errWatchClosed
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	w.remove(channel, mw)
	if err == errWatchClosed {
		return nil, err
	}
	return nil, classify(err)
}

// remove unregisters mw, with w.sub held; the channel's last watch
// unsubscribes.
func (w *modeWatchers) remove(channel string, mw *modeWatch) {
	w.mu.Lock()
	set := w.watches[channel]
	delete(set, mw)
	last := set != nil && len(set) == 0
	if last {
		delete(w.watches, channel)
		delete(w.pending, channel)
	}
	ps, closed := w.ps, w.closed
	w.mu.Unlock()
	if last && !closed {
		ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
		_ = ps.Unsubscribe(ctx, channel)
		cancel()
	}
}

// receive calls the watches of each channel a message arrives on, and of
// each channel re-subscribed after a reconnection, until Close.
func (w *modeWatchers) receive(msgs <-chan any) {
	defer close(w.loopDone)
	for m := range msgs {
		var channel string
		confirm := false
		switch m := m.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			channel, confirm = m.Channel, true
		case *redis.Message:
			channel = m.Channel
		default:
			continue
		}
		w.mu.Lock()
		if c, ok := w.pending[channel]; ok && confirm {
			close(c)
			delete(w.pending, channel)
		} else {
			for mw := range w.watches[channel] {
				mw.changed()
			}
		}
		w.mu.Unlock()
	}
}

// close ends the subscription and waits for its receive loop.
func (w *modeWatchers) close() {
	w.mu.Lock()
	w.closed = true
	ps, done := w.ps, w.loopDone
	for ch, c := range w.pending { // wake the WatchMode calls still waiting
		close(c)
		delete(w.pending, ch)
	}
	w.mu.Unlock()
	if ps != nil {
		_ = ps.Close()
		<-done
	}
}
