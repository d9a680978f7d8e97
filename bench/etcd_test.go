package bench

// etcd rows: distlock's etcd backend against the raw floor (lease grant +
// create-if-absent transaction + delete) and concurrency.Mutex, on the same
// server, side by side in one run.
//
//	go test -run '^$' -bench Etcd -benchtime 3s   (from bench/)
//	go test -run '^$' -bench EtcdContended -benchtime 1x
//
// The server: DISTLOCK_BENCH_ETCD_URL or DISTLOCK_TEST_ETCD_URL if set
// (etcd://host:port[,host:port…]), else one embedded member started
// in-process on a free 127.0.0.1 port with its data on disk (every durable
// write costs a real fsync) and fast raft timing (10ms heartbeat, 100ms
// election: leases of 1s are allowed).
//
// raft-entries/op is the growth of the server's raft log per cycle (Status
// RaftIndex before and after): the durable writes one acquire+release
// costs, lease expirations included when they fall inside the run.

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/etcd"
)

// etcdEndpoints returns the client endpoints of a server for one top-level
// benchmark, starting an embedded member (stopped when the benchmark ends)
// if no URL is set.
func etcdEndpoints(b *testing.B) []string {
	b.Helper()
	for _, env := range []string{"DISTLOCK_BENCH_ETCD_URL", "DISTLOCK_TEST_ETCD_URL"} {
		if raw := os.Getenv(env); raw != "" {
			u, err := url.Parse(raw)
			if err != nil || u.Host == "" {
				b.Fatalf("%s: want etcd://host:port[,host:port…]", env)
			}
			return strings.Split(u.Host, ",")
		}
	}
	ep, stop, err := startBenchEtcd(b.TempDir())
	if err != nil {
		b.Fatalf("embedded etcd: %v", err)
	}
	b.Cleanup(stop)
	return []string{ep}
}

func startBenchEtcd(dir string) (string, func(), error) {
	var ports [2]int
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", nil, err
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		l.Close() // etcd binds it itself a moment later
	}
	cfg := embed.NewConfig()
	cfg.Name = "bench"
	cfg.Dir = dir
	cfg.TickMs, cfg.ElectionMs = 10, 100
	cu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	pu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = "bench=" + pu.String()
	cfg.ListenMetricsUrls = nil
	cfg.Logger, cfg.LogLevel = "zap", "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return "", nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return "", nil, fmt.Errorf("not ready after 30s")
	}
	return cu.Host, e.Close, nil
}

func newEtcdClient(b *testing.B, eps []string) *clientv3.Client {
	b.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cli.Close() })
	return cli
}

// raftIndex returns the server's raft log index (the first endpoint's).
func raftIndex(b *testing.B, cli *clientv3.Client) uint64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := cli.Status(ctx, cli.Endpoints()[0])
	if err != nil {
		b.Fatal(err)
	}
	return st.RaftIndex
}

// countWrites reports raft-entries/op around f.
func countWrites(b *testing.B, cli *clientv3.Client, f func()) {
	before := raftIndex(b, cli)
	f()
	after := raftIndex(b, cli)
	b.Logf("raft index %d -> %d", before, after)
	b.ReportMetric(float64(after-before)/float64(b.N), "raft-entries/op")
}

// benchTTL is the TTL of every lock in these benchmarks.
const benchTTL = 10 * time.Second

// rawEtcd is the floor: a lease per grant, a create-if-absent transaction,
// a delete (the lease is left to expire).
func rawEtcd(cli *clientv3.Client) LockFunc {
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		k := "raw/" + key
		for {
			l, err := cli.Grant(ctx, int64(benchTTL/time.Second))
			if err != nil {
				return nil, err
			}
			resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
				Then(clientv3.OpPut(k, "x", clientv3.WithLease(l.ID))).Commit()
			if err != nil {
				return nil, err
			}
			if resp.Succeeded {
				return func(ctx context.Context) error { _, err := cli.Delete(ctx, k); return err }, nil
			}
			select { // the floor has no wake-up: poll
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Millisecond):
			}
		}
	}
}

// sharedSessionMutex: concurrency.Mutex on one Session for every lock (the
// lease is shared: one TTL for all, kept alive in the background).
func sharedSessionMutex(b *testing.B, cli *clientv3.Client) LockFunc {
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(int(benchTTL/time.Second)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		mu := concurrency.NewMutex(s, "mutex/"+key)
		if err := mu.Lock(ctx); err != nil {
			return nil, err
		}
		return mu.Unlock, nil
	}
}

// sessionPerLockMutex: a new Session (lease) per lock, closed (revoked) on
// unlock: the per-lock TTL that distlock offers, done with concurrency.
func sessionPerLockMutex(cli *clientv3.Client) LockFunc {
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(int(benchTTL/time.Second)), concurrency.WithContext(context.Background()))
		if err != nil {
			return nil, err
		}
		mu := concurrency.NewMutex(s, "mutex/"+key)
		if err := mu.Lock(ctx); err != nil {
			s.Close()
			return nil, err
		}
		return func(ctx context.Context) error {
			err := mu.Unlock(ctx)
			if cerr := s.Close(); err == nil {
				err = cerr
			}
			return err
		}, nil
	}
}

func newEtcdManager(b *testing.B, cli *clientv3.Client, retry distlock.RetryStrategy) *distlock.Manager {
	b.Helper()
	m := distlock.New(etcd.New(cli, etcd.WithMinTTL(time.Second), etcd.WithPrefix("distlock/")), distlock.WithRetry(retry))
	b.Cleanup(func() { m.Close() })
	return m
}

func etcdAcquire(m *distlock.Manager) LockFunc {
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		tok, err := m.Acquire(ctx, key, benchTTL)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) error { return m.Release(ctx, key, tok) }, nil
	}
}

func etcdLock(m *distlock.Manager) LockFunc {
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		l, err := m.Lock(ctx, key, benchTTL)
		if err != nil {
			return nil, err
		}
		if l.Fence() == 0 {
			return nil, fmt.Errorf("no fence")
		}
		return l.Release, nil
	}
}

func BenchmarkEtcdUncontended(b *testing.B) {
	eps := etcdEndpoints(b)
	admin := newEtcdClient(b, eps)
	row := func(name string, mk func(b *testing.B, cli *clientv3.Client) LockFunc) {
		b.Run(name, func(b *testing.B) {
			lock := mk(b, newEtcdClient(b, eps))
			countWrites(b, admin, func() { Uncontended(b, lock) })
		})
	}
	// distlock first: the raw rows leave their leases to expire, and the
	// leader's revocations would count against whichever row runs then.
	row("distlock-Acquire", func(b *testing.B, cli *clientv3.Client) LockFunc {
		return etcdAcquire(newEtcdManager(b, cli, distlock.DefaultRetry))
	})
	row("distlock-Lock", func(b *testing.B, cli *clientv3.Client) LockFunc {
		return etcdLock(newEtcdManager(b, cli, distlock.DefaultRetry))
	})
	row("concurrency-Mutex-shared-session", sharedSessionMutex)
	row("concurrency-Mutex-session-per-lock", func(b *testing.B, cli *clientv3.Client) LockFunc { return sessionPerLockMutex(cli) })
	row("raw-grant-txn-delete", func(b *testing.B, cli *clientv3.Client) LockFunc { return rawEtcd(cli) })
}

func BenchmarkEtcdParallel16(b *testing.B) {
	eps := etcdEndpoints(b)
	admin := newEtcdClient(b, eps)
	row := func(name string, mk func(b *testing.B, cli *clientv3.Client) LockFunc) {
		b.Run(name, func(b *testing.B) {
			lock := mk(b, newEtcdClient(b, eps))
			countWrites(b, admin, func() { Parallel(b, 16, lock) })
		})
	}
	row("distlock-Acquire", func(b *testing.B, cli *clientv3.Client) LockFunc {
		return etcdAcquire(newEtcdManager(b, cli, distlock.DefaultRetry))
	})
	row("concurrency-Mutex-shared-session", sharedSessionMutex)
	row("raw-grant-txn-delete", func(b *testing.B, cli *clientv3.Client) LockFunc { return rawEtcd(cli) })
}

// etcdContendedFor is how long each contended row runs.
const etcdContendedFor = 5 * time.Second

func BenchmarkEtcdContended16(b *testing.B) {
	eps := etcdEndpoints(b)
	admin := newEtcdClient(b, eps)
	run := func(b *testing.B, lock LockFunc) {
		countWrites(b, admin, func() { RunContended(b, 16, etcdContendedFor, lock) })
	}
	longWait := distlock.LimitWait(distlock.ExponentialBackoff(2*time.Millisecond, 100*time.Millisecond), time.Minute)
	b.Run("concurrency-Mutex-16-sessions", func(b *testing.B) {
		cli := newEtcdClient(b, eps)
		// A Session is one owner: each goroutine needs its own.
		ss := make(chan *concurrency.Session, 16)
		for range 16 {
			s, err := concurrency.NewSession(cli, concurrency.WithTTL(int(benchTTL/time.Second)))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			ss <- s
		}
		run(b, func(ctx context.Context, key string) (func(context.Context) error, error) {
			s := <-ss
			mu := concurrency.NewMutex(s, "mutex/"+key)
			if err := mu.Lock(ctx); err != nil {
				ss <- s
				return nil, err
			}
			return func(ctx context.Context) error {
				defer func() { ss <- s }()
				return mu.Unlock(ctx)
			}, nil
		})
	})
	b.Run("distlock-one-manager", func(b *testing.B) {
		run(b, etcdAcquire(newEtcdManager(b, newEtcdClient(b, eps), longWait)))
	})
	b.Run("distlock-16-managers", func(b *testing.B) {
		// Each goroutine gets a manager (and client) of its own, as 16
		// processes would: 16 watches, one wake-up each per release.
		ms := make([]*distlock.Manager, 16)
		for i := range ms {
			ms[i] = newEtcdManager(b, newEtcdClient(b, eps), longWait)
		}
		run(b, ManagerPool(ms, benchTTL))
	})
}

func init() {
	// concurrency.Mutex on a Session (one lease) of the child's own.
	RegisterChild("etcd-mutex", func(ctx context.Context, raw string) (LockFunc, func(), error) {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return nil, nil, fmt.Errorf("want etcd://host:port[,host:port…]")
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(u.Host, ","), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return nil, nil, err
		}
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(int(benchTTL/time.Second)))
		if err != nil {
			cli.Close()
			return nil, nil, err
		}
		lock := func(ctx context.Context, key string) (func(context.Context) error, error) {
			mu := concurrency.NewMutex(s, "mutex/"+key)
			if err := mu.Lock(ctx); err != nil {
				return nil, err
			}
			return mu.Unlock, nil
		}
		return lock, func() { s.Close(); cli.Close() }, nil
	})
}

// etcdBenchURL returns an etcd:// URL of the server for one top-level
// benchmark.
func etcdBenchURL(b *testing.B) string {
	b.Helper()
	for _, env := range []string{"DISTLOCK_BENCH_ETCD_URL", "DISTLOCK_TEST_ETCD_URL"} {
		if raw := os.Getenv(env); raw != "" {
			return raw
		}
	}
	return "etcd://" + strings.Join(etcdEndpoints(b), ",")
}

// BenchmarkEtcdManagers16Interleaved: 16 goroutines on one key, each with
// a Manager and an etcd client of its own (as 16 processes would be),
// taking turns in 1s phases with concurrency.Mutex on a Session (and a
// client) per goroutine. b.N rounds: run with -benchtime 5x. The issue 12
// target: distlock ≥ 1.0× the Mutex's owner changes/s.
func BenchmarkEtcdManagers16Interleaved(b *testing.B) {
	eps := etcdEndpoints(b)
	RunContendedInterleaved(b, 16, time.Second,
		NamedLock{"mutex", PoolOf(16, func() LockFunc { return sharedSessionMutex(b, newEtcdClient(b, eps)) })},
		NamedLock{"distlock", PoolOf(16, func() LockFunc {
			return etcdAcquire(newEtcdManager(b, newEtcdClient(b, eps), contendedRetry))
		})},
	)
}

// BenchmarkEtcdProcesses8: 8 OS processes on one key (this test binary
// re-executed, see processes.go; the embedded server listens on
// loopback), taking turns in 2s phases between concurrency.Mutex on a
// Session per process and distlock (distlock.Open). b.N rounds: run with
// -benchtime 3x.
func BenchmarkEtcdProcesses8(b *testing.B) {
	url := etcdBenchURL(b)
	RunProcessesInterleaved(b, 8, processPhase,
		ProcessLock{Name: "mutex", Kind: "etcd-mutex", URL: url},
		ProcessLock{Name: "distlock", Kind: "distlock", URL: url},
	)
}
