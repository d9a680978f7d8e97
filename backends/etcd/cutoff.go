package etcd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Calls cut off mid-request. A write whose call ends (its context, or a
// broken connection) before the answer arrives may still be applied by
// the server — at once, or after a release the caller's side sent later.
// An acquire that lands for nobody would hold the key for its whole TTL;
// a line entry that lands for nobody would make every other process wait
// (a try-once Acquire never gets past it) until this backend closes,
// since entries live on the session lease. So nothing is left to chance:
//
//   - The acquire transaction is guarded by a stop mark: a key unique to
//     the attempt, on the attempt's own lease, that must not exist. When
//     the call ends without the outcome, undoCut writes the mark (after
//     which the transaction cannot apply) and in the same transaction
//     reads what it did, then undoes it: a key it created goes with its
//     lease (revoked: nothing else is on it), a line entry it wrote leaves
//     the line. Marks live in their own range beside the lines, out of
//     reach of lock keys.
//   - A join of the line is sent on a context of its own, so the caller
//     ending does not leave its outcome unknown: the entry is recorded,
//     or deleted if nobody waits for it any more.

// undoTries and undoTimeout bound the clean-up of one cut-off call.
const (
	undoTries   = 3
	undoTimeout = 2 * time.Second
)

// stopPrefix returns where stop marks live: beside the lines, "" if the
// lock prefix has no room for them (as for lines).
func stopPrefix(prefix string) string {
	lp := linePrefix(prefix)
	if lp == "" {
		return ""
	}
	return lp[:len(lp)-len("line/")] + "stop/"
}

// stopMark returns a fresh stop mark for an acquire on lease, "" if there
// is no room for marks.
func (b *Backend) stopMark(lease clientv3.LeaseID) string {
	if b.sprefix == "" {
		return ""
	}
	b.mu.Lock()
	b.seq++
	n := b.seq
	b.mu.Unlock()
	return b.sprefix + fmt.Sprintf("%016x/%d", int64(lease), n)
}

// cutAttempt is an acquire transaction whose outcome its call did not
// learn: it puts k = value on lease (which nothing else uses) unless the
// mark stop exists, and moves this backend's line entry from entry to
// next.
type cutAttempt struct {
	k, value    string
	lease       clientv3.LeaseID
	stop        string
	entry, next string
}

// undoCut stops and undoes c in the background. Close waits for it.
func (b *Backend) undoCut(c cutAttempt) {
	b.background(func() {
		// The first try even while Close waits; more only if not closing.
		for try := range undoTries {
			if err := b.undoCutOnce(c); err == nil || b.ctx.Err() != nil {
				return
			}
			time.Sleep(time.Duration(try+1) * 50 * time.Millisecond)
		}
	})
}

// background runs f on a goroutine that Close waits for; not once closed.
func (b *Backend) background(f func()) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f()
	}()
	return true
}

func (b *Backend) undoCutOnce(c cutAttempt) error {
	// Not b.ctx: Close waits for the clean-up rather than abandon it.
	ctx, cancel := context.WithTimeout(context.Background(), undoTimeout)
	defer cancel()
	var ops []clientv3.Op
	if c.stop != "" {
		ops = append(ops, clientv3.OpPut(c.stop, "", clientv3.WithLease(c.lease)))
	}
	ops = append(ops, clientv3.OpGet(c.k))
	if c.next != "" {
		ops = append(ops, clientv3.OpGet(c.next, clientv3.WithKeysOnly()))
	}
	resp, err := b.cli.Txn(ctx).Then(ops...).Commit()
	var kv, next *mvccpb.KeyValue
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		// The lease is gone (expired, or revoked by an earlier try): the
		// transaction cannot apply any more, and a key it created went
		// with the lease. Only a line entry it wrote may be left.
		if c.next != "" {
			gr, err := b.cli.Get(ctx, c.next, clientv3.WithKeysOnly())
			if err != nil {
				return err
			}
			if len(gr.Kvs) > 0 {
				next = gr.Kvs[0]
			}
		}
	case err != nil:
		return err
	default:
		rs := resp.Responses
		if c.stop != "" {
			rs = rs[1:]
		}
		if kvs := rs[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			kv = kvs[0]
		}
		if c.next != "" {
			if kvs := rs[1].GetResponseRange().GetKvs(); len(kvs) > 0 {
				next = kvs[0]
			}
		}
	}

	// What the transaction did, if it applied: it created the key (still
	// unchanged), or moved the key of a holder of the same token to the
	// lease (a re-acquire), or it wrote the next entry (only it does).
	created := kv != nil && clientv3.LeaseID(kv.Lease) == c.lease && string(kv.Value) == c.value && kv.CreateRevision == kv.ModRevision
	moved := kv != nil && clientv3.LeaseID(kv.Lease) == c.lease && !created
	switch {
	case next != nil: // it applied, and moved this backend's entry to next
		b.mu.Lock()
		b.movedLocked(c.k, c.entry, c.next, next.CreateRevision)
		if h := b.hubs[c.k]; h != nil && h.line.entry == c.next && len(h.subs) == 0 {
			b.leaveLineLocked(h)
		}
		b.mu.Unlock()
	case created && c.entry != "" && c.next == "": // it applied, and took the entry out
		b.mu.Lock()
		b.movedLocked(c.k, c.entry, "", kv.ModRevision)
		b.mu.Unlock()
	}
	if err != nil { // the lease is gone already
		return nil
	}
	if moved {
		// A holder's re-acquire applied: the key is its holder's, on this
		// lease now. The mark is no longer needed (a transaction applies
		// once).
		if c.stop != "" {
			_, err := b.cli.Delete(ctx, c.stop)
			return err
		}
		return nil
	}
	// Nothing of a holder's is on the lease: revoking it deletes the key
	// the transaction created, if it did, and the mark.
	if _, err := b.cli.Revoke(ctx, c.lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return err
	}
	return nil
}

// joinTxn sends the transaction ops, whose first op puts name into a
// key's line on the session lease sid (the others read), on a context of
// its own bounded by the request timeout, so that the caller's ending does
// not leave its outcome unknown: if the caller has gone by the time it
// lands, the entry leaves the line. Only a failed request (a broken
// connection, the timeout) leaves it unknown; then undoJoin stops it with a
// mark, as undoCut does an acquire's. The response did not join (not
// Succeeded, with the reads only) if the mark exists already.
func (b *Backend) joinTxn(ctx context.Context, name string, sid clientv3.LeaseID, ops []clientv3.Op) (*clientv3.TxnResponse, error) {
	type result struct {
		resp *clientv3.TxnResponse
		err  error
	}
	var (
		mu   sync.Mutex
		gone bool
		ch   = make(chan result, 1)
		stop = b.stopMark(sid)
	)
	var cmps []clientv3.Cmp
	if stop != "" {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(stop), "=", 0))
	}
	started := b.background(func() {
		jctx, cancel := b.reqCtx(context.WithoutCancel(ctx))
		resp, err := b.cli.Txn(jctx).If(cmps...).Then(ops...).Else(ops[1:]...).Commit()
		cancel()
		mu.Lock()
		left := gone
		ch <- result{resp, err}
		mu.Unlock()
		switch {
		case err != nil:
			b.undoJoin(name, sid, stop)
		case left && resp.Succeeded:
			b.mu.Lock()
			b.leaveLocked(name)
			b.mu.Unlock()
		}
	})
	if !started {
		return nil, context.Canceled // closed
	}
	select {
	case r := <-ch:
		return r.resp, r.err
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		select {
		case r := <-ch: // it answered just now
			return r.resp, r.err
		default:
		}
		gone = true
		return nil, ctx.Err()
	}
}

// undoJoin stops a join of the line whose outcome is unknown (see
// joinTxn), and takes its entry out if it landed. Without room for marks
// it deletes the entry (a join that lands later stays until the session
// ends). Called on a background goroutine.
func (b *Backend) undoJoin(name string, sid clientv3.LeaseID, stop string) {
	for try := range undoTries {
		ctx, cancel := context.WithTimeout(context.Background(), undoTimeout)
		var err error
		if stop == "" {
			_, err = b.cli.Delete(ctx, name)
		} else {
			var resp *clientv3.TxnResponse
			resp, err = b.cli.Txn(ctx).Then(clientv3.OpPut(stop, "", clientv3.WithLease(sid)), clientv3.OpGet(name, clientv3.WithCountOnly())).Commit()
			switch {
			case errors.Is(err, rpctypes.ErrLeaseNotFound):
				err = nil // the session ended: its entries went with it
			case err == nil && resp.Responses[1].GetResponseRange().GetCount() > 0:
				// It landed (once): the entry and the mark go.
				_, err = b.cli.Txn(ctx).Then(clientv3.OpDelete(name), clientv3.OpDelete(stop)).Commit()
			}
			// Otherwise the mark stays with the session lease: the join
			// may still reach the server, and must not apply.
		}
		cancel()
		if err == nil || b.ctx.Err() != nil {
			return
		}
		time.Sleep(time.Duration(try+1) * 50 * time.Millisecond)
	}
}
