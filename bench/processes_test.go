package bench

// The rows with many managers (each with a client of its own, as many
// processes would have) and with real processes, for every backend, each
// interleaved with its peer given the same: a client, session or
// connection per goroutine or per process. The baseline (the peer) is
// reported first; <name>/<peer>-changes is the ratio to quote.
//
//	go test -run '^$' -bench 'Managers16Interleaved' -benchtime 5x   (from bench/)
//	go test -run '^$' -bench 'Processes8' -benchtime 3x
//
// A process row re-executes this test binary 8 times per phase; each child
// runs TestBenchChild (see processes.go).

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/distlock/distlock"
)

// contendedRetry is distlock's retry in the contended rows: wait up to a
// minute, backing off from 2 to 100 ms between tries a wake-up does not cut
// short.
var contendedRetry = distlock.LimitWait(distlock.ExponentialBackoff(2*time.Millisecond, 100*time.Millisecond), time.Minute)

// processTTL is the TTL of the locks the children of the process rows take.
const processTTL = 10 * time.Second

// processPhase is how long the children of one phase contend.
const processPhase = 2 * time.Second

func init() {
	// distlock.Open on any URL whose backend this binary imports.
	RegisterChild("distlock", func(ctx context.Context, url string) (LockFunc, func(), error) {
		m, err := distlock.Open(ctx, url, distlock.WithRetry(contendedRetry))
		if err != nil {
			return nil, nil, err
		}
		lock := func(ctx context.Context, key string) (func(context.Context) error, error) {
			tok, err := m.Acquire(ctx, key, processTTL)
			if err != nil {
				return nil, err
			}
			return func(ctx context.Context) error { return m.Release(ctx, key, tok) }, nil
		}
		return lock, func() { _ = m.Close() }, nil
	})
	// Test kinds of the harness itself: flock(2) on the file named by the
	// URL (a real cross-process lock, no server), and no lock at all.
	RegisterChild("test-flock", func(ctx context.Context, path string) (LockFunc, func(), error) {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, nil, err
		}
		lock := func(ctx context.Context, key string) (func(context.Context) error, error) {
			for syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
				select {
				case <-ctx.Done():
					return nil, ctx.Err()
				case <-time.After(time.Millisecond):
				}
			}
			return func(context.Context) error { return syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }, nil
		}
		return lock, func() { f.Close() }, nil
	})
	RegisterChild("test-none", func(ctx context.Context, _ string) (LockFunc, func(), error) {
		lock := func(ctx context.Context, key string) (func(context.Context) error, error) {
			return func(context.Context) error { return nil }, nil
		}
		return lock, func() {}, nil
	})
}

// TestProcessesHarness runs the process harness on flock(2), which must
// pass, and on no lock at all, which it must catch.
func TestProcessesHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "flock")
	res, err := ProcessesInterleaved(ctx, 3, 1, 300*time.Millisecond, ProcessLock{Name: "flock", Kind: "test-flock", URL: path})
	if err != nil {
		t.Fatal(err)
	}
	if r := res["flock"]; r.Total == 0 || r.OwnerChangesPerSec == 0 || r.LeastGrants == 0 {
		t.Fatalf("flock: %s: want grants and owner changes for every child", r)
	}
	t.Logf("flock: %s", res["flock"])
	_, err = ProcessesInterleaved(ctx, 3, 1, 300*time.Millisecond, ProcessLock{Name: "none", Kind: "test-none"})
	if !errors.Is(err, ErrNotExclusive) {
		t.Fatalf("no lock: %v, want ErrNotExclusive", err)
	}
	t.Logf("no lock: %v", err)
}

// TestBenchChild is the body of the child processes of the process rows;
// it does nothing unless ChildEnv is set.
func TestBenchChild(t *testing.T) {
	if os.Getenv(ChildEnv) == "" {
		t.Skip("runs only as a child process of a Processes benchmark")
	}
	if err := ChildMain(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestCheckLog(t *testing.T) {
	grants, changes, err := checkLog([]byte("S 0\nE 0\nS 1\nE 1\nS 1\nE 1\nS 0\nE 0\n"), 2)
	if err != nil || grants[0] != 2 || grants[1] != 2 || changes != 2 {
		t.Fatalf("grants %v changes %d err %v, want [2 2] 2 nil", grants, changes, err)
	}
	for _, bad := range []string{"S 0\nS 1\nE 1\nE 0\n", "S 0\nE 1\n", "S 0\n", "S 2\nE 2\n", "X 0\n"} {
		if _, _, err := checkLog([]byte(bad), 2); err == nil {
			t.Errorf("checkLog(%q) passed", bad)
		}
	}
}
