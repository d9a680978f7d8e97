package etcd

import (
	"context"
	"fmt"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The line: waiters of different backends (processes) take turns through
// etcd. A backend that has waiters for a key puts one entry for itself in
// the key's line (a key under the line prefix, on the backend's session
// lease, so that it vanishes with a crashed process); only the backend
// whose entry is oldest sends acquire transactions when the key is
// released, the others read and wait. The acquire transaction enforces the
// order — a newcomer's needs an empty line, a waiting backend's needs its
// entry first — and moves the backend's entry to the back of the line in
// the same write. The entry stays there while the key is held by a grant
// of this backend (a Manager's next waiter takes it over when it starts
// waiting here, so hand-offs inside one process do not leave and re-join
// the line), and leaves with the release, in the same write, if nobody here
// waits by then. A backend that finds the key free for lineGrace while
// another entry stays first goes ahead without the check (that entry's
// owner may be stuck), so a stale entry costs a pause, never a deadlock.

// lineGrace is how long the first in line has to take a free key before
// the others stop deferring to it.
const lineGrace = 200 * time.Millisecond

// headRecheck is how often a waiting backend that is not first re-reads
// the line when its waiters poll.
const headRecheck = 100 * time.Millisecond

// linePrefix returns the prefix of the lines for lock keys under prefix:
// prefix with its last byte incremented, so that no lock key is ever in a
// line's range and no line key is ever a lock key. An empty prefix (or one
// ending in 0xff) has no room for lines: waiters then do not queue across
// backends.
func linePrefix(prefix string) string {
	n := len(prefix)
	if n == 0 || prefix[n-1] == 0xff {
		return ""
	}
	return prefix[:n-1] + string([]byte{prefix[n-1] + 1}) + "line/"
}

// lineOf returns the range prefix of k's line (k is the etcd key of the
// lock). The length prefix keeps the ranges of different keys apart.
func (b *Backend) lineOf(k string) string {
	return b.lprefix + strconv.Itoa(len(k)) + ":" + k + "/"
}

// lineState is a hub's view of its key's line.
type lineState struct {
	entry     string // this backend's entry, "" if none
	rev       int64  // its create revision
	first     bool   // the entry was first when last read
	stale     bool   // the key was released since: re-read before trying
	readAt    time.Time
	freeSince time.Time // when the key was first seen free with someone else first
	freeFirst string
	// idle: nobody here waits any more, but the key is held, so the entry
	// stays in case a waiter here comes back (see idleLineLocked).
	idle   bool
	linger *time.Timer // ends an idle entry while another backend holds the key
}

// lineLinger is how long a backend's entry stays in a key's line after its
// last waiter here stopped waiting while another backend holds the key.
const lineLinger = 200 * time.Millisecond

// idleLineLocked is called when the last waiter of h stops waiting. Its
// entry stays in the line while the key is held: a Manager hands a key from
// one of its goroutines to the next (Transfer), and only the first of its
// waiters waits here; when that one gets the key its subscription ends,
// and the next one subscribes a moment later and takes the entry over.
// Leaving and joining again would cost two raft writes per hand-off around
// a transfer that costs one. While a grant of this backend holds the key
// the entry stays until the release takes it out in the same write (or
// the key is seen free, or the hub ends); while another backend holds it,
// for lineLinger. A stale entry first in the line of a free key would make
// other processes wait, so a free key ends it at once.
func (b *Backend) idleLineLocked(h *hub) {
	name := h.line.entry
	if name == "" || b.closed || !h.known || !h.present {
		b.leaveLineLocked(h)
		return
	}
	h.line.idle = true
	if h.line.linger != nil {
		h.line.linger.Stop()
		h.line.linger = nil
	}
	if g := b.grants[h.key]; g != nil && g.token == h.token && g.fence == h.fence {
		return
	}
	h.line.linger = time.AfterFunc(lineLinger, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if h.line.idle && h.line.entry == name && len(h.subs) == 0 {
			b.leaveLineLocked(h)
		}
	})
}

// adoptLineLocked: a waiter subscribed; a lingering entry is its own.
func (b *Backend) adoptLineLocked(h *hub) {
	if h.line.idle {
		h.line.idle = false
		if h.line.linger != nil {
			h.line.linger.Stop()
		}
	}
}

// leaveLineLocked takes this backend's entry out of h's line.
func (b *Backend) leaveLineLocked(h *hub) {
	if h.line.linger != nil {
		h.line.linger.Stop()
	}
	b.leaveLocked(h.line.entry)
	h.line = lineState{}
}

// freedLocked: h's key was seen free: a lingering entry leaves at once.
func (b *Backend) freedLocked(h *hub) {
	if h.line.idle {
		b.leaveLineLocked(h)
	}
}

// takeIdleEntry returns this backend's lingering entry in k's line, if
// any, and forgets it: the caller deletes it.
func (b *Backend) takeIdleEntry(k string) string {
	if b.lprefix == "" {
		return ""
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.hubs[k]
	if h == nil || !h.line.idle {
		return ""
	}
	name := h.line.entry
	if h.line.linger != nil {
		h.line.linger.Stop()
	}
	h.line = lineState{}
	return name
}

// session returns the backend's session lease, granting it on first use
// and keeping it alive until Close.
func (b *Backend) session(ctx context.Context) (clientv3.LeaseID, error) {
	b.sessMu.Lock()
	defer b.sessMu.Unlock()
	b.mu.Lock()
	id, closed := b.sess, b.closed
	b.mu.Unlock()
	if closed {
		return 0, context.Canceled
	}
	if id != clientv3.NoLease {
		return id, nil
	}
	resp, err := b.cli.Grant(ctx, seconds(max(b.minTTL, 3*time.Second)))
	if err != nil {
		return 0, err
	}
	ch, err := b.cli.KeepAlive(b.ctx, resp.ID)
	if err != nil {
		return 0, err
	}
	b.mu.Lock()
	b.sess = resp.ID
	b.mu.Unlock()
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for range ch {
		}
		// The lease is gone (or the backend closed): so are the entries.
		b.mu.Lock()
		if b.sess == resp.ID {
			b.sess = clientv3.NoLease
			for _, h := range b.hubs {
				if h.line.linger != nil {
					h.line.linger.Stop()
				}
				h.line = lineState{}
			}
		}
		b.mu.Unlock()
	}()
	return resp.ID, nil
}

// revokeSession ends the session lease id at Close, so that this
// backend's entries leave the lines at once instead of at its expiry.
func (b *Backend) revokeSession(id clientv3.LeaseID) {
	if id != clientv3.NoLease {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, _ = b.cli.Revoke(ctx, id)
		cancel()
	}
}

// readLine joins k's line if this backend has no entry yet (join), reads
// who is first and whether the key is free, and reports whether an attempt
// of token should go ahead.
func (b *Backend) readLine(ctx context.Context, k, token string, join bool) (bool, error) {
	lk := b.lineOf(k)
	var ops []clientv3.Op
	var name, mine string // the entry joining; the entry to check
	var sid clientv3.LeaseID
	if join {
		var err error
		if sid, err = b.session(ctx); err != nil {
			return false, err
		}
		b.mu.Lock()
		b.seq++
		name = lk + fmt.Sprintf("%016x/%d", int64(sid), b.seq)
		b.mu.Unlock()
		ops = append(ops, clientv3.OpPut(name, "", clientv3.WithLease(sid)))
	} else {
		// Check that the entry is still there: one gone without this
		// backend's knowing (an acquire cut off mid-request that moved it,
		// an operator) would fail every acquire's comparison.
		b.mu.Lock()
		if h := b.hubs[k]; h != nil {
			mine = h.line.entry
		}
		b.mu.Unlock()
		if mine != "" {
			ops = append(ops, clientv3.OpGet(mine, clientv3.WithCountOnly()))
		}
	}
	ops = append(ops,
		clientv3.OpGet(k),
		clientv3.OpGet(lk, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1), clientv3.WithKeysOnly()),
	)
	var resp *clientv3.TxnResponse
	var err error
	if join {
		resp, err = b.joinTxn(ctx, name, sid, ops)
		join = err == nil && resp.Succeeded
	} else {
		resp, err = b.cli.Txn(ctx).Then(ops...).Commit()
	}
	if err != nil {
		return false, err
	}
	rs := resp.Responses[len(resp.Responses)-2:]
	lock, line := rs[0].GetResponseRange(), rs[1].GetResponseRange()
	first := ""
	if len(line.Kvs) > 0 {
		first = string(line.Kvs[0].Key)
	}
	now := time.Now()

	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.hubs[k]
	if h == nil || len(h.subs) == 0 {
		if join { // nobody waits here any more
			b.leaveLocked(name)
		}
		return true, nil
	}
	l := &h.line
	if join {
		if l.entry != "" { // another goroutine joined meanwhile
			b.leaveLocked(name)
		} else {
			l.entry, l.rev = name, resp.Header.Revision
		}
	} else if mine != "" && l.entry == mine && resp.Responses[0].GetResponseRange().GetCount() == 0 {
		// The entry is gone: join again at the next attempt.
		if l.linger != nil {
			l.linger.Stop()
		}
		*l = lineState{}
		return false, nil
	}
	l.readAt, l.stale = now, false
	l.first = first == "" || first == l.entry
	if len(lock.Kvs) > 0 {
		l.freeSince = time.Time{}
		return tokenOf(lock.Kvs[0].Value) == token, nil // the holder may re-acquire
	}
	if l.first {
		return true, nil
	}
	if l.freeSince.IsZero() || l.freeFirst != first {
		l.freeSince, l.freeFirst = now, first
	}
	return now.Sub(l.freeSince) > lineGrace, nil
}

// peek reads k and its line: an attempt of token goes ahead only if the
// key is free and nobody waits (or token holds the key).
func (b *Backend) peek(ctx context.Context, k, token string) (bool, error) {
	lk := b.lineOf(k)
	resp, err := b.cli.Txn(ctx).Then(
		clientv3.OpGet(k),
		clientv3.OpGet(lk, clientv3.WithPrefix(), clientv3.WithCountOnly()),
	).Commit()
	if err != nil {
		return false, err
	}
	lock, line := resp.Responses[0].GetResponseRange(), resp.Responses[1].GetResponseRange()
	if len(lock.Kvs) > 0 {
		return tokenOf(lock.Kvs[0].Value) == token, nil
	}
	return line.Count == 0, nil
}

// leaveLocked deletes a line entry in the background. Called with b.mu
// held.
func (b *Backend) leaveLocked(name string) {
	if name == "" || b.closed {
		return // Close revokes the session, and the entries with it
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		// A few tries: an entry left behind would make the others wait
		// lineGrace at each turn until the session lease ends.
		for try := range 3 {
			ctx, cancel := context.WithTimeout(b.ctx, 2*time.Second)
			_, err := b.cli.Delete(ctx, name)
			cancel()
			if err == nil || b.ctx.Err() != nil {
				return
			}
			select {
			case <-b.ctx.Done():
				return
			case <-time.After(time.Duration(try+1) * 100 * time.Millisecond):
			}
		}
	}()
}

// lineTxn returns what an acquire transaction of k checks and does about
// the line: the key's line must be empty, or this backend's entry first in
// it (unless the first has let the key lie free for lineGrace); the entry
// is removed, or moved to the back when other waiters of this backend
// remain.
func (b *Backend) lineTxn(k string) (cmps []clientv3.Cmp, ops []clientv3.Op, entry, next string) {
	if b.lprefix == "" {
		return nil, nil, "", ""
	}
	lk := b.lineOf(k)
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.hubs[k]
	if h == nil || h.line.entry == "" {
		return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(lk), "=", 0).WithPrefix()}, nil, "", ""
	}
	l := &h.line
	if l.first || l.freeSince.IsZero() || time.Since(l.freeSince) <= lineGrace {
		cmps = append(cmps,
			clientv3.Compare(clientv3.CreateRevision(l.entry), "=", l.rev),
			clientv3.Compare(clientv3.CreateRevision(lk), ">", l.rev-1).WithPrefix())
	}
	ops = append(ops, clientv3.OpDelete(l.entry))
	// Back to the end of the line rather than out of it: a Manager has only
	// its first waiter wait here, so whether others of it still wait shows
	// only when the next one subscribes, which takes the entry over (see
	// idleLineLocked). If none does, the entry leaves with the release or
	// after lineLinger.
	if len(h.subs) > 0 && b.sess != clientv3.NoLease {
		b.seq++
		next = lk + fmt.Sprintf("%016x/%d", int64(b.sess), b.seq)
		ops = append(ops, clientv3.OpPut(next, "", clientv3.WithLease(b.sess)))
	}
	return cmps, ops, l.entry, next
}

// movedLocked records where an acquire at revision rev left this
// backend's entry in k's line. Called with b.mu held.
func (b *Backend) movedLocked(k, from, to string, rev int64) {
	h := b.hubs[k]
	if h == nil || h.line.entry != from {
		// The hub has ended or forgot from meanwhile: nobody here will
		// take the new entry over, and it must not stay in the line.
		b.leaveLocked(to)
		return
	}
	if to == "" {
		if h.line.linger != nil {
			h.line.linger.Stop()
		}
		h.line = lineState{}
		return
	}
	h.line.entry, h.line.rev, h.line.first = to, rev, false
}
