package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
)

// errNotOwner is what Release and Extend return for a key whose advisory
// lock another session holds: it matches distlock.ErrNotOwnerInstance and
// distlock.ErrNotHeld.
var errNotOwner = fmt.Errorf("%w (PostgreSQL: another session holds the key's advisory lock, and only the session that took an advisory lock can unlock it: release it from the process that acquired it, or let its TTL pass)", distlock.ErrNotOwnerInstance)

// probeSQL looks at the advisory lock $1 high and $2 low 32 bits of the
// bigint key) in this database: it counts the sessions other than this one
// that hold it (high 32 bits of the result) and those that wait for it
// (low 32 bits).
const probeSQL = "SELECT (count(*) FILTER (WHERE granted AND pid <> pg_backend_pid())) * 4294967296 +" +
	" count(*) FILTER (WHERE NOT granted), pg_backend_pid() FROM pg_locks WHERE locktype = 'advisory'" +
	" AND database = (SELECT oid FROM pg_database WHERE datname = current_database())" +
	" AND classid = $1::int8::oid AND objid = $2::int8::oid AND objsubid = 1"

func probeArgs(id int64) []any {
	return []any{int64(uint32(uint64(id) >> 32)), int64(uint32(id))}
}

// heldElsewhere asks the server, on key's session, whether a session other
// than that one holds key's advisory lock, and how many sessions wait for
// it: read-only, it takes nothing.
func (b *Backend) heldElsewhere(ctx context.Context, key string) (bool, int, error) {
	id := b.lockID(key)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return false, 0, distlock.Unavailable(errClosed)
	}
	o := &op{kind: opProbe, id: id, done: make(chan struct{})}
	b.sessionFor(id).enqueueLocked(o)
	b.mu.Unlock()
	if err := b.wait(ctx, o); err != nil {
		return false, 0, err
	}
	if o.err != nil {
		return false, 0, b.unavailable(o.err)
	}
	return o.ok, o.waiters, nil
}

// notOwner answers a Release or Extend of a key this Backend does not hold:
// errNotOwner if another session holds it, else ErrNotHeld (also when the
// server cannot be asked: the key is not held here either way).
func (b *Backend) notOwner(ctx context.Context, key string) error {
	if held, _, err := b.heldElsewhere(ctx, key); err == nil && held {
		return errNotOwner
	}
	return distlock.ErrNotHeld
}

// Inspect implements driver.Inspector with one read of pg_locks: how many
// sessions wait for the key (Waiters), and whether another session holds
// it. A lock held through this Backend is described from memory (TTL left,
// fence, holder); for one held elsewhere TTL and fence are unknown (zero),
// as they live in the memory of the process that holds it.
func (b *Backend) Inspect(ctx context.Context, key string) (driver.LockInfo, error) {
	held, waiters, err := b.heldElsewhere(ctx, key)
	if err != nil {
		return driver.LockInfo{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if h := b.liveLocked(key, now); h != nil && !h.pending {
		return driver.LockInfo{Held: true, TTL: h.expiry.Sub(now), Fence: h.fence, Holder: h.token, Waiters: waiters}, nil
	}
	return driver.LockInfo{Held: held, Waiters: waiters}, nil
}

// unavailable names the server (host:port, never credentials) in a failure
// of a holder session, unless the message names it already.
func (b *Backend) unavailable(err error) error {
	if b.where == "" || strings.Contains(err.Error(), b.where) {
		return distlock.Unavailable(err)
	}
	return distlock.Unavailable(fmt.Errorf("postgres %s: %w", b.where, err))
}
