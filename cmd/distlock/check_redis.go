package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

func init() {
	registerWarner(redisWarnings, "redis", "rediss", "redlock", "redlocks")
	// go-redis logs dial failures itself; the CLI reports errors once, in
	// its own words.
	redis.SetLogger(quietRedis{})
}

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

// redisWarnings inspects every Redis server the URL names (the masters of
// a redlock:// URL) for settings that can make a lock vanish while its
// holder still believes it holds it.
//
// A server that does not answer is a warning when others do (Redlock
// works with a quorum) and an error when none does: nothing was inspected.
func redisWarnings(ctx context.Context, u *url.URL) ([]string, error) {
	var (
		warns []string
		errs  []error
	)
	nodes := redisNodes(u)
	for _, node := range nodes {
		w, err := redisNodeWarnings(ctx, node)
		if err != nil {
			errs = append(errs, err)
			warns = append(warns, err.Error())
			continue
		}
		warns = append(warns, w...)
	}
	if len(nodes) == 0 || len(errs) == len(nodes) {
		if len(errs) == 0 {
			return nil, fmt.Errorf("redis: no server address in the URL")
		}
		return nil, errors.Join(errs...)
	}
	return warns, nil
}

// redisNodes returns one redis:// (or rediss://) URL per server of u.
func redisNodes(u *url.URL) []*url.URL {
	scheme := strings.ToLower(u.Scheme)
	if scheme == "redis" || scheme == "rediss" {
		return []*url.URL{u}
	}
	tls := scheme == "redlocks"
	q := u.Query()
	addrs := q["addr"]
	q.Del("addr")
	if u.Host != "" {
		addrs = append(strings.Split(u.Host, ","), addrs...)
	}
	var nodes []*url.URL
	for _, a := range addrs {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		n := *u
		n.Scheme = "redis"
		if tls {
			n.Scheme = "rediss"
		}
		n.Host = a
		n.RawQuery = q.Encode()
		nodes = append(nodes, &n)
	}
	return nodes
}

func redisNodeWarnings(ctx context.Context, u *url.URL) ([]string, error) {
	opts, err := redis.ParseURL(u.String())
	if err != nil {
		return nil, fmt.Errorf("redis: %s: malformed URL", u.Host)
	}
	opts.ContextTimeoutEnabled = true
	c := redis.NewClient(opts)
	defer c.Close()
	addr := opts.Addr
	if err := c.Ping(ctx).Err(); err != nil && !isNoAuthRedisErr(err) {
		return nil, fmt.Errorf("redis at %s does not answer: %v", addr, scrubbed(err, u))
	}

	var warns []string
	cfg, err := c.ConfigGet(ctx, "*").Result()
	if err != nil {
		warns = append(warns, fmt.Sprintf("redis at %s: cannot read the configuration (CONFIG GET: %v); make sure maxmemory-policy is noeviction, or that maxmemory is 0", addr, scrubbed(err, u)))
	} else {
		policy, maxmem := cfg["maxmemory-policy"], cfg["maxmemory"]
		if n, _ := strconv.ParseInt(maxmem, 10, 64); n > 0 && policy != "noeviction" {
			what := "any key, locks included,"
			if strings.HasPrefix(policy, "volatile-") {
				what = "keys with a TTL — which every lock is —"
			}
			warns = append(warns, fmt.Sprintf("redis at %s: maxmemory-policy is %s with maxmemory %s: under memory pressure Redis evicts %s so a held lock can vanish and be granted to another client. Set maxmemory-policy noeviction (or keep locks on a Redis without maxmemory).", addr, policy, maxmem, what))
		}
		if cfg["appendonly"] == "no" && strings.TrimSpace(cfg["save"]) == "" {
			warns = append(warns, fmt.Sprintf("redis at %s: persistence is off (save \"\", appendonly no): a restart frees every lock while their holders still hold them. Enable appendonly (appendfsync always for Redlock), or delay restarts by the longest lock TTL.", addr))
		}
	}
	info, err := c.Info(ctx, "replication").Result()
	if err == nil {
		role, replicas := "", 0
		for _, line := range strings.Split(info, "\n") {
			k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
			switch k {
			case "role":
				role = v
			case "connected_slaves":
				replicas, _ = strconv.Atoi(v)
			}
		}
		switch {
		case role == "slave":
			warns = append(warns, fmt.Sprintf("redis at %s: this server is a replica; locks must be taken on the master", addr))
		case role == "master" && replicas > 0:
			warns = append(warns, fmt.Sprintf("redis at %s: the master has %d replica(s) and replication is asynchronous: after a failover a lock granted just before may be gone. Use Redlock over independent masters where that matters.", addr, replicas))
		}
	}
	return warns, nil
}

// isNoAuthRedisErr reports whether err is a reply from a live server that
// refuses the command (NOAUTH, WRONGPASS, NOPERM): it answered.
func isNoAuthRedisErr(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}
