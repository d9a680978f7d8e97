package distlocktest

import (
	"context"
	"fmt"
	"io"
	"net/http"
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
// or an embedded cluster started in-process.
type EtcdServer struct {
	// URL is the etcd:// URL of the server, for distlock.Open.
	URL string
	// Endpoints are its client addresses, for clientv3.Config.
	Endpoints []string
	// Cluster is the embedded server, nil for an external one (which
	// cannot be stopped by the tests).
	Cluster *embedetcd.Cluster
}

// StartEtcd returns an etcd server for t, closed when t ends: the one named
// by DISTLOCK_TEST_ETCD_URL if set, else an embedded member on a free
// loopback port (nothing to install).
func StartEtcd(t testing.TB) *EtcdServer {
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
	srv, err := startEmbeddedEtcd(t, n)
	if err != nil {
		Unavailable(t, "embedded etcd", "it starts in-process; the error was: "+err.Error())
	}
	return srv
}

func startEmbeddedEtcd(t testing.TB, n int) (*EtcdServer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := embedetcd.Start(ctx, embedetcd.Options{Members: n, Dir: t.TempDir()})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return &EtcdServer{URL: c.URL(), Endpoints: c.Endpoints(), Cluster: c}, nil
}

// EtcdContainer runs a single etcd member in a container for t, with
// testcontainers-go, and returns it once it reports healthy. The image is
// image if not "", else the one in DISTLOCK_TEST_ETCD_IMAGE, else
// DefaultEtcdImage; it must hold etcd at /usr/local/bin/etcd, as the
// official images do. The test is skipped (failed under CI=true) when no
// Docker engine answers.
func EtcdContainer(t testing.TB, image string) *Container {
	t.Helper()
	return startContainer(t, containerSpec{
		what:   "etcd",
		image:  imageFor(image, EtcdImageEnv, DefaultEtcdImage),
		envVar: EtcdImageEnv,
		port:   "2379/tcp",
		entry:  []string{"/usr/local/bin/etcd"},
		cmd: func(addr string) []string {
			return []string{
				"--name=distlocktest",
				"--data-dir=/var/lib/etcd/distlocktest",
				"--listen-client-urls=http://0.0.0.0:2379",
				"--advertise-client-urls=http://" + addr,
				"--listen-peer-urls=http://127.0.0.1:2380",
				"--initial-advertise-peer-urls=http://127.0.0.1:2380",
				"--initial-cluster=distlocktest=http://127.0.0.1:2380",
			}
		},
		url:   func(addr string) string { return "etcd://" + addr },
		ready: etcdHealthy,
	})
}

// etcdHealthy asks etcd's /health endpoint.
func etcdHealthy(ctx context.Context, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"health":"true"`) {
		return fmt.Errorf("etcd /health: %s %s", resp.Status, body)
	}
	return nil
}
