// Package bench measures distlock backends against each other and against
// their peers (raw clients, go-redsync, bsm/redislock) with one harness.
//
// It is a module of its own (github.com/distlock/distlock/bench) so that the
// peers it compares against never become dependencies of the library. Each
// backend adds a _test.go file whose benchmarks turn a lock implementation
// into a LockFunc and hand it to Uncontended, Parallel or Contended (or
// their interleaved forms). LockPool and PoolOf give each goroutine of a
// contended run a manager, client or connection of its own, as separate
// processes have; ProcessesInterleaved (processes.go) runs real processes:
//
//	go test -run '^$' -bench . -benchtime 3s ./...   (from bench/)
//
// Only ratios measured side by side in one run mean anything; absolute
// figures depend on the machine and its load.
package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distlock/distlock"
)

// LockFunc acquires key, blocking and retrying until it is granted or ctx
// ends, and returns a func that releases it.
type LockFunc func(ctx context.Context, key string) (unlock func(context.Context) error, err error)

// opTimeout bounds one acquire+release in Uncontended and Parallel: a
// benchmark that cannot get a free lock within it fails instead of hanging.
const opTimeout = 10 * time.Second

// Uncontended measures acquire+release of a free key from one goroutine.
// Besides ns/op it reports allocs/op and the latency percentiles p50-µs and
// p99-µs of one acquire+release pair.
func Uncontended(b *testing.B, lock LockFunc) {
	b.Helper()
	ctx := context.Background()
	key := fmt.Sprintf("bench:uncontended:%d", time.Now().UnixNano())
	samples := make([]time.Duration, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := lockUnlock(ctx, key, lock); err != nil {
			b.Fatal(err)
		}
		samples[i] = time.Since(t0)
	}
	b.StopTimer()
	p50, p99 := percentiles(samples)
	b.ReportMetric(float64(p50.Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(p99.Nanoseconds())/1e3, "p99-µs")
}

// Parallel measures acquire+release throughput of goroutines goroutines,
// each on a key of its own (so nobody waits for anybody), and reports ops/s
// and allocs/op.
func Parallel(b *testing.B, goroutines int, lock LockFunc) {
	b.Helper()
	if goroutines < 1 {
		goroutines = 1
	}
	ctx := context.Background()
	prefix := fmt.Sprintf("bench:parallel:%d:", time.Now().UnixNano())
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
	)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(key string) {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := lockUnlock(ctx, key, lock); err != nil {
					errOnce.Do(func() { first = err })
					return
				}
			}
		}(fmt.Sprint(prefix, g))
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if first != nil {
		b.Fatal(first)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
}

func lockUnlock(ctx context.Context, key string, lock LockFunc) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	unlock, err := lock(ctx, key)
	if err != nil {
		return fmt.Errorf("lock %q: %w", key, err)
	}
	if err := unlock(ctx); err != nil {
		return fmt.Errorf("unlock %q: %w", key, err)
	}
	return nil
}

// ContendedResult is what Contended measured.
type ContendedResult struct {
	// OwnerChangesPerSec counts grants to another goroutine than the
	// previous holder, per second: how fast the lock is handed off.
	OwnerChangesPerSec float64
	// WaitP50 and WaitP99 are percentiles of the time one acquire waited.
	WaitP50, WaitP99 time.Duration
	// MostGrants and LeastGrants are the grant counts of the luckiest and
	// the unluckiest goroutine (fairness).
	MostGrants, LeastGrants int
	// Total is the number of grants.
	Total int
	// Failures counts acquires that gave up (the lock's own retry limit)
	// before the run ended; they are not errors of the harness.
	Failures int
}

// String formats r for logs and docs.
func (r ContendedResult) String() string {
	return fmt.Sprintf("owner-changes/s=%.0f wait-p50=%v wait-p99=%v grants=%d most=%d least=%d failures=%d",
		r.OwnerChangesPerSec, r.WaitP50.Round(time.Microsecond), r.WaitP99.Round(time.Microsecond),
		r.Total, r.MostGrants, r.LeastGrants, r.Failures)
}

// Report adds r's figures to b as metrics.
func (r ContendedResult) Report(b *testing.B) {
	b.ReportMetric(r.OwnerChangesPerSec, "owner-changes/s")
	b.ReportMetric(float64(r.WaitP50.Nanoseconds())/1e3, "wait-p50-µs")
	b.ReportMetric(float64(r.WaitP99.Nanoseconds())/1e3, "wait-p99-µs")
	b.ReportMetric(float64(r.MostGrants), "most-grants")
	b.ReportMetric(float64(r.LeastGrants), "least-grants")
	b.ReportMetric(float64(r.Failures), "failures")
}

// RunContended runs Contended b.N times (use -benchtime 1x) and reports
// each result as metrics and in the log.
func RunContended(b *testing.B, goroutines int, d time.Duration, lock LockFunc) {
	b.Helper()
	for i := 0; i < b.N; i++ {
		r, err := Contended(context.Background(), goroutines, d, lock)
		if err != nil {
			b.Fatal(err)
		}
		r.Report(b)
		b.Logf("%s", r)
		b.ReportMetric(float64(r.Total), "grants")
	}
}

// ManagerPool returns a LockFunc in which each lock borrows one of ms
// until it is released, so that concurrent goroutines act as separate
// processes with clients of their own.
func ManagerPool(ms []*distlock.Manager, ttl time.Duration) LockFunc {
	locks := make([]LockFunc, len(ms))
	for i, m := range ms {
		locks[i] = func(ctx context.Context, key string) (func(context.Context) error, error) {
			tok, err := m.Acquire(ctx, key, ttl)
			if err != nil {
				return nil, err
			}
			return func(ctx context.Context) error { return m.Release(ctx, key, tok) }, nil
		}
	}
	return LockPool(locks...)
}

// LockPool returns a LockFunc in which each lock borrows one of locks (a
// manager, a client, a session or a connection of its own) from the
// acquire until the release, so that concurrent goroutines act as separate
// processes: with as many goroutines as locks, no two goroutines ever use
// the same one at once. An acquire that fails returns its lock at once.
func LockPool(locks ...LockFunc) LockFunc {
	free := make(chan LockFunc, len(locks))
	for _, l := range locks {
		free <- l
	}
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		var l LockFunc
		select {
		case l = <-free:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		unlock, err := l(ctx, key)
		if err != nil {
			free <- l
			return nil, err
		}
		return func(ctx context.Context) error {
			defer func() { free <- l }()
			return unlock(ctx)
		}, nil
	}
}

// PoolOf returns LockPool over n locks made by mk: n managers, clients,
// sessions or connections, one per goroutine of a contended run of n
// goroutines, as n processes would have.
func PoolOf(n int, mk func() LockFunc) LockFunc {
	locks := make([]LockFunc, n)
	for i := range locks {
		locks[i] = mk()
	}
	return LockPool(locks...)
}

// ErrNotExclusive is returned by Contended when two goroutines held the
// lock at once.
var ErrNotExclusive = errors.New("bench: two holders at once: the lock is not exclusive")

// Contended runs goroutines goroutines for about d, each looping acquire →
// increment a shared counter → release on one key, and measures the
// hand-off. It stops early and returns an error if the lock is not
// exclusive or a release fails; acquires that give up count as Failures.
func Contended(ctx context.Context, goroutines int, d time.Duration, lock LockFunc) (ContendedResult, error) {
	raw, err := contendedRun(ctx, goroutines, d, lock)
	if err != nil {
		return ContendedResult{}, err
	}
	return raw.result()
}

// contendedRaw is what one contended run observed, before summing up.
type contendedRaw struct {
	elapsed  time.Duration
	changes  int
	counter  int
	failures int
	waits    []time.Duration
	grants   []int
}

// add merges o (a run with the same number of goroutines) into r.
func (r *contendedRaw) add(o contendedRaw) {
	r.elapsed += o.elapsed
	r.changes += o.changes
	r.counter += o.counter
	r.failures += o.failures
	r.waits = append(r.waits, o.waits...)
	if r.grants == nil {
		r.grants = make([]int, len(o.grants))
	}
	for i, n := range o.grants {
		r.grants[i] += n
	}
}

func (r contendedRaw) result() (ContendedResult, error) {
	res := ContendedResult{Total: r.counter, Failures: r.failures}
	total := 0
	if len(r.grants) > 0 {
		res.LeastGrants = r.grants[0]
	}
	for _, n := range r.grants {
		total += n
		res.MostGrants = max(res.MostGrants, n)
		res.LeastGrants = min(res.LeastGrants, n)
	}
	if total != r.counter {
		return res, fmt.Errorf("%w: %d grants but the counter says %d", ErrNotExclusive, total, r.counter)
	}
	if r.elapsed > 0 {
		res.OwnerChangesPerSec = float64(r.changes) / r.elapsed.Seconds()
	}
	res.WaitP50, res.WaitP99 = percentiles(r.waits)
	return res, nil
}

func contendedRun(ctx context.Context, goroutines int, d time.Duration, lock LockFunc) (contendedRaw, error) {
	if goroutines < 1 {
		goroutines = 1
	}
	key := fmt.Sprintf("bench:contended:%d", time.Now().UnixNano())
	runCtx, cancel := context.WithTimeout(ctx, d)
	defer cancel()

	var (
		inside   atomic.Bool
		mu       sync.Mutex // guards the fields below
		counter  int        // incremented while holding the lock under test
		last     = -1
		changes  int
		waits    []time.Duration
		grants   = make([]int, goroutines)
		failures int
		firstErr error
		wg       sync.WaitGroup
	)
	fail := failFirst(&mu, &firstErr, cancel)
	start := time.Now()
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			local := make([]time.Duration, 0, 1024)
			defer func() {
				mu.Lock()
				waits = append(waits, local...)
				mu.Unlock()
			}()
			for runCtx.Err() == nil {
				t0 := time.Now()
				unlock, err := lock(runCtx, key)
				if err != nil {
					if runCtx.Err() != nil {
						return
					}
					mu.Lock()
					failures++
					mu.Unlock()
					continue
				}
				local = append(local, time.Since(t0))
				if !inside.CompareAndSwap(false, true) {
					fail(ErrNotExclusive)
				}
				// The race detector cannot see the exclusion the lock
				// gives through the server, so the shared counters are
				// also under mu; inside detects overlapping holders.
				mu.Lock()
				counter++
				if last != id {
					if last != -1 {
						changes++
					}
					last = id
				}
				grants[id]++
				mu.Unlock()
				inside.Store(false)
				uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
				err = unlock(uctx)
				ucancel()
				if err != nil {
					fail(fmt.Errorf("unlock: %w", err))
					return
				}
			}
		}(g)
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return contendedRaw{}, firstErr
	}
	return contendedRaw{elapsed: elapsed, changes: changes, counter: counter, failures: failures, waits: waits, grants: grants}, nil
}

// ContendedInterleaved runs Contended for several locks, taking turns in
// rounds of phases of about phase each (so that a machine whose load
// changes during the run affects all of them alike), and returns each
// lock's figures summed over its phases: owner changes per second of its
// own phases, wait percentiles over all its acquires, grants per goroutine
// summed. Each phase uses a fresh key.
func ContendedInterleaved(ctx context.Context, goroutines, rounds int, phase time.Duration, locks ...NamedLock) (map[string]ContendedResult, error) {
	names := make([]string, len(locks))
	for j, l := range locks {
		names[j] = l.Name
	}
	return interleave(names, rounds, func(j int) (contendedRaw, error) {
		return contendedRun(ctx, goroutines, phase, locks[j].Lock)
	})
}

// interleave runs run(j) for every contender j in turn, rounds times, and
// sums each contender's phases into its result.
func interleave(names []string, rounds int, run func(j int) (contendedRaw, error)) (map[string]ContendedResult, error) {
	raws := make([]contendedRaw, len(names))
	for round := 0; round < max(rounds, 1); round++ {
		for j, name := range names {
			raw, err := run(j)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			raws[j].add(raw)
		}
	}
	out := make(map[string]ContendedResult, len(names))
	for j, name := range names {
		r, err := raws[j].result()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out[name] = r
	}
	return out, nil
}

// RunContendedInterleaved runs ContendedInterleaved with b.N rounds (so
// -benchtime 5x is five phases per lock) and reports the figures with
// ReportInterleaved: put the baseline (the peer) first.
func RunContendedInterleaved(b *testing.B, goroutines int, phase time.Duration, locks ...NamedLock) {
	b.Helper()
	names := make([]string, len(locks))
	for j, l := range locks {
		names[j] = l.Name
	}
	b.ResetTimer()
	res, err := ContendedInterleaved(context.Background(), goroutines, b.N, phase, locks...)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	ReportInterleaved(b, names, res)
}

// ReportInterleaved logs each contender's figures and reports, for each,
// <name>-owner-changes/s, <name>-wait-p99-µs and <name>-failures, and for
// every contender after the first <name>/<first>-changes: the ratio of its
// owner changes per second to the first one's (the baseline).
func ReportInterleaved(b *testing.B, names []string, res map[string]ContendedResult) {
	b.Helper()
	if len(names) == 0 {
		return
	}
	base := res[names[0]].OwnerChangesPerSec
	for j, name := range names {
		r := res[name]
		b.Logf("%s: %s", name, r)
		b.ReportMetric(r.OwnerChangesPerSec, name+"-owner-changes/s")
		b.ReportMetric(float64(r.WaitP99.Nanoseconds())/1e3, name+"-wait-p99-µs")
		b.ReportMetric(float64(r.Failures), name+"-failures")
		if j > 0 && base > 0 {
			b.ReportMetric(r.OwnerChangesPerSec/base, name+"/"+names[0]+"-changes")
		}
	}
}

// percentiles returns the 50th and 99th percentiles of samples (sorted in
// place).
func percentiles(samples []time.Duration) (p50, p99 time.Duration) {
	if len(samples) == 0 {
		return 0, 0
	}
	slices.Sort(samples)
	at := func(q float64) time.Duration {
		i := int(q*float64(len(samples)) + 0.5)
		return samples[min(max(i-1, 0), len(samples)-1)]
	}
	return at(0.50), at(0.99)
}

// NamedLock is a LockFunc with the name its figures are reported under.
type NamedLock struct {
	Name string
	Lock LockFunc
}

// Interleaved measures uncontended acquire+release like Uncontended, but
// for several locks at once, taking turns every iteration, so that a
// machine whose load changes during the run (a shared CI box) affects all
// of them alike. It reports <name>-p50-µs and <name>-p99-µs for each lock
// and, for every lock after the first, <name>/<first>-p50: the ratio of
// its median to the first one's (put the baseline first).
func Interleaved(b *testing.B, locks ...NamedLock) {
	b.Helper()
	if len(locks) == 0 {
		return
	}
	ctx := context.Background()
	keys := make([]string, len(locks)) // one each: a lock's late cleanup never delays another
	samples := make([][]time.Duration, len(locks))
	for i := range samples {
		keys[i] = fmt.Sprintf("bench:interleaved:%d:%s", time.Now().UnixNano(), locks[i].Name)
		samples[i] = make([]time.Duration, b.N)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j, l := range locks {
			t0 := time.Now()
			if err := lockUnlock(ctx, keys[j], l.Lock); err != nil {
				b.Fatalf("%s: %v", l.Name, err)
			}
			samples[j][i] = time.Since(t0)
		}
	}
	b.StopTimer()
	var base time.Duration
	for j, l := range locks {
		p50, p99 := percentiles(samples[j])
		b.ReportMetric(float64(p50.Nanoseconds())/1e3, l.Name+"-p50-µs")
		b.ReportMetric(float64(p99.Nanoseconds())/1e3, l.Name+"-p99-µs")
		if j == 0 {
			base = p50
		} else if base > 0 {
			b.ReportMetric(float64(p50)/float64(base), l.Name+"/"+locks[0].Name+"-p50")
		}
	}
}

// ParallelInterleaved measures the throughput of several locks like
// Parallel (goroutines goroutines, each on a key of its own), taking turns
// in phases of about phase each for b.N rounds, so that a machine whose
// load changes during the run affects all of them alike. It reports
// <name>-ops/s for each lock and <name>/<first>-ops: the ratio to the
// first lock's throughput (put the baseline first).
func ParallelInterleaved(b *testing.B, goroutines int, phase time.Duration, locks ...NamedLock) {
	b.Helper()
	if goroutines < 1 {
		goroutines = 1
	}
	ctx := context.Background()
	prefix := fmt.Sprintf("bench:parallel-interleaved:%d:", time.Now().UnixNano())
	ops := make([]int64, len(locks))
	busy := make([]time.Duration, len(locks))
	b.ResetTimer()
	for round := 0; round < b.N; round++ {
		for j, l := range locks {
			var (
				n       atomic.Int64
				wg      sync.WaitGroup
				errOnce sync.Once
				first   error
			)
			start := time.Now()
			end := start.Add(phase)
			for g := 0; g < goroutines; g++ {
				wg.Add(1)
				go func(key string) {
					defer wg.Done()
					for time.Now().Before(end) {
						if err := lockUnlock(ctx, key, l.Lock); err != nil {
							errOnce.Do(func() { first = err })
							return
						}
						n.Add(1)
					}
				}(fmt.Sprint(prefix, l.Name, ":", g))
			}
			wg.Wait()
			if first != nil {
				b.Fatalf("%s: %v", l.Name, first)
			}
			ops[j] += n.Load()
			busy[j] += time.Since(start)
		}
	}
	b.StopTimer()
	var base float64
	for j, l := range locks {
		rate := float64(ops[j]) / busy[j].Seconds()
		b.ReportMetric(rate, l.Name+"-ops/s")
		if j == 0 {
			base = rate
		} else if base > 0 {
			b.ReportMetric(rate/base, l.Name+"/"+locks[0].Name+"-ops")
		}
	}
}

// failFirst returns a function that records the first error it is given in
// *first (under mu) and cancels the phase.
func failFirst(mu *sync.Mutex, first *error, cancel context.CancelFunc) func(error) {
	return func(err error) {
		mu.Lock()
		if *first == nil {
			*first = err
		}
		mu.Unlock()
		cancel()
	}
}
