package etcd

import (
	"context"
	"time"

	"github.com/distlock/distlock/driver"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var _ driver.Inspector = (*Backend)(nil)

// Inspect implements driver.Inspector with a linearizable read of the key
// and, if it is held, a TimeToLive of its lease: no write, no keep-alive.
// TTL is in whole seconds as etcd counts them (at least 1s while the lease
// lives); Fence is the grant's fencing number.
func (b *Backend) Inspect(ctx context.Context, key string) (driver.LockInfo, error) {
	ctx, cancel := b.reqCtx(ctx)
	defer cancel()
	resp, err := b.cli.Get(ctx, b.prefix+key)
	if err != nil {
		return driver.LockInfo{}, b.unavailable("get", err)
	}
	if len(resp.Kvs) == 0 {
		return driver.LockInfo{}, nil
	}
	cur := heldBy(resp.Kvs[0])
	info := driver.LockInfo{Held: true, Fence: uint64(max(cur.fence, 0)), Holder: cur.token}
	if cur.lease == clientv3.NoLease {
		return info, nil // no lease: no expiry (not a key this package wrote)
	}
	tr, err := b.cli.TimeToLive(ctx, cur.lease)
	if err != nil {
		return driver.LockInfo{}, b.unavailable("lease time-to-live", err)
	}
	if tr.TTL < 0 { // the lease expired: the key is going with it
		return driver.LockInfo{}, nil
	}
	info.TTL = time.Duration(max(tr.TTL, 1)) * time.Second
	return info, nil
}
