package etcd

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A queue entry's value is "<fence>;<token>": the fence written out in
// decimal, or nothing when the fence is the entry's mod revision. The
// fence of a grant is the revision of the write that made it: the put of
// an entry that was first at once; the release that handed the lock on
// (it touches the next entry: a put that keeps its value and lease); a
// Transfer (a put of the new token's value); or, when the lock came free
// otherwise, the waiter's own touch. Each such write comes after every
// earlier grant of the key, so fences increase strictly. A re-acquire or
// Extend that moves the entry to a longer lease writes the fence out, so
// that it stays.
func lockValue(token string, fence int64) string {
	if fence > 0 {
		return strconv.FormatInt(fence, 10) + ";" + token
	}
	return ";" + token
}

// parseValue returns the token and the written-out fence (0 if none) of an
// entry's value; ok is false for a value this package did not write (an
// operator's), which no token holds.
func parseValue(v []byte) (token string, fence int64, ok bool) {
	i := bytes.IndexByte(v, ';')
	if i < 0 || i == len(v)-1 {
		return "", 0, false
	}
	if i > 0 {
		var err error
		if fence, err = strconv.ParseInt(string(v[:i]), 10, 64); err != nil || fence <= 0 {
			return "", 0, false
		}
	}
	return string(v[i+1:]), fence, true
}

// fenceOf returns the fence of the grant kv, a queue's first entry, shows.
func fenceOf(kv *mvccpb.KeyValue) int64 {
	if _, fence, ok := parseValue(kv.Value); ok && fence > 0 {
		return fence
	}
	return kv.ModRevision
}

// tokenOf returns the token that holds a key with value v ("" if none).
func tokenOf(v []byte) string {
	tok, _, _ := parseValue(v)
	return tok
}

// Transfer implements driver.Transferer: one transaction that, if from
// holds key (the entry, value and create revision this backend last saw,
// read first if it made no grant of key to from), puts the entry with to's
// value — one raft entry, the entry keeps its place at the head of the
// queue, and the transaction's revision is the new fence. The grant keeps
// from's lease (refreshed by a keep-alive sent alongside) when from's
// grant was made here for the same TTL; otherwise it takes a spare or new
// lease, and from's lease, if it is ours, becomes a spare. from's loss
// watchers here end as by a release.
func (b *Backend) Transfer(ctx context.Context, key, from, to string, ttl time.Duration) (driver.Grant, error) {
	if from == to {
		return driver.Grant{}, distlock.ErrNotHeld
	}
	ctx, cancel := b.reqCtx(ctx)
	defer cancel()
	q := QueuePrefix(b.prefix, key)
	secs := seconds(ttl)

	var kv *mvccpb.KeyValue // from's entry as last seen
	var mine grant          // this backend's record of from's grant, if any
	b.mu.Lock()
	if g := b.grants[q]; g != nil && g.token == from {
		mine = *g
		kv = &mvccpb.KeyValue{Key: []byte(g.entry), Value: []byte(g.value), CreateRevision: g.createRev, Lease: int64(g.lease)}
	}
	b.mu.Unlock()
	for try := 0; ; try++ {
		if kv == nil {
			resp, err := b.cli.Get(ctx, q, clientv3.WithFirstCreate()...)
			if err != nil {
				return driver.Grant{}, b.unavailable("get", err)
			}
			if len(resp.Kvs) > 0 {
				kv = resp.Kvs[0]
			}
		}
		if kv == nil || tokenOf(kv.Value) != from {
			return driver.Grant{}, distlock.ErrNotHeld
		}
		entry, val := string(kv.Key), lockValue(to, 0)
		reuse := mine.token != "" && mine.secs == secs && int64(mine.lease) == kv.Lease
		l, refresh := spareLease{id: mine.lease, ttl: mine.ttl, fresh: mine.fresh}, true
		if !reuse {
			var err error
			if l, refresh, err = b.lease(ctx, secs); err != nil {
				return driver.Grant{}, err
			}
		}
		var refreshed chan keepAlive
		if refresh {
			refreshed = b.renewAsync(ctx, l.id)
		}
		resp, err := b.cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(entry), "=", string(kv.Value)),
			clientv3.Compare(clientv3.CreateRevision(entry), "=", kv.CreateRevision)).
			Then(clientv3.OpPut(entry, val, clientv3.WithLease(l.id))).Commit()
		r := keepAlive{ttl: l.ttl, at: l.fresh}
		if refresh {
			r = <-refreshed
		}
		if err != nil || !resp.Succeeded {
			if !reuse {
				b.putSpare(secs, l)
			}
			if err != nil {
				return driver.Grant{}, b.unavailable("txn", err)
			}
			if try >= 2 {
				return driver.Grant{}, b.unavailable("txn", errors.New("the holder's grant keeps changing"))
			}
			kv, mine = nil, grant{} // what this backend knew of from's grant was stale: read it
			continue
		}
		rev := resp.Header.Revision
		b.granted(q, &grant{token: to, entry: entry, value: val, createRev: kv.CreateRevision, fence: rev, rev: rev, queued: mine.queued,
			lease: l.id, secs: secs, ttl: r.ttl, fresh: r.at}, clientv3.LeaseID(kv.Lease))
		if r.err != nil {
			// to's lease may not last the TTL asked for, and the caller
			// will not learn of this grant: undo it rather than leave it
			// to expire. From's grant ended either way.
			uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_, _ = b.release(uctx, q, to)
			ucancel()
			b.released(q, to, clientv3.NoLease)
			return driver.Grant{}, b.unavailable("lease keep-alive", r.err)
		}
		return driver.Grant{TTL: time.Duration(r.ttl) * time.Second, Fence: uint64(rev)}, nil
	}
}
