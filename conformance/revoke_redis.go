package conformance

import (
	"context"
	"errors"
	"sync"

	redsyncbackend "github.com/distlock/distlock/backends/redsync"
	"github.com/distlock/distlock/driver"
	"github.com/redis/go-redis/v9"
)

func init() {
	for _, scheme := range []string{"redis", "rediss", "redlock", "redlocks"} {
		modeRevokers[scheme] = redisModeRevoke
	}
}

// redisModeRevoke returns a ModeRevoker's function for the Redis server of
// a redis:// or rediss:// URL (or every master of a redlock URL, which
// holds no primitives): it deletes the server keys of key's primitive
// (redsync.ModeKeys with the default fence key) in one DEL, taking it from
// all its holders at once, and announces the change on the primitive's
// channel (redsync.ModeChannel) so that watchers look again.
func redisModeRevoke(rawURL string) func(ctx context.Context, key string, kind driver.Kind) error {
	return func(ctx context.Context, key string, kind driver.Kind) error {
		keys := redsyncbackend.ModeKeys(key, kind)
		if keys == nil {
			return errors.New("conformance: unknown primitive kind")
		}
		return onRedisNodes(ctx, rawURL, func(ctx context.Context, c *redis.Client) error {
			if err := c.Del(ctx, keys...).Err(); err != nil {
				return err
			}
			return c.Publish(ctx, redsyncbackend.ModeChannel(key, kind), "").Err()
		})
	}
}

// onRedisNodes runs f on a client of every server of a redis or redlock
// URL at once, within revokeTimeout whether or not ctx ends meanwhile.
func onRedisNodes(ctx context.Context, rawURL string, f func(context.Context, *redis.Client) error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), revokeTimeout)
	defer cancel()
	nodes, err := redisNodes(rawURL)
	if err != nil {
		return err
	}
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, opts := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := redis.NewClient(opts)
			errs[i] = f(ctx, c)
			_ = c.Close()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
