package redsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
	"github.com/redis/go-redis/v9"
)

// URL forms registered with distlock.Open (import this package, with a
// blank import if need be):
//
//	redis://[[user]:password@]host:port[/db][?fencing=false&go-redis options]
//	rediss://…                                  (TLS)
//	redlock://[[user]:password@]h1:p1,h2:p2,h3:p3[/db][?addr=h4:p4&…]
//	redlocks://…                                (Redlock over TLS)
//
// The redis forms are go-redis's own (redis.ParseURL: dial_timeout,
// pool_size, protocol, … as query parameters), plus fencing=false for
// WithoutFencing. In the redlock forms every
// host in the comma list needs its port; masters may also be named with
// repeated addr parameters; user, password, db and the other parameters
// apply to every master. Opening pings the server (or the masters: a
// quorum must answer) so that a wrong address, a wrong password or a
// server that is not Redis is reported at once; passwords never appear in
// the errors.
func init() {
	distlock.Register("redis", openRedis)
	distlock.Register("rediss", openRedis)
	distlock.Register("redlock", openRedlock)
	distlock.Register("redlocks", openRedlock)
}

// quietRedisOnce routes go-redis's own log lines (dial failures, pool
// warnings) away from stderr the first time distlock creates a go-redis
// client from a URL: go-redis has one process-wide logger, so it becomes
// slog.Default() at Debug level (invisible unless the application enables
// Debug). An application that sets its own with redis.SetLogger after Open
// keeps it. distlock's own errors already say what went wrong, once.
var quietRedisOnce sync.Once

type slogRedis struct{}

func (slogRedis) Printf(ctx context.Context, format string, v ...any) {
	slog.Default().DebugContext(ctx, fmt.Sprintf(format, v...), "component", "go-redis")
}

func quietRedis() { quietRedisOnce.Do(func() { redis.SetLogger(slogRedis{}) }) }

// DefaultConnectTimeout bounds Open (its ping of every server) unless the
// URL's dial_timeout says otherwise, whatever the caller's context.
const DefaultConnectTimeout = 5 * time.Second

func openRedis(ctx context.Context, u *url.URL) (driver.Backend, error) {
	quietRedis()
	var bopts []Option
	q := u.Query()
	if q.Has("fencing") {
		switch strings.ToLower(q.Get("fencing")) {
		case "false", "0", "off", "no":
			bopts = append(bopts, WithoutFencing())
		case "true", "1", "on", "yes":
		default:
			return nil, fmt.Errorf("%w: fencing=%q: want true or false", distlock.ErrInvalidArgument, q.Get("fencing"))
		}
		q.Del("fencing")
		c := *u
		c.RawQuery = q.Encode()
		u = &c
	}
	opts, err := parseURL(u.String())
	if err != nil {
		return nil, err
	}
	client := redis.NewClient(opts)
	if err := ping(ctx, client); err != nil {
		_ = client.Close()
		return nil, err
	}
	return NewBackend(client, append(bopts, WithCloseClient())...), nil
}

func openRedlock(ctx context.Context, u *url.URL) (driver.Backend, error) {
	quietRedis()
	scheme := "redis"
	if strings.EqualFold(u.Scheme, "redlocks") {
		scheme = "rediss"
	}
	q := u.Query()
	var addrs []string
	for _, h := range strings.Split(u.Host, ",") {
		if h = strings.TrimSpace(h); h != "" {
			addrs = append(addrs, h)
		}
	}
	addrs = append(addrs, q["addr"]...)
	q.Del("addr")
	seen := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		k := strings.ToLower(a)
		if seen[k] {
			return nil, fmt.Errorf("%w: redlock URL lists master %s twice: its masters must be independent servers", distlock.ErrInvalidArgument, a)
		}
		seen[k] = true
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%w: redlock URL names no master (redlock://h1:p1,h2:p2,h3:p3)", distlock.ErrInvalidArgument)
	}
	clients := make([]*redis.Client, 0, len(addrs))
	closeAll := func() {
		for _, c := range clients {
			_ = c.Close()
		}
	}
	for _, a := range addrs {
		nu := url.URL{Scheme: scheme, User: u.User, Host: a, Path: u.Path, RawQuery: q.Encode()}
		opts, err := parseURL(nu.String())
		if err != nil {
			closeAll()
			return nil, err
		}
		// Redlock tolerates a failed master by design: answer fast
		// rather than retry against a dead one.
		if !q.Has("max_retries") {
			opts.MaxRetries = -1
		}
		clients = append(clients, redis.NewClient(opts))
	}
	errs := make([]error, len(clients))
	done := make(chan struct{}, len(clients))
	for i, c := range clients {
		go func() {
			errs[i] = ping(ctx, c)
			done <- struct{}{}
		}()
	}
	for range clients {
		<-done
	}
	var failed []error
	for _, err := range errs {
		if err == nil {
			continue
		}
		if !errors.Is(err, distlock.ErrUnavailable) || isConfigError(err) {
			closeAll()
			return nil, err
		}
		failed = append(failed, err)
	}
	if quorum := len(clients)/2 + 1; len(clients)-len(failed) < quorum {
		closeAll()
		return nil, distlock.Unavailable(fmt.Errorf("redlock: only %d of %d masters answer, quorum is %d: %w", len(clients)-len(failed), len(clients), quorum, errors.Join(failed...)))
	}
	ucs := make([]redis.UniversalClient, len(clients))
	for i, c := range clients {
		ucs[i] = c
	}
	r, err := NewRedlock(ucs, WithCloseClient())
	if err != nil {
		closeAll()
		return nil, err
	}
	return r, nil
}

// parseURL is redis.ParseURL with distlock's defaults and error kinds.
func parseURL(raw string) (*redis.Options, error) {
	opts, err := redis.ParseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", distlock.ErrInvalidArgument, err)
	}
	// Let ctx deadlines interrupt commands to a stalled server.
	opts.ContextTimeoutEnabled = true
	if !strings.Contains(raw, "dial_timeout=") {
		opts.DialTimeout = DefaultConnectTimeout
	}
	return opts, nil
}

// ping checks that addr speaks Redis and accepts the credentials, within
// the client's dial timeout (the URL's dial_timeout, else
// DefaultConnectTimeout) whatever ctx allows.
func ping(ctx context.Context, c *redis.Client) error {
	ctx, cancel := context.WithTimeout(ctx, c.Options().DialTimeout)
	defer cancel()
	addr := c.Options().Addr
	err := c.Ping(ctx).Err()
	if err == nil {
		return nil
	}
	err = classify(err)
	if isConfigError(err) {
		return fmt.Errorf("redis at %s: %w", addr, err)
	}
	if isProtocolError(err) {
		return distlock.Unavailable(fmt.Errorf("redis at %s: the server does not speak the Redis protocol: %w", addr, err))
	}
	return distlock.Unavailable(fmt.Errorf("redis at %s: %w", addr, err))
}

func isConfigError(err error) bool {
	return strings.Contains(err.Error(), "authentication failed")
}

func isProtocolError(err error) bool {
	msg := err.Error()
	for _, s := range []string{"can't parse", "invalid reply", "unknown reply", "protocol error", "EOF", "connection reset"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
