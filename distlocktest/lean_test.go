package distlocktest_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestLibraryStaysLean: what a user's program compiles when it imports the
// library and its backends holds neither testcontainers-go nor the etcd
// server; only tests (this kit) and the demo need those.
func TestLibraryStaysLean(t *testing.T) {
	goBin := goTool(t)
	pkgs := []string{
		"github.com/distlock/distlock",
		"github.com/distlock/distlock/backends/redsync",
		"github.com/distlock/distlock/backends/etcd",
		"github.com/distlock/distlock/backends/postgres",
		"github.com/distlock/distlock/backends/memory",
	}
	forbidden := []string{"github.com/testcontainers/testcontainers-go", "go.etcd.io/etcd/server/v3", "github.com/distlock/distlock/distlocktest"}
	for _, pkg := range pkgs {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		cmd := exec.CommandContext(ctx, goBin, "list", "-deps", pkg)
		cmd.Dir = repoRoot(t)
		cmd.Env = goEnv()
		out, err := cmd.Output()
		cancel()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		deps := strings.Fields(string(out))
		for _, d := range deps {
			for _, f := range forbidden {
				if d == f || strings.HasPrefix(d, f+"/") {
					t.Errorf("%s depends on %s", pkg, d)
				}
			}
		}
		t.Logf("go list -deps %s: %d packages, none of %v", pkg, len(deps), forbidden)
	}
	// The check sees them where they are: in the kit.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "list", "-deps", "github.com/distlock/distlock/distlocktest")
	cmd.Dir = repoRoot(t)
	cmd.Env = goEnv()
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range forbidden[:2] {
		if !strings.Contains(string(out), f+"\n") && !strings.Contains(string(out), f+"/") {
			t.Errorf("go list -deps of the kit does not show %s: the check is blind", f)
		}
	}
}
