package distlocktest_test

import (
	"testing"

	"github.com/distlock/distlock/distlocktest"
)

// An image Docker cannot pull skips the test with a hint (fails under
// CI=true) instead of failing it with testcontainers' error.
func TestContainerImageMissingSkips(t *testing.T) {
	if !distlocktest.DockerAvailable() {
		t.Skip("no Docker engine answers")
	}
	t.Setenv("CI", "false")
	var skipped bool
	t.Run("missing", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		distlocktest.RedisContainer(t, "distlocktest/no-such-image:0")
	})
	if !skipped {
		t.Fatal("a missing image did not skip the test")
	}
}
