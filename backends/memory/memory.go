// Package memory is the in-process reference backend of distlock: the
// embedded default, and the fake to hand to unit tests.
//
// Backends built on the same Store see the same locks, as separate
// processes would on a shared server; each Store is independent. The URL
// form memory://NAME opens the process-wide store called NAME (memory://
// alone is the store "default").
//
//	lm := memory.NewManager() // a fresh store, for one unit test
package memory

import (
	"context"
	"errors"
	"net/url"
	"sync"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
)

func init() {
	distlock.Register("memory", func(_ context.Context, u *url.URL) (driver.Backend, error) {
		name := u.Host + u.Path
		if name == "" {
			name = "default"
		}
		return Named(name).Backend(), nil
	})
}

var (
	namedMu sync.Mutex
	named   = map[string]*Store{}
)

// Named returns the process-wide store called name, creating it on first use.
func Named(name string) *Store {
	namedMu.Lock()
	defer namedMu.Unlock()
	s := named[name]
	if s == nil {
		s = NewStore()
		named[name] = s
	}
	return s
}

// ErrDown is the cause of ErrUnavailable while a Store is stopped.
var ErrDown = errors.New("memory store is stopped")

// Store holds the locks. It is safe for concurrent use.
type Store struct {
	mu       sync.Mutex
	locks    map[string]*entry
	fence    uint64
	queues   map[string][]*queued // waiters in AcquireWait, first come first served
	watchers map[string]map[*watcher]struct{}
	// groups and modeWatchers are the primitives' (primitives.go).
	groups       map[space]*group
	modeWatchers map[space]map[*func()]struct{}
	down         bool
	calls        uint64
}

type entry struct {
	token  string
	expiry time.Time
	fence  uint64
}

// queued is a waiter in AcquireWait.
type queued struct {
	token string
	ttl   time.Duration
	grant *driver.Grant // set when the key was handed to it
	ready chan struct{} // closed when grant is set
}

type watcher struct {
	token string
	lost  func()
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{
		locks:        map[string]*entry{},
		queues:       map[string][]*queued{},
		watchers:     map[string]map[*watcher]struct{}{},
		groups:       map[space]*group{},
		modeWatchers: map[space]map[*func()]struct{}{},
	}
}

// NewManager returns a Manager over a fresh Store: the usual fake for a
// unit test.
func NewManager(opts ...distlock.Option) *distlock.Manager {
	return distlock.New(NewStore().Backend(), opts...)
}

// Backend returns a new backend over the store, like a new client of a
// shared server.
func (s *Store) Backend() driver.Backend { return &backend{s: s} }

// Stop makes the store unavailable: every call fails with ErrUnavailable
// (cause ErrDown) until Start. Locks and their TTLs are kept, as a server
// with persistence would keep them. Tests use it to simulate an outage.
func (s *Store) Stop() { s.mu.Lock(); s.down = true; s.mu.Unlock() }

// Start ends a Stop.
func (s *Store) Start() { s.mu.Lock(); s.down = false; s.mu.Unlock() }

// Revoke deletes the lock on key whoever holds it, as an operator would.
// It reports whether a live lock was deleted.
func (s *Store) Revoke(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.live(key, time.Now())
	if e == nil {
		return false
	}
	s.drop(key, e, true)
	return true
}

// Calls returns how many backend calls reached the store.
func (s *Store) Calls() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// live returns key's unexpired entry; an expired one is dropped. Called
// with s.mu held.
func (s *Store) live(key string, now time.Time) *entry {
	e := s.locks[key]
	if e != nil && !now.Before(e.expiry) {
		s.drop(key, e, true)
		return nil
	}
	return e
}

// drop deletes key's entry, ends its loss watchers (telling them the lock
// is lost unless its holder released it) and grants the key to the first
// waiter in its queue, if any. Called with s.mu held.
func (s *Store) drop(key string, e *entry, lost bool) {
	delete(s.locks, key)
	s.endWatches(key, e.token, lost)
	q := s.queues[key]
	if len(q) == 0 {
		return
	}
	w := q[0]
	s.dequeue(key, w)
	s.fence++
	now := time.Now()
	s.locks[key] = &entry{token: w.token, expiry: now.Add(w.ttl), fence: s.fence}
	w.grant = &driver.Grant{TTL: w.ttl, Fence: s.fence, At: now}
	close(w.ready)
}

// dequeue takes w out of key's queue. Called with s.mu held.
func (s *Store) dequeue(key string, w *queued) {
	q := s.queues[key]
	for i, x := range q {
		if x == w {
			q = append(q[:i:i], q[i+1:]...)
			break
		}
	}
	if len(q) == 0 {
		delete(s.queues, key)
	} else {
		s.queues[key] = q
	}
}

// endWatches ends the loss watchers of token's grant of key, telling them
// of a loss if lost. Called with s.mu held.
func (s *Store) endWatches(key, token string, lost bool) {
	for w := range s.watchers[key] {
		if w.token == token {
			if lost {
				w.lost()
			}
			delete(s.watchers[key], w)
		}
	}
	if len(s.watchers[key]) == 0 {
		delete(s.watchers, key)
	}
}

// held returns key's live entry if token holds it. Called with s.mu held.
func (s *Store) held(key, token string, now time.Time) (*entry, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	e := s.live(key, now)
	if e == nil || e.token != token {
		return nil, distlock.ErrNotHeld
	}
	return e, nil
}

// enter counts a call and reports whether the store is up. Called with s.mu held.
func (s *Store) enter() error {
	s.calls++
	if s.down {
		return distlock.Unavailable(ErrDown)
	}
	return nil
}

type backend struct{ s *Store }

var (
	_ driver.Queuer      = (*backend)(nil)
	_ driver.LossWatcher = (*backend)(nil)
	_ driver.Transferer  = (*backend)(nil)
	_ driver.Inspector   = (*backend)(nil)
)

func (b *backend) Acquire(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	s := b.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(); err != nil {
		return driver.Grant{}, err
	}
	return s.try(key, token, ttl)
}

// try grants key to token if it is free and nobody queues for it, or
// re-grants it to its holder. Called with s.mu held.
func (s *Store) try(key, token string, ttl time.Duration) (driver.Grant, error) {
	now := time.Now()
	e := s.live(key, now)
	switch {
	case e == nil && len(s.queues[key]) == 0:
		s.fence++
		s.locks[key] = &entry{token: token, expiry: now.Add(ttl), fence: s.fence}
		return driver.Grant{TTL: ttl, Fence: s.fence}, nil
	case e.token == token: // re-acquire: extend in place, never a gap
		e.expiry = now.Add(ttl)
		return driver.Grant{TTL: ttl, Fence: e.fence}, nil
	}
	return driver.Grant{}, distlock.ErrNotAcquired
}

// AcquireWait implements driver.Queuer: waiters queue in the store, first
// come first served, and a release or expiry grants the key to the first.
func (b *backend) AcquireWait(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	s := b.s
	s.mu.Lock()
	if err := s.enter(); err != nil {
		s.mu.Unlock()
		return driver.Grant{}, err
	}
	g, err := s.try(key, token, ttl)
	if err != distlock.ErrNotAcquired {
		s.mu.Unlock()
		return g, err
	}
	w := &queued{token: token, ttl: ttl, ready: make(chan struct{})}
	s.queues[key] = append(s.queues[key], w)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		// Nobody may call the store while this waits: look again when
		// the holder's TTL runs out, so that an expired lock passes on.
		var expired <-chan time.Time
		if e := s.locks[key]; e != nil {
			if timer == nil {
				timer = time.NewTimer(time.Until(e.expiry))
			} else {
				timer.Reset(time.Until(e.expiry))
			}
			expired = timer.C
		}
		s.mu.Unlock()
		select {
		case <-w.ready:
			return *w.grant, nil
		case <-expired:
			s.mu.Lock()
			s.live(key, time.Now())
		case <-ctx.Done():
			s.mu.Lock()
			if w.grant != nil { // granted as ctx ended: pass it on
				if e := s.locks[key]; e != nil && e.token == token {
					s.drop(key, e, false)
				}
			} else {
				s.dequeue(key, w)
			}
			s.mu.Unlock()
			return driver.Grant{}, ctx.Err()
		}
	}
}

func (b *backend) Extend(ctx context.Context, key, token string, ttl time.Duration) (driver.Grant, error) {
	s := b.s
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	e, err := s.held(key, token, now)
	if err != nil {
		return driver.Grant{}, err
	}
	e.expiry = now.Add(ttl)
	return driver.Grant{TTL: ttl, Fence: e.fence}, nil
}

func (b *backend) Release(ctx context.Context, key, token string) error {
	s := b.s
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.held(key, token, time.Now())
	if err != nil {
		return err
	}
	s.drop(key, e, false)
	return nil
}

func (b *backend) Transfer(ctx context.Context, key, from, to string, ttl time.Duration) (driver.Grant, error) {
	s := b.s
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if _, err := s.held(key, from, now); err != nil {
		return driver.Grant{}, err
	}
	// End from's grant as a release would (its watchers are not told of a
	// loss), without waking waiters: the key is never free.
	s.endWatches(key, from, false)
	s.fence++
	s.locks[key] = &entry{token: to, expiry: now.Add(ttl), fence: s.fence}
	return driver.Grant{TTL: ttl, Fence: s.fence}, nil
}

// Inspect implements driver.Inspector: it reads the entry, changing
// nothing (an expired entry is dropped, as any call would).
func (b *backend) Inspect(ctx context.Context, key string) (driver.LockInfo, error) {
	s := b.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(); err != nil {
		return driver.LockInfo{}, err
	}
	now := time.Now()
	e := s.live(key, now)
	if e == nil {
		return driver.LockInfo{}, nil
	}
	return driver.LockInfo{Held: true, TTL: e.expiry.Sub(now), Fence: e.fence, Holder: e.token, Waiters: len(s.queues[key])}, nil
}

func (b *backend) Capabilities() driver.Capabilities {
	return driver.Capabilities{
		Name:                 "memory",
		Fencing:              true,
		CrossInstanceRelease: true,
		MinTTL:               time.Millisecond,
		ReadWrite:            true,
		Semaphore:            true,
		Election:             true,
	}
}

func (b *backend) Close() error { return nil }

func (b *backend) WatchLoss(key, token string, lost func()) func() {
	s := b.s
	w := &watcher{token: token, lost: lost}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.live(key, time.Now()); e == nil || e.token != token {
		lost()
		return func() {}
	}
	if s.watchers[key] == nil {
		s.watchers[key] = map[*watcher]struct{}{}
	}
	s.watchers[key][w] = struct{}{}
	return func() {
		s.mu.Lock()
		delete(s.watchers[key], w)
		if len(s.watchers[key]) == 0 {
			delete(s.watchers, key)
		}
		s.mu.Unlock()
	}
}
