package testserver

import (
	"context"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/distlock/distlock/internal/embedetcd"
)

// EtcdURLEnv names the environment variable that points the tests at an
// existing etcd (etcd://host:port[,host:port…]) instead of the embedded one.
const EtcdURLEnv = "DISTLOCK_TEST_ETCD_URL"

// EtcdServer is an etcd for one test: an external one named by EtcdURLEnv,
// or an embedded single member started in-process.
type EtcdServer struct {
	// URL is the etcd:// URL of the server, for distlock.Open.
	URL string
	// Endpoints are its client addresses, for clientv3.Config.
	Endpoints []string
	// Cluster is the embedded server, nil for an external one (which
	// cannot be stopped by the tests).
	Cluster *embedetcd.Cluster
}

// Etcd returns an etcd server for t, closed when t ends: the one named by
// DISTLOCK_TEST_ETCD_URL if set, else an embedded member on a free
// loopback port (nothing to install).
func Etcd(t testing.TB) *EtcdServer {
	t.Helper()
	if raw := os.Getenv(EtcdURLEnv); raw != "" {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			t.Fatalf("%s: want etcd://host:port[,host:port…]", EtcdURLEnv)
		}
		return &EtcdServer{URL: raw, Endpoints: strings.Split(u.Host, ",")}
	}
	return EtcdCluster(t, 1)
}

// EtcdCluster starts an embedded cluster of n members for t (ignoring
// DISTLOCK_TEST_ETCD_URL: fault tests need members they can stop).
func EtcdCluster(t testing.TB, n int) *EtcdServer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := embedetcd.Start(ctx, embedetcd.Options{Members: n, Dir: t.TempDir()})
	if err != nil {
		Unavailable(t, "embedded etcd", "it starts in-process; the error was: "+err.Error())
	}
	t.Cleanup(func() { c.Close() })
	return &EtcdServer{URL: c.URL(), Endpoints: c.Endpoints(), Cluster: c}
}
