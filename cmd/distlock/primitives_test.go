package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/distlock/distlock/driver"
	"github.com/distlock/distlock/internal/testwait"
)

// holders starts n `distlock ARGS -- hold` processes, each with a directory
// of its own, and waits until every CMD runs at once.
func holders(t *testing.T, n int, args ...string) []string {
	t.Helper()
	dirs := make([]string, n)
	for i := range dirs {
		dirs[i] = t.TempDir()
		argv, env := child("hold", dirs[i])
		start(t, env, append(append(args, "--"), argv...)...)
	}
	testwait.For(t, 30*time.Second, "every holder's CMD to run at once", func() bool {
		for _, d := range dirs {
			if !fileExists(filepath.Join(d, "ready")) {
				return false
			}
		}
		return true
	})
	return dirs
}

func stopHolders(t *testing.T, dirs []string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "stop"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRunSharedAndWrite(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b liveBackend, url string, caps driver.Capabilities) {
		if !caps.ReadWrite {
			t.Skipf("%s declares no read-write locks", caps.Name)
		}
		key := "catalog-" + t.Name()
		readers := holders(t, 2, "run", "--url", url, "--key", key, "--ttl", "5s", "--shared")
		argv, env := child("exit", "0")
		r := cli(t, env, append([]string{"run", "--url", url, "--key", key, "--write", "--"}, argv...)...)
		wantCode(t, r, exitNotAcquired)
		r = cli(t, env, append([]string{"run", "--url", url, "--key", key, "--"}, argv...)...)
		wantCode(t, r, 0) // the plain lock KEY is another lock
		r = cli(t, env, append([]string{"run", "--url", url, "--key", key, "--shared", "--write", "--"}, argv...)...)
		wantCode(t, r, exitUsage)
		stopHolders(t, readers)
		r = cli(t, env, append([]string{"run", "--url", url, "--key", key, "--write", "--wait", "30s", "--"}, argv...)...)
		wantCode(t, r, 0)
	})
}

func TestRunLimit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b liveBackend, url string, caps driver.Capabilities) {
		if !caps.Semaphore {
			t.Skipf("%s declares no semaphores", caps.Name)
		}
		key := "gpu-" + t.Name()
		hs := holders(t, 2, "run", "--url", url, "--key", key, "--ttl", "5s", "--limit", "2")
		argv, env := child("exit", "0")
		r := cli(t, env, append([]string{"run", "--url", url, "--key", key, "--limit", "2", "--"}, argv...)...)
		wantCode(t, r, exitNotAcquired)
		r = cli(t, env, append([]string{"run", "--url", url, "--key", key, "--limit", "3", "--"}, argv...)...)
		wantCode(t, r, exitUsage)
		if !strings.Contains(r.stderr, "limit") {
			t.Errorf("a limit mismatch should say so: %s", r)
		}
		stopHolders(t, hs[:1])
		r = cli(t, env, append([]string{"run", "--url", url, "--key", key, "--limit", "2", "--wait", "30s", "--"}, argv...)...)
		wantCode(t, r, 0)
		stopHolders(t, hs[1:])
	})
}

func TestElect(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b liveBackend, url string, caps driver.Capabilities) {
		if !caps.Election {
			t.Skipf("%s declares no elections", caps.Name)
		}
		name := "scheduler-" + t.Name()
		leader := holders(t, 1, "elect", "--url", url, "--key", name, "--ttl", "5s", "--value", "node-a")
		r := cli(t, nil, "status", "--url", url, "--election", name)
		wantCode(t, r, 0)
		if !strings.Contains(r.stdout, `led by "node-a"`) {
			t.Fatalf("status should show the leader: %s", r)
		}
		argv, env := child("exit", "0")
		r = cli(t, env, append([]string{"elect", "--url", url, "--key", name, "--wait", "300ms", "--"}, argv...)...)
		wantCode(t, r, exitNotAcquired)
		stopHolders(t, leader)
		r = cli(t, env, append([]string{"elect", "--url", url, "--key", name, "--wait", "30s", "--"}, argv...)...)
		wantCode(t, r, 0)
		r = cli(t, nil, "status", "--url", url, "--election", name)
		if !strings.Contains(r.stdout, "no leader") {
			t.Fatalf("after the last leader resigned: %s", r)
		}
	})
}
