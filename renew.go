package distlock

import (
	"container/heap"
	"context"
	"errors"
	"slices"
	"sync"
	"time"
)

// renewWorkers bounds the renewals of one Manager that run at once, so that
// a slow backend call delays only the locks behind it in the queue, not
// every other lock's renewal, while a Manager holding thousands of locks
// still runs a handful of goroutines at most.
const renewWorkers = 8

// scheduler is a Manager's set of live Lock handles and its one timer for
// them all: a min-heap
// of each live handle's next event, the next renewal of a handle made
// WithAutoRenew or else its expiry. One time.AfterFunc timer fires at the
// earliest event; its callback declares expired handles lost and queues
// due renewals for up to renewWorkers worker goroutines, which exist only
// while renewals are queued or running. So a held lock costs no goroutine
// and no timer of its own: a slot in the heap and a few words in Lock.
//
// A handle stays in the heap from Lock until finish, and while its renewal
// is queued or in flight its event is its expiry, so it is declared lost
// on time even if the backend call hangs. Expiry events may be early (an
// Extend moved the expiry without touching the heap): the callback then
// moves them to the new expiry.
//
// Lock order: Manager.mu, then scheduler.mu, then Lock.mu. Nothing takes
// scheduler.mu while holding a Lock's mu.
type scheduler struct {
	mu      sync.Mutex
	epoch   time.Time // event times count from here (monotonic)
	h       lockHeap
	timer   *time.Timer // fires at armed; nil until the first add
	armed   int64       // when timer fires, in ns since epoch; noEvent: idle
	ready   []*Lock     // due renewals waiting for a worker
	running int         // worker goroutines
	stopped bool
	ctx     context.Context // ends renewals in flight when stopped
	cancel  context.CancelFunc
	wg      sync.WaitGroup // workers and timer callbacks
}

const noEvent = -1 << 63

// now returns the time in ns since epoch.
func (s *scheduler) now() int64 { return int64(time.Since(s.epoch)) }

// at returns t in ns since epoch.
func (s *scheduler) at(t time.Time) int64 { return int64(t.Sub(s.epoch)) }

// add schedules l, a new handle, at its expiry or, if renewAfter > 0, at
// its first renewal. The first call starts the scheduler.
func (s *scheduler) add(l *Lock, expiry time.Time, renewAfter time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	if s.timer == nil {
		s.epoch = time.Now()
		s.armed = noEvent
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.timer = time.AfterFunc(time.Hour, s.fire)
		s.timer.Stop()
	}
	l.at = s.at(expiry)
	if renewAfter > 0 {
		if r := s.now() + int64(renewAfter); r < l.at {
			l.at, l.renewNext = r, true
		}
	}
	heap.Push(&s.h, l)
	s.arm()
}

// remove takes l out of the scheduler (finish). A renewal of l queued or
// in flight is dropped when it returns.
func (s *scheduler) remove(l *Lock) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l.idx >= 0 {
		heap.Remove(&s.h, int(l.idx))
	}
}

// arm makes the timer fire at the earliest event, if it would fire later.
// A timer that fires early finds nothing due and re-arms: harmless.
func (s *scheduler) arm() {
	if len(s.h) == 0 || s.stopped {
		return
	}
	if next := s.h[0].at; s.armed == noEvent || next < s.armed {
		s.armed = next
		s.timer.Reset(time.Duration(next - s.now()))
	}
}

// fire is the timer's callback: it handles every due event.
func (s *scheduler) fire() {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.wg.Add(1) // under mu while not stopped: before stop's Wait
	defer s.wg.Done()
	s.armed = noEvent
	now := s.now()
	var expired []*Lock
	for len(s.h) > 0 && s.h[0].at <= now {
		l := s.h[0]
		exp := s.at(l.Expiry())
		switch {
		case exp <= now:
			heap.Pop(&s.h)
			expired = append(expired, l)
		case l.renewNext:
			l.renewNext = false
			l.at = exp // until the renewal returns, its event is the expiry
			heap.Fix(&s.h, 0)
			s.ready = append(s.ready, l)
		default: // an expiry event moved by Extend
			l.at = exp
			heap.Fix(&s.h, 0)
		}
	}
	for s.running < renewWorkers && s.running < len(s.ready) {
		s.running++
		s.wg.Add(1)
		go s.work()
	}
	s.arm()
	s.mu.Unlock()
	for _, l := range expired {
		l.finish(&Error{Op: "renew", Key: l.key, Kind: ErrLockLost, Err: errors.New("ttl expired")})
	}
}

// work renews queued locks until the queue is empty.
func (s *scheduler) work() {
	defer s.wg.Done()
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.ready) > 0 && !s.stopped {
		l := s.ready[0]
		s.ready[0] = nil
		s.ready = s.ready[1:]
		if len(s.ready) == 0 {
			s.ready = nil // let the backing array go
		}
		if l.idx < 0 { // ended while queued
			continue
		}
		s.mu.Unlock()
		next, ok := l.renewStep(s.ctx)
		exp := l.Expiry()
		s.mu.Lock()
		if !ok || l.idx < 0 { // no more renewals: the expiry event stays
			continue
		}
		if at := s.now() + int64(next); at < s.at(exp) {
			l.at, l.renewNext = at, true
		} else {
			l.at = s.at(exp)
		}
		heap.Fix(&s.h, int(l.idx))
		s.arm()
	}
	s.running--
}

// stop ends the scheduler (Close, after every handle has finished): it
// cancels renewals in flight and waits for the workers.
func (s *scheduler) stop() {
	s.mu.Lock()
	s.stopped = true
	if s.timer != nil {
		s.timer.Stop()
		s.cancel()
	}
	for _, l := range s.h {
		l.idx = -1
	}
	s.h, s.ready = nil, nil
	s.mu.Unlock()
	s.wg.Wait()
}

// scheduled returns how many handles the scheduler holds (tests).
func (s *scheduler) scheduled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.h)
}

// handles returns the live handles (Close).
func (s *scheduler) handles() []*Lock {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.h)
}

// held counts the handles still held: finish takes a handle out after
// closing its Done.
func (s *scheduler) held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.h {
		l.mu.Lock()
		if !l.ended {
			n++
		}
		l.mu.Unlock()
	}
	return n
}

// lockHeap orders handles by their next event; it implements heap.Interface
// and keeps each handle's index in Lock.idx (-1 when not in the heap).
type lockHeap []*Lock

func (h lockHeap) Len() int           { return len(h) }
func (h lockHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h lockHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = int32(i), int32(j)
}

func (h *lockHeap) Push(x any) {
	l := x.(*Lock)
	l.idx = int32(len(*h))
	*h = append(*h, l)
}

func (h *lockHeap) Pop() any {
	old := *h
	n := len(old) - 1
	l := old[n]
	old[n] = nil
	l.idx = -1
	*h = old[:n]
	return l
}

// renewStep renews l once. It returns how long to wait before the next
// renewal, or false when renewal ends: the lock ended, is not held any
// more, was kept under WithMinHold, or the Manager is closing. A transient
// failure is retried sooner (ttl/10, at least 5 ms) until the scheduler
// declares the lock lost at its expiry. Renewals use the TTL of the last
// grant or extension, so an Extend to a longer TTL is kept.
func (l *Lock) renewStep(ctx context.Context) (time.Duration, bool) {
	l.mu.Lock()
	ttl, ended := l.ttl, l.ended
	l.mu.Unlock()
	if ended {
		return 0, false
	}
	g, t0, kept, err := l.renewOnce(ctx, ttl)
	if kept {
		return 0, false
	}
	if ctx.Err() != nil { // the Manager is closing: not a renewal failure
		return 0, false
	}
	l.m.obs.renewed(l, err)
	switch {
	case err == nil:
		l.extended(g, t0)
		return time.Duration(float64(ttl) * l.m.cfg.renewFrac), true
	case errors.Is(err, ErrNotHeld):
		if !l.releasing.Load() { // else Release is ending the lock itself
			l.finish(&Error{Op: "renew", Key: l.key, Kind: ErrLockLost, Err: err})
		}
		return 0, false
	case errors.Is(err, ErrClosed):
		return 0, false
	default: // transient: try again soon, until the expiry gives up
		return max(ttl/10, 5*time.Millisecond), true
	}
}
