package conformance

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/etcd"
	"github.com/distlock/distlock/backends/postgres"
	"github.com/distlock/distlock/driver"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// URLOption configures the Harness URL returns.
type URLOption func(*urlConfig)

type urlConfig struct {
	stopper Stopper
	revoker Revoker
	noRev   bool
}

// WithStopper makes the harness a Stopper that calls s, so the outage
// cases run: pass a server the test can stop (a distlocktest.Container,
// the Stopper of Proxy).
func WithStopper(s Stopper) URLOption { return func(c *urlConfig) { c.stopper = s } }

// WithRevoker replaces the harness's Revoker (by default RevokerFor the
// URL); a nil r turns revoking off.
func WithRevoker(r Revoker) URLOption {
	return func(c *urlConfig) { c.revoker, c.noRev = r, r == nil }
}

// URL returns a Harness for the deployment at rawURL: every backend it
// makes is distlock.OpenBackend(ctx, rawURL), with a client of its own, as
// separate processes would have. Import the URL's backend package (a blank
// import is enough) so that its scheme is registered.
//
// For the URLs of this module's backends — redis, rediss, redlock,
// redlocks, etcd, etcds, postgres, postgresql — the harness is also a
// Revoker (RevokerFor), so the lock-loss cases run. It is a Stopper only
// with WithStopper: the suite cannot stop a server it did not start (Proxy
// gives one for any URL).
//
//	func TestLocks(t *testing.T) {
//		conformance.Run(t, conformance.URL(os.Getenv("LOCK_URL")))
//	}
func URL(rawURL string, opts ...URLOption) Harness {
	cfg := urlConfig{}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.revoker == nil && !cfg.noRev {
		cfg.revoker = RevokerFor(rawURL)
	}
	h := urlHarness{raw: rawURL}
	switch {
	case cfg.stopper != nil && cfg.revoker != nil:
		return struct {
			urlHarness
			Stopper
			Revoker
		}{h, cfg.stopper, cfg.revoker}
	case cfg.stopper != nil:
		return struct {
			urlHarness
			Stopper
		}{h, cfg.stopper}
	case cfg.revoker != nil:
		return struct {
			urlHarness
			Revoker
		}{h, cfg.revoker}
	}
	return h
}

type urlHarness struct{ raw string }

func (h urlHarness) NewBackend(ctx context.Context) (driver.Backend, error) {
	return distlock.OpenBackend(ctx, h.raw)
}

// modeRevokers maps a URL scheme to what takes a primitive's key away on
// its server (ModeRevoker); the revoke_<backend>.go files fill it.
var modeRevokers = map[string]func(rawURL string) func(ctx context.Context, key string, kind driver.Kind) error{}

// RevokeMode implements ModeRevoker for the URLs of this module's
// backends; for other schemes it returns an error matching
// errors.ErrUnsupported, and the cases that need it skip.
func (h urlHarness) RevokeMode(ctx context.Context, key string, kind driver.Kind) error {
	u, err := url.Parse(h.raw)
	if err != nil {
		return errors.New("conformance: RevokeMode: the harness URL does not parse")
	}
	f := modeRevokers[strings.ToLower(u.Scheme)]
	if f == nil {
		return fmt.Errorf("conformance: no ModeRevoker for scheme %q: %w", u.Scheme, errors.ErrUnsupported)
	}
	return f(h.raw)(ctx, key, kind)
}

// RevokerFunc turns a function into a Revoker.
type RevokerFunc func(ctx context.Context, key string) error

// Revoke calls f.
func (f RevokerFunc) Revoke(ctx context.Context, key string) error { return f(ctx, key) }

// RevokerFor returns the Revoker for a URL of one of this module's
// backends (RedisRevoker, EtcdRevoker, PostgresRevoker), or nil for
// another scheme.
func RevokerFor(rawURL string) Revoker {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil
	}
	switch strings.ToLower(u.Scheme) {
	case "redis", "rediss", "redlock", "redlocks":
		return RedisRevoker(rawURL)
	case "etcd", "etcds":
		return EtcdRevoker(rawURL)
	case "postgres", "postgresql":
		return PostgresRevoker(rawURL)
	}
	return nil
}

// revokeTimeout bounds a revocation. Revokers finish even when the case's
// context ends meanwhile: a case may end as soon as the holder notices the
// loss, often before the revoking call returns.
const revokeTimeout = 20 * time.Second

// RedisRevoker deletes a lock as an operator would on the Redis server of a
// redis:// or rediss:// URL, or on every master of a redlock:// or
// redlocks:// URL at once: the lock lives under its key as given (DEL key).
func RedisRevoker(rawURL string) Revoker {
	return RevokerFunc(func(ctx context.Context, key string) error {
		return onRedisNodes(ctx, rawURL, func(ctx context.Context, c *redis.Client) error { return c.Del(ctx, key).Err() })
	})
}

// redisNodes returns go-redis options for every server of a redis or
// redlock URL (its distlock-only parameter fencing removed).
func redisNodes(rawURL string) ([]*redis.Options, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, errors.New("conformance: malformed Redis URL")
	}
	q := u.Query()
	q.Del("fencing")
	scheme := strings.ToLower(u.Scheme)
	var hosts []string
	switch scheme {
	case "redis", "rediss":
		hosts = []string{u.Host}
	case "redlock", "redlocks":
		hosts = append(strings.Split(u.Host, ","), q["addr"]...)
		q.Del("addr")
		scheme = "redis"
		if strings.EqualFold(u.Scheme, "redlocks") {
			scheme = "rediss"
		}
	default:
		return nil, fmt.Errorf("conformance: scheme %q is not Redis", u.Scheme)
	}
	var out []*redis.Options
	for _, h := range hosts {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		n := *u
		n.Scheme, n.Host, n.RawQuery = scheme, h, q.Encode()
		opts, err := redis.ParseURL(n.String())
		if err != nil {
			return nil, fmt.Errorf("conformance: Redis URL of %s: malformed", h)
		}
		out = append(out, opts)
	}
	return out, nil
}

// EtcdRevoker deletes a lock as an operator would on the etcd cluster of an
// etcd:// or etcds:// URL: it deletes the holder's entry, the first in the
// key's queue (etcd.QueuePrefix of the URL's prefix parameter, by default
// etcd.DefaultPrefix, and the key).
func EtcdRevoker(rawURL string) Revoker {
	return RevokerFunc(func(ctx context.Context, key string) error {
		return onEtcd(ctx, rawURL, func(ctx context.Context, cli *clientv3.Client, prefix string) error {
			// The holder's entry is the first of the key's queue.
			resp, err := cli.Get(ctx, etcd.QueuePrefix(prefix, key), clientv3.WithFirstCreate()...)
			if err != nil || len(resp.Kvs) == 0 {
				return err
			}
			_, err = cli.Delete(ctx, string(resp.Kvs[0].Key))
			return err
		})
	})
}

// onEtcd runs f with a client of the etcd cluster of rawURL and the URL's
// key prefix, within revokeTimeout whether or not ctx ends meanwhile.
func onEtcd(ctx context.Context, rawURL string, f func(ctx context.Context, cli *clientv3.Client, prefix string) error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), revokeTimeout)
	defer cancel()
	u, err := url.Parse(rawURL)
	if err != nil {
		return errors.New("conformance: malformed etcd URL")
	}
	prefix := etcd.DefaultPrefix
	if u.Query().Has("prefix") {
		prefix = u.Query().Get("prefix")
	}
	b, err := etcd.Open(ctx, u)
	if err != nil {
		return err
	}
	defer b.Close()
	return f(ctx, b.(*etcd.Backend).Client(), prefix)
}

// PostgresRevoker takes a lock away as an operator would on the PostgreSQL
// server of a postgres:// URL: it terminates the server session holding
// the key's advisory lock (postgres.LockID of the URL's
// distlock_namespace and the key) and waits until the lock is gone. It
// fails if no session holds the key.
func PostgresRevoker(rawURL string) Revoker {
	return RevokerFunc(func(ctx context.Context, key string) error {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), revokeTimeout)
		defer cancel()
		dsn, q, err := postgresDSN(rawURL)
		if err != nil {
			return err
		}
		n, err := TerminatePostgresHolder(ctx, dsn, postgres.LockID(q.Get("distlock_namespace"), key))
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("conformance: no PostgreSQL session holds %q", key)
		}
		return nil
	})
}

// postgresDSN returns the server address of a postgres:// URL without
// distlock's own parameters, and the URL's parameters.
func postgresDSN(rawURL string) (string, url.Values, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", nil, errors.New("conformance: malformed PostgreSQL URL")
	}
	all := u.Query()
	q := u.Query()
	for k := range q {
		if strings.HasPrefix(k, "distlock_") {
			q.Del(k)
		}
	}
	c := *u
	c.RawQuery = q.Encode()
	return c.String(), all, nil
}

// TerminatePostgresHolder ends the server sessions holding the session
// advisory lock id (pg_terminate_backend) on the server dsn names, and
// waits, at most ten seconds, until the lock is gone. It returns how many
// sessions it terminated. Once the termination is sent it reports success
// even if the server goes away meanwhile.
func TerminatePostgresHolder(ctx context.Context, dsn string, id int64) (int, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	const where = `locktype = 'advisory' AND granted AND objsubid = 1 AND classid::bigint = $1 AND objid::bigint = $2`
	hi, lo := int64(uint64(id)>>32), int64(uint32(id))
	rows, err := conn.Query(ctx, "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE "+where, hi, lo)
	if err != nil {
		return 0, err
	}
	n := 0
	for rows.Next() {
		n++
	}
	rows.Close()
	if err := rows.Err(); err != nil || n == 0 {
		return n, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		var left int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE "+where, hi, lo).Scan(&left); err != nil || left == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return n, nil
		case <-time.After(time.Duration(min(i+1, 10)) * time.Millisecond):
		}
	}
	return n, nil
}
