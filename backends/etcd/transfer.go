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
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A queue entry's value names its token and, once a write that must keep
// the fence has been made to it, the fence:
//
//	<len(token)>:<token>;          the fence is the entry's mod revision
//	<len(token)>:<token>;<fence>   the fence is written out (decimal)
//
// The fence of a grant is the revision of the write that made it: the put
// of an entry that was first at once; the release that handed the lock on
// (it touches the next entry: a put that keeps its value and lease); a
// Transfer (a put of the new token's value); or, when the lock came free
// otherwise, the waiter's own touch. Each such write comes after every
// earlier grant of the key, so fences increase strictly. A re-acquire or
// Extend that moves the entry to a longer lease writes the fence out, so
// that it stays.
//
// holder is "<len(token)>:<token>", the start of every value of a key that
// token holds.
func holder(token string) string {
	return strconv.Itoa(len(token)) + ":" + token
}

// lockValue is the value of an entry of token; fence 0 for one whose
// fence is its mod revision.
func lockValue(token string, fence int64) string {
	v := holder(token) + ";"
	if fence > 0 {
		v += strconv.FormatInt(fence, 10)
	}
	return v
}

// parseValue returns the token and the written-out fence (0 if none) of a
// lock value; ok is false for a value this package did not write (another
// version's, or an operator's), which no token holds.
func parseValue(v []byte) (token string, fence int64, ok bool) {
	i := bytes.IndexByte(v, ':')
	if i <= 0 || i > 10 || v[0] == '0' {
		return "", 0, false
	}
	n, err := strconv.Atoi(string(v[:i]))
	if err != nil || n <= 0 {
		return "", 0, false
	}
	rest := v[i+1:]
	if len(rest) <= n || rest[n] != ';' {
		return "", 0, false
	}
	if s := rest[n+1:]; len(s) > 0 {
		fence, err = strconv.ParseInt(string(s), 10, 64)
		if err != nil || fence <= 0 {
			return "", 0, false
		}
	}
	return string(rest[:n]), fence, true
}

// held describes the grant a key's current value shows.
type held struct {
	token     string
	value     string
	fence     int64
	createRev int64
	lease     clientv3.LeaseID
}

// heldBy returns the grant kv, a queue's first entry, shows (token "" if
// the value is not ours).
func heldBy(kv *mvccpb.KeyValue) held {
	tok, fence, ok := parseValue(kv.Value)
	if !ok {
		return held{value: string(kv.Value), createRev: kv.CreateRevision, lease: clientv3.LeaseID(kv.Lease)}
	}
	if fence == 0 {
		fence = kv.ModRevision
	}
	return held{token: tok, value: string(kv.Value), fence: fence, createRev: kv.CreateRevision, lease: clientv3.LeaseID(kv.Lease)}
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
// queue, and the transaction's revision is the new fence. The new grant
// keeps from's lease (refreshed by a keep-alive sent alongside) when
// from's grant was made here for the same TTL; otherwise it takes a spare
// or new lease, and from's lease, if it is ours, becomes a spare. from's
// loss watchers here end as by a release.
func (b *Backend) Transfer(ctx context.Context, key, from, to string, ttl time.Duration) (driver.Grant, error) {
	if from == to {
		return driver.Grant{}, distlock.ErrNotHeld
	}
	ctx, cancel := b.reqCtx(ctx)
	defer cancel()
	q := QueuePrefix(b.prefix, key)
	secs := seconds(ttl)
	first := clientv3.OpGet(q, clientv3.WithFirstCreate()...)

	var entry string
	var cur held
	var mine *grant // this backend's record of from's grant, if any
	b.mu.Lock()
	if g := b.grants[q]; g != nil && g.token == from {
		c := *g
		mine = &c
		entry, cur = g.entry, held{token: from, value: g.value, fence: g.fence, createRev: g.createRev, lease: g.lease}
	}
	b.mu.Unlock()
	if mine == nil {
		resp, err := b.cli.Do(ctx, first)
		if err != nil {
			return driver.Grant{}, b.unavailable("get", err)
		}
		kvs := resp.Get().Kvs
		if len(kvs) == 0 || tokenOf(kvs[0].Value) != from {
			return driver.Grant{}, distlock.ErrNotHeld
		}
		entry, cur = string(kvs[0].Key), heldBy(kvs[0])
	}

	for try := 0; ; try++ {
		reuse := mine != nil && mine.lease == cur.lease && mine.secs == secs && cur.lease != clientv3.NoLease
		l := spareLease{id: cur.lease}
		refresh := true
		if reuse {
			l = spareLease{id: mine.lease, ttl: mine.ttl, fresh: mine.fresh}
		} else {
			var err error
			if l, refresh, err = b.lease(ctx, secs); err != nil {
				return driver.Grant{}, err
			}
		}
		var refreshed chan keepAlive
		if refresh {
			refreshed = b.renewAsync(ctx, l.id)
		}
		val := lockValue(to, 0)
		cmps := []clientv3.Cmp{
			clientv3.Compare(clientv3.Value(entry), "=", cur.value),
			clientv3.Compare(clientv3.CreateRevision(entry), "=", cur.createRev),
		}
		if reuse {
			cmps = append(cmps, clientv3.Compare(clientv3.LeaseValue(entry), "=", cur.lease))
		}
		b.releasing(q, from, +1)
		resp, err := b.cli.Txn(ctx).If(cmps...).Then(clientv3.OpPut(entry, val, clientv3.WithLease(l.id))).Else(first).Commit()
		if err != nil {
			b.releasing(q, from, -1)
			if !reuse && refresh && try == 0 && errors.Is(err, rpctypes.ErrLeaseNotFound) {
				continue // the spare lease is gone after all: take a new one
			}
			return driver.Grant{}, b.unavailable("txn", err)
		}
		if !resp.Succeeded {
			b.releasing(q, from, -1)
			if !reuse {
				b.putSpare(secs, l)
			}
			// What this backend knew of from's grant was stale (say, the
			// entry moved to another lease through another backend): look
			// at what the queue's head holds now.
			kvs := resp.Responses[0].GetResponseRange().GetKvs()
			if len(kvs) == 0 || tokenOf(kvs[0].Value) != from {
				return driver.Grant{}, distlock.ErrNotHeld
			}
			if try >= 2 {
				return driver.Grant{}, b.unavailable("txn", errors.New("the holder's grant keeps changing"))
			}
			entry, cur, mine = string(kvs[0].Key), heldBy(kvs[0]), nil
			continue
		}
		rev := resp.Header.Revision
		g := &grant{token: to, entry: entry, value: val, createRev: cur.createRev, fence: rev, rev: rev, queued: mine != nil && mine.queued,
			lease: l.id, secs: secs, ttl: l.ttl, fresh: l.fresh}
		if refresh {
			r := <-refreshed
			if r.err != nil {
				// to's lease may not last the TTL asked for, and the
				// caller will not learn of this grant: undo it rather than
				// leave it to expire. From's grant ended either way.
				b.granted(q, g, cur.lease)
				uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
				_, _ = b.release(uctx, q, to)
				ucancel()
				b.released(q, to, clientv3.NoLease)
				return driver.Grant{}, b.unavailable("lease keep-alive", r.err)
			}
			g.ttl, g.fresh = r.ttl, r.at
		}
		b.granted(q, g, cur.lease)
		return driver.Grant{TTL: time.Duration(g.ttl) * time.Second, Fence: uint64(rev)}, nil
	}
}
