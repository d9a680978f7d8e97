// Package testserver is the old name of the test kit, kept only until the
// tests of backends/redsync move to github.com/distlock/distlock/distlocktest
// (the same functions and types; Redis is distlocktest.RedisServer there).
// It adds nothing of its own: do not use it in new code.
package testserver

import (
	"context"
	"testing"

	"github.com/distlock/distlock/distlocktest"
)

// Deprecated aliases of the distlocktest names.
type (
	Redis         = distlocktest.RedisServer
	RedisOptions  = distlocktest.RedisOptions
	RedisCluster  = distlocktest.RedisCluster
	RedisSentinel = distlocktest.RedisSentinel
	EtcdServer    = distlocktest.EtcdServer
	Postgres      = distlocktest.PostgresServer
)

// Deprecated aliases of the distlocktest constants.
const (
	RedisURLEnv      = distlocktest.RedisURLEnv
	RedisHowTo       = distlocktest.RedisHowTo
	EtcdURLEnv       = distlocktest.EtcdURLEnv
	PostgresURLEnv   = distlocktest.PostgresURLEnv
	PostgresPassword = distlocktest.PostgresPassword
	PostgresHowTo    = distlocktest.PostgresHowTo
)

// ErrNoRedis is distlocktest.ErrNoRedis.
var ErrNoRedis = distlocktest.ErrNoRedis

// StartRedis is distlocktest.StartRedis.
func StartRedis(t testing.TB, opts RedisOptions) *Redis {
	t.Helper()
	return distlocktest.StartRedis(t, opts)
}

// StartRedisN is distlocktest.StartRedisN.
func StartRedisN(t testing.TB, n int, opts RedisOptions) []*Redis {
	t.Helper()
	return distlocktest.StartRedisN(t, n, opts)
}

// NewRedis is distlocktest.NewRedis.
func NewRedis(opts RedisOptions) (*Redis, error) { return distlocktest.NewRedis(opts) }

// RedisBinary is distlocktest.RedisBinary.
func RedisBinary() string { return distlocktest.RedisBinary() }

// RedisURL is distlocktest.Redis.
func RedisURL(t testing.TB) string { t.Helper(); return distlocktest.Redis(t) }

// StartRedisCluster is distlocktest.StartRedisCluster.
func StartRedisCluster(t testing.TB, n int) *RedisCluster {
	t.Helper()
	return distlocktest.StartRedisCluster(t, n)
}

// StartRedisSentinel is distlocktest.StartRedisSentinel.
func StartRedisSentinel(t testing.TB, replicas int) *RedisSentinel {
	t.Helper()
	return distlocktest.StartRedisSentinel(t, replicas)
}

// Etcd is distlocktest.StartEtcd.
func Etcd(t testing.TB) *EtcdServer { t.Helper(); return distlocktest.StartEtcd(t) }

// EtcdCluster is distlocktest.EtcdCluster.
func EtcdCluster(t testing.TB, n int) *EtcdServer { t.Helper(); return distlocktest.EtcdCluster(t, n) }

// StartPostgres is distlocktest.StartPostgres.
func StartPostgres(t testing.TB) *Postgres { t.Helper(); return distlocktest.StartPostgres(t) }

// NewPostgres is distlocktest.NewPostgres.
func NewPostgres(ctx context.Context) (*Postgres, error) { return distlocktest.NewPostgres(ctx) }

// PostgresAvailable is distlocktest.PostgresAvailable.
func PostgresAvailable() bool { return distlocktest.PostgresAvailable() }

// FreePort is distlocktest.FreePort.
func FreePort() (int, error) { return distlocktest.FreePort() }

// Unavailable is distlocktest.Unavailable.
func Unavailable(t testing.TB, what, howto string) {
	t.Helper()
	distlocktest.Unavailable(t, what, howto)
}

// DockerAvailable is distlocktest.DockerAvailable.
func DockerAvailable() bool { return distlocktest.DockerAvailable() }
