package distlocktest_test

import (
	"context"
	"testing"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/conformance"
	"github.com/distlock/distlock/distlocktest"
)

// In a _test.go file: a real Redis for the test, found or started by the
// kit and removed when the test ends.
func ExampleRedis() {
	_ = func(t *testing.T) {
		lm, err := distlock.Open(t.Context(), distlocktest.Redis(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lm.Close() })
		// … the code under test takes its locks from lm …
	}
}

// The whole conformance suite on each of the kit's servers.
func ExamplePostgres() {
	_ = func(t *testing.T) {
		conformance.Run(t, conformance.URL(distlocktest.Postgres(t)))
	}
}

// On a machine with a Docker engine but no registry: an image of this
// machine's redis-server, and the suite on it in a container that the
// outage cases stop and start.
func ExampleBuildImage() {
	_ = func(t *testing.T) {
		ref, err := distlocktest.BuildImage(context.Background(), "/usr/bin/redis-server")
		if err != nil {
			t.Fatal(err)
		}
		c := distlocktest.RedisContainer(t, ref)
		conformance.Run(t, conformance.URL(c.URL(), conformance.WithStopper(c)))
	}
}
