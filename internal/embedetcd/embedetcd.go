// Package embedetcd runs etcd in-process (go.etcd.io/etcd/server/v3/embed)
// for distlock's tests, benchmarks and the `distlock demo` command: one
// member or a small cluster on free 127.0.0.1 ports, with fast raft timing
// (10ms heartbeat, 100ms election) so that it starts and elects a leader in
// well under a second, and quiet (nothing is logged).
//
//	c, err := embedetcd.Start(ctx, embedetcd.Options{Members: 3})
//	if err != nil { … }
//	defer c.Close()
//	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints()})
//
// Members can be stopped and started again on the same ports and data
// directory (StopMember, StartMember) to test outages.
package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Options configures Start.
type Options struct {
	// Dir is where the members keep their data (one subdirectory each).
	// Empty means a new temporary directory, removed by Close.
	Dir string
	// Members is the cluster size; 0 means 1.
	Members int
	// TickMs and ElectionMs set the raft heartbeat and election timeout;
	// zero means 10 and 100. (etcd's defaults are 100 and 1000, which make
	// the minimum lease TTL 2s instead of 1s.)
	TickMs, ElectionMs uint
	// Logger receives the servers' logs; nil discards them.
	Logger *zap.Logger
}

// Cluster is a running in-process etcd cluster. Its methods are safe for
// concurrent use.
type Cluster struct {
	dir     string
	ownDir  bool
	opts    Options
	token   string
	members []*member

	mu     sync.Mutex
	closed bool
}

type member struct {
	name       string
	dir        string
	clientPort int
	peerPort   int
	etcd       *embed.Etcd // nil while stopped
}

// Start starts a cluster and waits until every member is ready to serve
// (or ctx ends). The members listen on free ports of 127.0.0.1.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Members <= 0 {
		opts.Members = 1
	}
	if opts.TickMs == 0 {
		opts.TickMs = 10
	}
	if opts.ElectionMs == 0 {
		opts.ElectionMs = 100
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	c := &Cluster{dir: opts.Dir, opts: opts}
	if c.dir == "" {
		d, err := os.MkdirTemp("", "embedetcd-")
		if err != nil {
			return nil, err
		}
		c.dir, c.ownDir = d, true
	}
	c.token = fmt.Sprintf("embedetcd-%d-%d", os.Getpid(), time.Now().UnixNano())

	// Ports are picked free and then bound by etcd a moment later; another
	// process may take one in between, so retry a few times with new ports.
	var lastErr error
	for try := 0; try < 3; try++ {
		if err := ctx.Err(); err != nil {
			break
		}
		if err := c.start(ctx); err != nil {
			lastErr = err
			c.stopAll()
			if !isAddrInUse(err) {
				break
			}
			continue
		}
		return c, nil
	}
	if c.ownDir {
		os.RemoveAll(c.dir)
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	return nil, lastErr
}

func (c *Cluster) start(ctx context.Context) error {
	c.members = make([]*member, c.opts.Members)
	ports, err := freePorts(2 * c.opts.Members)
	if err != nil {
		return err
	}
	var initial []string
	for i := range c.members {
		m := &member{
			name:       fmt.Sprintf("m%d", i),
			dir:        filepath.Join(c.dir, fmt.Sprintf("m%d", i)),
			clientPort: ports[2*i],
			peerPort:   ports[2*i+1],
		}
		os.RemoveAll(m.dir) // a fresh cluster: no data from an earlier try
		c.members[i] = m
		initial = append(initial, fmt.Sprintf("%s=http://127.0.0.1:%d", m.name, m.peerPort))
	}
	cluster := strings.Join(initial, ",")
	for i := range c.members {
		if err := c.launch(i, cluster); err != nil {
			return err
		}
	}
	for i := range c.members {
		if err := c.waitReady(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

// launch starts member i's server without waiting for it to be ready.
func (c *Cluster) launch(i int, initialCluster string) error {
	m := c.members[i]
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir
	cfg.TickMs = c.opts.TickMs
	cfg.ElectionMs = c.opts.ElectionMs
	cfg.InitialClusterToken = c.token
	cfg.ClusterState = embed.ClusterStateFlagNew
	if _, err := os.Stat(filepath.Join(m.dir, "member")); err == nil {
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	if initialCluster == "" {
		var all []string
		for _, o := range c.members {
			all = append(all, fmt.Sprintf("%s=http://127.0.0.1:%d", o.name, o.peerPort))
		}
		initialCluster = strings.Join(all, ",")
	}
	cfg.InitialCluster = initialCluster
	cu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", m.clientPort)}
	pu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", m.peerPort)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.ListenMetricsUrls = nil
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(c.opts.Logger)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("embedetcd: start member %s: %w", m.name, err)
	}
	m.etcd = e
	return nil
}

func (c *Cluster) waitReady(ctx context.Context, i int) error {
	m := c.members[i]
	e := m.etcd
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("embedetcd: member %s: %w", m.name, err)
	case <-ctx.Done():
		return fmt.Errorf("embedetcd: member %s not ready: %w", m.name, ctx.Err())
	}
}

// Endpoints returns the members' client addresses ("127.0.0.1:PORT"), for
// clientv3.Config.Endpoints or an etcd:// URL. Stopped members are
// included: they come back on the same address.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = fmt.Sprintf("127.0.0.1:%d", m.clientPort)
	}
	return eps
}

// URL returns "etcd://" followed by the comma-separated endpoints, the form
// distlock.Open accepts once the etcd backend is imported.
func (c *Cluster) URL() string {
	return "etcd://" + strings.Join(c.Endpoints(), ",")
}

// Members returns the cluster size.
func (c *Cluster) Members() int { return len(c.members) }

// Leader returns the index of the member that currently leads, or -1 if no
// running member knows of a leader.
func (c *Cluster) Leader() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.members {
		if m.etcd == nil {
			continue
		}
		lead := m.etcd.Server.Leader()
		if lead == 0 {
			continue
		}
		for j, o := range c.members {
			if o.etcd != nil && o.etcd.Server.MemberID() == lead {
				return j
			}
		}
	}
	return -1
}

// Running reports whether member i is running.
func (c *Cluster) Running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return i >= 0 && i < len(c.members) && c.members[i].etcd != nil
}

// StopMember stops member i (as a crash would, but cleanly), keeping its
// data. Stopping a stopped member does nothing.
func (c *Cluster) StopMember(i int) error {
	if i < 0 || i >= len(c.members) {
		return fmt.Errorf("embedetcd: no member %d", i)
	}
	c.mu.Lock()
	e := c.members[i].etcd
	c.members[i].etcd = nil
	c.mu.Unlock()
	if e != nil {
		e.Close()
	}
	return nil
}

// StartMember starts a stopped member again on its old ports and data, and
// waits until it is ready — which needs a quorum of members running — or
// until ctx ends. Starting a running member does nothing.
func (c *Cluster) StartMember(ctx context.Context, i int) error {
	if i < 0 || i >= len(c.members) {
		return fmt.Errorf("embedetcd: no member %d", i)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errors.New("embedetcd: cluster closed")
	}
	if c.members[i].etcd != nil {
		c.mu.Unlock()
		return nil
	}
	var err error
	// The old listeners may take a moment to be released.
	for try := 0; try < 50; try++ {
		if err = c.launch(i, ""); err == nil || !isAddrInUse(err) {
			break
		}
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return fmt.Errorf("embedetcd: start member %d: %w", i, errors.Join(err, ctx.Err()))
		case <-time.After(20 * time.Millisecond):
		}
		c.mu.Lock()
	}
	c.mu.Unlock()
	if err != nil {
		return err
	}
	return c.waitReady(ctx, i)
}

// Close stops every member and removes the data directory if Start made it.
// It may be called more than once.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.stopAll()
	if c.ownDir {
		return os.RemoveAll(c.dir)
	}
	return nil
}

func (c *Cluster) stopAll() {
	var wg sync.WaitGroup
	for i := range c.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.StopMember(i)
		}()
	}
	wg.Wait()
}

func freePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func isAddrInUse(err error) bool {
	return err != nil && strings.Contains(err.Error(), "address already in use")
}
