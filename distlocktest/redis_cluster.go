package distlocktest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisCluster is a Redis Cluster of masters without replicas, each a
// redis-server of its own on loopback, the 16384 hash slots split evenly
// between them.
type RedisCluster struct {
	// Masters are the cluster's servers; Kill, Stop and Start work on
	// them one by one (Start keeps a node's slots: its nodes.conf stays).
	Masters []*RedisServer

	busPorts []int // each master's cluster bus port
}

// Addrs returns the masters' host:port addresses, for
// redis.ClusterOptions.Addrs.
func (c *RedisCluster) Addrs() []string {
	addrs := make([]string, len(c.Masters))
	for i, m := range c.Masters {
		addrs[i] = m.Addr
	}
	return addrs
}

// StartRedisCluster starts a Redis Cluster of n masters (n >= 1) and waits
// until every node reports it healthy; it is removed when the test ends.
// Without a redis-server binary it fails the test under CI=true and skips
// it elsewhere.
func StartRedisCluster(t testing.TB, n int) *RedisCluster {
	t.Helper()
	if RedisBinary() == "" {
		Unavailable(t, "redis-server", RedisHowTo)
	}
	c := &RedisCluster{}
	for range n {
		bus, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		r, err := NewRedis(RedisOptions{Args: []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "1000",
			"--cluster-port", strconv.Itoa(bus),
		}})
		if err != nil {
			t.Fatalf("start cluster node: %v", err)
		}
		t.Cleanup(func() { _ = r.Close() })
		c.Masters = append(c.Masters, r)
		c.busPorts = append(c.busPorts, bus)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.form(ctx); err != nil {
		t.Fatalf("form the cluster: %v", err)
	}
	return c
}

// form gives each master its slots and its config epoch, has it meet the
// masters before it, and waits until the cluster is healthy. (NewRedis
// gives each master a directory of its own, so their nodes.conf files do
// not collide.)
func (c *RedisCluster) form(ctx context.Context) error {
	const slots = 16384
	for i, m := range c.Masters {
		err := withClient(ctx, m.Addr, func(rc *redis.Client) error {
			lo, hi := i*slots/len(c.Masters), (i+1)*slots/len(c.Masters)-1
			if err := rc.Do(ctx, "CLUSTER", "SET-CONFIG-EPOCH", i+1).Err(); err != nil {
				return err
			}
			if err := rc.ClusterAddSlotsRange(ctx, lo, hi).Err(); err != nil {
				return err
			}
			for j, o := range c.Masters[:i] {
				host, port, _ := strings.Cut(o.Addr, ":")
				if err := rc.Do(ctx, "CLUSTER", "MEET", host, port, c.busPorts[j]).Err(); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("node %s: %w", m.Addr, err)
		}
	}
	return c.WaitHealthy(ctx)
}

// WaitHealthy waits until every master reports cluster_state:ok and knows
// every other, or ctx ends.
func (c *RedisCluster) WaitHealthy(ctx context.Context) error {
	want := fmt.Sprintf("cluster_known_nodes:%d", len(c.Masters))
	for _, m := range c.Masters {
		for {
			var info string
			err := withClient(ctx, m.Addr, func(rc *redis.Client) error {
				var err error
				info, err = rc.ClusterInfo(ctx).Result()
				return err
			})
			if err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, want) {
				break
			}
			select {
			case <-ctx.Done():
				return errors.Join(fmt.Errorf("node %s not healthy: %q", m.Addr, info), err, ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

// withClient runs f with a client of its own to addr.
func withClient(ctx context.Context, addr string, f func(*redis.Client) error) error {
	rc := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer rc.Close()
	return f(rc)
}

// RedisSentinel is a Sentinel watching one master, and its replicas, under
// MasterName.
type RedisSentinel struct {
	// Sentinel is the sentinel process (redis-server --sentinel).
	Sentinel *RedisServer
	// Master is the master the Sentinel first watched (after a failover,
	// one of Replicas is the master).
	Master *RedisServer
	// Replicas replicate Master.
	Replicas []*RedisServer
	// MasterName is the name clients ask the sentinel for.
	MasterName string
}

// StartRedisSentinel starts a master with the given number of replicas and
// a Sentinel that watches them (quorum 1, down after 1s); all are removed
// when the test ends. The Sentinel starts once the replicas are in sync, so
// it knows them from its first look at the master.
func StartRedisSentinel(t testing.TB, replicas int) *RedisSentinel {
	t.Helper()
	master := StartRedis(t, RedisOptions{})
	s := &RedisSentinel{Master: master, MasterName: "distlock-test"}
	host, port, _ := strings.Cut(master.Addr, ":")
	for range replicas {
		s.Replicas = append(s.Replicas, StartRedis(t, RedisOptions{Args: []string{"--replicaof", host, port}}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	want := fmt.Sprintf("connected_slaves:%d", replicas)
	for {
		var info string
		err := withClient(ctx, master.Addr, func(rc *redis.Client) error {
			var err error
			info, err = rc.Info(ctx, "replication").Result()
			return err
		})
		if err == nil && strings.Contains(info, want) && !strings.Contains(info, "state=wait_bgsave") {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("replicas never came in sync: %q %v", info, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	r, err := newSentinel(master.Addr, s.MasterName)
	if err != nil {
		t.Fatalf("start sentinel: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	s.Sentinel = r
	return s
}

func newSentinel(masterAddr, name string) (*RedisServer, error) {
	bin := RedisBinary()
	if bin == "" {
		return nil, ErrNoRedis
	}
	dir, err := os.MkdirTemp("", "distlock-sentinel-")
	if err != nil {
		return nil, err
	}
	host, port, _ := strings.Cut(masterAddr, ":")
	var lastErr error
	for range 3 {
		p, err := FreePort()
		if err != nil {
			lastErr = err
			continue
		}
		conf := filepath.Join(dir, "sentinel.conf")
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\nprotected-mode no\ndir %s\nlogfile %s\n"+
			"sentinel monitor %s %s %s 1\nsentinel down-after-milliseconds %s 1000\nsentinel failover-timeout %s 5000\n",
			p, dir, filepath.Join(dir, "redis.log"), name, host, port, name, name)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			return nil, err
		}
		r := &RedisServer{
			Addr: "127.0.0.1:" + strconv.Itoa(p),
			bin:  bin,
			dir:  dir,
			port: p,
			args: []string{conf, "--sentinel"},
		}
		if lastErr = r.Start(context.Background()); lastErr == nil {
			return r, nil
		}
	}
	_ = os.RemoveAll(dir)
	return nil, lastErr
}
