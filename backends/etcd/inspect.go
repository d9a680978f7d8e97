package etcd

import (
	"context"
	"time"

	"github.com/distlock/distlock/driver"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var _ driver.Inspector = (*Backend)(nil)

// Inspect implements driver.Inspector with one read of the key's queue
// (its first entry and the number of entries) and, if it is held, a
// TimeToLive of the holder's lease: no write, no keep-alive. TTL is in
// whole seconds as etcd counts them (at least 1s while the lease lives);
// Waiters counts the entries behind the holder's.
func (b *Backend) Inspect(ctx context.Context, key string) (driver.LockInfo, error) {
	ctx, cancel := b.reqCtx(ctx)
	defer cancel()
	q := QueuePrefix(b.prefix, key)
	resp, err := b.cli.Txn(ctx).Then(clientv3.OpGet(q, clientv3.WithFirstCreate()...),
		clientv3.OpGet(q, clientv3.WithPrefix(), clientv3.WithCountOnly())).Commit()
	if err != nil {
		return driver.LockInfo{}, b.unavailable("get", err)
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return driver.LockInfo{}, nil
	}
	lease := clientv3.LeaseID(kvs[0].Lease)
	info := driver.LockInfo{Held: true, Fence: uint64(max(fenceOf(kvs[0]), 0)), Holder: tokenOf(kvs[0].Value),
		Waiters: int(resp.Responses[1].GetResponseRange().GetCount()) - 1}
	if lease == clientv3.NoLease {
		return info, nil // no lease: no expiry (not a key this package wrote)
	}
	tr, err := b.cli.TimeToLive(ctx, lease)
	if err != nil {
		return driver.LockInfo{}, b.unavailable("lease time-to-live", err)
	}
	if tr.TTL < 0 { // the lease expired: the entry is going with it
		return driver.LockInfo{}, nil
	}
	info.TTL = time.Duration(max(tr.TTL, 1)) * time.Second
	return info, nil
}
