package redsync

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/distlock/distlock"
	"github.com/redis/go-redis/v9"
)

// Backend is the distlock backend over one Redis deployment: a single
// server, a Sentinel-managed primary (redis.NewFailoverClient) or a Redis
// Cluster (redis.NewClusterClient) — anything behind a
// redis.UniversalClient. Grants are fenced. Wrap it with distlock.New, or
// use NewRedsyncLockManager.
type Backend struct {
	n         *node
	closeOnce sync.Once
	closeErr  error
}

var (
	_ distlock.Backend         = (*Backend)(nil)
	_ distlock.ReleaseNotifier = (*Backend)(nil)
	_ distlock.Transferer      = (*Backend)(nil)
)

// NewBackend returns a backend over client. The client stays the
// caller's: Close does not close it unless WithCloseClient is given.
//
// For ctx deadlines to interrupt a command to a stalled server, create the
// client with ContextTimeoutEnabled: true (URL-opened clients have it);
// otherwise go-redis waits up to its ReadTimeout.
func NewBackend(client redis.UniversalClient, opts ...Option) *Backend {
	cfg := newConfig(opts)
	return &Backend{n: newNode(client, cfg.closeClient, cfg)}
}

// NewRedsyncLockManager returns a distlock Manager over client: the
// constructor of go-common's lockmanager/redsync, kept so that code written
// for it compiles with only its import path changed. Options:
// WithTokenGenerator, WithRedsyncOptions (tries and retry delay become
// the retry strategy), WithManagerOptions.
func NewRedsyncLockManager(client redis.UniversalClient, opts ...Option) *distlock.Manager {
	cfg := newConfig(opts)
	return distlock.New(&Backend{n: newNode(client, cfg.closeClient, cfg)}, cfg.managerOptions()...)
}

// Client returns the go-redis client the backend talks through.
func (b *Backend) Client() redis.UniversalClient { return b.n.client }

// Acquire grants key to token for ttl in one script: a free key gets the
// next fencing number; a key held by token has its TTL reset in place and
// keeps its fence; a key held by another token gives ErrNotAcquired.
func (b *Backend) Acquire(ctx context.Context, key, token string, ttl time.Duration) (distlock.Grant, error) {
	f, err := b.n.acquire(ctx, key, token, ttl)
	if err != nil {
		return distlock.Grant{}, err
	}
	if f < 0 {
		return distlock.Grant{}, distlock.ErrNotAcquired
	}
	return distlock.Grant{TTL: ttl, Fence: uint64(f)}, nil
}

// Extend resets key's TTL if token holds it, else returns ErrNotHeld; an
// expired lock is never re-created.
func (b *Backend) Extend(ctx context.Context, key, token string, ttl time.Duration) (distlock.Grant, error) {
	f, err := b.n.extend(ctx, key, token, ttl)
	if err != nil {
		return distlock.Grant{}, err
	}
	if f < 0 {
		return distlock.Grant{}, distlock.ErrNotHeld
	}
	return distlock.Grant{TTL: ttl, Fence: uint64(f)}, nil
}

// Release deletes key if token holds it and announces the release to
// waiters; otherwise it returns ErrNotHeld.
func (b *Backend) Release(ctx context.Context, key, token string) error {
	n, err := b.n.release(ctx, key, token)
	if err != nil {
		return err
	}
	if n == 0 {
		return distlock.ErrNotHeld
	}
	return nil
}

// Transfer implements distlock.Transferer: if from holds key, key goes to
// to for ttl in one script (one round trip, atomic on the server), with a
// new fencing number greater than from's (0 under WithoutFencing); the key
// is never free in between. Otherwise it returns ErrNotHeld and changes
// nothing. Waiters are not woken (the key is still taken); the next
// release, by to, wakes them as a release by from would have.
func (b *Backend) Transfer(ctx context.Context, key, from, to string, ttl time.Duration) (distlock.Grant, error) {
	f, err := b.n.transfer(ctx, key, from, to, ttl)
	if err != nil {
		return distlock.Grant{}, err
	}
	if f < 0 {
		return distlock.Grant{}, distlock.ErrNotHeld
	}
	return distlock.Grant{TTL: ttl, Fence: uint64(f)}, nil
}

// Capabilities reports fencing (unless WithoutFencing), cross-instance
// release and millisecond TTLs.
func (b *Backend) Capabilities() distlock.Capabilities {
	return distlock.Capabilities{
		Name:                 "redis",
		Fencing:              b.n.fenced,
		CrossInstanceRelease: true,
		MinTTL:               time.Millisecond,
		Granularity:          time.Millisecond,
	}
}

// SubscribeRelease implements distlock.ReleaseNotifier over the backend's
// shared pub/sub connection. It returns once the server has confirmed the
// subscription, so a release right after it is not missed.
func (b *Backend) SubscribeRelease(ctx context.Context, key string) (<-chan struct{}, func(), error) {
	ch := make(chan struct{}, 1)
	ready, stop, err := b.n.notify.add(ctx, b.n.channel(key), ch)
	if err != nil {
		return nil, nil, classify(err)
	}
	if err := waitReady(ctx, ready); err != nil {
		stop()
		return nil, nil, err
	}
	return ch, stop, nil
}

// waitReady waits for one of readies to close, for ctx, or subscribeWait.
func waitReady(ctx context.Context, ready <-chan struct{}) error {
	select {
	case <-ready:
		return nil
	default:
	}
	t := time.NewTimer(subscribeWait)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return distlock.Unavailable(ctx.Err())
	case <-t.C:
		return distlock.Unavailable(errors.New("redis: subscription not confirmed in time"))
	}
}

// Close ends the pub/sub subscription. It closes the client only if the
// backend opened it (from a URL).
func (b *Backend) Close() error {
	b.closeOnce.Do(func() { b.closeErr = b.n.close() })
	return b.closeErr
}
