package etcd

import (
	"context"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// lossWatch is one WatchLoss.
type lossWatch struct {
	token     string
	releasing int // a Release or Transfer of token through this backend is in flight or done; guarded by Backend.mu

	mu      sync.Mutex // guards stopped and the call of lost
	stopped bool
	lost    func()
}

// WatchLoss implements driver.LossWatcher with a watch of the grant's
// entry from the revision the grant was known at (read first for a grant
// not made here): lost is called when the entry is deleted (released
// elsewhere, lease expired or revoked, deleted by hand) or given to
// another token, other than by a Release or Transfer through this
// backend.
func (b *Backend) WatchLoss(key, token string, lost func()) func() {
	q := QueuePrefix(b.prefix, key)
	w := &lossWatch{token: token, lost: lost}
	ctx, cancel := context.WithCancel(b.ctx)
	b.mu.Lock()
	var g grant
	if p := b.grants[q]; p != nil && p.token == token {
		g = *p
	}
	if b.losses[q] == nil {
		b.losses[q] = map[*lossWatch]struct{}{}
	}
	b.losses[q][w] = struct{}{}
	b.mu.Unlock()
	b.background(func() { b.watchLoss(ctx, q, w, g.entry, g.rev) })
	return func() {
		cancel()
		w.mu.Lock()
		w.stopped = true
		w.mu.Unlock()
		b.mu.Lock()
		delete(b.losses[q], w)
		if len(b.losses[q]) == 0 {
			delete(b.losses, q)
		}
		b.mu.Unlock()
	}
}

// watchLoss follows entry from revision rev on; a broken watch is resumed
// after a read that shows the entry still held by the watch's token.
func (b *Backend) watchLoss(ctx context.Context, q string, w *lossWatch, entry string, rev int64) {
	for ctx.Err() == nil {
		if rev == 0 {
			resp, err := b.cli.Get(clientv3.WithRequireLeader(ctx), q, clientv3.WithFirstCreate()...)
			if err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
				continue
			}
			if len(resp.Kvs) == 0 || tokenOf(resp.Kvs[0].Value) != w.token || (entry != "" && string(resp.Kvs[0].Key) != entry) {
				b.lose(w)
				return
			}
			entry, rev = string(resp.Kvs[0].Key), resp.Header.Revision
		}
		for wr := range b.cli.Watch(clientv3.WithRequireLeader(ctx), entry, clientv3.WithRev(rev+1)) {
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE || tokenOf(ev.Kv.Value) != w.token {
					b.lose(w)
					return
				}
			}
		}
		rev = 0 // the watch broke: read the entry again
	}
}

// lose reports w's loss unless its token was released or transferred
// through this backend.
func (b *Backend) lose(w *lossWatch) {
	b.mu.Lock()
	released := w.releasing > 0
	b.mu.Unlock()
	if released {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.stopped = true
		w.lost()
	}
}

// releasing marks the loss watchers of token on q while a Release or
// Transfer of it is in flight (d = +1) or after it failed (d = -1), so
// that the holder's own deletion is not reported as a loss.
func (b *Backend) releasing(q, token string, d int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for w := range b.losses[q] {
		if w.token == token {
			w.releasing += d
		}
	}
}
