package etcd_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/etcd"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/internal/testserver"
)

// Open is bounded by dial_timeout (DefaultConnectTimeout when absent)
// whatever the caller's ctx, and a port that speaks another protocol gives
// ErrUnavailable saying etcd's gRPC was expected.
func TestOpenFailsFast(t *testing.T) {
	closedPort, err := distlocktest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	targets := map[string]string{
		"ssh greeting": testserver.StartBogus(t, testserver.SSHGreeting).Addr,
		"silent":       testserver.StartBogus(t, nil).Addr,
		"closed port":  "127.0.0.1:" + itoa(closedPort),
	}
	for name, addr := range targets {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			_, err := distlock.Open(context.Background(), "etcd://u:s3cret@"+addr+"?dial_timeout=1s")
			took := time.Since(start)
			if !errors.Is(err, distlock.ErrUnavailable) {
				t.Fatalf("Open: %v, want ErrUnavailable", err)
			}
			if took > 1500*time.Millisecond {
				t.Fatalf("Open with dial_timeout=1s took %v", took)
			}
			msg := err.Error()
			if !strings.Contains(msg, addr) || !strings.Contains(msg, "gRPC") || strings.Contains(msg, "s3cret") {
				t.Fatalf("error %q: want the endpoint and the protocol expected, no password", msg)
			}
		})
	}
	t.Run("default bound", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		_, err := distlock.Open(context.Background(), "etcd://"+targets["silent"])
		if took := time.Since(start); !errors.Is(err, distlock.ErrUnavailable) || took > etcd.DefaultConnectTimeout+time.Second {
			t.Fatalf("Open with no deadline: %v after %v, want ErrUnavailable within %v", err, took, etcd.DefaultConnectTimeout)
		}
		if etcd.DefaultConnectTimeout > 5*time.Second {
			t.Fatalf("DefaultConnectTimeout %v: documented as at most 5s", etcd.DefaultConnectTimeout)
		}
	})
}

// Failures after Open name the endpoints.
func TestUnavailableNamesEndpoints(t *testing.T) {
	srv := distlocktest.EtcdCluster(t, 1)
	byURL := open(t, srv, distlock.WithRetry(distlock.NoRetry()))
	// On the user's client the Manager knows no URL: the backend names the
	// endpoints itself.
	onClient := distlock.New(etcd.New(newClient(t, srv.Endpoints), etcd.WithRequestTimeout(2*time.Second)), distlock.WithRetry(distlock.NoRetry()))
	t.Cleanup(func() { onClient.Close() })
	if err := srv.Cluster.StopMember(0); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*distlock.Manager{"opened by URL": byURL, "on a client": onClient} {
		_, err := m.Acquire(ctxT(t, 2*time.Second), "k", 5*time.Second)
		if !errors.Is(err, distlock.ErrUnavailable) || !strings.Contains(err.Error(), srv.Endpoints[0]) {
			t.Fatalf("%s: Acquire with the server gone: %v, want ErrUnavailable naming %s", name, err, srv.Endpoints[0])
		}
		if _, err := m.Inspect(ctxT(t, 2*time.Second), "k"); !errors.Is(err, distlock.ErrUnavailable) || !strings.Contains(err.Error(), srv.Endpoints[0]) {
			t.Fatalf("%s: Inspect with the server gone: %v, want ErrUnavailable naming %s", name, err, srv.Endpoints[0])
		}
	}
}

// etcd's leases are whole seconds: a program that needs 100ms locks learns
// it at Open, not from a lock that silently lives 1-2s.
func TestRequireShortTTL(t *testing.T) {
	srv := distlocktest.StartEtcd(t)
	_, err := distlock.Open(ctxT(t, 10*time.Second), srv.URL, distlock.Require(distlock.MinTTLAtMost(100*time.Millisecond)))
	if !errors.Is(err, distlock.ErrUnsupported) || !strings.Contains(err.Error(), "etcd") || !strings.Contains(err.Error(), "100ms") {
		t.Fatalf("Open requiring 100ms TTLs: %v, want ErrUnsupported naming etcd and the bound", err)
	}
	m := open(t, srv, distlock.Require(distlock.Fencing(), distlock.CrossInstanceRelease(), distlock.MinTTLAtMost(2*time.Second)))
	var lm distlock.LockManager = m
	if c := lm.Capabilities(); c.Name != "etcd" || c.Granularity != time.Second {
		t.Fatalf("Capabilities through LockManager: %+v", c)
	}
}
