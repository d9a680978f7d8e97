package bench

// Harness of the primitives of issue 15 (read-write locks, semaphores,
// elections), for every backend alike: ReadHeavyInterleaved compares a
// read-write lock with a plain mutex under a read-heavy load, SemaphoreRun
// counts the holders of a semaphore, Failover measures how long an election
// has no usable leader after its leader dies.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/distlock/distlock"
)

// ErrTooManyHolders is returned when more holders than allowed held at once:
// a writer beside anyone, two holders of an exclusive lock, more than the
// limit of a semaphore. Holders count themselves after their acquire
// returns and uncount before their release, inside what the server grants,
// so an overlap seen here is a real one.
var ErrTooManyHolders = errors.New("bench: more holders at once than the lock allows")

// ReadHeavy is a read-heavy workload on one key: each reader loops
// acquire → Work → release, the writer loops acquire → Work → release →
// WriterPause.
type ReadHeavy struct {
	// Readers are the readers' locks, one per reader (a Manager each).
	Readers []LockFunc
	// Writer is the writer's lock.
	Writer LockFunc
	// SharedReads says readers may hold together (a read-write lock);
	// false checks that every holder is alone (a plain mutex).
	SharedReads bool
	// Work is how long each holder keeps the lock (a sleep).
	Work time.Duration
	// WriterPause is how long the writer waits between its writes.
	WriterPause time.Duration
}

// ReadHeavyResult is what a ReadHeavy run measured.
type ReadHeavyResult struct {
	// ReaderOpsPerSec and WriterOpsPerSec are the grants per second.
	ReaderOpsPerSec, WriterOpsPerSec float64
	// ReaderWaitP99, WriterWaitP50 and WriterWaitP99 are percentiles of
	// the time an acquire waited.
	ReaderWaitP99, WriterWaitP50, WriterWaitP99 time.Duration
	// MaxReaders is the most readers seen holding at once.
	MaxReaders int
	// Failures counts acquires that gave up (their retry limit).
	Failures int
}

// String formats r for logs.
func (r ReadHeavyResult) String() string {
	return fmt.Sprintf("readers %.0f/s (wait p99 %v, at most %d at once), writer %.1f/s (wait p50 %v p99 %v), failures %d",
		r.ReaderOpsPerSec, r.ReaderWaitP99.Round(time.Microsecond), r.MaxReaders,
		r.WriterOpsPerSec, r.WriterWaitP50.Round(time.Microsecond), r.WriterWaitP99.Round(time.Microsecond), r.Failures)
}

// readHeavyRaw is what one phase observed.
type readHeavyRaw struct {
	elapsed                  time.Duration
	readerOps, writerOps     int
	readerWaits, writerWaits []time.Duration
	maxReaders, failures     int
}

func (r *readHeavyRaw) add(o readHeavyRaw) {
	r.elapsed += o.elapsed
	r.readerOps += o.readerOps
	r.writerOps += o.writerOps
	r.readerWaits = append(r.readerWaits, o.readerWaits...)
	r.writerWaits = append(r.writerWaits, o.writerWaits...)
	r.maxReaders = max(r.maxReaders, o.maxReaders)
	r.failures += o.failures
}

func (r readHeavyRaw) result() ReadHeavyResult {
	res := ReadHeavyResult{MaxReaders: r.maxReaders, Failures: r.failures}
	if s := r.elapsed.Seconds(); s > 0 {
		res.ReaderOpsPerSec = float64(r.readerOps) / s
		res.WriterOpsPerSec = float64(r.writerOps) / s
	}
	_, res.ReaderWaitP99 = percentiles(r.readerWaits)
	res.WriterWaitP50, res.WriterWaitP99 = percentiles(r.writerWaits)
	return res
}

// run is one phase of about d on key.
func (w ReadHeavy) run(ctx context.Context, key string, d time.Duration) (readHeavyRaw, error) {
	runCtx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		readers, writers atomic.Int32
		mu               sync.Mutex // guards raw and firstErr
		raw              readHeavyRaw
		firstErr         error
		wg               sync.WaitGroup
	)
	fail := failFirst(&mu, &firstErr, cancel)
	loop := func(lock LockFunc, writer bool) {
		defer wg.Done()
		var (
			waits         []time.Duration
			ops, failures int
			most          int
		)
		defer func() {
			mu.Lock()
			defer mu.Unlock()
			raw.failures += failures
			raw.maxReaders = max(raw.maxReaders, most)
			if writer {
				raw.writerOps += ops
				raw.writerWaits = append(raw.writerWaits, waits...)
			} else {
				raw.readerOps += ops
				raw.readerWaits = append(raw.readerWaits, waits...)
			}
		}()
		for runCtx.Err() == nil {
			t0 := time.Now()
			unlock, err := lock(runCtx, key)
			if err != nil {
				if runCtx.Err() == nil {
					failures++
				}
				continue
			}
			waits = append(waits, time.Since(t0))
			// Count in before looking at the others (both sides do), so
			// that two overlapping holders cannot both miss each other.
			if writer {
				if writers.Add(1) != 1 || readers.Load() != 0 {
					fail(fmt.Errorf("%w: the writer beside %d readers", ErrTooManyHolders, readers.Load()))
				}
			} else {
				n := int(readers.Add(1))
				most = max(most, n)
				if writers.Load() != 0 || (!w.SharedReads && n != 1) {
					fail(fmt.Errorf("%w: a reader beside %d readers and %d writers", ErrTooManyHolders, n-1, writers.Load()))
				}
			}
			time.Sleep(w.Work)
			if writer {
				writers.Add(-1)
			} else {
				readers.Add(-1)
			}
			ops++
			uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
			err = unlock(uctx)
			ucancel()
			if err != nil {
				fail(fmt.Errorf("unlock: %w", err))
				return
			}
			if writer && w.WriterPause > 0 {
				select {
				case <-runCtx.Done():
				case <-time.After(w.WriterPause):
				}
			}
		}
	}
	start := time.Now()
	for _, l := range w.Readers {
		wg.Add(1)
		go loop(l, false)
	}
	wg.Add(1)
	go loop(w.Writer, true)
	wg.Wait()
	raw.elapsed = time.Since(start)
	return raw, firstErr
}

// ReadHeavyInterleaved runs the workloads in turn, rounds times, phases of
// about phase each on a fresh key, and returns each one's figures summed
// over its phases (so that a machine whose load changes affects them
// alike).
func ReadHeavyInterleaved(ctx context.Context, rounds int, phase time.Duration, names []string, ws ...ReadHeavy) (map[string]ReadHeavyResult, error) {
	if len(names) != len(ws) {
		return nil, errors.New("bench: a name per workload")
	}
	raws := make([]readHeavyRaw, len(ws))
	for round := range max(rounds, 1) {
		for j, w := range ws {
			key := fmt.Sprintf("bench:read-heavy:%d:%d:%s", time.Now().UnixNano(), round, names[j])
			raw, err := w.run(ctx, key, phase)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", names[j], err)
			}
			raws[j].add(raw)
		}
	}
	out := make(map[string]ReadHeavyResult, len(ws))
	for j, name := range names {
		out[name] = raws[j].result()
	}
	return out, nil
}

// SemaphoreResult is what SemaphoreRun measured.
type SemaphoreResult struct {
	// GrantsPerSec is the permits granted per second.
	GrantsPerSec float64
	// MaxHolders is the most holders seen at once (at most the limit).
	MaxHolders int
	// MeanHolders is the mean number of holders over the run (the time
	// spent holding, summed, over the run's length).
	MeanHolders float64
	// WaitP50 and WaitP99 are percentiles of the time an acquire waited.
	WaitP50, WaitP99 time.Duration
	// MeanHold is the mean time a holder held (the work asked for plus
	// the timer's lateness).
	MeanHold time.Duration
	// Least and Most are the grants of the unluckiest and the luckiest
	// contender.
	Least, Most int
	// Failures counts acquires that gave up (their retry limit).
	Failures int
}

// String formats r for logs.
func (r SemaphoreResult) String() string {
	return fmt.Sprintf("grants %.0f/s, at most %d holders (mean %.2f, each holding %v), wait p50 %v p99 %v, grants per contender %d–%d, failures %d",
		r.GrantsPerSec, r.MaxHolders, r.MeanHolders, r.MeanHold.Round(time.Microsecond), r.WaitP50.Round(time.Microsecond), r.WaitP99.Round(time.Microsecond),
		r.Least, r.Most, r.Failures)
}

// SemaphoreRun runs a contender per lock (each a permit of one semaphore
// of limit permits: a Manager each) for rounds phases of about phase, each
// on a fresh key, each contender looping acquire → work → release. It
// fails with ErrTooManyHolders if more than limit held at once.
func SemaphoreRun(ctx context.Context, limit, rounds int, phase, work time.Duration, locks []LockFunc) (SemaphoreResult, error) {
	var (
		elapsed  time.Duration
		held     atomic.Int64 // nanoseconds spent holding, all contenders
		grants   = make([]int, len(locks))
		waits    []time.Duration
		most     atomic.Int32
		failures atomic.Int64
	)
	for round := range max(rounds, 1) {
		key := fmt.Sprintf("bench:semaphore:%d:%d", time.Now().UnixNano(), round)
		runCtx, cancel := context.WithTimeout(ctx, phase)
		var (
			inside   atomic.Int32
			mu       sync.Mutex
			firstErr error
			wg       sync.WaitGroup
		)
		fail := failFirst(&mu, &firstErr, cancel)
		start := time.Now()
		for i, lock := range locks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var local []time.Duration
				defer func() { mu.Lock(); waits = append(waits, local...); mu.Unlock() }()
				for runCtx.Err() == nil {
					t0 := time.Now()
					unlock, err := lock(runCtx, key)
					if err != nil {
						if runCtx.Err() == nil {
							failures.Add(1)
						}
						continue
					}
					local = append(local, time.Since(t0))
					n := inside.Add(1)
					for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
					}
					if int(n) > limit {
						fail(fmt.Errorf("%w: %d holders of a semaphore of %d", ErrTooManyHolders, n, limit))
					}
					h0 := time.Now()
					time.Sleep(work)
					held.Add(int64(time.Since(h0)))
					inside.Add(-1)
					grants[i]++
					uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
					err = unlock(uctx)
					ucancel()
					if err != nil {
						fail(fmt.Errorf("unlock: %w", err))
						return
					}
				}
			}()
		}
		wg.Wait()
		elapsed += time.Since(start)
		cancel()
		if firstErr != nil {
			return SemaphoreResult{}, firstErr
		}
	}
	res := SemaphoreResult{MaxHolders: int(most.Load()), Failures: int(failures.Load())}
	total := 0
	res.Least = grants[0]
	for _, n := range grants {
		total += n
		res.Least, res.Most = min(res.Least, n), max(res.Most, n)
	}
	res.GrantsPerSec = float64(total) / elapsed.Seconds()
	res.MeanHolders = float64(held.Load()) / float64(elapsed)
	if total > 0 {
		res.MeanHold = time.Duration(held.Load() / int64(total))
	}
	res.WaitP50, res.WaitP99 = percentiles(waits)
	return res, nil
}

// FailoverSample is one measured failover.
type FailoverSample struct {
	// Took is the time from killing the leader until Leader named
	// another participant.
	Took time.Duration
	// TTLLeft is what Leader said remained of the killed leader's lease
	// just before the kill (0 where the backend cannot tell).
	TTLLeft time.Duration
}

// Campaigner starts participant id campaigning in election name and
// returns a func that kills it (no release, no resign: the process dies).
// A started participant must be killed once, which waits until it is gone.
type Campaigner func(ctx context.Context, name string, id int) (kill func(), err error)

// LeaderFunc returns the value the current leader of election name
// published, and what remains of its lease.
type LeaderFunc func(ctx context.Context, name string) (value string, ttl time.Duration, err error)

// Failover runs reps elections, each on a fresh name with n participants
// started by start (their values are their ids 0…n-1). In each, it waits
// for a leader, kills it, and polls leader every 5 ms until it names
// another participant. settle is how long it lets the participants
// campaign before the kill, so that all of them are in the race. It
// returns one sample per election.
func Failover(ctx context.Context, n, reps int, settle, bound time.Duration, start Campaigner, leader LeaderFunc) ([]FailoverSample, error) {
	var out []FailoverSample
	for rep := range reps {
		s, err := failoverOnce(ctx, fmt.Sprintf("bench-election-%d-%d", time.Now().UnixNano(), rep), n, settle, bound, start, leader)
		if err != nil {
			return out, fmt.Errorf("election %d: %w", rep, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func failoverOnce(ctx context.Context, name string, n int, settle, bound time.Duration, start Campaigner, leader LeaderFunc) (FailoverSample, error) {
	kills := make([]func(), n)
	defer func() {
		for _, k := range kills {
			if k != nil {
				k()
			}
		}
	}()
	for id := range n {
		k, err := start(ctx, name, id)
		if err != nil {
			return FailoverSample{}, fmt.Errorf("start %d: %w", id, err)
		}
		kills[id] = k
	}
	// The current leader, polled until one leads.
	current := func(deadline time.Time) (int, time.Duration, error) {
		for {
			pctx, cancel := context.WithTimeout(ctx, opTimeout)
			v, ttl, err := leader(pctx, name)
			cancel()
			if err == nil {
				var id int
				if _, serr := fmt.Sscan(v, &id); serr == nil && id >= 0 && id < n && kills[id] != nil {
					return id, ttl, nil
				}
			}
			if time.Now().After(deadline) {
				return 0, 0, fmt.Errorf("no leader among the live participants after %v (last: %q, %v)", bound, v, err)
			}
			select {
			case <-ctx.Done():
				return 0, 0, ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	if _, _, err := current(time.Now().Add(bound)); err != nil {
		return FailoverSample{}, err
	}
	select {
	case <-ctx.Done():
		return FailoverSample{}, ctx.Err()
	case <-time.After(settle):
	}
	id, ttl, err := current(time.Now().Add(bound))
	if err != nil {
		return FailoverSample{}, err
	}
	t0 := time.Now()
	kills[id]()
	kills[id] = nil
	next, _, err := current(t0.Add(bound))
	took := time.Since(t0)
	if err != nil {
		return FailoverSample{}, fmt.Errorf("after killing %d: %w", id, err)
	}
	if next == id {
		return FailoverSample{}, fmt.Errorf("killed %d still leads", id)
	}
	return FailoverSample{Took: took, TTLLeft: ttl}, nil
}

// FailoverStats returns the median and the maximum of the samples' Took
// and the median of their TTLLeft.
func FailoverStats(samples []FailoverSample) (median, most, ttlLeft time.Duration) {
	if len(samples) == 0 {
		return 0, 0, 0
	}
	took := make([]time.Duration, len(samples))
	left := make([]time.Duration, len(samples))
	for i, s := range samples {
		took[i], left[i] = s.Took, s.TTLLeft
	}
	slices.Sort(took)
	slices.Sort(left)
	return took[len(took)/2], took[len(took)-1], left[len(left)/2]
}

// ElectionChildEnv is the environment variable that turns
// TestBenchElectionChild into a participant of a failover row; it holds
// the child's job as JSON.
const ElectionChildEnv = "DISTLOCK_BENCH_ELECTION_CHILD"

// electionJob is what a participant process is told.
type electionJob struct {
	URL, Name string
	ID        int
	TTL       time.Duration
}

// ProcessCampaigner returns a Campaigner whose participants are OS
// processes (this test binary re-executed, running
// TestBenchElectionChild): each opens a Manager from url, campaigns with
// its id as value and leads until killed with SIGKILL.
func ProcessCampaigner(url string, ttl time.Duration) Campaigner {
	return func(ctx context.Context, name string, id int) (func(), error) {
		job, _ := json.Marshal(electionJob{URL: url, Name: name, ID: id, TTL: ttl})
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestBenchElectionChild$", "-test.count=1", "-test.timeout=3m")
		cmd.Env = append(os.Environ(), ElectionChildEnv+"="+string(job))
		out := new(bytes.Buffer)
		cmd.Stdout, cmd.Stderr = out, out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the benchmark
		if err := cmd.Start(); err != nil {
			cancel()
			return nil, err
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		return func() {
			_ = cmd.Process.Kill()
			<-done
			cancel()
		}, nil
	}
}

// ElectionChildMain is the body of a participant process
// (TestBenchElectionChild calls it when ElectionChildEnv is set): campaign,
// then lead until killed. It ends by itself after two minutes.
func ElectionChildMain(ctx context.Context) error {
	var job electionJob
	if err := json.Unmarshal([]byte(os.Getenv(ElectionChildEnv)), &job); err != nil {
		return fmt.Errorf("%s: %w", ElectionChildEnv, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	m, err := distlock.Open(ctx, job.URL)
	if err != nil {
		return err
	}
	defer m.Close()
	if _, err := m.Election(job.Name, job.TTL).Campaign(ctx, strconv.Itoa(job.ID)); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	<-ctx.Done()
	return nil
}

// ManagerLeader is a LeaderFunc over m's elections of ttl.
func ManagerLeader(m *distlock.Manager, ttl time.Duration) LeaderFunc {
	return func(ctx context.Context, name string) (string, time.Duration, error) {
		info, err := m.Election(name, ttl).Leader(ctx)
		return info.Value, info.TTL, err
	}
}
