package redsync

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// subscribeWait bounds how long SubscribeRelease waits for the server to
// confirm a subscription; past it the Manager simply polls.
const subscribeWait = time.Second

// subscriptionLinger is how long a key's channel stays subscribed after
// its last local waiter left (and the pub/sub connection stays open after
// its last channel went). Waiters of a contended key come and go all the
// time — with the Manager's line only its head subscribes, one after the
// other — and without the linger each of them paid a SUBSCRIBE round trip,
// and often a new connection (dial, HELLO), before it could wait: measured
// at one reconnection per two or three hand-offs.
const subscriptionLinger = time.Second

// notifier multiplexes release notifications for one client over a single
// shared pub/sub connection, opened on first use. Each waited-on key has a
// channel of its own (channelPrefix+key), subscribed while at least one
// waiter needs it, so a client only receives releases of keys it waits for.
type notifier struct {
	client redis.UniversalClient

	mu     sync.Mutex
	ps     *redis.PubSub       // open while some key is waited on
	subs   map[string]*chanSub // by channel, for ps
	closed bool
	loops  sync.WaitGroup // receive loops, including those of closed connections
}

type chanSub struct {
	ready     chan struct{} // closed once the server confirmed the subscription
	confirmed bool
	waiters   []chan struct{} // oldest first
	idle      *time.Timer     // while nobody waits: unsubscribes when it fires
	gen       int             // counts idle timers, so a stale one does nothing
}

// wake hands one release to the oldest waiter without one pending: one
// release frees the lock for one new holder, so waking every waiter would
// only make them all race for it (a thundering herd on the server). It
// reports whether a waiter took it.
func (s *chanSub) wake() bool {
	for _, w := range s.waiters {
		select {
		case w <- struct{}{}:
			return true
		default:
		}
	}
	return false
}

var errNotifierClosed = errors.New("redsync: backend closed")

// add registers ch to receive a value whenever channel is published to. It
// returns a channel closed once the subscription is active on the server,
// and a function that unregisters ch.
func (n *notifier) add(ctx context.Context, channel string, ch chan struct{}) (<-chan struct{}, func(), error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, nil, errNotifierClosed
	}
	if n.ps == nil {
		n.ps = n.client.Subscribe(ctx)
		n.subs = make(map[string]*chanSub)
		n.loops.Add(1)
		go n.receive(n.ps, n.subs)
	}
	s := n.subs[channel]
	if s == nil {
		if err := n.ps.Subscribe(ctx, channel); err != nil {
			if len(n.subs) == 0 { // do not keep reconnecting to a server we cannot reach
				n.drop()
			}
			return nil, nil, err
		}
		s = &chanSub{ready: make(chan struct{})}
		n.subs[channel] = s
	}
	if len(s.waiters) == 0 { // new, or lingering after its last waiter
		if s.idle != nil {
			s.idle.Stop()
			s.idle = nil
		}
	}
	s.waiters = append(s.waiters, ch)
	return s.ready, func() { n.remove(channel, s, ch) }, nil
}

func (n *notifier) remove(channel string, s *chanSub, ch chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, w := range s.waiters {
		if w == ch {
			s.waiters = append(s.waiters[:i], s.waiters[i+1:]...)
			break
		}
	}
	select {
	case <-ch: // a release this waiter did not use: pass it on
		s.wake()
	default:
	}
	if len(s.waiters) > 0 || n.subs[channel] != s {
		return
	}
	if n.closed {
		return
	}
	s.gen++
	gen := s.gen
	s.idle = time.AfterFunc(subscriptionLinger, func() { n.expire(channel, s, gen) })
}

// expire ends the subscription of channel if nobody waited on it since
// the idle timer gen was set, and gives the connection back if it was the
// last one.
func (n *notifier) expire(channel string, s *chanSub, gen int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed || n.subs[channel] != s || len(s.waiters) > 0 || s.gen != gen {
		return
	}
	delete(n.subs, channel)
	if len(n.subs) == 0 { // nobody waits: give the connection back
		n.drop()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_ = n.ps.Unsubscribe(ctx, channel) // best effort: a stale subscription only costs messages
	cancel()
}

// drop closes the current pub/sub connection; its receive loop ends on its
// own. Called with n.mu held.
func (n *notifier) drop() {
	if n.ps != nil {
		_ = n.ps.Close()
		for _, s := range n.subs {
			if s.idle != nil {
				s.idle.Stop()
			}
		}
		n.ps, n.subs = nil, nil
	}
}

// receive dispatches the messages of ps (whose subscriptions are subs)
// until ps is closed.
func (n *notifier) receive(ps *redis.PubSub, subs map[string]*chanSub) {
	defer n.loops.Done()
	for m := range ps.ChannelWithSubscriptions(redis.WithChannelSize(256)) {
		switch m := m.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			n.mu.Lock()
			if s := subs[m.Channel]; s != nil && !s.confirmed {
				s.confirmed = true
				close(s.ready)
			}
			n.mu.Unlock()
		case *redis.Message:
			n.mu.Lock()
			if s := subs[m.Channel]; s != nil {
				s.wake()
			}
			n.mu.Unlock()
		}
	}
}

// close ends the subscription and waits for the receive loops.
func (n *notifier) close() {
	n.mu.Lock()
	n.closed = true
	n.drop()
	n.mu.Unlock()
	n.loops.Wait()
}
