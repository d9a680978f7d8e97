package distlock

import (
	"context"
	"fmt"
	"time"

	"github.com/distlock/distlock/driver"
)

// Inspect reports whether key is held and, where the backend knows, the
// lock's remaining TTL and fence, without changing anything: no TTL is
// reset, nothing is taken or released. It needs a backend that implements
// Inspector (memory, etcd and PostgreSQL do); otherwise it returns an error
// matching ErrUnsupported.
//
// The answer is a snapshot: the lock may be taken or freed a moment later.
// Use it for status pages and tools, never to decide whether to Acquire.
func (m *Manager) Inspect(ctx context.Context, key string) (LockInfo, error) {
	const op = "inspect"
	if m.closed.Load() {
		return LockInfo{}, &Error{Op: op, Key: key, Kind: ErrClosed}
	}
	if err := checkKey(key); err != nil {
		return LockInfo{}, &Error{Op: op, Key: key, Kind: ErrInvalidArgument, Err: err}
	}
	in, ok := m.b.(driver.Inspector)
	if !ok {
		return LockInfo{}, &Error{Op: op, Key: key, Kind: ErrUnsupported, Err: fmt.Errorf("backend %q does not implement driver.Inspector", m.caps.Name)}
	}
	if err := ctx.Err(); err != nil {
		return LockInfo{}, &Error{Op: op, Key: key, Err: err}
	}
	info, err := in.Inspect(ctx, key)
	if err != nil {
		return LockInfo{}, m.wrap(ctx, op, key, err)
	}
	if !info.Held {
		info = LockInfo{}
	}
	return info, nil
}

// LockInfo is what Manager.Inspect learns about a lock: whether it is held
// and, where the backend can tell, its remaining TTL, fence and holder
// (see driver.LockInfo for the fields).
type LockInfo = driver.LockInfo

// Capabilities declares what a Manager's backend supports: fencing,
// release by another instance, the shortest TTL and its granularity (see
// driver.Capabilities for the fields). Require checks them when a Manager
// opens; docs/design.md shows each backend's.
type Capabilities = driver.Capabilities

// grantValid is how long g can be relied on.
func grantValid(g driver.Grant) time.Duration {
	if g.Valid > 0 && g.Valid < g.TTL {
		return g.Valid
	}
	return g.TTL
}
