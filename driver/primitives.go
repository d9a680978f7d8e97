package driver

import (
	"context"
	"time"
)

// Kind names a primitive beyond the plain lock. Each primitive has key
// spaces of its own on the server, apart from plain locks and from each
// other: the read-write lock "a", the semaphore "a", the election "a" and
// the lock "a" are four independent things. Read and Write share the
// read-write lock's key space.
type Kind uint8

const (
	// Read is the shared side of a read-write lock: many tokens hold a
	// key in Read at once while no token holds it in Write.
	Read Kind = iota + 1
	// Write is the exclusive side of a read-write lock: one token holds
	// the key while no token holds it in Read.
	Write
	// Permit is one of the Mode.Limit holds of a counting semaphore.
	Permit
	// Leader is the leadership of an election: one token holds it and
	// publishes Mode.Value beside it.
	Leader
)

// String returns the kind's name: "read", "write", "permit" or "leader".
func (k Kind) String() string {
	switch k {
	case Read:
		return "read"
	case Write:
		return "write"
	case Permit:
		return "permit"
	case Leader:
		return "leader"
	}
	return "unknown"
}

// Mode says which primitive a call of Primitives is about.
type Mode struct {
	Kind Kind
	// Limit is the semaphore's size (Permit only; at least 1). Every
	// holder of a key must agree on it: an acquire with a limit other than
	// that of the key's live holders returns distlock.ErrLimitMismatch.
	Limit int
	// Waiting (Write only) says the caller tries again when refused: a
	// refused AcquireMode then leaves the waiting-writer mark (see
	// Primitives). A try-once call leaves none.
	Waiting bool
	// Value is what a leader publishes (Leader only; may be empty). A
	// re-acquire by the leader publishes its new Value; ExtendMode keeps
	// the one published.
	Value string
}

// Primitives is implemented by backends that offer read-write locks,
// counting semaphores or leader election. Capabilities.ReadWrite,
// Semaphore and Election say which kinds; a call for a kind the backend
// does not declare returns distlock.ErrUnsupported.
//
// Every grant has the token, TTL and renewal semantics of a plain lock:
// each holder has its own token and TTL, an expired holder counts for
// nothing, a re-acquire by a holder in the same Kind resets its TTL without
// a gap and keeps its fence, and a token holds a key in one Kind at a time
// (no upgrade from Read to Write: that is ErrNotAcquired). Where
// Capabilities.Fencing is true every grant of a key's key space (in any of
// its kinds) carries a fence greater than every earlier grant's.
//
// Fairness of read-write locks: writers are preferred. An AcquireMode in
// Write with Mode.Waiting refused because the key is held marks token as
// a waiting writer
// until its ttl passes or ReleaseMode(key, token, Write) is called; while a
// live mark exists, AcquireMode in Read by a token that does not hold the
// key is refused, so a stream of readers cannot starve a writer. A backend
// that is a ModeWaiter may keep this order in its server's queue instead.
type Primitives interface {
	// AcquireMode grants key to token in m for ttl, if m's kind allows one
	// more holder: Read while no writer holds or waits; Write while nobody
	// else holds; Permit while fewer than m.Limit others hold (with the
	// same limit); Leader while nobody else leads. Otherwise it returns
	// ErrNotAcquired.
	AcquireMode(ctx context.Context, key, token string, ttl time.Duration, m Mode) (Grant, error)
	// ExtendMode resets the TTL of token's hold of key in m.Kind, else
	// returns ErrNotHeld. It never re-creates an expired hold.
	ExtendMode(ctx context.Context, key, token string, ttl time.Duration, m Mode) (Grant, error)
	// ReleaseMode ends token's hold of key in m.Kind, else returns
	// ErrNotHeld. In Write it also removes token's waiting mark, if any
	// (returning ErrNotHeld when token held nothing).
	ReleaseMode(ctx context.Context, key, token string, m Mode) error
	// InspectMode reports the holders of key in m.Kind's key space without
	// changing anything.
	InspectMode(ctx context.Context, key string, m Mode) (ModeInfo, error)
}

// ModeInfo is what InspectMode learns about a key of a primitive.
type ModeInfo struct {
	// Holders is how many tokens hold the key: readers (0 when a writer
	// holds), permits, or 1 for a writer or leader.
	Holders int
	// Exclusive reports that a writer or a leader holds the key.
	Exclusive bool
	// Limit is the semaphore size the permit holders agreed on (Permit
	// only; 0 when nobody holds).
	Limit int
	// Token is the writer's or leader's token, where the backend can
	// tell. Treat it as a secret.
	Token string
	// Value is the leader's published value (Leader only).
	Value string
	// Fence is the writer's or leader's fence, where the backend fences.
	Fence uint64
	// TTL is the writer's or leader's remaining TTL, where the backend can
	// tell; zero otherwise.
	TTL time.Duration
}

// ModeWaiter is implemented by backends whose server can wait for a
// primitive itself: queue its waiters (etcd's create-revision queue,
// PostgreSQL's lock manager) or, in process, try again at each change (the
// memory backend). The Manager calls AcquireModeWait, instead of retrying
// AcquireMode, for a call that may wait.
type ModeWaiter interface {
	// AcquireModeWait is AcquireMode waiting in the server's queue until
	// the grant or until ctx ends; then it returns an error matching
	// ctx.Err(), having left the queue and holding nothing through this
	// call. Writers queued before a reader are served before it. For a
	// declared kind whose waiters the server cannot queue it returns an
	// error matching errors.ErrUnsupported at once, sending nothing: the
	// Manager then retries AcquireMode instead.
	AcquireModeWait(ctx context.Context, key, token string, ttl time.Duration, m Mode) (Grant, error)
}

// ModeWatcher is implemented by backends that can tell when the holders of
// a primitive's key may have changed (a release, a new leader) without
// being asked: pub/sub, a watch, LISTEN/NOTIFY. The Manager wakes its
// waiters and election observers with it instead of polling; expiries the
// server does not announce are still found by a slower poll.
type ModeWatcher interface {
	// WatchMode calls changed, which never blocks, each time the holders
	// of key in m.Kind's key space may have changed, until stop is called.
	// Spurious calls are allowed; missed ones are not, while the backend
	// is connected.
	WatchMode(ctx context.Context, key string, m Mode, changed func()) (stop func(), err error)
}
