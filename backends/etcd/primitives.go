package etcd

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var (
	_ driver.Primitives  = (*Backend)(nil)
	_ driver.ModeWaiter  = (*Backend)(nil)
	_ driver.ModeWatcher = (*Backend)(nil)
)

// The primitives follow etcd's own recipes (concurrency.Election, the
// contrib rwmutex): each key of a key space is a line of entries, one per
// token, at ModePrefix + token, each on a lease of its own, ordered by
// create revision. An entry holds when the entries created before it
// allow: a Read entry when none of them is a Write, a Write or Leader
// entry when there are none, a Permit entry when there are fewer than the
// limit. An entry's value is the kind's letter, the fence (empty: the
// entry's mod revision), ';', the limit (Permit), ';' and the published
// value (Leader).
var (
	kindLetter = [...]byte{driver.Read: 'r', driver.Write: 'w', driver.Permit: 'p', driver.Leader: 'l'}
	spaceName  = [...]string{driver.Read: "rw:", driver.Write: "rw:", driver.Permit: "sem:", driver.Leader: "elect:"}
)

// ModePrefix returns the etcd key prefix of key in kind's key space, for a
// backend with the given prefix: prefix, "rw:", "sem:" or "elect:" (Read
// and Write share "rw:"), then the key as in QueuePrefix. A plain lock's
// queue has a decimal digit where these have a letter, so no user key
// reaches them. Each entry under it is one holder or waiter, named
// ModePrefix + token; an operator deletes the prefix to revoke them all.
// It returns "" for an unknown kind.
func ModePrefix(prefix, key string, kind driver.Kind) string {
	if kind < driver.Read || kind > driver.Leader {
		return ""
	}
	return QueuePrefix(prefix+spaceName[kind], key)
}

type modeValue struct {
	kind  driver.Kind
	fence int64 // 0: the entry's mod revision
	limit int
	value string
}

func (v modeValue) String() string {
	s := string(kindLetter[v.kind])
	if v.fence > 0 {
		s += strconv.FormatInt(v.fence, 10)
	}
	s += ";"
	if v.limit > 0 {
		s += strconv.Itoa(v.limit)
	}
	return s + ";" + v.value
}

// parseMode reads an entry's value; ok is false for one this package did
// not write, which holds nothing.
func parseMode(kv *mvccpb.KeyValue) (v modeValue, ok bool) {
	f := strings.SplitN(string(kv.Value), ";", 3)
	if len(f) != 3 || f[0] == "" {
		return v, false
	}
	for k, c := range kindLetter {
		if c == f[0][0] && c != 0 {
			v.kind = driver.Kind(k)
		}
	}
	v.value = f[2]
	var err1, err2 error
	if f[0] = f[0][1:]; f[0] != "" {
		v.fence, err1 = strconv.ParseInt(f[0], 10, 64)
	}
	if f[1] != "" {
		v.limit, err2 = strconv.Atoi(f[1])
	}
	if v.fence <= 0 {
		v.fence = kv.ModRevision
	}
	return v, v.kind != 0 && err1 == nil && err2 == nil
}

// modeTurn is the turn of an entry in m's line (see queued): a Write or
// Leader waits for the entry just before it, a Read for the last Write
// before it, a Permit behind n ≥ limit entries for n-limit+1 deletions in
// the line (a deletion behind it wakes it early: it looks again).
func modeTurn(sp, entry string, m driver.Mode) turn {
	return turn{gkey: entry, before: lineOpts(),
		next: func(kvs []*mvccpb.KeyValue) (string, int) {
			switch {
			case m.Kind == driver.Permit && len(kvs) < m.Limit:
				return "", 0
			case m.Kind == driver.Permit:
				return sp, len(kvs) - m.Limit + 1
			case m.Kind != driver.Read && len(kvs) > 0:
				return string(kvs[len(kvs)-1].Key), 0
			}
			for i := len(kvs) - 1; i >= 0; i-- {
				if v, _ := parseMode(kvs[i]); v.kind == driver.Write {
					return string(kvs[i].Key), 0
				}
			}
			return "", 0
		}}
}

// space checks m's kind and returns its key space prefix.
func (b *Backend) space(key, token string, m driver.Mode) (string, error) {
	if m.Kind < driver.Read || m.Kind > driver.Leader {
		return "", distlock.ErrUnsupported
	}
	if token == "" {
		return "", distlock.ErrInvalidArgument
	}
	return ModePrefix(b.prefix, key, m.Kind), nil
}

// lineOpts read a line: its entries in create order.
func lineOpts() []clientv3.OpOption {
	return []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend)}
}

func allOf(sp string) clientv3.Op { return clientv3.OpGet(sp, lineOpts()...) }

// mismatch reports whether an entry of kvs holds a semaphore with a limit
// other than m's.
func mismatch(kvs []*mvccpb.KeyValue, m driver.Mode) bool {
	for _, kv := range kvs {
		if v, ok := parseMode(kv); m.Kind == driver.Permit && ok && v.limit != m.Limit {
			return true
		}
	}
	return false
}

// AcquireMode implements driver.Primitives. One transaction puts token's
// entry if the key space is empty, else reads its entries; if a new entry
// would hold, a second puts it provided no entry was created since the
// read — for Read, provided no Write entry exists, whatever readers come —
// else it reads again, at most three times. A refused call writes
// nothing: the order of waiting writers is kept by AcquireModeWait's
// entries, so a refused Write leaves no mark. A re-acquire by a holder in
// the same kind resets its TTL as ExtendMode does (a leader publishes its
// new value); one in another kind, or by a token still waiting, is
// ErrNotAcquired.
func (b *Backend) AcquireMode(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode) (driver.Grant, error) {
	return b.acquireMode(ctx, key, token, ttl, m, false)
}

// AcquireModeWait implements driver.ModeWaiter: one transaction puts
// token's entry at the end of the line and reads the line; until the
// entry's turn comes it watches the deletion of the entry it waits for
// (as AcquireWait does for plain locks), keeping its lease alive. The
// grant then writes the entry once, so that its fence is above every
// earlier grant's. When ctx ends, the entry's lease is revoked: nothing
// is left behind, and the error matches both ctx.Err() and, if the entry
// was waiting, distlock.ErrNotAcquired.
func (b *Backend) AcquireModeWait(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode) (driver.Grant, error) {
	return b.acquireMode(ctx, key, token, ttl, m, true)
}

func (b *Backend) acquireMode(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode, wait bool) (driver.Grant, error) {
	sp, err := b.space(key, token, m)
	if err == nil && m.Kind == driver.Permit && m.Limit < 1 {
		err = distlock.ErrInvalidArgument
	}
	if err != nil {
		return driver.Grant{}, err
	}
	entry, secs, t := sp+token, seconds(ttl), modeTurn(sp, sp+token, m)
	if m.Kind != driver.Permit {
		m.Limit = 0
	}
	if m.Kind != driver.Leader {
		m.Value = ""
	}
	rctx, cancel := b.reqCtx(ctx)
	defer cancel()
	l, refreshed, err := b.leaseFor(rctx, secs)
	if err != nil {
		return driver.Grant{}, err
	}
	val := modeValue{kind: m.Kind, limit: m.Limit, value: m.Value}.String()
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(sp), "=", 0).WithPrefix()} // an empty line
	if wait {
		cmps = []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(entry), "=", 0)}
	}
	for try := 0; ; try++ {
		resp, err := b.cli.Txn(rctx).If(cmps...).Then(clientv3.OpPut(entry, val, clientv3.WithLease(l.id)), allOf(sp)).Else(allOf(sp)).Commit()
		if refreshed != nil && try == 0 && errors.Is(err, rpctypes.ErrLeaseNotFound) {
			if l, refreshed, err = b.leaseFor(rctx, secs); err != nil { // the spare lease is gone after all
				return driver.Grant{}, err
			}
			continue
		}
		if err != nil {
			b.abandon(l) // the put may land, now or later, for a call that has ended
			return driver.Grant{}, b.fail(ctx, "txn", err)
		}
		kvs := resp.Responses[len(resp.Responses)-1].GetResponseRange().GetKvs()
		before, own := kvs, (*mvccpb.KeyValue)(nil)
		for i, kv := range kvs {
			if string(kv.Key) == entry {
				before, own = kvs[:i], kv
				break
			}
		}
		switch {
		case own == nil: // a refused try: would a new entry hold?
			if mismatch(before, m) {
				b.putSpare(secs, l)
				return driver.Grant{}, distlock.ErrLimitMismatch
			}
			if k, _ := t.next(before); k != "" || try >= 2 {
				b.putSpare(secs, l)
				return driver.Grant{}, distlock.ErrNotAcquired
			}
			cmps = []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(sp), "<", resp.Header.Revision+1).WithPrefix()} // nothing new since
			if m.Kind == driver.Read && len(before) > 0 {                                                                  // still no Write entry (readers may come), nor token's
				cmps = []clientv3.Cmp{clientv3.Compare(clientv3.Value(sp), "<", "w").WithPrefix(), clientv3.Compare(clientv3.CreateRevision(entry), "=", 0)}
			}
			continue
		case !resp.Succeeded: // token has an entry already
			b.putSpare(secs, l)
			return b.reacquireMode(rctx, own, before, token, secs, m, t)
		case mismatch(before, m):
			b.abandon(l)
			return driver.Grant{}, distlock.ErrLimitMismatch
		}
		if pred, need := t.next(before); pred != "" {
			g, err := b.queued(ctx, sp, entry, own.CreateRevision, pred, need, token, l, secs, t)
			if err != nil {
				b.abandon(l)
			}
			if c := ctx.Err(); c != nil && errors.Is(err, c) { // it ended waiting behind holders
				err = fmt.Errorf("%w: %w", distlock.ErrNotAcquired, err)
			}
			return g, err
		}
		if err := b.awaitRefresh(ctx, refreshed, &l); err != nil {
			return driver.Grant{}, err
		}
		b.granted(entry, &grant{token: token, entry: entry, value: string(own.Value), createRev: own.CreateRevision, fence: own.ModRevision,
			rev: resp.Header.Revision, lease: l.id, secs: secs, ttl: l.ttl, fresh: l.fresh}, 0)
		return driver.Grant{TTL: time.Duration(l.ttl) * time.Second, Fence: uint64(own.ModRevision)}, nil
	}
}

// reacquireMode resets the TTL of own, token's entry behind before, if it
// holds in m's kind (and publishes a leader's new value).
func (b *Backend) reacquireMode(ctx context.Context, own *mvccpb.KeyValue, before []*mvccpb.KeyValue, token string, secs int64, m driver.Mode, t turn) (driver.Grant, error) {
	v, ok := parseMode(own)
	switch k, _ := t.next(before); {
	case !ok || v.kind != m.Kind || k != "":
		return driver.Grant{}, distlock.ErrNotAcquired
	case v.limit != m.Limit:
		return driver.Grant{}, distlock.ErrLimitMismatch
	}
	force := v.value != m.Value
	v.value = m.Value
	g, err := b.extendEntry(ctx, string(own.Key), own, token, secs, v.fence, v.String(), force)
	if errors.Is(err, distlock.ErrNotHeld) {
		err = distlock.ErrNotAcquired // it expired just now
	}
	return g, err
}

// ExtendMode implements driver.Primitives: a read of token's entry and a
// keep-alive of its lease (no raft write), or a move to a longer lease as
// Extend does. It never re-creates an entry.
func (b *Backend) ExtendMode(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode) (driver.Grant, error) {
	sp, err := b.space(key, token, m)
	if err != nil {
		return driver.Grant{}, err
	}
	ctx, cancel := b.reqCtx(ctx)
	defer cancel()
	resp, err := b.cli.Get(ctx, sp+token)
	if err != nil {
		return driver.Grant{}, b.unavailable("get", err)
	}
	if len(resp.Kvs) == 0 {
		return driver.Grant{}, distlock.ErrNotHeld
	}
	v, ok := parseMode(resp.Kvs[0])
	if !ok || v.kind != m.Kind {
		return driver.Grant{}, distlock.ErrNotHeld
	}
	return b.extendEntry(ctx, sp+token, resp.Kvs[0], token, seconds(ttl), v.fence, v.String(), false)
}

// ReleaseMode implements driver.Primitives with one transaction that
// deletes token's entry if it is of m's kind (its value starts with the
// kind's letter: it sorts above that letter alone and below the next).
// An entry that was still waiting (a waiting writer) is deleted too, with
// ErrNotHeld. The lease, keyless now, is kept for the next grant when it
// is ours.
func (b *Backend) ReleaseMode(ctx context.Context, key, token string, m driver.Mode) error {
	sp, err := b.space(key, token, m)
	if err != nil {
		return err
	}
	ctx, cancel := b.reqCtx(ctx)
	defer cancel()
	entry, c := sp+token, kindLetter[m.Kind]
	resp, err := b.cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(entry), ">", string(c)), clientv3.Compare(clientv3.Value(entry), "<", string(c+1))).
		Then(allOf(sp), clientv3.OpDelete(entry)).Commit()
	if err != nil {
		return b.unavailable("txn", err)
	}
	if !resp.Succeeded {
		return distlock.ErrNotHeld
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	for i, kv := range kvs {
		if string(kv.Key) == entry {
			v, _ := parseMode(kv)
			if k, _ := modeTurn(sp, entry, driver.Mode{Kind: m.Kind, Limit: v.limit}).next(kvs[:i]); k != "" {
				return distlock.ErrNotHeld
			}
			b.released(entry, token, clientv3.LeaseID(kv.Lease))
		}
	}
	return nil
}

// InspectMode implements driver.Primitives with one read of the key
// space and, for a writer or leader, a TimeToLive of its lease.
func (b *Backend) InspectMode(ctx context.Context, key string, m driver.Mode) (driver.ModeInfo, error) {
	sp, err := b.space(key, "-", m)
	if err != nil {
		return driver.ModeInfo{}, err
	}
	ctx, cancel := b.reqCtx(ctx)
	defer cancel()
	resp, err := b.cli.Do(ctx, allOf(sp))
	if err != nil {
		return driver.ModeInfo{}, b.unavailable("get", err)
	}
	var info driver.ModeInfo
	kvs := resp.Get().Kvs
	for i, kv := range kvs {
		v, ok := parseMode(kv)
		if !ok || i > 0 && (v.kind == driver.Write || v.kind == driver.Leader || v.kind == driver.Permit && i >= info.Limit) {
			break
		}
		info.Holders++
		switch v.kind {
		case driver.Permit:
			info.Limit = v.limit
		case driver.Write, driver.Leader:
			info.Exclusive, info.Token, info.Value, info.Fence = true, strings.TrimPrefix(string(kv.Key), sp), v.value, uint64(v.fence)
		}
		if info.Exclusive {
			tr, err := b.cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease))
			if err != nil {
				return driver.ModeInfo{}, b.unavailable("lease time-to-live", err)
			}
			if tr.TTL < 0 { // expired: the entry is going with it
				return driver.ModeInfo{}, nil
			}
			info.TTL = time.Duration(max(tr.TTL, 1)) * time.Second
			break
		}
	}
	return info, nil
}

// WatchMode implements driver.ModeWatcher with a watch on the key space:
// changed runs on every event, and once more whenever the watch broke and
// starts again (from the revision it had reached, so nothing is missed
// while the cluster answers). ctx bounds the setup only; the watch lasts
// until stop or Close.
func (b *Backend) WatchMode(ctx context.Context, key string, m driver.Mode, changed func()) (stop func(), err error) {
	sp, err := b.space(key, "-", m)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, distlock.ErrClosed
	}
	b.wg.Add(1)
	b.mu.Unlock()
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(b.ctx))
	watch := func(rev int64) clientv3.WatchChan {
		return b.cli.Watch(wctx, sp, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithCreatedNotify())
	}
	wch, done := watch(0), make(chan struct{})
	var rev int64
	select { // the watch is in place before WatchMode returns
	case wr, ok := <-wch:
		if ok && wr.Err() == nil {
			rev = wr.Header.Revision + 1
		}
	case <-ctx.Done():
	}
	go func() {
		defer b.wg.Done()
		defer close(done)
		for wctx.Err() == nil {
			for wr := range wch {
				switch n := len(wr.Events); {
				case n > 0:
					rev = wr.Events[n-1].Kv.ModRevision + 1
					changed()
				case wr.CompactRevision != 0:
					rev = 0 // from now on; changed runs below
				case wr.Err() == nil:
					rev = max(rev, wr.Header.Revision+1)
				}
			}
			if wctx.Err() != nil {
				return
			}
			changed() // broken: something may have changed meanwhile
			select {
			case <-wctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			wch = watch(rev)
		}
	}()
	if ctx.Err() != nil {
		cancel()
		<-done
		return nil, ctx.Err()
	}
	return func() { cancel(); <-done }, nil
}
