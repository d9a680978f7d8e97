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
// step), its extend, release, in-process transfer and queue of waiters,
// the unfenced transfer, and the re-acquire check that keeps a holder's
// lock in place. Every script is one round trip and runs atomically on the
// server; they need Redis >= 6.0.6 (LPOS).
//
// A fenced lock's value is "<fence>[mark]:<token>". The fence comes first
// because it is made of digits only, and marks hold no ':', so the first
// ':' always ends them whatever the token holds. Marks: none for a grant
// by Acquire or Transfer; "r" for a key reserved for the head of its queue
// (a short grant the woken waiter claims); "q<call>" for a grant made by
// the AcquireWait call with id <call>, so that a call cut off before it saw
// its reply releases its own grant and nothing else.
//
// The queue of a key is a list next to it (queueKey), in the same Cluster
// hash slot, of entries "<process>:<token>": process is the waiting
// backend's id, whose channel (channel prefix + id) the release publishes
// the woken waiter's name on.

// passLua hands a freed key to the head of its queue: the entry is popped
// and the key reserved for it (new fence, PX ARGV[reserve]), and its
// process is told on its channel. KEYS: 1 lock, 2 fence counter, 3 queue.
const passLua = `
local function pass(reserve, prefix)
  local e = redis.call('LPOP', KEYS[3])
  if not e then
    redis.call('DEL', KEYS[1])
    return
  end
  local j = string.find(e, ':', 1, true)
  local tok = string.sub(e, j + 1)
  local f = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], f .. 'r:' .. tok, 'PX', reserve)
  redis.call('PUBLISH', prefix .. string.sub(e, 1, j - 1), #tok .. ':' .. tok .. KEYS[1])
end
`

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

// waitScript (AcquireWait): KEYS[1] lock, KEYS[2] fence counter, KEYS[3]
// queue; ARGV[1] token, ARGV[2] ttl in ms, ARGV[3] queue entry, ARGV[4]
// call id, ARGV[5] queue lifetime in ms, ARGV[6] reservation in ms,
// ARGV[7] channel prefix. Grants a free key nobody queues for (or whose
// queue token heads), claims a key reserved for token, re-acquires a key
// token holds; else queues the entry (once) and, if the key is free but
// others queue ahead, hands it to the head. Replies {0, fence} (granted by
// this call), {1, fence} (token held it already) or {2, ms until the key
// may be free} (queued).
var waitScript = script(3, passLua+`
local v = redis.call('GET', KEYS[1])
if v then
  local i = string.find(v, ':', 1, true)
  if i and string.sub(v, i + 1) == ARGV[1] then
    local f = string.match(v, '^%d+')
    redis.call('LREM', KEYS[3], 0, ARGV[3])
    if string.byte(v, i - 1) ~= 114 then
      redis.call('PEXPIRE', KEYS[1], ARGV[2])
      return {1, tonumber(f)}
    end
    redis.call('SET', KEYS[1], f .. 'q' .. ARGV[4] .. ':' .. ARGV[1], 'PX', ARGV[2])
    return {0, tonumber(f)}
  end
else
  local h = redis.call('LINDEX', KEYS[3], 0)
  if not h or h == ARGV[3] then
    if h then
      redis.call('LPOP', KEYS[3])
    end
    local f = redis.call('INCR', KEYS[2])
    redis.call('SET', KEYS[1], f .. 'q' .. ARGV[4] .. ':' .. ARGV[1], 'PX', ARGV[2])
    return {0, f}
  end
  pass(ARGV[6], ARGV[7])
end
if not redis.call('LPOS', KEYS[3], ARGV[3]) then
  redis.call('RPUSH', KEYS[3], ARGV[3])
end
redis.call('PEXPIRE', KEYS[3], ARGV[5])
return {2, redis.call('PTTL', KEYS[1])}
`)

// leaveScript (an AcquireWait that ends without a grant): KEYS as
// waitScript; ARGV[1] token, ARGV[2] queue entry, ARGV[3] call id, ARGV[4]
// reservation in ms, ARGV[5] channel prefix. Removes the entry; a key
// reserved for token, or granted by this very call, goes to the next
// waiter (or is freed). A grant token holds by other means (a Transfer to
// it, an earlier call) is left alone.
var leaveScript = script(3, passLua+`
redis.call('LREM', KEYS[3], 0, ARGV[2])
local v = redis.call('GET', KEYS[1])
local i = v and string.find(v, ':', 1, true)
if i and string.sub(v, i + 1) == ARGV[1] then
  local m = string.match(string.sub(v, 1, i - 1), '^%d+(.*)$')
  if m == 'r' or m == 'q' .. ARGV[3] then
    pass(ARGV[4], ARGV[5])
  end
end
return 0
`)

// inspectScript: KEYS[1] lock, KEYS[2] queue. Replies {value (empty if none), PTTL,
// queue length} without changing anything.
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

// releaseScript: KEYS as waitScript; ARGV[1] token, ARGV[2] reservation in
// ms, ARGV[3] channel prefix. If token holds the key, it goes to the head
// of its queue (only that waiter's process is told) or is deleted; replies
// 1, else 0.
var releaseScript = script(3, passLua+`
local v = redis.call('GET', KEYS[1])
local i = v and string.find(v, ':', 1, true)
if i and string.sub(v, i + 1) == ARGV[1] then
  pass(ARGV[2], ARGV[3])
  return 1
end
return 0
`)

// transferScript: KEYS[1] lock, KEYS[2] fence counter; ARGV[1] from,
// ARGV[2] to, ARGV[3] ttl in ms. If from holds the key, the value becomes
// to's with a new fence (INCR, so greater than from's) and the TTL is
// reset: one SET over the old value, so the key never disappears and
// nobody else can take it in between; the queue is not touched (the key
// is not free). Replies the new fence, or -1 (and changes nothing) when
// from does not hold the key.
var transferScript = script(2, `
local v = redis.call('GET', KEYS[1])
local i = v and string.find(v, ':', 1, true)
if not i or string.sub(v, i + 1) ~= ARGV[1] then
  return -1
end
local f = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], f .. ':' .. ARGV[2], 'PX', ARGV[3])
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

// plainTransferScript: KEYS[1] lock; ARGV[1] from, ARGV[2] to, ARGV[3] ttl
// in ms. If from holds the key it becomes to's with a fresh TTL in one SET
// (1), else nothing changes (0).
var plainTransferScript = script(1, `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
`)
