package bench

// Contention between real OS processes: the benchmark re-executes its own
// test binary (os.Args[0], -test.run '^TestBenchChild$') once per process,
// with the child's job in the environment variable ChildEnv. Each child
// opens its lock from a URL, waits until every child is ready, loops
// acquire → critical section → release until the phase ends, and writes
// its grant count and wait times to a file as JSON.
//
// The critical section is checked across processes through two files in a
// directory of the phase: a log opened O_APPEND, to which the holder
// appends "S <id>" on entry and "E <id>" on exit (small appends are atomic,
// so the log is the order of grants), and a counter that the holder reads,
// increments and writes back. The parent fails the run with
// ErrNotExclusive if two entries follow each other without the exit
// between them, or if the counter lost an update.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ChildEnv is the environment variable that turns TestBenchChild into a
// child of a process row; it holds the child's job as JSON.
const ChildEnv = "DISTLOCK_BENCH_CHILD"

const (
	// childReadyTimeout bounds how long the parent waits for every child
	// to have opened its lock.
	childReadyTimeout = 60 * time.Second
	// childGrace bounds how long a child may take after its phase ends
	// (the last release, closing, writing its result) before the parent
	// kills it.
	childGrace = 30 * time.Second
	// maxChildFailures ends a child whose acquires keep failing (a lock
	// that cannot reach its server would otherwise spin for the phase).
	maxChildFailures = 1000
)

// ChildOpener opens, in a child process, the lock that a ProcessLock of
// its kind names. close is called when the child is done.
type ChildOpener func(ctx context.Context, url string) (lock LockFunc, close func(), err error)

var childOpeners = map[string]ChildOpener{}

// RegisterChild makes kind usable as ProcessLock.Kind. Call it from an
// init function of the package, so that the parent and the children (the
// same binary) know the same kinds.
func RegisterChild(kind string, open ChildOpener) {
	if _, dup := childOpeners[kind]; dup || open == nil {
		panic("bench: RegisterChild twice or with nil for " + kind)
	}
	childOpeners[kind] = open
}

// ProcessLock is a contender of a process row: each child process opens
// Kind (a RegisterChild name) from URL, and its figures are reported under
// Name.
type ProcessLock struct {
	Name, Kind, URL string
}

// childJob is what a child is told, through ChildEnv.
type childJob struct {
	Kind, URL, Key string
	ID             int
	Dir            string // ready.<id>, go, log, counter, result.<id>
}

// childWindow is the phase every child runs in (the file "go").
type childWindow struct {
	Start, End time.Time
}

// childResult is what a child reports (the file result.<id>).
type childResult struct {
	Grants, Failures int
	Waits            []time.Duration
	Late             time.Duration // how far after Start the child began
}

// ProcessesInterleaved runs procs child processes per phase on one key
// for each lock in turn, rounds times, phases of about phase each (process
// start-up is not part of a phase: the children begin together once all
// are ready), and returns each lock's figures summed over its phases, as
// ContendedInterleaved does for goroutines.
func ProcessesInterleaved(ctx context.Context, procs, rounds int, phase time.Duration, locks ...ProcessLock) (map[string]ContendedResult, error) {
	names := make([]string, len(locks))
	for j, l := range locks {
		if childOpeners[l.Kind] == nil {
			return nil, fmt.Errorf("bench: no child kind %q (RegisterChild)", l.Kind)
		}
		names[j] = l.Name
	}
	return interleave(names, rounds, func(j int) (contendedRaw, error) {
		return processRun(ctx, procs, phase, locks[j])
	})
}

// RunProcessesInterleaved runs ProcessesInterleaved with b.N rounds and
// reports the figures with ReportInterleaved: put the baseline (the peer)
// first. Children still running when the benchmark ends are killed.
func RunProcessesInterleaved(b *testing.B, procs int, phase time.Duration, locks ...ProcessLock) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel) // processRun kills and reaps its children once ctx ends
	names := make([]string, len(locks))
	for j, l := range locks {
		names[j] = l.Name
	}
	b.ResetTimer()
	res, err := ProcessesInterleaved(ctx, procs, b.N, phase, locks...)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	ReportInterleaved(b, names, res)
}

// processRun is one phase of procs children on a fresh key.
func processRun(ctx context.Context, procs int, phase time.Duration, l ProcessLock) (raw contendedRaw, err error) {
	dir, err := os.MkdirTemp("", "distlock-bench-procs-")
	if err != nil {
		return raw, err
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "log"), nil, 0o644); err != nil {
		return raw, err
	}
	if err := os.WriteFile(filepath.Join(dir, "counter"), counterRecord(0), 0o644); err != nil {
		return raw, err
	}
	// Every child ends within this, whatever happens: CommandContext kills
	// it, and the deferred wait below reaps it before we return.
	ctx, cancel := context.WithTimeout(ctx, childReadyTimeout+phase+childGrace)
	defer cancel()
	key := fmt.Sprintf("bench:processes:%d", time.Now().UnixNano())
	outs := make([]*bytes.Buffer, procs)
	done := make([]chan struct{}, procs)
	waitErrs := make([]error, procs)
	var started sync.WaitGroup
	defer func() {
		cancel()
		started.Wait()
	}()
	for i := range procs {
		job, _ := json.Marshal(childJob{Kind: l.Kind, URL: l.URL, Key: key, ID: i, Dir: dir})
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestBenchChild$", "-test.count=1", "-test.timeout=5m")
		cmd.Env = append(os.Environ(), ChildEnv+"="+string(job))
		outs[i] = new(bytes.Buffer)
		cmd.Stdout, cmd.Stderr = outs[i], outs[i]
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the benchmark
		if err := cmd.Start(); err != nil {
			return raw, fmt.Errorf("start child %d: %w", i, err)
		}
		done[i] = make(chan struct{})
		started.Add(1)
		go func() {
			defer started.Done()
			waitErrs[i] = cmd.Wait()
			close(done[i])
		}()
	}
	childErr := func(i int, what string) error {
		out := strings.TrimSpace(outs[i].String())
		if len(out) > 2000 {
			out = "…" + out[len(out)-2000:]
		}
		return fmt.Errorf("child %d %s: %v\n%s", i, what, waitErrs[i], out)
	}

	// All children ready (their locks opened), then one window for all.
	for i := range procs {
		for {
			if _, err := os.Stat(filepath.Join(dir, fmt.Sprint("ready.", i))); err == nil {
				break
			}
			select {
			case <-done[i]:
				return raw, childErr(i, "exited before it was ready")
			case <-ctx.Done():
				return raw, fmt.Errorf("child %d not ready: %w", i, ctx.Err())
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	start := time.Now().Add(20 * time.Millisecond)
	win := childWindow{Start: start, End: start.Add(phase)}
	data, _ := json.Marshal(win)
	if err := os.WriteFile(filepath.Join(dir, "go.tmp"), data, 0o644); err != nil {
		return raw, err
	}
	if err := os.Rename(filepath.Join(dir, "go.tmp"), filepath.Join(dir, "go")); err != nil {
		return raw, err
	}
	for i := range procs {
		select {
		case <-done[i]:
		case <-ctx.Done():
			return raw, fmt.Errorf("child %d still running %v after its phase: %w", i, childGrace, ctx.Err())
		}
		if waitErrs[i] != nil {
			return raw, childErr(i, "failed")
		}
	}

	// Every child's report, then the log and the counter.
	raw.elapsed = phase
	reported := make([]int, procs)
	for i := range procs {
		data, err := os.ReadFile(filepath.Join(dir, fmt.Sprint("result.", i)))
		if err != nil {
			return raw, childErr(i, "wrote no result")
		}
		var r childResult
		if err := json.Unmarshal(data, &r); err != nil {
			return raw, fmt.Errorf("child %d result: %w", i, err)
		}
		reported[i] = r.Grants
		raw.failures += r.Failures
		raw.waits = append(raw.waits, r.Waits...)
	}
	log, err := os.ReadFile(filepath.Join(dir, "log"))
	if err != nil {
		return raw, err
	}
	raw.grants, raw.changes, err = checkLog(log, procs)
	if err != nil {
		return raw, err
	}
	for i, n := range reported {
		if n != raw.grants[i] {
			return raw, fmt.Errorf("child %d reported %d grants but logged %d", i, n, raw.grants[i])
		}
	}
	c, err := os.ReadFile(filepath.Join(dir, "counter"))
	if err != nil {
		return raw, err
	}
	if raw.counter, err = strconv.Atoi(strings.TrimSpace(string(c))); err != nil {
		return raw, fmt.Errorf("counter: %w", err)
	}
	return raw, nil // result() compares the grants with the counter
}

// checkLog reads the grant log of procs children: every entry "S <id>"
// must be followed by "E <id>" before the next entry. It returns the
// grants per child and the number of owner changes.
func checkLog(log []byte, procs int) (grants []int, changes int, err error) {
	grants = make([]int, procs)
	holder, last := -1, -1
	for n, line := range strings.Split(strings.TrimSuffix(string(log), "\n"), "\n") {
		if line == "" {
			continue
		}
		op, idText, _ := strings.Cut(line, " ")
		id, err := strconv.Atoi(idText)
		if err != nil || id < 0 || id >= procs || (op != "S" && op != "E") {
			return nil, 0, fmt.Errorf("log line %d: %q", n+1, line)
		}
		switch {
		case op == "S" && holder != -1:
			return nil, 0, fmt.Errorf("%w: child %d entered at log line %d while child %d held the lock", ErrNotExclusive, id, n+1, holder)
		case op == "S":
			holder = id
			grants[id]++
			if last != -1 && last != id {
				changes++
			}
			last = id
		case holder != id:
			return nil, 0, fmt.Errorf("%w: child %d left at log line %d while child %d held the lock", ErrNotExclusive, id, n+1, holder)
		default:
			holder = -1
		}
	}
	if holder != -1 {
		return nil, 0, fmt.Errorf("child %d never left the critical section", holder)
	}
	return grants, changes, nil
}

func counterRecord(n int) []byte { return fmt.Appendf(nil, "%020d\n", n) }

// ChildMain is the body of a child process (TestBenchChild calls it when
// ChildEnv is set): open the lock, report ready, wait for the window, loop
// acquire → critical section → release until it ends, write the result.
// Every wait in it is bounded by ctx and by the window.
func ChildMain(ctx context.Context) error {
	var job childJob
	if err := json.Unmarshal([]byte(os.Getenv(ChildEnv)), &job); err != nil {
		return fmt.Errorf("%s: %w", ChildEnv, err)
	}
	open := childOpeners[job.Kind]
	if open == nil {
		return fmt.Errorf("no child kind %q", job.Kind)
	}
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	lock, closeLock, err := open(ctx, job.URL)
	if err != nil {
		return fmt.Errorf("open %s: %w", job.Kind, err)
	}
	defer closeLock()
	logf, err := os.OpenFile(filepath.Join(job.Dir, "log"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer logf.Close()
	ctr, err := os.OpenFile(filepath.Join(job.Dir, "counter"), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer ctr.Close()
	if err := os.WriteFile(filepath.Join(job.Dir, fmt.Sprint("ready.", job.ID)), nil, 0o644); err != nil {
		return err
	}
	var win childWindow
	for {
		data, err := os.ReadFile(filepath.Join(job.Dir, "go"))
		if err == nil {
			if err := json.Unmarshal(data, &win); err != nil {
				return fmt.Errorf("go file: %w", err)
			}
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no go file: %w", ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
	time.Sleep(time.Until(win.Start))
	res := childResult{Late: max(time.Since(win.Start), 0), Waits: make([]time.Duration, 0, 1024)}
	runCtx, stop := context.WithDeadline(ctx, win.End)
	defer stop()
	critical := func() error {
		if _, err := logf.WriteString(fmt.Sprintf("S %d\n", job.ID)); err != nil {
			return err
		}
		buf := make([]byte, 21)
		if _, err := ctr.ReadAt(buf, 0); err != nil {
			return fmt.Errorf("read counter: %w", err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(buf)))
		if err != nil {
			return fmt.Errorf("counter: %w", err)
		}
		if _, err := ctr.WriteAt(counterRecord(n+1), 0); err != nil {
			return fmt.Errorf("write counter: %w", err)
		}
		_, err = logf.WriteString(fmt.Sprintf("E %d\n", job.ID))
		return err
	}
	for runCtx.Err() == nil {
		t0 := time.Now()
		unlock, err := lock(runCtx, job.Key)
		if err != nil {
			if runCtx.Err() != nil {
				break
			}
			if res.Failures++; res.Failures > maxChildFailures {
				return fmt.Errorf("%d acquires failed, the last: %w", res.Failures, err)
			}
			continue
		}
		res.Waits = append(res.Waits, time.Since(t0))
		cerr := critical()
		if cerr == nil {
			res.Grants++
		}
		uctx, ucancel := context.WithTimeout(ctx, opTimeout)
		err = unlock(uctx)
		ucancel()
		if err := errors.Join(cerr, err); err != nil {
			return err
		}
	}
	data, err := json.Marshal(res)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(job.Dir, fmt.Sprint("result.", job.ID)), data, 0o644)
}
