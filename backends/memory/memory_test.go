package memory_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/memory"
	"github.com/distlock/distlock/conformance"
	"github.com/distlock/distlock/driver"
)

// harness makes independent backends over one store.
type harness struct{ s *memory.Store }

func (h harness) NewBackend(context.Context) (driver.Backend, error) { return h.s.Backend(), nil }
func (h harness) Stop(context.Context) error                         { h.s.Stop(); return nil }
func (h harness) Start(context.Context) error                        { h.s.Start(); return nil }
func (h harness) Revoke(_ context.Context, key string) error {
	if !h.s.Revoke(key) {
		return errors.New("no lock to revoke")
	}
	return nil
}

func (h harness) RevokeMode(_ context.Context, key string, kind driver.Kind) error {
	if !h.s.RevokeMode(key, kind) {
		return errors.New("nothing to revoke")
	}
	return nil
}

func TestConformance(t *testing.T) {
	// A 1 s short TTL leaves room for scheduling delays when CI runs the
	// packages side by side on two cores.
	conformance.Run(t, harness{memory.NewStore()}, conformance.WithShortTTL(time.Second))
}

func TestConformanceStandalone(t *testing.T) {
	res, err := conformance.Check(t.Context(), harness{memory.NewStore()}, conformance.WithShortTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != len(conformance.Cases()) {
		t.Fatalf("%d results for %d cases", len(res), len(conformance.Cases()))
	}
	for _, r := range res {
		if r.Status != "pass" {
			t.Errorf("%s: %s %s", r.Name, r.Status, r.Message)
		}
	}
}

// The same token never loses its lock on re-acquire: hammer re-acquires
// while many contenders poll, and check none ever gets in. (The TTL is
// long: what is tested is that a re-acquire never leaves a gap, not how
// often a loaded scheduler runs the holder.)
func TestReacquireNeverDropsLock(t *testing.T) {
	s := memory.NewStore()
	holder := distlock.New(s.Backend())
	defer holder.Close()
	key := "seat:42"
	tok, err := holder.Acquire(t.Context(), key, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var stolen, probes atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := distlock.New(s.Backend(), distlock.WithRetry(distlock.NoRetry()))
			defer m.Close()
			for !stop.Load() {
				if t2, err := m.Acquire(context.Background(), key, time.Second); err == nil {
					stolen.Add(1)
					_ = m.Release(context.Background(), key, t2)
				}
				probes.Add(1)
			}
		}()
	}
	// Re-acquire until the contenders have probed 2000 times (at most 10s).
	deadline := time.Now().Add(10 * time.Second)
	for probes.Load() < 2000 && time.Now().Before(deadline) {
		if _, err := holder.Acquire(t.Context(), key, 5*time.Second, tok); err != nil {
			t.Fatalf("re-acquire: %v", err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if stolen.Load() != 0 {
		t.Fatalf("contenders got the lock %d times in %d probes", stolen.Load(), probes.Load())
	}
	if probes.Load() < 2000 {
		t.Fatalf("only %d probes ran in 10s", probes.Load())
	}
}
