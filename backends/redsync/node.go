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
	batch         batcher // sends the lock commands
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
	n.batch.client = client
	n.batch.conns.init(client)
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
		return n.batch.runScript(ctx, acquireScript, []string{key, n.fenceKeyFor(key)}, token, ttl.Milliseconds())
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
		ok, err := n.batch.setNX(ctx, key, nonce+":"+token, ttl)
		if err != nil || ok == 1 {
			return ok, err
		}
	}
	return n.batch.runScript(ctx, redlockAcquireScript, []string{key}, token, ttl.Milliseconds(), nonce)
}

// redlockCleanup deletes key if it still holds nonce:token.
func (n *node) redlockCleanup(ctx context.Context, key, token, nonce string) (int64, error) {
	return n.batch.runScript(ctx, redlockCleanupScript, []string{key}, nonce, token, n.channel(key))
}

func (n *node) extend(ctx context.Context, key, token string, ttl time.Duration) (int64, error) {
	return n.batch.runScript(ctx, extendScript, []string{key}, token, ttl.Milliseconds())
}

// transfer re-grants key from token from to token to (transferScript):
// the new fence (0 unfenced), or -1 if from does not hold key.
func (n *node) transfer(ctx context.Context, key, from, to string, ttl time.Duration) (int64, error) {
	keys := []string{key}
	if n.fenced {
		keys = append(keys, n.fenceKeyFor(key))
	}
	return n.batch.runScript(ctx, transferScript, keys, from, to, ttl.Milliseconds())
}

// redlockTransfer moves key from token from to token to for a Redlock
// round with nonce (redlockTransferScript). moved is false if from does
// not hold key; otherwise old and expireAt are what undoTransfer needs.
// It does not go through the batcher: its reply is not an integer.
func (n *node) redlockTransfer(ctx context.Context, key, from, to, nonce string, ttl time.Duration) (old string, expireAt int64, moved bool, err error) {
	v, err := redlockTransferScript.Run(ctx, n.client, []string{key}, from, to, ttl.Milliseconds(), nonce).Slice()
	switch {
	case errors.Is(err, redis.Nil):
		return "", 0, false, nil
	case err != nil:
		return "", 0, false, classify(err)
	case len(v) != 2:
		return "", 0, false, distlock.Unavailable(fmt.Errorf("redis: unexpected transfer reply %v", v))
	}
	old, _ = v[0].(string)
	expireAt, _ = v[1].(int64)
	return old, expireAt, true, nil
}

// undoTransfer puts back what redlockTransfer replaced, if the key still
// holds what it wrote.
func (n *node) undoTransfer(ctx context.Context, key, to, nonce, old string, expireAt int64) (int64, error) {
	return n.batch.runScript(ctx, redlockUndoTransferScript, []string{key}, nonce, to, old, expireAt, n.channel(key))
}

func (n *node) release(ctx context.Context, key, token string) (int64, error) {
	return n.batch.runScript(ctx, releaseScript, []string{key}, token, n.channel(key))
}

func (n *node) close() error {
	n.notify.close()
	n.batch.close()
	if n.owned {
		return n.client.Close()
	}
	return nil
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
