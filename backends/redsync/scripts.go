package redsync

import (
	"crypto/sha1"
	"encoding/hex"

	rsredis "github.com/go-redsync/redsync/v4/redis"
)

// script returns src as a go-redsync script with keys keys, so that it goes
// through any go-redsync pool (EVALSHA, then EVAL when the server does not
// know it yet).
func script(keys int, src string) *rsredis.Script {
	h := sha1.Sum([]byte(src))
	return rsredis.NewScript(keys, src, hex.EncodeToString(h[:]))
}

// These are the only scripts of distlock's own, for what go-redsync's Mutex
// cannot do: the fenced single-node grant (counter and grant in one atomic
// step), its extend, the single-node release, in-process transfer and
// queue of waiters, and the re-acquire check that keeps a holder's lock in
// place. Every script is one round trip and runs atomically on the server;
// they need Redis >= 6.0.6 (LPOS).
//
// A fenced lock's value is "<fence>[mark]:<token>". The fence comes first
// because it is made of digits only, and marks hold no ':', so the first
// ':' always ends them whatever the token holds. Marks: none for a grant
// by Acquire or Transfer; "r" for a key reserved for the head of its queue
// (a short grant the woken waiter claims); "q<call>" for a grant made by
// the AcquireWait call with id <call>, so that a call cut off before it saw
// its reply releases its own grant and nothing else. An unfenced lock's
// value is the bare token, as go-redsync writes it, or reserved + token.
//
// The queue of a key is a list next to it (queueKey), in the same Cluster
// hash slot, of entries "<process>:<token>": process is the waiting
// backend's id, whose channel (channel prefix + id) the release publishes
// the woken waiter's name on.

// reserved prefixes the token in the value of an unfenced key reserved for
// a woken waiter: no holder's token is compared equal to it.
const reserved = "\x00distlock:reserved:"

// queueLua is the part the queue scripts share. KEYS: 1 lock, 2 fence
// counter, 3 queue; ARGV: 1 token, 2 "1" if fenced, 3 reservation in ms,
// 4 channel prefix. parse returns a value's fence (fenced), mark and
// token; pass hands a freed key to the head of its queue (popped; the key
// reserved for it, with a new fence, and its process told on its channel)
// or deletes it.
const queueLua = `
local RES = '\0distlock:reserved:'
local fenced = ARGV[2] == '1'
local function parse(v)
  if not v then
    return nil
  end
  if not fenced then
    if string.sub(v, 1, #RES) == RES then
      return 0, 'r', string.sub(v, #RES + 1)
    end
    return 0, '', v
  end
  local i = string.find(v, ':', 1, true)
  if not i then
    return nil
  end
  local f, m = string.match(string.sub(v, 1, i - 1), '^(%d+)(.*)$')
  return tonumber(f) or 0, m or '', string.sub(v, i + 1)
end
local function value(f, m, tok)
  if fenced then
    return f .. m .. ':' .. tok
  elseif m == 'r' then
    return RES .. tok
  end
  return tok
end
local function pass()
  local e = redis.call('LPOP', KEYS[3])
  if not e then
    redis.call('DEL', KEYS[1])
    return
  end
  local j = string.find(e, ':', 1, true)
  local tok = string.sub(e, j + 1)
  local f = 0
  if fenced then
    f = redis.call('INCR', KEYS[2])
  end
  redis.call('SET', KEYS[1], value(f, 'r', tok), 'PX', ARGV[3])
  redis.call('PUBLISH', ARGV[4] .. string.sub(e, 1, j - 1), #tok .. ':' .. tok .. KEYS[1])
end
`

func queueScript(src string) *rsredis.Script { return script(3, queueLua+src) }

// acquireScript: KEYS[1] lock, KEYS[2] fence counter; ARGV[1] token,
// ARGV[2] ttl in ms. The counter is incremented first, so a free key costs
// two commands (INCR, SET NX) and a grant's fence is always fresh; an
// attempt on a taken key leaves a gap in the numbering, which keeps them
// strictly increasing. A key already held by token has its TTL reset in
// place and keeps its fence: never deleted, not even for an instant. It
// ignores the queue (a try-once caller does not queue): a key reserved for
// a waiter is taken. Replies the new grant's fence, -1 (taken), or
// -2-fence for the holder's re-acquire.
var acquireScript = script(2, `
local f = redis.call('INCR', KEYS[2])
if redis.call('SET', KEYS[1], f .. ':' .. ARGV[1], 'NX', 'PX', ARGV[2]) then
  return f
end
local v = redis.call('GET', KEYS[1])
local i = v and string.find(v, ':', 1, true)
if i and string.sub(v, i + 1) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return -2 - (tonumber(string.match(v, '^%d+')) or 0)
end
return -1
`)

// waitScript (AcquireWait): queueLua's KEYS and ARGV, then ARGV[5] ttl in
// ms, ARGV[6] queue entry, ARGV[7] call id, ARGV[8] queue lifetime in ms.
// Grants a free key nobody queues for (or whose queue token heads),
// claims a key reserved for token, re-acquires a key token holds; else
// queues the entry (once) and, if the key is free but others queue ahead,
// hands it to the head. Replies {0, fence} (granted by this call),
// {1, fence} (token held it already) or {2, ms until the key may be free}
// (queued).
var waitScript = queueScript(`
local v = redis.call('GET', KEYS[1])
local f, m, tok = parse(v)
if tok == ARGV[1] then
  redis.call('LREM', KEYS[3], 0, ARGV[6])
  if m ~= 'r' then
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
    return {1, f}
  end
  redis.call('SET', KEYS[1], value(f, 'q' .. ARGV[7], tok), 'PX', ARGV[5])
  return {0, f}
end
if not v then
  local h = redis.call('LINDEX', KEYS[3], 0)
  if not h or h == ARGV[6] then
    if h then
      redis.call('LPOP', KEYS[3])
    end
    f = 0
    if fenced then
      f = redis.call('INCR', KEYS[2])
    end
    redis.call('SET', KEYS[1], value(f, 'q' .. ARGV[7], ARGV[1]), 'PX', ARGV[5])
    return {0, f}
  end
  pass()
end
if not redis.call('LPOS', KEYS[3], ARGV[6]) then
  redis.call('RPUSH', KEYS[3], ARGV[6])
end
redis.call('PEXPIRE', KEYS[3], ARGV[8])
return {2, redis.call('PTTL', KEYS[1])}
`)

// leaveScript (an AcquireWait that ends without a grant): queueLua's KEYS
// and ARGV, then ARGV[5] queue entry, ARGV[6] call id. Removes the entry;
// a key reserved for token, or granted by this very call (fenced: its
// mark), goes to the next waiter (or is freed). A grant token holds by
// other means (a Transfer to it, an earlier call) is left alone.
var leaveScript = queueScript(`
redis.call('LREM', KEYS[3], 0, ARGV[5])
local _, m, tok = parse(redis.call('GET', KEYS[1]))
if tok == ARGV[1] and (m == 'r' or m == 'q' .. ARGV[6]) then
  pass()
end
return 0
`)

// releaseScript: queueLua's KEYS and ARGV. If token holds the key, it goes
// to the head of its queue (only that waiter's process is told) or is
// deleted; replies 1, else 0.
var releaseScript = queueScript(`
local _, _, tok = parse(redis.call('GET', KEYS[1]))
if tok == ARGV[1] then
  pass()
  return 1
end
return 0
`)

// inspectScript: KEYS[1] lock, KEYS[2] queue. Replies {value (empty if
// none), PTTL, queue length} without changing anything.
var inspectScript = script(2, `
return {redis.call('GET', KEYS[1]) or '', redis.call('PTTL', KEYS[1]), redis.call('LLEN', KEYS[2])}
`)

// extendScript: KEYS[1] lock; ARGV[1] token, ARGV[2] ttl in ms. Resets the
// TTL only if token holds the key: an expired lock is never re-created.
var extendScript = script(1, `
local v = redis.call('GET', KEYS[1])
if v then
  local i = string.find(v, ':', 1, true)
  if i and string.sub(v, i + 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.match(v, '^%d+')) or 0
  end
end
return -1
`)

// transferScript: queueLua's KEYS and ARGV (token: from), then ARGV[5] to,
// ARGV[6] ttl in ms. If from holds the key, it becomes to's with a fresh
// TTL in one SET over the old value, so the key never disappears and
// nobody else can take it in between; fenced, with a new fence (INCR, so
// greater than from's). The queue is not touched (the key is not free).
// Replies the new fence (0 unfenced), or -1 (and changes nothing) when
// from does not hold the key.
var transferScript = queueScript(`
local f, _, tok = parse(redis.call('GET', KEYS[1]))
if tok ~= ARGV[1] then
  return -1
end
if fenced then
  f = redis.call('INCR', KEYS[2])
end
redis.call('SET', KEYS[1], value(f, '', ARGV[5]), 'PX', ARGV[6])
return f
`)

// Unfenced locks hold the bare token, as go-redsync writes it.

// reacquireScript: KEYS[1] lock; ARGV[1] token, ARGV[2] ttl in ms. Run
// where go-redsync's SET NX found the key taken: if token itself holds it,
// the TTL is reset in place (the holder's re-acquire; the key never
// disappears) and it replies 1, else 0.
var reacquireScript = script(1, `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`)

// touchScript: KEYS[1] lock; ARGV[1] token, ARGV[2] ttl in ms. Resets the
// TTL only if token holds the key; it stands in for go-redsync's extend
// script when redsync.WithSetNXOnExtend would re-create an expired lock.
var touchScript = reacquireScript
