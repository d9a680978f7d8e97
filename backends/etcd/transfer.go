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

// The lock key's value names its holder and, for a grant made by a
// transfer, its fence:
//
//	<len(token)>:<token>;          a grant that created the key: the fence is the key's create revision
//	<len(token)>:<token>;<fence>   a grant made by Transfer: the fence is written out (decimal)
//
// A transfer cannot take a new create revision (etcd refuses a delete and a
// put of one key in one transaction, and a put keeps the create revision),
// so it writes the new holder's fence into the value: the old fence + 1.
// That is strictly greater than the old fence and, since the transfer's
// own revision is greater than the revision of any earlier write to the key
// (which includes the old fence), it is at most the transfer's revision, so
// every later grant — another transfer (+1 again) or a new key after a
// delete (a create revision above the transfer's) — gets a greater fence.
//
// The length prefix makes "<len>:<token>" a prefix-free code, so "token
// holds the key" is two value comparisons that need not know the fence:
// value > "<len>:<token>" and value < "<len>:<token>\xff" hold exactly for
// the values "<len>:<token>;…" (';' and the digits sort below 0xff, and a
// value that does not start with "<len>:<token>" sorts outside the range).

// holder is "<len(token)>:<token>", the start of every value of a key that
// token holds.
func holder(token string) string {
	return strconv.Itoa(len(token)) + ":" + token
}

// lockValue is the value of a key granted to token; fence 0 for a grant
// whose fence is the key's create revision.
func lockValue(token string, fence int64) string {
	v := holder(token) + ";"
	if fence > 0 {
		v += strconv.FormatInt(fence, 10)
	}
	return v
}

// holds is the comparison "token holds k" (see above).
func holds(k, token string) []clientv3.Cmp {
	h := holder(token)
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.Value(k), ">", h),
		clientv3.Compare(clientv3.Value(k), "<", h+"\xff"),
	}
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

// heldBy returns the grant kv shows (token "" if the value is not ours).
func heldBy(kv *mvccpb.KeyValue) held {
	tok, fence, ok := parseValue(kv.Value)
	if !ok {
		return held{value: string(kv.Value), createRev: kv.CreateRevision, lease: clientv3.LeaseID(kv.Lease)}
	}
	if fence == 0 {
		fence = kv.CreateRevision
	}
	return held{token: tok, value: string(kv.Value), fence: fence, createRev: kv.CreateRevision, lease: clientv3.LeaseID(kv.Lease)}
}

// tokenOf returns the token that holds a key with value v ("" if none).
func tokenOf(v []byte) string {
	tok, _, _ := parseValue(v)
	return tok
}

// Transfer implements driver.Transferer: one transaction that, if from
// holds key (the value and create revision this backend last saw, read
// first if it made no grant of key to from), puts key with to's value and
// the fence from's + 1 — one raft entry, and the key is never free. The new
// grant keeps from's lease (refreshed by a keep-alive sent alongside, as
// for a spare lease in Acquire) when from's grant was made here for the
// same TTL; otherwise it takes a spare or new lease, and from's lease, if
// it is ours, becomes a spare. from's loss watchers here are ended as by a
// release, not told of a loss.
func (b *Backend) Transfer(ctx context.Context, key, from, to string, ttl time.Duration) (driver.Grant, error) {
	if from == to {
		return driver.Grant{}, distlock.ErrNotHeld
	}
	ctx, cancel := b.reqCtx(ctx)
	defer cancel()
	k := b.prefix + key
	secs := seconds(ttl)
	defer b.startFlight(k, to)()

	var cur held
	var mine *grant // this backend's record of from's grant, if any
	b.mu.Lock()
	if g := b.grants[k]; g != nil && g.token == from {
		c := *g
		mine = &c
		cur = held{token: from, value: g.value, fence: g.fence, createRev: g.createRev, lease: g.lease}
	}
	b.mu.Unlock()
	if mine == nil {
		resp, err := b.cli.Get(ctx, k)
		if err != nil {
			return driver.Grant{}, b.unavailable("get", err)
		}
		if len(resp.Kvs) == 0 {
			return driver.Grant{}, distlock.ErrNotHeld
		}
		if cur = heldBy(resp.Kvs[0]); cur.token != from {
			return driver.Grant{}, distlock.ErrNotHeld
		}
	}

	for try := 0; ; try++ {
		reuse := mine != nil && mine.lease == cur.lease && mine.secs == secs && cur.lease != clientv3.NoLease
		var l spareLease
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
			refreshed = make(chan keepAlive, 1)
			go func() {
				t := time.Now()
				ttl, err := b.renew(ctx, l.id)
				refreshed <- keepAlive{ttl, err, t}
			}()
		}
		fence := cur.fence + 1
		val := lockValue(to, fence)
		cmps := []clientv3.Cmp{
			clientv3.Compare(clientv3.Value(k), "=", cur.value),
			clientv3.Compare(clientv3.CreateRevision(k), "=", cur.createRev),
		}
		if reuse {
			cmps = append(cmps, clientv3.Compare(clientv3.LeaseValue(k), "=", cur.lease))
		}
		b.releasing(k, from, +1)
		resp, err := b.cli.Txn(ctx).If(cmps...).
			Then(clientv3.OpPut(k, val, clientv3.WithLease(l.id))).
			Else(clientv3.OpGet(k)).Commit()
		if err != nil {
			b.releasing(k, from, -1)
			if !reuse && refresh && try == 0 && errors.Is(err, rpctypes.ErrLeaseNotFound) {
				continue // the spare lease is gone after all: take a new one
			}
			return driver.Grant{}, b.unavailable("txn", err)
		}
		if !resp.Succeeded {
			b.releasing(k, from, -1)
			if !reuse {
				b.putSpare(secs, l)
			}
			// What this backend knew of from's grant was stale (say, the
			// key moved to another lease through another backend): look
			// at what the key holds now.
			kvs := resp.Responses[0].GetResponseRange().GetKvs()
			if len(kvs) == 0 {
				return driver.Grant{}, distlock.ErrNotHeld
			}
			if cur = heldBy(kvs[0]); cur.token != from {
				return driver.Grant{}, distlock.ErrNotHeld
			}
			if try >= 2 {
				return driver.Grant{}, b.unavailable("txn", errors.New("the holder's grant keeps changing"))
			}
			continue
		}
		rev := resp.Header.Revision
		g := &grant{token: to, value: val, createRev: cur.createRev, fence: fence, rev: rev, lease: l.id, secs: secs, ttl: l.ttl, fresh: l.fresh}
		if refresh {
			r := <-refreshed
			if r.err != nil {
				// to's lease may not last the TTL asked for, and the
				// caller will not learn of this grant: undo it rather than
				// leave it to expire. From's grant ended either way.
				b.transferred(k, from, g, cur.lease)
				uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
				ur, uerr := b.cli.Txn(uctx).
					If(clientv3.Compare(clientv3.Value(k), "=", val), clientv3.Compare(clientv3.CreateRevision(k), "=", cur.createRev)).
					Then(clientv3.OpDelete(k)).Commit()
				ucancel()
				if uerr == nil && ur.Succeeded {
					b.released(k, to, clientv3.NoLease, ur.Header.Revision)
				}
				return driver.Grant{}, b.unavailable("lease keep-alive", r.err)
			}
			g.ttl, g.fresh = r.ttl, r.at
		}
		b.transferred(k, from, g, cur.lease)
		return driver.Grant{TTL: time.Duration(g.ttl) * time.Second, Fence: uint64(fence)}, nil
	}
}

// transferred records the grant g that a transfer from token from made at
// g.rev; prevLease is the lease from's grant was on (a spare now, if it is
// ours and g did not keep it). From's loss watchers end without a loss.
func (b *Backend) transferred(k, from string, g *grant, prevLease clientv3.LeaseID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.grantedLocked(k, g, prevLease)
	h := b.hubs[k]
	if h == nil {
		return
	}
	for w := range h.losses {
		if w.token == from {
			w.released = true
		}
	}
	if h.known && g.rev > h.rev {
		h.rev, h.present, h.token, h.fence = g.rev, true, g.token, g.fence
		for w := range h.losses {
			checkLoss(h, w)
		}
	}
}

// flightKey names a transfer in progress: of key k to token to.
type flightKey struct{ k, to string }

// startFlight records a transfer of k to to in progress; the returned func
// ends it.
func (b *Backend) startFlight(k, to string) func() {
	ch := make(chan struct{})
	fk := flightKey{k, to}
	b.mu.Lock()
	prev := b.flights[fk]
	b.flights[fk] = ch
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		if b.flights[fk] == ch {
			if prev != nil {
				b.flights[fk] = prev
			} else {
				delete(b.flights, fk)
			}
		}
		b.mu.Unlock()
		close(ch)
	}
}

// awaitTransfer waits until no transfer of k to token runs here.
func (b *Backend) awaitTransfer(ctx context.Context, k, token string) error {
	for {
		b.mu.Lock()
		ch := b.flights[flightKey{k, token}]
		b.mu.Unlock()
		if ch == nil {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// reacquireKnown is a re-acquire by token of a grant this backend made for
// the same number of seconds: if a read shows the key still on that grant
// (same value, create revision and lease), a keep-alive resets its TTL —
// no raft write, where moving the key to a new lease would be one. A grant
// made or refreshed since the call started (a transfer to token landed
// meanwhile) needs neither: its TTL runs from after start. ok is false
// when the backend knows no such grant or the read shows another state:
// the caller goes the usual way.
func (b *Backend) reacquireKnown(ctx context.Context, k, token string, secs int64, start time.Time) (driver.Grant, bool, error) {
	b.mu.Lock()
	var g grant
	if p := b.grants[k]; p != nil && p.token == token && p.secs == secs && p.lease != clientv3.NoLease {
		g = *p
	}
	b.mu.Unlock()
	if g.token == "" {
		return driver.Grant{}, false, nil
	}
	if !g.fresh.Before(start) {
		b.mu.Lock()
		b.dequeueLocked(k, token)
		b.mu.Unlock()
		return driver.Grant{TTL: time.Duration(g.ttl) * time.Second, Fence: uint64(g.fence)}, true, nil
	}
	resp, err := b.cli.Get(ctx, k)
	if err != nil {
		return driver.Grant{}, false, b.unavailable("get", err)
	}
	if len(resp.Kvs) == 0 {
		return driver.Grant{}, false, nil
	}
	cur := heldBy(resp.Kvs[0])
	if cur.value != g.value || cur.createRev != g.createRev || cur.lease != g.lease {
		return driver.Grant{}, false, nil
	}
	t := time.Now()
	ttl, err := b.renew(ctx, g.lease)
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return driver.Grant{}, false, nil // expired just now: the key went with it
	case err != nil:
		return driver.Grant{}, false, b.unavailable("lease keep-alive", err)
	}
	b.refreshed(k, g.lease, t)
	b.mu.Lock()
	b.dequeueLocked(k, token)
	b.mu.Unlock()
	return driver.Grant{TTL: time.Duration(ttl) * time.Second, Fence: uint64(g.fence)}, true, nil
}
