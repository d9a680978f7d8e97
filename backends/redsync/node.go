package redsync

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/distlock/distlock"
	"github.com/redis/go-redis/v9"
)

// Default names of the keys and channels the backend uses beside the lock
// keys themselves (which are the caller's keys, unprefixed, as in redsync).
const (
	// DefaultFenceKey is the counter that numbers grants on a single
	// Redis server. On Redis Cluster there is one counter per hash slot,
	// named DefaultFenceKey + ":{tag}" with a tag in the lock key's slot.
	DefaultFenceKey = "distlock:fence"
	// DefaultChannelPrefix prefixes the pub/sub channel of each key on
	// which releases are announced.
	DefaultChannelPrefix = "distlock:release:"
)

// node is one Redis deployment (a server, a Sentinel-managed primary or a
// Cluster) reached through one go-redis client.
type node struct {
	client        redis.UniversalClient
	index         int  // position among a Redlock's masters
	owned         bool // opened from a URL: Close closes the client
	cluster       bool
	fenced        bool
	fenceKey      string
	channelPrefix string
	notify        notifier
}

func newNode(client redis.UniversalClient, owned bool, cfg *config) *node {
	n := &node{
		client:        client,
		owned:         owned,
		fenced:        !cfg.noFence,
		fenceKey:      cfg.fenceKey,
		channelPrefix: cfg.channelPrefix,
	}
	_, n.cluster = client.(*redis.ClusterClient)
	n.notify.client = client
	return n
}

// fenceKeyFor returns the counter key for key: one for a whole server, or
// one per hash slot on Redis Cluster so the acquire script's two keys
// always share a slot.
func (n *node) fenceKeyFor(key string) string {
	if !n.cluster {
		return n.fenceKey
	}
	return n.fenceKey + ":{" + slotTag(keySlot(key)) + "}"
}

func (n *node) channel(key string) string { return n.channelPrefix + key }

// acquire grants key: with acquireScript when fenced; else as a Redlock
// round with nonce 0 (a plain SET NX PX when the key is free). It returns
// the fence (0 unfenced) or -1.
func (n *node) acquire(ctx context.Context, key, token string, ttl time.Duration) (int64, error) {
	if n.fenced {
		return run(ctx, acquireScript, n.client, []string{key, n.fenceKeyFor(key)}, token, ttl.Milliseconds())
	}
	r, err := n.redlockAcquire(ctx, key, token, "0", ttl)
	if err != nil || r == 0 {
		return -1, err
	}
	return 0, nil
}

// redlockAcquire takes key for a round with nonce (the value is
// nonce:token): 1 created, 2 re-acquired, 0 taken. A free key costs a
// plain SET NX PX, without a script; when that fails (the key is taken,
// maybe by token itself) redlockAcquireScript decides — at once, without
// the SET NX, while this client waits for some key (contention: save the
// round trip).
func (n *node) redlockAcquire(ctx context.Context, key, token, nonce string, ttl time.Duration) (int64, error) {
	if n.notify.active.Load() == 0 {
		ok, err := n.client.SetNX(ctx, key, nonce+":"+token, ttl).Result()
		if err != nil {
			return 0, classify(err)
		}
		if ok {
			return 1, nil
		}
	}
	return run(ctx, redlockAcquireScript, n.client, []string{key}, token, ttl.Milliseconds(), nonce)
}

// redlockCleanup deletes key if it still holds nonce:token.
func (n *node) redlockCleanup(ctx context.Context, key, token, nonce string) (int64, error) {
	return run(ctx, redlockCleanupScript, n.client, []string{key}, nonce, token, n.channel(key))
}

func (n *node) extend(ctx context.Context, key, token string, ttl time.Duration) (int64, error) {
	return run(ctx, extendScript, n.client, []string{key}, token, ttl.Milliseconds())
}

func (n *node) release(ctx context.Context, key, token string) (int64, error) {
	return run(ctx, releaseScript, n.client, []string{key}, token, n.channel(key))
}

func (n *node) close() error {
	n.notify.close()
	if n.owned {
		return n.client.Close()
	}
	return nil
}

// run evaluates script by its SHA1 (loading it on NOSCRIPT) and returns
// its integer reply; failures are wrapped to match ErrUnavailable.
func run(ctx context.Context, s *redis.Script, c redis.Scripter, keys []string, args ...any) (int64, error) {
	v, err := s.Run(ctx, c, keys, args...).Int64()
	if err != nil {
		return 0, classify(err)
	}
	return v, nil
}

// classify wraps a go-redis error so that it matches ErrUnavailable, and
// names the usual configuration mistakes.
func classify(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return distlock.Unavailable(err)
	}
	msg := err.Error()
	switch {
	case strings.HasPrefix(msg, "NOAUTH"), strings.HasPrefix(msg, "WRONGPASS"),
		strings.Contains(msg, "invalid password"), strings.Contains(msg, "invalid username-password"):
		return distlock.Unavailable(fmt.Errorf("redis authentication failed: %w", err))
	case strings.HasPrefix(msg, "READONLY"):
		return distlock.Unavailable(fmt.Errorf("redis replica is read-only (point the client at the primary): %w", err))
	}
	return distlock.Unavailable(err)
}
