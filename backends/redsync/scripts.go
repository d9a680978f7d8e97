package redsync

import "github.com/redis/go-redis/v9"

// The lock value is "<fence>[w]:<token>". The fence (the Redlock round's
// nonce on Redlock masters) comes first because it is made of digits only,
// so the first ':' always ends it whatever the token holds. A 'w' after it
// marks that some acquire found the key taken: only then does the release
// publish, so an uncontended release costs no PUBLISH. Every script is one
// round trip and runs atomically on the server; scripts need Redis >= 6.0
// (SET … KEEPTTL).
//
// Replies: acquire and extend return the grant's fence (>= 0) or -1 when
// the key is held by another token (acquire) or not held by token
// (extend); release returns 1 or 0.

// acquireScript: KEYS[1] lock, KEYS[2] fence counter; ARGV[1] token,
// ARGV[2] ttl in ms. The counter is incremented first, so a free key costs
// two commands (INCR, SET NX) and a grant's fence is always fresh; an
// attempt on a taken key leaves a gap in the numbering, which keeps them
// strictly increasing. A key already held by token has its TTL reset in
// place and keeps its fence: never deleted, not even for an instant. A key
// held by another token is marked as waited for.
var acquireScript = redis.NewScript(`
local f = redis.call('INCR', KEYS[2])
if redis.call('SET', KEYS[1], f .. ':' .. ARGV[1], 'NX', 'PX', ARGV[2]) then
  return f
end
local v = redis.call('GET', KEYS[1])
if not v then
  return -1
end
local i = string.find(v, ':', 1, true)
if not i then
  return -1
end
if string.sub(v, i + 1) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(string.match(string.sub(v, 1, i - 1), '%d+')) or 0
end
if string.byte(v, i - 1) ~= 119 then
  redis.call('SET', KEYS[1], string.sub(v, 1, i - 1) .. 'w' .. string.sub(v, i), 'KEEPTTL')
end
return -1
`)

// redlockAcquireScript: KEYS[1] lock; ARGV[1] token, ARGV[2] ttl in ms,
// ARGV[3] the round's nonce (digits). Like acquireScript without a fence:
// the nonce takes the fence's place in the value. A key already held by
// token is rewritten with this round's nonce (SET over the old value: the
// key never disappears), so that the cleanup of an earlier failed round
// of the same token, which deletes only its own nonce, cannot remove it.
// Replies 1 (created), 2 (held by token, TTL reset) or 0 (held by another
// token).
var redlockAcquireScript = redis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[3] .. ':' .. ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
local v = redis.call('GET', KEYS[1])
if not v then
  return 0
end
local i = string.find(v, ':', 1, true)
if not i then
  return 0
end
local w = ''
if string.byte(v, i - 1) == 119 then
  w = 'w'
end
if string.sub(v, i + 1) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[3] .. w .. ':' .. ARGV[1], 'PX', ARGV[2])
  return 2
end
if w == '' then
  redis.call('SET', KEYS[1], string.sub(v, 1, i - 1) .. 'w' .. string.sub(v, i), 'KEEPTTL')
end
return 0
`)

// redlockCleanupScript: KEYS[1] lock; ARGV[1] nonce, ARGV[2] token,
// ARGV[3] release channel. Deletes the key only if it still holds the
// value the failed round wrote (marked or not).
var redlockCleanupScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] .. ':' .. ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
if v == ARGV[1] .. 'w:' .. ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], '')
  return 1
end
return 0
`)

// extendScript: KEYS[1] lock; ARGV[1] token, ARGV[2] ttl in ms. Resets the
// TTL only if token holds the key: an expired lock is never re-created.
var extendScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then
  local i = string.find(v, ':', 1, true)
  if i and string.sub(v, i + 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.match(string.sub(v, 1, i - 1), '%d+')) or 0
  end
end
return -1
`)

// releaseScript: KEYS[1] lock; ARGV[1] token, ARGV[2] release channel.
// Deletes the key only if token holds it, and publishes the release if
// someone waits for it, so that waiters wake at once.
var releaseScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then
  local i = string.find(v, ':', 1, true)
  if i and string.sub(v, i + 1) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    if string.byte(v, i - 1) == 119 then
      redis.call('PUBLISH', ARGV[2], '')
    end
    return 1
  end
end
return 0
`)

// transferScript: KEYS[1] lock, KEYS[2] fence counter (absent when
// unfenced); ARGV[1] from, ARGV[2] to, ARGV[3] ttl in ms. If from holds the
// key, the value becomes to's with a new fence (INCR, so greater than
// from's; 0 when unfenced) and the TTL is reset: one SET over the old
// value, so the key never disappears and nobody else can take it in
// between. The waited-for mark is kept: the key is still taken, so the
// waiters were not served, and the eventual release must still announce
// itself to them. Nothing is published (the key is not free). Replies the
// new fence, or -1 (and changes nothing) when from does not hold the key.
var transferScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
  return -1
end
local i = string.find(v, ':', 1, true)
if not i or string.sub(v, i + 1) ~= ARGV[1] then
  return -1
end
local w = ''
if string.byte(v, i - 1) == 119 then
  w = 'w'
end
local f = 0
if KEYS[2] then
  f = redis.call('INCR', KEYS[2])
end
redis.call('SET', KEYS[1], f .. w .. ':' .. ARGV[2], 'PX', ARGV[3])
return f
`)

// redlockTransferScript: KEYS[1] lock; ARGV[1] from, ARGV[2] to, ARGV[3]
// ttl in ms, ARGV[4] the round's nonce. Like transferScript on one master
// of a Redlock: if from holds the key, it becomes to's (nonce[w]:to, the
// waited-for mark kept) with a fresh TTL. Replies nil when from does not
// hold the key, else {old value, old expiry in ms of the server's clock}:
// what redlockUndoTransferScript needs to put the key back exactly if the
// round fails.
var redlockTransferScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
  return false
end
local i = string.find(v, ':', 1, true)
if not i or string.sub(v, i + 1) ~= ARGV[1] then
  return false
end
local w = ''
if string.byte(v, i - 1) == 119 then
  w = 'w'
end
local left = redis.call('PTTL', KEYS[1])
local t = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[4] .. w .. ':' .. ARGV[2], 'PX', ARGV[3])
return {v, t[1] * 1000 + math.floor(t[2] / 1000) + left}
`)

// redlockUndoTransferScript: KEYS[1] lock; ARGV[1] nonce, ARGV[2] to,
// ARGV[3] the old value, ARGV[4] its expiry (ms, server clock), ARGV[5]
// release channel. If the key still holds what the failed transfer round
// wrote, it gets its old value back until its old expiry (keeping a
// waited-for mark set meanwhile); if that expiry has passed, the key is
// deleted (and the release announced if someone waited). Replies 1 or 0.
var redlockUndoTransferScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
local w = false
if v == ARGV[1] .. 'w:' .. ARGV[2] then
  w = true
elseif v ~= ARGV[1] .. ':' .. ARGV[2] then
  return 0
end
local old = ARGV[3]
local i = string.find(old, ':', 1, true)
if string.byte(old, i - 1) == 119 then
  w = true
elseif w then
  old = string.sub(old, 1, i - 1) .. 'w' .. string.sub(old, i)
end
local t = redis.call('TIME')
local left = tonumber(ARGV[4]) - (t[1] * 1000 + math.floor(t[2] / 1000))
if left <= 0 then
  redis.call('DEL', KEYS[1])
  if w then
    redis.call('PUBLISH', ARGV[5], '')
  end
  return 1
end
redis.call('SET', KEYS[1], old, 'PX', left)
return 1
`)
