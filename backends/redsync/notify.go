package redsync

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"sync"

	"github.com/redis/go-redis/v9"
)

// waker receives the wake-ups of one backend's waiters: a release (or a
// leaving waiter) that hands a key to the head of its queue publishes the
// head's name on the channel of the head's process, channel prefix + id.
// Each backend on a go-redis client has one such channel, subscribed on
// one pub/sub connection opened the first time one of its waiters queues
// and kept until Close; so a release wakes exactly one waiter, in one
// process.
type waker struct {
	client  redis.UniversalClient
	channel string

	mu      sync.Mutex
	ps      *redis.PubSub
	ready   chan struct{} // closed once the server confirmed the subscription
	waiters map[string]chan struct{}
	closed  bool
	loop    sync.WaitGroup
}

// newProcessID returns a random id naming this backend's queue entries and
// channel: hex, so it holds no ':'.
func newProcessID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// wakeName is what the scripts publish for token waiting on key.
func wakeName(key, token string) string {
	return strconv.Itoa(len(token)) + ":" + token + key
}

// add registers ch to be sent a value when name is published, and returns
// a function that unregisters it. A backend has one waiter per key and
// token (the Manager's head); a second one replaces the first, which then
// polls.
func (w *waker) add(name string, ch chan struct{}) func() {
	w.mu.Lock()
	if w.waiters == nil {
		w.waiters = make(map[string]chan struct{})
	}
	w.waiters[name] = ch
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		if w.waiters[name] == ch {
			delete(w.waiters, name)
		}
		w.mu.Unlock()
	}
}

// subscribed returns a channel closed once the subscription is active (it
// subscribes on the first call), or nil after Close.
func (w *waker) subscribed(ctx context.Context) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	if w.ps == nil {
		w.ready = make(chan struct{})
		w.ps = w.client.Subscribe(context.WithoutCancel(ctx), w.channel)
		w.loop.Add(1)
		go w.receive(w.ps.ChannelWithSubscriptions(redis.WithChannelSize(256)))
	}
	return w.ready
}

// receive dispatches wake-ups until the subscription is closed. Every
// (re)subscription after the first wakes every waiter, since messages sent
// while the connection was down are lost: they re-check at once.
func (w *waker) receive(msgs <-chan any) {
	defer w.loop.Done()
	confirmed := false
	for m := range msgs {
		w.mu.Lock()
		switch m := m.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				break
			}
			if !confirmed {
				confirmed = true
				close(w.ready)
				break
			}
			for _, s := range w.waiters {
				notify(s)
			}
		case *redis.Message:
			notify(w.waiters[m.Payload])
		}
		w.mu.Unlock()
	}
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// close ends the subscription and waits for its receive loop.
func (w *waker) close() {
	w.mu.Lock()
	w.closed = true
	ps := w.ps
	w.mu.Unlock()
	if ps != nil {
		_ = ps.Close()
	}
	w.loop.Wait()
}
