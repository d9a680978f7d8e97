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
// step), its extend, release and in-process transfer, the unfenced
// transfer, and the re-acquire check that keeps a holder's lock in place.
//
// A fenced lock's value is "<fence>[w]:<token>". The fence comes first
// because it is made of digits only, so the first ':' always ends it
// whatever the token holds. A 'w' after it
// marks that some acquire found the key taken: only then does the release
// publish, so an uncontended release costs no PUBLISH. Every script is one
// round trip and runs atomically on the server; scripts need Redis >= 6.0
// (SET … KEEPTTL).
//
// Replies: extend returns the grant's fence (>= 0) or -1 when the key is
// not held by token; release returns 1 or 0.

// acquireScript: KEYS[1] lock, KEYS[2] fence counter; ARGV[1] token,
// ARGV[2] ttl in ms. The counter is incremented first, so a free key costs
// two commands (INCR, SET NX) and a grant's fence is always fresh; an
// attempt on a taken key leaves a gap in the numbering, which keeps them
// strictly increasing. A key already held by token has its TTL reset in
// place and keeps its fence: never deleted, not even for an instant. A key
// held by another token is marked as waited for. Replies the new grant's
// fence, -1 (taken), or -2-fence for the holder's re-acquire.
var acquireScript = script(2, `
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
  return -2 - (tonumber(string.match(string.sub(v, 1, i - 1), '%d+')) or 0)
end
if string.byte(v, i - 1) ~= 119 then
  redis.call('SET', KEYS[1], string.sub(v, 1, i - 1) .. 'w' .. string.sub(v, i), 'KEEPTTL')
end
return -1
`)

// extendScript: KEYS[1] lock; ARGV[1] token, ARGV[2] ttl in ms. Resets the
// TTL only if token holds the key: an expired lock is never re-created.
var extendScript = script(1, `
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
var releaseScript = script(1, `
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

// transferScript: KEYS[1] lock, KEYS[2] fence counter; ARGV[1] from,
// ARGV[2] to, ARGV[3] ttl in ms. If from holds the key, the value becomes
// to's with a new fence (INCR, so greater than from's) and the TTL is
// reset: one SET over the old value, so the key never disappears and
// nobody else can take it in between. The waited-for mark is kept: the key
// is still taken, so the waiters were not served, and the eventual release
// must still announce itself to them. Nothing is published (the key is not
// free). Replies the new fence, or -1 (and changes nothing) when from does
// not hold the key.
var transferScript = script(2, `
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
local f = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], f .. w .. ':' .. ARGV[2], 'PX', ARGV[3])
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
