package memory

import (
	"context"
	"fmt"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
)

// The primitives (driver.Primitives): read-write locks, semaphores and
// elections, each in a key space of its own. The memory backend is the
// reference: it keeps the writer-preference mark of the contract, and as
// an in-process server it waits by itself (AcquireModeWait), trying again
// at each change of the key, which costs nothing here.

var (
	_ driver.Primitives  = (*backend)(nil)
	_ driver.ModeWaiter  = (*backend)(nil)
	_ driver.ModeWatcher = (*backend)(nil)
)

// space is a primitive's key space: Read and Write share one.
type space struct {
	kind driver.Kind // Write for the read-write lock, else the kind
	key  string
}

func spaceOf(key string, k driver.Kind) space {
	if k == driver.Read {
		k = driver.Write
	}
	return space{k, key}
}

// group is the holders of one key of a primitive.
type group struct {
	holders map[string]*holder
	marks   map[string]time.Time // waiting writers' marks, until their expiry
	limit   int                  // Permit: the holders' limit
}

type holder struct {
	kind   driver.Kind
	expiry time.Time
	fence  uint64
	value  string
}

// liveGroup returns sp's group with its expired holders and marks
// dropped (nil when nothing is left). Called with s.mu held.
func (s *Store) liveGroup(sp space, now time.Time) *group {
	g := s.groups[sp]
	if g == nil {
		return nil
	}
	changed := false
	for tok, h := range g.holders {
		if !now.Before(h.expiry) {
			delete(g.holders, tok)
			changed = true
		}
	}
	for tok, exp := range g.marks {
		if !now.Before(exp) {
			delete(g.marks, tok)
			changed = true
		}
	}
	if len(g.holders) == 0 && len(g.marks) == 0 {
		delete(s.groups, sp)
		g = nil
	}
	if changed {
		s.changed(sp)
	}
	return g
}

// changed tells sp's mode watchers. Called with s.mu held.
func (s *Store) changed(sp space) {
	for f := range s.modeWatchers[sp] {
		(*f)()
	}
}

func checkKind(k driver.Kind) error {
	if k < driver.Read || k > driver.Leader {
		return distlock.ErrUnsupported
	}
	return nil
}

func (b *backend) AcquireMode(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode) (driver.Grant, error) {
	if err := checkKind(m.Kind); err != nil {
		return driver.Grant{}, err
	}
	s := b.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(); err != nil {
		return driver.Grant{}, err
	}
	now := time.Now()
	sp := spaceOf(key, m.Kind)
	g := s.liveGroup(sp, now)
	if g == nil {
		g = &group{holders: map[string]*holder{}, marks: map[string]time.Time{}}
		s.groups[sp] = g
	}
	if h := g.holders[token]; h != nil {
		if h.kind != m.Kind {
			return driver.Grant{}, distlock.ErrNotAcquired
		}
		if m.Kind == driver.Permit && m.Limit != g.limit {
			return driver.Grant{}, distlock.ErrLimitMismatch
		}
		h.expiry = now.Add(ttl) // re-acquire: in place, never a gap
		if m.Kind == driver.Leader && h.value != m.Value {
			h.value = m.Value
			s.changed(sp)
		}
		return driver.Grant{TTL: ttl, Fence: h.fence}, nil
	}
	ok := false
	switch m.Kind {
	case driver.Read:
		ok = len(g.marks) == 0 && !g.exclusive()
	case driver.Write, driver.Leader:
		ok = len(g.holders) == 0
	case driver.Permit:
		if len(g.holders) > 0 && g.limit != m.Limit {
			s.liveGroup(sp, now) // drop the empty group made above, if any
			return driver.Grant{}, distlock.ErrLimitMismatch
		}
		ok = len(g.holders) < m.Limit
	}
	if !ok {
		if m.Kind == driver.Write && m.Waiting {
			g.marks[token] = now.Add(ttl)
		}
		s.liveGroup(sp, now)
		return driver.Grant{}, distlock.ErrNotAcquired
	}
	delete(g.marks, token)
	s.fence++
	g.holders[token] = &holder{kind: m.Kind, expiry: now.Add(ttl), fence: s.fence, value: m.Value}
	if m.Kind == driver.Permit {
		g.limit = m.Limit
	}
	s.changed(sp)
	return driver.Grant{TTL: ttl, Fence: s.fence}, nil
}

// exclusive reports whether a writer or leader holds the group.
func (g *group) exclusive() bool {
	for _, h := range g.holders {
		if h.kind == driver.Write || h.kind == driver.Leader {
			return true
		}
	}
	return false
}

// heldMode returns token's live hold of key in kind. Called with s.mu held.
func (s *Store) heldMode(key, token string, k driver.Kind, now time.Time) (*group, *holder, error) {
	if err := s.enter(); err != nil {
		return nil, nil, err
	}
	sp := spaceOf(key, k)
	g := s.liveGroup(sp, now)
	if g == nil || g.holders[token] == nil || g.holders[token].kind != k {
		return g, nil, distlock.ErrNotHeld
	}
	return g, g.holders[token], nil
}

// AcquireModeWait implements driver.ModeWaiter: AcquireMode again at each
// change of the key's holders, and at the next expiry, until granted or
// ctx ends. A waiting writer keeps its mark (Mode.Waiting) and drops it
// when ctx ends.
func (b *backend) AcquireModeWait(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode) (driver.Grant, error) {
	if m.Kind == driver.Write {
		m.Waiting = true
	}
	wake := make(chan struct{}, 1)
	stop, err := b.WatchMode(ctx, key, m, func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return driver.Grant{}, err
	}
	defer stop()
	for {
		g, err := b.AcquireMode(ctx, key, token, ttl, m)
		if err != distlock.ErrNotAcquired {
			return g, err
		}
		t := time.NewTimer(b.s.nextExpiry(spaceOf(key, m.Kind)))
		select {
		case <-wake:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			if m.Kind == driver.Write {
				_ = b.ReleaseMode(context.WithoutCancel(ctx), key, token, m) // drop the mark
			}
			return driver.Grant{}, fmt.Errorf("%w: %w", distlock.ErrNotAcquired, ctx.Err())
		}
		t.Stop()
	}
}

// nextExpiry returns how long until the first holder or mark of sp
// expires (a minute when there is none): nobody may call the store
// meanwhile, so the waiter looks by itself then.
func (s *Store) nextExpiry(sp space) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := time.Minute
	if g := s.groups[sp]; g != nil {
		now := time.Now()
		for _, h := range g.holders {
			d = min(d, h.expiry.Sub(now))
		}
		for _, exp := range g.marks {
			d = min(d, exp.Sub(now))
		}
	}
	return max(d, time.Millisecond)
}

func (b *backend) ExtendMode(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode) (driver.Grant, error) {
	if err := checkKind(m.Kind); err != nil {
		return driver.Grant{}, err
	}
	s := b.s
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	_, h, err := s.heldMode(key, token, m.Kind, now)
	if err != nil {
		return driver.Grant{}, err
	}
	h.expiry = now.Add(ttl)
	return driver.Grant{TTL: ttl, Fence: h.fence}, nil
}

func (b *backend) ReleaseMode(ctx context.Context, key, token string, m driver.Mode) error {
	if err := checkKind(m.Kind); err != nil {
		return err
	}
	s := b.s
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	sp := spaceOf(key, m.Kind)
	g, h, err := s.heldMode(key, token, m.Kind, now)
	if g != nil && m.Kind == driver.Write {
		if _, ok := g.marks[token]; ok {
			delete(g.marks, token)
			s.changed(sp)
		}
	}
	if h != nil {
		delete(g.holders, token)
		s.changed(sp)
	}
	s.liveGroup(sp, now)
	return err
}

func (b *backend) InspectMode(ctx context.Context, key string, m driver.Mode) (driver.ModeInfo, error) {
	if err := checkKind(m.Kind); err != nil {
		return driver.ModeInfo{}, err
	}
	s := b.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(); err != nil {
		return driver.ModeInfo{}, err
	}
	now := time.Now()
	g := s.liveGroup(spaceOf(key, m.Kind), now)
	if g == nil {
		return driver.ModeInfo{}, nil
	}
	info := driver.ModeInfo{Holders: len(g.holders)}
	if m.Kind == driver.Permit && len(g.holders) > 0 {
		info.Limit = g.limit
	}
	for tok, h := range g.holders {
		if h.kind == driver.Write || h.kind == driver.Leader {
			info.Exclusive, info.Token, info.Value, info.Fence, info.TTL = true, tok, h.value, h.fence, h.expiry.Sub(now)
		}
	}
	return info, nil
}

// WatchMode implements driver.ModeWatcher: changed runs on every grant,
// release, expiry the store notices, and change of a leader's value.
func (b *backend) WatchMode(ctx context.Context, key string, m driver.Mode, changed func()) (func(), error) {
	if err := checkKind(m.Kind); err != nil {
		return nil, err
	}
	s := b.s
	sp := spaceOf(key, m.Kind)
	f := &changed
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.modeWatchers[sp] == nil {
		s.modeWatchers[sp] = map[*func()]struct{}{}
	}
	s.modeWatchers[sp][f] = struct{}{}
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.modeWatchers[sp], f)
		if len(s.modeWatchers[sp]) == 0 {
			delete(s.modeWatchers, sp)
		}
	}, nil
}

// RevokeMode ends every hold of key in kind's key space (and, for a
// read-write lock, its waiting writers' marks), as an operator would. It
// reports whether anything was held.
func (s *Store) RevokeMode(key string, kind driver.Kind) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sp := spaceOf(key, kind)
	g := s.liveGroup(sp, time.Now())
	if g == nil {
		return false
	}
	delete(s.groups, sp)
	s.changed(sp)
	return len(g.holders) > 0
}
