package redsync_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	redsyncLocker "github.com/distlock/distlock/backends/redsync"
	"github.com/distlock/distlock/conformance"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/driver"
	"github.com/redis/go-redis/v9"
)

// singleHarness runs the suite against one redis-server of its own.
type singleHarness struct {
	srv  *distlocktest.RedisServer
	opts []redsyncLocker.Option
}

func (h singleHarness) NewBackend(ctx context.Context) (driver.Backend, error) {
	c := redis.NewClient(&redis.Options{Addr: h.srv.Addr, ContextTimeoutEnabled: true})
	return redsyncLocker.NewBackend(c, append(h.opts, redsyncLocker.WithCloseClient())...), nil
}

func (h singleHarness) Stop(context.Context) error { return h.srv.Kill() }

func (h singleHarness) Start(ctx context.Context) error { return h.srv.Start(ctx) }

func (h singleHarness) Revoke(ctx context.Context, key string) error {
	return revoke(ctx, []*distlocktest.RedisServer{h.srv}, key)
}

func (h singleHarness) RevokeMode(ctx context.Context, key string, kind driver.Kind) error {
	return revokeMode(ctx, []*distlocktest.RedisServer{h.srv}, key, kind, h.opts...)
}

// masters are servers a harness stops, starts and revokes on together.
type masters []*distlocktest.RedisServer

// Stop kills every master.
func (ms masters) Stop(context.Context) error {
	var errs error
	for _, s := range ms {
		errs = errors.Join(errs, s.Kill())
	}
	return errs
}

func (ms masters) Start(ctx context.Context) error {
	var errs error
	for _, s := range ms {
		errs = errors.Join(errs, s.Start(ctx))
	}
	return errs
}

func (ms masters) Revoke(ctx context.Context, key string) error { return revoke(ctx, ms, key) }

// RevokeMode deletes key's primitive on every master (a Redlock has none;
// harmless there).
func (ms masters) RevokeMode(ctx context.Context, key string, kind driver.Kind) error {
	return revokeMode(ctx, ms, key, kind)
}

// redlockHarness runs the suite against a Redlock of its own masters.
type redlockHarness struct{ masters }

func (h redlockHarness) NewBackend(ctx context.Context) (driver.Backend, error) {
	return redsyncLocker.NewRedlock(redlockClients(h.masters), redsyncLocker.WithCloseClient())
}

// revoke deletes key on every server at once, as an operator would. It
// finishes even if ctx ends meanwhile: a case may end as soon as the first
// deletions made it lose the lock.
func revoke(ctx context.Context, srvs []*distlocktest.RedisServer, key string) error {
	return onEach(ctx, srvs, func(ctx context.Context, c *redis.Client) error { return c.Del(ctx, key).Err() })
}

// revokeMode deletes the server keys of key's primitive of kind on every
// server at once and announces it, as an operator would.
func revokeMode(ctx context.Context, srvs []*distlocktest.RedisServer, key string, kind driver.Kind, opts ...redsyncLocker.Option) error {
	return onEach(ctx, srvs, func(ctx context.Context, c *redis.Client) error { return delMode(ctx, c, key, kind, opts...) })
}

// onEach runs f on a client of each server at once, within 10s whether or
// not ctx ends meanwhile.
func onEach(ctx context.Context, srvs []*distlocktest.RedisServer, f func(context.Context, *redis.Client) error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	errs := make([]error, len(srvs))
	var wg sync.WaitGroup
	for i, s := range srvs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := redis.NewClient(&redis.Options{Addr: s.Addr})
			errs[i] = f(ctx, c)
			_ = c.Close()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// delMode deletes key's primitive of kind through c and publishes the
// change on its channel.
func delMode(ctx context.Context, c redis.Cmdable, key string, kind driver.Kind, opts ...redsyncLocker.Option) error {
	if err := c.Del(ctx, redsyncLocker.ModeKeys(key, kind, opts...)...).Err(); err != nil {
		return err
	}
	return c.Publish(ctx, redsyncLocker.ModeChannel(key, kind, opts...), "").Err()
}

// clusterHarness runs the suite against a Redis Cluster of its own,
// through go-redis's ClusterClient.
type clusterHarness struct{ c *distlocktest.RedisCluster }

func (h clusterHarness) NewBackend(ctx context.Context) (driver.Backend, error) {
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: h.c.Addrs(), ContextTimeoutEnabled: true})
	return redsyncLocker.NewBackend(c, redsyncLocker.WithCloseClient()), nil
}

// Stop kills every master.
func (h clusterHarness) Stop(context.Context) error {
	var errs error
	for _, m := range h.c.Masters {
		errs = errors.Join(errs, m.Kill())
	}
	return errs
}

// Start restarts every master and waits until the cluster is healthy
// again (each node keeps its slots in its nodes.conf).
func (h clusterHarness) Start(ctx context.Context) error {
	var errs error
	for _, m := range h.c.Masters {
		errs = errors.Join(errs, m.Start(ctx))
	}
	if errs != nil {
		return errs
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return h.c.WaitHealthy(ctx)
}

func (h clusterHarness) Revoke(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: h.c.Addrs()})
	defer c.Close()
	return c.Del(ctx, key).Err()
}

func (h clusterHarness) RevokeMode(ctx context.Context, key string, kind driver.Kind) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: h.c.Addrs()})
	defer c.Close()
	return delMode(ctx, c, key, kind, redsyncLocker.WithCluster())
}

// sentinelHarness runs the suite against a master found through a
// Sentinel, with go-redis's failover client.
type sentinelHarness struct{ s *distlocktest.RedisSentinel }

func (h sentinelHarness) NewBackend(ctx context.Context) (driver.Backend, error) {
	c := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:            h.s.MasterName,
		SentinelAddrs:         []string{h.s.Sentinel.Addr},
		ContextTimeoutEnabled: true,
	})
	return redsyncLocker.NewBackend(c, redsyncLocker.WithCloseClient()), nil
}

// Stop kills the master (the Sentinel stays up; with no replica there is
// nothing to fail over to).
func (h sentinelHarness) Stop(context.Context) error { return h.s.Master.Kill() }

func (h sentinelHarness) Start(ctx context.Context) error { return h.s.Master.Start(ctx) }

func (h sentinelHarness) Revoke(ctx context.Context, key string) error {
	return revoke(ctx, []*distlocktest.RedisServer{h.s.Master}, key)
}

func (h sentinelHarness) RevokeMode(ctx context.Context, key string, kind driver.Kind) error {
	return revokeMode(ctx, []*distlocktest.RedisServer{h.s.Master}, key, kind)
}

var (
	_ conformance.Stopper = clusterHarness{}
	_ conformance.Revoker = clusterHarness{}
	_ conformance.Stopper = sentinelHarness{}
	_ conformance.Revoker = sentinelHarness{}
	_ conformance.Stopper = singleHarness{}
	_ conformance.Revoker = singleHarness{}
	_ conformance.Stopper = redlockHarness{}
	_ conformance.Revoker = redlockHarness{}

	_ conformance.ModeRevoker = singleHarness{}
	_ conformance.ModeRevoker = clusterHarness{}
	_ conformance.ModeRevoker = sentinelHarness{}
	_ conformance.ModeRevoker = redlockHarness{}
)

func TestConformance(t *testing.T) {
	t.Run("SingleNode", func(t *testing.T) {
		conformance.Run(t, singleHarness{srv: distlocktest.StartRedis(t, distlocktest.RedisOptions{})})
	})
	t.Run("SingleNodeWithoutFencing", func(t *testing.T) {
		conformance.Run(t, singleHarness{
			srv:  distlocktest.StartRedis(t, distlocktest.RedisOptions{}),
			opts: []redsyncLocker.Option{redsyncLocker.WithoutFencing()},
		})
	})
	t.Run("Cluster3", func(t *testing.T) {
		conformance.Run(t, clusterHarness{c: distlocktest.StartRedisCluster(t, 3)})
	})
	t.Run("Sentinel", func(t *testing.T) {
		conformance.Run(t, sentinelHarness{s: distlocktest.StartRedisSentinel(t, 0)})
	})
	t.Run("Redlock5", func(t *testing.T) {
		// A Redlock grant loses its round time and drift allowance from
		// the TTL, and five servers share this machine with the race
		// detector: a 1s short TTL keeps the expiry cases meaningful.
		conformance.Run(t, redlockHarness{startN(t, 5)}, conformance.WithShortTTL(time.Second))
	})
}
