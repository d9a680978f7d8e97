package etcd

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/distlock/distlock"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// hub is the one watch this backend keeps on a key while anyone here waits
// for it (SubscribeRelease) or holds it under a Lock handle (WatchLoss). It
// follows the key's state from the watch's events and fans them out in
// process. Waiters of this backend take turns (queue): a deletion wakes
// them all, but only the first in line sends a transaction; the others
// are answered ErrNotAcquired without a request, so a release does not set
// off a herd of transactions, and a holder that releases and acquires
// again goes to the back of the line. All fields are guarded by Backend.mu.
type hub struct {
	key    string
	subs   []chan struct{} // subscriptions, oldest first
	queue  []*waiter       // tokens waiting here, in turn order
	line   lineState       // this backend's place in the line across backends
	losses map[*lossWatch]struct{}
	refs   int
	ready  chan struct{} // closed once the watch runs and the state is known
	isRdy  bool
	cancel context.CancelFunc
	idle   *time.Timer // ends the watch once unused for hubLinger
	waited time.Time   // when a waiter here last subscribed

	known   bool // the fields below describe the key at revision rev
	present bool
	token   string // "" if present with a value not written by this package
	fence   int64
	rev     int64
}

// waiter is a token that failed to acquire the key through this backend
// while others waited here, and when it last tried.
type waiter struct {
	token string
	seen  time.Time
}

// staleWaiter is how long a waiter may go without trying before it loses
// its turn: the Manager polls at least every 100ms by default, and it tries
// at once when woken, so a waiter this quiet has most likely given up.
const staleWaiter = 200 * time.Millisecond

// admission is what Acquire does before its transaction.
type admission int

const (
	admitTxn   admission = iota // send the transaction
	admitCheck                  // read first: the watch says another token holds the key
	admitWait                   // not this token's turn: ErrNotAcquired, nothing sent
	admitJoin                   // join the line across backends, then see
	admitLine                   // read the line across backends, then see
	admitPeek                   // read the key and its line: waiters here had to queue lately
)

// admit decides how an attempt of token on k proceeds, and queues token
// when others wait for k here.
func (b *Backend) admit(k, token string) admission {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.hubs[k]
	if h == nil {
		return admitTxn
	}
	held := h.known && h.present
	if held && h.token == token {
		return admitTxn // the holder re-acquiring
	}
	if len(h.subs) == 0 {
		h.queue = nil
		switch {
		case b.lprefix != "" && time.Since(h.waited) < hubLinger:
			return admitPeek
		case held:
			return admitCheck
		}
		return admitTxn
	}
	now := time.Now()
	var me *waiter
	for _, w := range h.queue {
		if w.token == token {
			me = w
			break
		}
	}
	if me == nil {
		if len(h.queue) >= 64 { // drop the stale ones anywhere in the line
			h.queue = slices.DeleteFunc(h.queue, func(w *waiter) bool { return now.Sub(w.seen) > staleWaiter })
		}
		me = &waiter{token: token}
		h.queue = append(h.queue, me)
	}
	me.seen = now
	for h.queue[0] != me && now.Sub(h.queue[0].seen) > staleWaiter {
		h.queue = h.queue[1:]
	}
	if h.queue[0] != me {
		return admitWait
	}
	if b.lprefix != "" {
		l := &h.line
		// Once first, an entry stays first until an acquire removes it:
		// entries that join later sort after it.
		switch {
		case l.entry == "":
			return admitJoin
		case l.first:
		case l.stale || now.Sub(l.readAt) > headRecheck:
			return admitLine
		default:
			return admitWait
		}
	}
	if held {
		return admitCheck
	}
	return admitTxn
}

// dequeue removes token from k's line once it holds the lock.
func (b *Backend) dequeueLocked(k, token string) {
	if h := b.hubs[k]; h != nil {
		h.queue = slices.DeleteFunc(h.queue, func(w *waiter) bool { return w.token == token })
	}
}

// lossWatch is one WatchLoss: the grant of key to token with fence, made
// (or last moved) by the write at revision rev.
type lossWatch struct {
	token     string
	fence     int64
	rev       int64
	lost      func()
	fired     bool
	released  bool // released by its holder through this backend: no loss
	releasing int  // a Release of token is in flight
	pending   bool // a loss seen while releasing
}

// hubLocked returns the key's hub, starting it if need be, with one more
// reference. Called with b.mu held and b not closed.
func (b *Backend) hubLocked(k string) *hub {
	h := b.hubs[k]
	if h == nil {
		ctx, cancel := context.WithCancel(b.ctx)
		h = &hub{key: k, losses: map[*lossWatch]struct{}{}, ready: make(chan struct{}), cancel: cancel}
		b.hubs[k] = h
		b.wg.Add(1)
		go b.run(ctx, h)
	}
	if h.refs == 0 && h.idle != nil {
		h.idle.Stop()
	}
	h.refs++
	return h
}

// hubLinger is how long a key's watch outlives its last user: a holder
// that releases and soon waits again (or a Lock handle taken again) finds
// it running, and its state lets the first attempt read instead of
// spending a write on a transaction that would fail.
const hubLinger = time.Second

// dropLocked drops a reference; the watch stops hubLinger after the last
// one.
func (b *Backend) dropLocked(h *hub) {
	h.refs--
	if h.refs > 0 {
		return
	}
	if b.closed {
		b.endLocked(h)
		return
	}
	h.idle = time.AfterFunc(hubLinger, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if h.refs == 0 {
			b.endLocked(h)
		}
	})
}

func (b *Backend) endLocked(h *hub) {
	if b.hubs[h.key] == h {
		delete(b.hubs, h.key)
	}
	if len(h.subs) == 0 {
		b.leaveLineLocked(h)
	}
	if h.idle != nil {
		h.idle.Stop()
	}
	h.cancel()
}

// SubscribeRelease implements driver.ReleaseNotifier. The first
// subscriber of a key starts a watch from the current revision (a watch
// from a past revision would be served by etcd's slower catch-up loop) and
// waits until it runs, so no deletion after the return is missed. Further
// subscribers of the key share it.
func (b *Backend) SubscribeRelease(ctx context.Context, key string) (<-chan struct{}, func(), error) {
	k := b.prefix + key
	ch := make(chan struct{}, 1)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, nil, distlock.ErrClosed
	}
	h := b.hubLocked(k)
	h.subs = append(h.subs, ch)
	h.waited = time.Now()
	b.adoptLineLocked(h)
	ready := h.ready
	b.mu.Unlock()

	var once sync.Once
	stop := func() {
		once.Do(func() {
			b.mu.Lock()
			defer b.mu.Unlock()
			for i, c := range h.subs {
				if c == ch {
					h.subs = append(h.subs[:i], h.subs[i+1:]...)
					break
				}
			}
			wakeAll(h) // if it was first in line, the next one goes
			if len(h.subs) == 0 {
				b.idleLineLocked(h)
			}
			b.dropLocked(h)
		})
	}
	var timeout <-chan time.Time
	if b.reqTimeout > 0 {
		t := time.NewTimer(b.reqTimeout)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-ready:
		return ch, stop, nil
	case <-ctx.Done():
		stop()
		return nil, nil, ctx.Err()
	case <-timeout:
		stop()
		return nil, nil, distlock.Unavailable(errors.New("etcd watch: not established in time"))
	}
}

// WatchLoss implements driver.LossWatcher for a grant made by this
// backend: lost is called when the key is deleted (released elsewhere,
// lease expired or revoked, deleted by hand), re-created by anyone, or
// transferred to another token other than by a Transfer through this
// backend.
func (b *Backend) WatchLoss(key, token string, lost func()) func() {
	k := b.prefix + key
	w := &lossWatch{token: token, lost: lost}
	b.mu.Lock()
	g := b.grants[k]
	if b.closed || g == nil || g.token != token {
		// Not a grant this backend knows to be live: it was lost already.
		b.mu.Unlock()
		w.fired = true
		lost()
		return func() {}
	}
	w.fence, w.rev = g.fence, g.rev
	h := b.hubLocked(k)
	h.losses[w] = struct{}{}
	if h.known {
		checkLoss(h, w)
	}
	b.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			defer b.mu.Unlock()
			delete(h.losses, w)
			b.dropLocked(h)
		})
	}
}

// releasing marks the loss watchers of token on k while a Release of it is
// in flight (d = +1) or after it failed (d = -1), so that the holder's own
// deletion is not reported as a loss.
func (b *Backend) releasing(k, token string, d int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.hubs[k]
	if h == nil {
		return
	}
	for w := range h.losses {
		if w.token != token || (d < 0 && w.releasing == 0) {
			continue
		}
		w.releasing += d
		if w.releasing == 0 && w.pending {
			w.pending = false
			fire(w)
		}
	}
}

// run keeps the hub's watch going until the hub is dropped or the backend
// closed. A broken watch wakes every waiter (they fall back to polling)
// and is re-established, resuming after the last revision seen.
func (b *Backend) run(ctx context.Context, h *hub) {
	defer b.wg.Done()
	var next int64 // resume from this revision; 0: from now, re-reading the state
	backoff := 10 * time.Millisecond
	for {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		opts := []clientv3.OpOption{clientv3.WithCreatedNotify()}
		if next > 0 {
			opts = append(opts, clientv3.WithRev(next))
		}
		progressed := false
		next, progressed = b.consume(wctx, h, b.cli.Watch(wctx, h.key, opts...), next)
		cancel()
		if ctx.Err() != nil {
			return
		}
		b.mu.Lock()
		wakeAll(h)
		b.mu.Unlock()
		if progressed {
			backoff = 10 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// consume reads one watch until it ends and returns the revision to resume
// from, and whether the watch got going at all.
func (b *Backend) consume(ctx context.Context, h *hub, wch clientv3.WatchChan, next int64) (int64, bool) {
	progressed := false
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return 0, progressed // history gone: start again from now
		}
		if resp.Canceled || resp.Err() != nil {
			return next, progressed
		}
		if resp.Created {
			if next == 0 {
				// The watch reports every change after this revision: read
				// the key as of it to know the state the events start from.
				rev := resp.Header.Revision
				gctx, cancel := b.reqCtx(ctx)
				gr, err := b.cli.Get(gctx, h.key, clientv3.WithRev(rev))
				cancel()
				if err != nil {
					return 0, progressed
				}
				b.setState(h, gr, rev)
			}
			next = max(next, resp.Header.Revision+1)
			progressed = true
			continue
		}
		b.mu.Lock()
		for _, ev := range resp.Events {
			b.applyLocked(h, ev)
			next = max(next, ev.Kv.ModRevision+1)
		}
		b.mu.Unlock()
	}
	return next, progressed
}

// setState records the key's state at revision rev.
func (b *Backend) setState(h *hub, gr *clientv3.GetResponse, rev int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h.known, h.rev = true, rev
	if len(gr.Kvs) > 0 {
		cur := heldBy(gr.Kvs[0])
		h.present, h.token, h.fence = true, cur.token, cur.fence
	} else {
		h.present, h.token, h.fence = false, "", 0
		b.freedLocked(h)
	}
	for w := range h.losses {
		checkLoss(h, w)
	}
	if !h.isRdy {
		h.isRdy = true
		close(h.ready)
	}
	if !h.present {
		h.line.stale = true
		wakeAll(h) // free: someone may have missed its deletion while the watch was down
	}
}

func (b *Backend) applyLocked(h *hub, ev *clientv3.Event) {
	if ev.Kv.ModRevision <= h.rev {
		return // already in the state read
	}
	h.rev = ev.Kv.ModRevision
	switch ev.Type {
	case mvccpb.DELETE:
		h.present, h.token, h.fence = false, "", 0
		b.freedLocked(h)
		h.line.stale = true
		wakeAll(h)
	case mvccpb.PUT:
		cur := heldBy(ev.Kv)
		h.present, h.token, h.fence = true, cur.token, cur.fence
	}
	for w := range h.losses {
		checkLoss(h, w)
	}
}

// checkLoss calls w.lost if the known state shows its grant gone.
func checkLoss(h *hub, w *lossWatch) {
	if w.fired || w.released || h.rev < w.rev {
		return
	}
	if h.present && h.token == w.token && h.fence == w.fence {
		return
	}
	if w.releasing > 0 {
		w.pending = true
		return
	}
	fire(w)
}

func fire(w *lossWatch) {
	if !w.fired && !w.released {
		w.fired = true
		w.lost()
	}
}

// wakeAll wakes every subscriber; only the first in line will send a
// transaction (see admit).
func wakeAll(h *hub) {
	for _, c := range h.subs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}
