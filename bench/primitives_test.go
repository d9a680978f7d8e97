package bench

// Rows of the primitives of issue 15, one sub-benchmark per backend
// (memory, redis, etcd, postgres), each Manager opened from the backend's
// URL with a client of its own, as separate processes have. A backend
// that does not declare the primitive is skipped.
//
//	go test -run '^$' -bench 'PrimitivesReadHeavy|PrimitivesSemaphore' -benchtime 3x   (from bench/)
//	go test -run '^$' -bench PrimitivesFailover -benchtime 5x
//
// ReadHeavy: 16 readers and 1 writer on one key, a Manager each, holding
// for primWork; the same Managers take turns (phases of primPhase, b.N
// rounds) between a plain mutex that everyone takes and the read-write
// lock (readers RLock, the writer Lock). Semaphore: 16 Managers on a
// semaphore of 4, holding for primWork. Failover: 3 OS processes campaign
// in one election of primElectionTTL; the leader is killed with SIGKILL
// and the parent polls Leader every 5 ms until another process leads (the
// memory backend, which lives in one process, kills a Manager instead: its
// backend fails every call from then on). b.N elections.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/memory"
	"github.com/distlock/distlock/driver"
)

const (
	// primTTL is the TTL of the holds of the ReadHeavy and Semaphore rows.
	primTTL = 10 * time.Second
	// primWork is how long a holder keeps its hold.
	primWork = 200 * time.Microsecond
	// primWriterPause is how long the writer of ReadHeavy waits between
	// its writes.
	primWriterPause = 2 * time.Millisecond
	// primPhase is the length of one phase.
	primPhase = 2 * time.Second
	// primElectionTTL is the election's lease in the failover row.
	primElectionTTL = 2 * time.Second
)

// primBackend is a backend of the rows: url returns the URL of a server
// for the top-level benchmark b (started once per top-level benchmark).
type primBackend struct {
	name string
	url  func(b *testing.B) string
}

var primBackends = []primBackend{
	{"memory", func(*testing.B) string { return fmt.Sprintf("memory://bench-%d", time.Now().UnixNano()) }},
	{"redis", redisBenchURL},
	{"etcd", etcdBenchURL},
	{"postgres", postgresURL},
}

// forEachBackend runs row as a sub-benchmark per backend, with the URL of
// a server started (where needed) for the top-level benchmark, so that
// the warm-up run and the measured run of a sub-benchmark share it.
func forEachBackend(b *testing.B, row func(b *testing.B, url string)) {
	for _, be := range primBackends {
		var url string
		b.Run(be.name, func(sb *testing.B) {
			if url == "" {
				url = be.url(b)
			}
			row(sb, url)
		})
	}
}

// openManagers opens n Managers from url, closed when b ends, and skips b
// if the backend does not offer what need says.
func openManagers(b *testing.B, url string, n int, need func(distlock.Capabilities) bool) []*distlock.Manager {
	b.Helper()
	ms := make([]*distlock.Manager, n)
	for i := range ms {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		m, err := distlock.Open(ctx, url, distlock.WithRetry(contendedRetry))
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = m.Close() })
		if !need(m.Capabilities()) {
			b.Skipf("backend %s does not declare the primitive (Capabilities)", m.Capabilities().Name)
		}
		ms[i] = m
	}
	return ms
}

// release adapts a *Lock to a LockFunc's result.
func release(l *distlock.Lock, err error) (func(context.Context) error, error) {
	if err != nil {
		return nil, err
	}
	return l.Release, nil
}

func plainLock(m *distlock.Manager) LockFunc {
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		return release(m.Lock(ctx, key, primTTL))
	}
}

func readLock(m *distlock.Manager) LockFunc {
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		return release(m.RWMutex(key).RLock(ctx, primTTL))
	}
}

func writeLock(m *distlock.Manager) LockFunc {
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		return release(m.RWMutex(key).Lock(ctx, primTTL))
	}
}

func permit(m *distlock.Manager, limit int) LockFunc {
	return func(ctx context.Context, key string) (func(context.Context) error, error) {
		return release(m.Semaphore(key, limit).Acquire(ctx, primTTL))
	}
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// BenchmarkPrimitivesReadHeavy: 16 readers + 1 writer on one key, a
// Manager each, plain mutex against read-write lock, interleaved in phases
// of primPhase; b.N rounds (-benchtime 3x). Holders hold for primWork.
// Reports each mode's reader and writer grants per second, the ratios
// rw/mutex, and the writer's wait p99 (a writer that waits no longer than
// under the mutex is not starved by the readers).
func BenchmarkPrimitivesReadHeavy(b *testing.B) { readHeavyRow(b, primWork) }

// BenchmarkPrimitivesReadHeavy20ms is BenchmarkPrimitivesReadHeavy with
// holds of 20 ms: a critical section longer than a grant's round trip to
// the server, where sharing it among readers pays even on a backend whose
// grants are slow writes (etcd).
func BenchmarkPrimitivesReadHeavy20ms(b *testing.B) { readHeavyRow(b, 20*time.Millisecond) }

func readHeavyRow(b *testing.B, work time.Duration) {
	forEachBackend(b, func(b *testing.B, url string) {
		mgrs := openManagers(b, url, 17, func(c distlock.Capabilities) bool { return c.ReadWrite })
		mutex := ReadHeavy{Writer: plainLock(mgrs[16]), Work: work, WriterPause: primWriterPause}
		rw := ReadHeavy{Writer: writeLock(mgrs[16]), SharedReads: true, Work: work, WriterPause: primWriterPause}
		for _, m := range mgrs[:16] {
			mutex.Readers = append(mutex.Readers, plainLock(m))
			rw.Readers = append(rw.Readers, readLock(m))
		}
		b.ResetTimer()
		res, err := ReadHeavyInterleaved(context.Background(), b.N, primPhase, []string{"mutex", "rw"}, mutex, rw)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		for _, name := range []string{"mutex", "rw"} {
			r := res[name]
			b.Logf("%s: %s", name, r)
			b.ReportMetric(r.ReaderOpsPerSec, name+"-reader-ops/s")
			b.ReportMetric(r.WriterOpsPerSec, name+"-writer-ops/s")
			b.ReportMetric(ms(r.WriterWaitP99), name+"-writer-wait-p99-ms")
			b.ReportMetric(ms(r.ReaderWaitP99), name+"-reader-wait-p99-ms")
			b.ReportMetric(float64(r.Failures), name+"-failures")
		}
		m, r := res["mutex"], res["rw"]
		b.ReportMetric(float64(r.MaxReaders), "rw-max-readers")
		if m.ReaderOpsPerSec > 0 {
			b.ReportMetric(r.ReaderOpsPerSec/m.ReaderOpsPerSec, "rw/mutex-reader-ops")
		}
		if m.WriterOpsPerSec > 0 {
			b.ReportMetric(r.WriterOpsPerSec/m.WriterOpsPerSec, "rw/mutex-writer-ops")
		}
	})
}

// BenchmarkPrimitivesSemaphore: 16 Managers on a semaphore of 4, each
// looping acquire → primWork → release, b.N phases of primPhase
// (-benchtime 3x). Fails if more than 4 held at once.
func BenchmarkPrimitivesSemaphore(b *testing.B) {
	const limit, contenders = 4, 16
	forEachBackend(b, func(b *testing.B, url string) {
		mgrs := openManagers(b, url, contenders, func(c distlock.Capabilities) bool { return c.Semaphore })
		locks := make([]LockFunc, len(mgrs))
		for i, m := range mgrs {
			locks[i] = permit(m, limit)
		}
		b.ResetTimer()
		r, err := SemaphoreRun(context.Background(), limit, b.N, primPhase, primWork, locks)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("%s", r)
		if r.MaxHolders > limit {
			b.Fatalf("%d holders at once, limit %d", r.MaxHolders, limit)
		}
		b.ReportMetric(r.GrantsPerSec, "grants/s")
		b.ReportMetric(float64(r.MaxHolders), "max-holders")
		b.ReportMetric(r.MeanHolders, "mean-holders")
		b.ReportMetric(ms(r.MeanHold), "mean-hold-ms")
		b.ReportMetric(ms(r.WaitP50), "wait-p50-ms")
		b.ReportMetric(ms(r.WaitP99), "wait-p99-ms")
		b.ReportMetric(float64(r.Least), "least-grants")
		b.ReportMetric(float64(r.Failures), "failures")
	})
}

// BenchmarkPrimitivesFailover: b.N elections (-benchtime 5x) of 3
// participants with a lease of primElectionTTL; in each the leader is
// killed and the time until Leader names another participant measured.
// Reports the median and the maximum, and the median of what remained of
// the killed leader's lease (the floor of a failover that waits for the
// lease to expire).
func BenchmarkPrimitivesFailover(b *testing.B) {
	forEachBackend(b, func(b *testing.B, url string) {
		observer := openManagers(b, url, 1, func(c distlock.Capabilities) bool { return c.Election })[0]
		start := ProcessCampaigner(url, primElectionTTL)
		if observer.Capabilities().Name == "memory" {
			start = memoryCampaigner(url, primElectionTTL)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		b.ResetTimer()
		samples, err := Failover(ctx, 3, b.N, 300*time.Millisecond, 3*primElectionTTL+20*time.Second, start, ManagerLeader(observer, primElectionTTL))
		b.StopTimer()
		for i, s := range samples {
			b.Logf("election %d: failover %v, lease left at the kill %v", i, s.Took.Round(time.Millisecond), s.TTLLeft.Round(time.Millisecond))
		}
		if err != nil {
			b.Fatal(err)
		}
		med, most, left := FailoverStats(samples)
		b.ReportMetric(ms(med), "failover-p50-ms")
		b.ReportMetric(ms(most), "failover-max-ms")
		b.ReportMetric(ms(left), "lease-left-p50-ms")
		b.ReportMetric(ms(primElectionTTL), "ttl-ms")
	})
}

// TestBenchElectionChild is the body of the participant processes of
// BenchmarkPrimitivesFailover; it does nothing unless ElectionChildEnv is
// set.
func TestBenchElectionChild(t *testing.T) {
	if os.Getenv(ElectionChildEnv) == "" {
		t.Skip("runs only as a child process of BenchmarkPrimitivesFailover")
	}
	if err := ElectionChildMain(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// errKilled is what a killed participant's backend answers.
var errKilled = errors.New("bench: participant killed")

// killable is a memory backend that fails every call of the primitives
// once dead is set: a process that died, as far as the store can tell.
type killable struct {
	driver.Backend
	driver.Primitives
	driver.ModeWatcher
	dead atomic.Bool
}

func (k *killable) AcquireMode(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode) (driver.Grant, error) {
	if k.dead.Load() {
		return driver.Grant{}, distlock.Unavailable(errKilled)
	}
	return k.Primitives.AcquireMode(ctx, key, token, ttl, m)
}

func (k *killable) ExtendMode(ctx context.Context, key, token string, ttl time.Duration, m driver.Mode) (driver.Grant, error) {
	if k.dead.Load() {
		return driver.Grant{}, distlock.Unavailable(errKilled)
	}
	return k.Primitives.ExtendMode(ctx, key, token, ttl, m)
}

func (k *killable) ReleaseMode(ctx context.Context, key, token string, m driver.Mode) error {
	if k.dead.Load() {
		return distlock.Unavailable(errKilled)
	}
	return k.Primitives.ReleaseMode(ctx, key, token, m)
}

// memoryCampaigner is the failover row's Campaigner for the memory
// backend: a Manager per participant over the store named by url, killed
// by making its backend fail every call.
func memoryCampaigner(url string, ttl time.Duration) Campaigner {
	name := url[len("memory://"):]
	return func(ctx context.Context, election string, id int) (func(), error) {
		be := memory.Named(name).Backend()
		k := &killable{Backend: be, Primitives: be.(driver.Primitives), ModeWatcher: be.(driver.ModeWatcher)}
		m := distlock.New(k)
		ctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = m.Election(election, ttl).Campaign(ctx, strconv.Itoa(id))
		}()
		return func() {
			k.dead.Store(true)
			cancel()
			wg.Wait()
			_ = m.Close()
		}, nil
	}
}

// TestPrimitivesHarness runs the primitives' harness briefly on the memory
// backend, which must pass, and on locks that let too many in, which it
// must catch.
func TestPrimitivesHarness(t *testing.T) {
	ctx := context.Background()
	url := fmt.Sprintf("memory://harness-%d", time.Now().UnixNano())
	mgrs := make([]*distlock.Manager, 17)
	for i := range mgrs {
		m, err := distlock.Open(ctx, url, distlock.WithRetry(contendedRetry))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close() })
		mgrs[i] = m
	}
	none := func(context.Context, string) (func(context.Context) error, error) {
		return func(context.Context) error { return nil }, nil
	}
	mutex := ReadHeavy{Writer: plainLock(mgrs[16]), Work: primWork}
	rw := ReadHeavy{Writer: writeLock(mgrs[16]), SharedReads: true, Work: primWork}
	loose := ReadHeavy{Writer: none, Work: primWork}
	for _, m := range mgrs[:16] {
		mutex.Readers = append(mutex.Readers, plainLock(m))
		rw.Readers = append(rw.Readers, readLock(m))
		loose.Readers = append(loose.Readers, none)
	}
	res, err := ReadHeavyInterleaved(ctx, 1, 300*time.Millisecond, []string{"mutex", "rw"}, mutex, rw)
	if err != nil {
		t.Fatal(err)
	}
	if r := res["rw"]; r.MaxReaders < 2 || r.WriterOpsPerSec == 0 || res["mutex"].MaxReaders != 1 {
		t.Fatalf("mutex: %s; rw: %s: want shared reads under rw only, and writes", res["mutex"], r)
	}
	if _, err := ReadHeavyInterleaved(ctx, 1, 300*time.Millisecond, []string{"none"}, loose); !errors.Is(err, ErrTooManyHolders) {
		t.Fatalf("no lock: %v, want ErrTooManyHolders", err)
	}

	four, five := make([]LockFunc, 16), make([]LockFunc, 16)
	for i, m := range mgrs[:16] {
		four[i], five[i] = permit(m, 4), permit(m, 5)
	}
	r, err := SemaphoreRun(ctx, 4, 1, 300*time.Millisecond, primWork, four)
	if err != nil || r.MaxHolders < 2 || r.MaxHolders > 4 {
		t.Fatalf("semaphore of 4: %s, %v", r, err)
	}
	if _, err := SemaphoreRun(ctx, 4, 1, 300*time.Millisecond, primWork, five); !errors.Is(err, ErrTooManyHolders) {
		t.Fatalf("semaphore of 5 counted against 4: %v, want ErrTooManyHolders", err)
	}

	const ttl = 100 * time.Millisecond
	samples, err := Failover(ctx, 3, 1, 50*time.Millisecond, 10*time.Second, memoryCampaigner(url, ttl), ManagerLeader(mgrs[0], ttl))
	if err != nil || len(samples) != 1 || samples[0].Took <= 0 || samples[0].Took > 5*time.Second {
		t.Fatalf("failover: %v, %v", samples, err)
	}
	t.Logf("failover with a lease of %v: %v", ttl, samples[0].Took)
}
