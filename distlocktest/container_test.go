package distlocktest_test

import (
	"context"
	"os/exec"
	"testing"
	"time"

	_ "github.com/distlock/distlock/backends/etcd"    // etcd://
	_ "github.com/distlock/distlock/backends/redsync" // redis://
	"github.com/distlock/distlock/conformance"
	"github.com/distlock/distlock/distlocktest"
)

// redisImage returns the image the container tests run: the one in
// DISTLOCK_TEST_REDIS_IMAGE, else one built from this machine's
// redis-server (no image can be pulled on the project's machines), else
// the public default.
func redisImage(t *testing.T) string {
	t.Helper()
	bin := distlocktest.RedisBinary()
	if bin == "" {
		return "" // RedisContainer: the environment variable or the default
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ref, err := distlocktest.BuildImage(ctx, bin)
	if err != nil {
		t.Fatalf("build an image from %s: %v", bin, err)
	}
	return ref
}

// TestContainerConformance runs the whole conformance suite on a Redis
// that testcontainers-go starts in a container on this machine's Docker
// engine, from an image built here from the machine's redis-server; the
// outage cases stop and start the container itself. It runs wherever a
// Docker engine answers.
func TestContainerConformance(t *testing.T) {
	if !distlocktest.DockerAvailable() {
		t.Skip("no Docker engine answers (" + distlocktest.DockerHowTo + "): the testcontainers-go path cannot run here")
	}
	c := distlocktest.RedisContainer(t, redisImage(t))
	t.Logf("conformance suite on %s: container %.12s, image %s, started by testcontainers-go", c.URL(), c.ID, c.Image)
	conformance.Run(t, conformance.URL(c.URL(), conformance.WithStopper(c)))
}

// TestEtcdContainerConformance runs the suite on etcd in a container, from
// an image built here from the machine's etcd binary (Debian: apt-get
// install etcd-server; scripts/test.sh installs it); the outage cases stop
// and start the container.
func TestEtcdContainerConformance(t *testing.T) {
	if !distlocktest.DockerAvailable() {
		t.Skip("no Docker engine answers (" + distlocktest.DockerHowTo + "): the testcontainers-go path cannot run here")
	}
	image := ""
	if bin, err := exec.LookPath("etcd"); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if image, err = distlocktest.BuildImage(ctx, bin+"=/usr/local/bin/etcd"); err != nil {
			t.Fatalf("build an image from %s: %v", bin, err)
		}
	}
	c := distlocktest.EtcdContainer(t, image)
	conformance.Run(t, conformance.URL(c.URL(), conformance.WithStopper(c)))
}
