// Package distlocktest gives tests real lock servers: Redis, a Redlock of
// several Redis masters, etcd and PostgreSQL. Redis, Redlock, Etcd and
// Postgres each return a URL for distlock.Open, found in this order:
//
//  1. a URL in an environment variable (RedisURLEnv, RedlockURLEnv,
//     EtcdURLEnv, PostgresURLEnv): your own server, used as it is;
//  2. a server on this machine, started for the test on a free 127.0.0.1
//     port in a temp dir: redis-server or PostgreSQL's initdb and postgres
//     from PATH (or /usr/lib/postgresql/*/bin); etcd runs embedded in the
//     test process, nothing to install;
//  3. a container that testcontainers-go starts where a Docker engine
//     answers, from a public image (DefaultRedisImage, …) or the image an
//     environment variable names (RedisImageEnv, …) — on machines that
//     cannot pull, BuildImage makes one from local executables;
//  4. otherwise the test is skipped with a line saying what to install, or
//     fails when CI=true (a CI machine must provide what its tests need).
//
// Whatever the kit starts is removed with t.Cleanup when the test ends:
// there is nothing to close. testcontainers-go's reaper container is turned
// off unless TESTCONTAINERS_RYUK_DISABLED is set.
//
// With the conformance package, a user's module runs the whole suite on a
// real server in a few lines:
//
//	func TestLocks(t *testing.T) {
//		conformance.Run(t, conformance.URL(distlocktest.Redis(t)))
//	}
//
// Tests that need more than a URL — stopping, killing and restarting a
// server, a Redis Cluster or Sentinel, several etcd members — use
// StartRedis, StartRedisCluster, StartRedisSentinel, StartEtcd,
// EtcdCluster, StartPostgres and the *Container functions, which return
// handles. Servers listen on 127.0.0.1 only.
package distlocktest

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// RedlockURLEnv names the environment variable holding a redlock:// URL of
// masters to test against instead of starting them.
const RedlockURLEnv = "DISTLOCK_TEST_REDLOCK_URL"

// Redis returns the redis:// URL of a Redis server for t: the one in
// DISTLOCK_TEST_REDIS_URL, else a redis-server started for the test, else
// one in a container (see the package documentation for the order).
func Redis(t testing.TB) string {
	t.Helper()
	if u := os.Getenv(RedisURLEnv); u != "" {
		return u
	}
	if RedisBinary() != "" {
		return StartRedis(t, RedisOptions{}).URL()
	}
	if DockerAvailable() {
		return RedisContainer(t, "").URL()
	}
	Unavailable(t, "Redis", RedisHowTo+", or "+DockerHowTo)
	return ""
}

// Redlock returns a redlock:// URL of n independent Redis masters for t:
// the URL in DISTLOCK_TEST_REDLOCK_URL, else n redis-servers started for
// the test, else n containers.
func Redlock(t testing.TB, n int) string {
	t.Helper()
	if n < 1 {
		t.Fatalf("distlocktest.Redlock: n = %d, want at least 1", n)
	}
	if u := os.Getenv(RedlockURLEnv); u != "" {
		return u
	}
	addrs := make([]string, n)
	switch {
	case RedisBinary() != "":
		for i, r := range StartRedisN(t, n, RedisOptions{}) {
			addrs[i] = r.Addr
		}
	case DockerAvailable():
		for i := range addrs {
			addrs[i] = RedisContainer(t, "").Addr
		}
	default:
		Unavailable(t, "Redis", RedisHowTo+", or "+DockerHowTo)
	}
	return "redlock://" + strings.Join(addrs, ",")
}

// Etcd returns the etcd:// URL of an etcd server for t: the one in
// DISTLOCK_TEST_ETCD_URL, else a member embedded in the test process
// (go.etcd.io/etcd/server/v3/embed) on free loopback ports, else one in a
// container.
func Etcd(t testing.TB) string {
	t.Helper()
	if u := os.Getenv(EtcdURLEnv); u != "" {
		return u
	}
	srv, err := startEmbeddedEtcd(t, 1)
	if err == nil {
		return srv.URL
	}
	if DockerAvailable() {
		t.Logf("embedded etcd did not start (%v): trying a container", err)
		return EtcdContainer(t, "").URL()
	}
	Unavailable(t, "etcd", "the embedded server did not start ("+err.Error()+"); set "+EtcdURLEnv+", or "+DockerHowTo)
	return ""
}

// Postgres returns the postgres:// URL of a PostgreSQL server for t,
// connecting as a superuser: the one in DISTLOCK_TEST_POSTGRES_URL, else a
// throwaway cluster started for the test, else one in a container.
func Postgres(t testing.TB) string {
	t.Helper()
	if u := os.Getenv(PostgresURLEnv); u != "" {
		return u
	}
	if postgresBinDir() != "" {
		return StartPostgres(t).URL
	}
	if DockerAvailable() {
		return PostgresContainer(t, "").URL()
	}
	Unavailable(t, "PostgreSQL", PostgresHowTo+", or "+DockerHowTo)
	return ""
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Unavailable ends the test when a server cannot be had: a failure under
// CI=true (CI must install what the tests need), a skip elsewhere. The
// message says what is missing and how to get it.
func Unavailable(t testing.TB, what, howto string) {
	t.Helper()
	msg := fmt.Sprintf("%s not available: %s", what, howto)
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
