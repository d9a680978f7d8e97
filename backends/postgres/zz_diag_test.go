package postgres_test

import (
	"fmt"
	"github.com/distlock/distlock"
	"os"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestZZDiag(t *testing.T) {
	h := newHarness(t, server(t), "")
	ctx := ctxT(t, 60*time.Second)
	var total atomic.Int64
	var slow atomic.Int64
	var dumped atomic.Bool
	var wg sync.WaitGroup
	tr := &countingTracer{}
	start := time.Now()
	end := time.Now().Add(3 * time.Second)
	for i := range 16 {
		b, _ := backendOn(t, h, 2, tr)
		m := distlock.New(b, distlock.WithRetry(distlock.LimitWait(distlock.ExponentialBackoff(2*time.Millisecond, 100*time.Millisecond), time.Minute)))
		useM := os.Getenv("MGR") != ""
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok := fmt.Sprint("t", i)
			for time.Now().Before(end) {
				t0 := time.Now()
				done := make(chan struct{})
				go func() {
					select {
					case <-done:
					case <-time.After(300 * time.Millisecond):
						if time.Since(start) > 1500*time.Millisecond && dumped.CompareAndSwap(false, true) {
							pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
						}
					}
				}()
				var err error
				if useM {
					tok, err = m.Acquire(ctx, "k", time.Minute)
				} else {
					_, err = b.AcquireWait(ctx, "k", tok, time.Minute)
				}
				if err != nil {
					t.Error(err)
					return
				}
				close(done)
				if time.Since(t0) > 200*time.Millisecond {
					slow.Add(1)
					t.Logf("slow %v at %v", time.Since(t0), t0.Sub(start))
				}
				total.Add(1)
				if useM {
					err = m.Release(ctx, "k", tok)
				} else {
					err = b.Release(ctx, "k", tok)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("total %d slow %d statements %d", total.Load(), slow.Load(), tr.n.Load())
}
