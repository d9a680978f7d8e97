package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/distlock/distlock"
)

const runHelp = `
Acquire the lock KEY, run CMD while holding it, and release the lock when CMD
exits. distlock exits with CMD's status.

While CMD runs the lock is renewed every TTL/3. If the lock is lost (it was
taken away, or renewals kept failing until less than TTL/10 of the lease was
left), CMD gets SIGTERM, then SIGKILL after --grace, and distlock exits 5.
If another holder has the lock and --wait runs out, CMD is not started and
distlock exits 3 (or --conflict-exit-code). If CMD is not found distlock
exits 127, if it cannot be executed 126, without touching the lock.

Run-once jobs: with --min-hold D the lock is kept until D after it was
acquired even when CMD finishes sooner, so a replica whose schedule fires
a little later finds the lock taken and skips the job (with
--conflict-exit-code 0, quietly). distlock stays running meanwhile,
renewing the lock, and releases it at acquisition+D. If distlock is
stopped during that time it leaves the lock to expire by itself (where the
backend keeps a lock after its client is gone).

CMD gets the environment variables DISTLOCK_KEY, DISTLOCK_TOKEN and
DISTLOCK_FENCE (the fencing number; 0 when the backend has none). Pass the
fence to the resource you protect so it can reject a stale holder's writes.

SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to distlock are
passed on to CMD. Unless stdin is a terminal, CMD runs in its own process
group and signals go to the whole group, so CMD's children stop with it.
With a terminal, CMD shares the terminal's foreground group, gets Ctrl-C
and Ctrl-\ from the terminal itself, and distlock does not pass SIGINT and
SIGQUIT on a second time.

Shared holds: --shared takes the read side of the read-write lock KEY, so
any number of --shared runs go together while a --write run (its write
side) waits for them and holds KEY alone; once a writer waits, new readers
wait behind it. --limit N takes one of N permits of the semaphore KEY: at
most N runs with --limit N go at once, and every run must give the same N.
The read-write lock, the semaphore and the plain lock (no flag) called KEY
are independent of each other.

Examples:
  distlock run --url redis://localhost:6379 --key nightly-report --ttl 30s -- ./report.sh
  distlock run --key catalog --shared --wait 1m -- ./export.sh       # readers together...
  distlock run --key catalog --write --wait 1m -- ./reindex.sh       # ...the writer alone
  distlock run --key gpu --limit 4 --wait 1h -- ./train.sh           # at most 4 at once
  distlock run --key deploy --wait 10m -- make deploy          # URL from $DISTLOCK_URL
  distlock run --key cron:backup --conflict-exit-code 0 -- ./backup.sh   # skip quietly if it runs elsewhere
  distlock run --key job -- sh -c 'echo "fence $DISTLOCK_FENCE"; ./job'
  distlock run --key nightly --min-hold 10m --conflict-exit-code 0 -- ./nightly.sh   # once across replicas
`

func runRun(ctx context.Context, env *cliEnv, args []string) int {
	return runHolding(ctx, env, args, false)
}

// runHolding is run, and elect when elect is set: hold a lock (or lead an
// election) while CMD runs.
func runHolding(ctx context.Context, env *cliEnv, args []string, elect bool) int {
	cmdName, usage, help := "distlock run", "--key KEY [--ttl D] [--wait D] [flags] -- CMD [ARGS...]", runHelp
	if elect {
		cmdName, usage, help = "distlock elect", "--key NAME [--ttl D] [--value V] [--wait D] [flags] -- CMD [ARGS...]", electHelp
	}
	fs := newFlags(cmdName[len("distlock "):], usage, help)
	fs.SetInterspersed(false) // the first argument that is not a flag starts CMD
	var c common
	fs.StringVar(&c.url, "url", "", "backend URL (default $"+envURL+")")
	key := fs.String("key", "", "lock key (required)")
	ttl := duration(fs, "ttl", 30*time.Second, "lock TTL; the lock is renewed every TTL/3 while CMD runs")
	var shared, write *bool
	var limit *int
	var value *string
	var wait *time.Duration
	if elect {
		wait = duration(fs, "wait", 0, "how long to wait for the leadership (0: until interrupted)")
		host, _ := os.Hostname()
		value = fs.String("value", fmt.Sprintf("%s:%d", host, os.Getpid()), "the value published while leading (distlock status shows it)")
	} else {
		wait = duration(fs, "wait", 0, "how long to wait while another holder has the lock (0: one attempt)")
		shared = fs.Bool("shared", false, "take the read (shared) side of the read-write lock KEY")
		write = fs.Bool("write", false, "take the write (exclusive) side of the read-write lock KEY")
		limit = fs.Int("limit", 0, "take one of N permits of the semaphore KEY (every holder must give the same N)")
	}
	grace := duration(fs, "grace", 10*time.Second, "after the lock is lost, time between SIGTERM and SIGKILL to CMD")
	minHold := duration(fs, "min-hold", 0, "keep the lock until this long after it was acquired, even if CMD finishes sooner (run-once jobs)")
	conflict := fs.Int("conflict-exit-code", exitNotAcquired, "exit code when the lock is held elsewhere")
	token := fs.String("token", "", "hold the lock with this token instead of a random one")
	verbose := fs.BoolP("verbose", "v", false, "report acquisition, loss and release on stderr")
	if code, done := parse(fs, env, args); done {
		return code
	}
	argv := fs.Args()
	switch {
	case *key == "":
		return usageError(env, cmdName, "--key is required")
	case *ttl <= 0:
		return usageError(env, cmdName, "--ttl must be positive (got %v)", *ttl)
	case *wait < 0:
		return usageError(env, cmdName, "--wait must not be negative (got %v)", *wait)
	case *grace < 0:
		return usageError(env, cmdName, "--grace must not be negative (got %v)", *grace)
	case *minHold < 0:
		return usageError(env, cmdName, "--min-hold must not be negative (got %v)", *minHold)
	case *conflict < 0 || *conflict > 255:
		return usageError(env, cmdName, "--conflict-exit-code must be in 0..255 (got %d)", *conflict)
	case len(argv) == 0:
		return usageError(env, cmdName, "no command given (%s [flags] -- CMD [ARGS...])", cmdName)
	case !elect && *limit < 0:
		return usageError(env, cmdName, "--limit must be positive (got %d)", *limit)
	case !elect && btoi(*shared)+btoi(*write)+btoi(*limit > 0) > 1:
		return usageError(env, cmdName, "--shared, --write and --limit exclude each other")
	}
	logf := func(format string, a ...any) {
		if *verbose {
			fmt.Fprintf(env.stderr, cmdName+": "+format+"\n", a...)
		}
	}
	errorf := func(format string, a ...any) {
		fmt.Fprintf(env.stderr, cmdName+": "+format+"\n", a...)
	}

	raw, code, ok := c.resolveURL(env, cmdName)
	if !ok {
		return code
	}

	// Fail fast, before touching the lock, if CMD cannot be found (127,
	// as a shell says: not in $PATH, or no such file for ./cmd) or run
	// (126: not executable, a directory).
	path, err := exec.LookPath(argv[0])
	if err != nil {
		errorf("%v", err)
		return execFailure(err)
	}

	// Signals: before CMD starts a terminating signal abandons the wait;
	// afterwards every signal is passed on to CMD.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwardedSignals...)
	defer signal.Stop(sigs)

	actx, acancel := context.WithCancel(ctx)
	defer acancel()
	var interrupted os.Signal
	preDone := make(chan struct{})
	stopPre := make(chan struct{})
	go func() {
		defer close(preDone)
		for {
			select {
			case s := <-sigs:
				if isTerminating(s) {
					interrupted = s
					acancel()
					return
				}
			case <-stopPre:
				return
			}
		}
	}()
	endPre := func() {
		close(stopPre)
		<-preDone
	}

	octx, ocancel := context.WithTimeout(actx, opTimeout)
	m, err := distlock.Open(octx, raw)
	ocancel()
	if err != nil {
		endPre()
		if interrupted != nil {
			return signalExit(interrupted)
		}
		return c.fail(env, cmdName, err)
	}
	defer m.Close()

	opts := []distlock.LockOption{distlock.WithAutoRenew()}
	if *token != "" {
		opts = append(opts, distlock.WithToken(*token))
	}
	var lctx context.Context
	var lcancel context.CancelFunc
	if elect {
		logf("campaigning in %q", *key)
		lctx, lcancel = context.WithCancel(actx)
		if *wait > 0 {
			lctx, lcancel = context.WithTimeout(actx, *wait)
		}
	} else if *wait > 0 {
		logf("waiting up to %v for %q", *wait, *key)
		lctx, lcancel = context.WithTimeout(actx, *wait)
		opts = append(opts, distlock.WithLockRetry(distlock.ExponentialBackoff(5*time.Millisecond, 250*time.Millisecond)))
	} else {
		lctx, lcancel = context.WithTimeout(actx, opTimeout)
		opts = append(opts, distlock.WithLockRetry(distlock.NoRetry()))
	}
	var l *distlock.Lock
	switch {
	case elect:
		var ld *distlock.Leadership
		if ld, err = m.Election(*key, *ttl).Campaign(lctx, *value, opts...); err == nil {
			l = ld.Lock
		}
	case *shared:
		l, err = m.RWMutex(*key).RLock(lctx, *ttl, opts...)
	case *write:
		l, err = m.RWMutex(*key).Lock(lctx, *ttl, opts...)
	case *limit > 0:
		l, err = m.Semaphore(*key, *limit).Acquire(lctx, *ttl, opts...)
	default:
		l, err = m.Lock(lctx, *key, *ttl, opts...)
	}
	lcancel()
	endPre()
	if interrupted != nil {
		if l != nil {
			releaseQuietly(l)
		}
		errorf("interrupted by %v while acquiring %q", interrupted, *key)
		return signalExit(interrupted)
	}
	if err != nil {
		code := exitCode(err)
		if code == exitNotAcquired {
			if elect {
				errorf("did not become leader of %q within --wait %v", *key, *wait)
			} else if *wait > 0 {
				errorf("lock %q is held by another holder; gave up after --wait %v", *key, *wait)
			} else {
				errorf("lock %q is held by another holder (use --wait to wait for it)", *key)
			}
			return *conflict
		}
		errorf("%s", strings.TrimPrefix(err.Error(), "distlock: "))
		return code
	}
	acquired := time.Now() // --min-hold counts from here (at or after the grant)
	logf("acquired %q (fence %d, lease until %s); running %s", *key, l.Fence(), l.Expiry().Format(time.RFC3339Nano), argv[0])

	cmd := exec.Command(path, argv[1:]...)
	cmd.Args[0] = argv[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(),
		"DISTLOCK_KEY="+*key,
		"DISTLOCK_TOKEN="+l.Token(),
		"DISTLOCK_FENCE="+strconv.FormatUint(l.Fence(), 10),
	)
	group := configureChild(cmd)
	if err := cmd.Start(); err != nil {
		releaseQuietly(l)
		errorf("%v", err)
		return execFailure(err)
	}

	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	stopWatch := make(chan struct{})
	lost := watchLoss(l, stopWatch)

	var (
		lostErr error
		kill    <-chan time.Time
		killT   *time.Timer
	)
loop:
	for {
		select {
		case <-waitErr:
			break loop
		case s := <-sigs:
			if !group && isKeyboardSignal(s) {
				continue // the terminal sent it to CMD's process group (and ours) already
			}
			logf("passing %v on to %s", s, argv[0])
			_ = signalChild(cmd.Process, group, s)
		case lerr := <-lost:
			lost = nil
			lostErr = lerr
			errorf("lock %q lost (%s); stopping %s (SIGTERM, SIGKILL after %v)", *key, lossReason(lerr), argv[0], *grace)
			_ = signalChild(cmd.Process, group, sigTERM)
			killT = time.NewTimer(*grace)
			kill = killT.C
		case <-kill:
			kill = nil
			errorf("%s still running %v after SIGTERM; sending SIGKILL", argv[0], *grace)
			_ = signalChild(cmd.Process, group, sigKILL)
		}
	}
	close(stopWatch)
	if killT != nil {
		killT.Stop()
	}
	status := childStatus(cmd.ProcessState)

	if lostErr != nil {
		if group {
			// CMD is gone; make sure nothing it started outlives the lock.
			_ = signalChild(cmd.Process, group, sigKILL)
		}
		releaseQuietly(l)
		errorf("%s exited with status %d; exiting %d", argv[0], status, exitLockLost)
		return exitLockLost
	}
	if left := time.Until(acquired.Add(*minHold)); left > 0 {
		logf("%s exited with status %d; keeping %q until --min-hold %v has passed (%v more)", argv[0], status, *key, *minHold, left.Round(time.Millisecond))
		if s := holdFor(ctx, l, left, sigs); s != nil {
			// Stopped early: leave the lock to expire by itself rather
			// than free it for another run before --min-hold is up.
			errorf("interrupted by %v during --min-hold; %q is left to expire by itself", s, *key)
			return signalExit(s)
		}
		if err := l.Err(); err != nil {
			errorf("warning: lock %q lost during --min-hold (%s): another holder may take it before the %v are up", *key, lossReason(err), *minHold)
			return status
		}
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer rcancel()
	if err := l.Release(rctx); err != nil {
		if errors.Is(err, distlock.ErrNotHeld) {
			errorf("lock %q was lost before %s finished (status %d): the token no longer held it at release", *key, argv[0], status)
			return exitLockLost
		}
		errorf("warning: could not release %q (it expires by its TTL): %v", *key, err)
		return status
	}
	logf("%s exited with status %d; released %q", argv[0], status, *key)
	return status
}

const electHelp = `
Campaign in the election NAME, waiting until this process leads it, run CMD
while leading, and resign when CMD exits. distlock exits with CMD's status.

Leadership is a lease of --ttl, renewed every TTL/3 while CMD runs; a leader
that crashes is replaced after at most --ttl. If the leadership is lost, CMD
gets SIGTERM, then SIGKILL after --grace, and distlock exits 5. --value is
published while leading (distlock status --election NAME shows it). With
--wait D, distlock gives up after D without leading and exits 3 (or
--conflict-exit-code); by default it waits until interrupted.

CMD gets DISTLOCK_KEY, DISTLOCK_TOKEN and DISTLOCK_FENCE (the leadership's
fencing number), and signals are passed on as with distlock run.

Examples:
  distlock elect --url etcd://10.0.0.5:2379 --key scheduler --ttl 10s -- ./scheduler
  distlock elect --key compactor --value "$(hostname)" -- ./compact --forever
`

func runElect(ctx context.Context, env *cliEnv, args []string) int {
	return runHolding(ctx, env, args, true)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// watchLoss reports on the returned channel when l is lost: the handle says
// so, or renewals have not succeeded and less than a tenth of the lease is
// left (CMD is stopped before another holder can be granted the lock).
func watchLoss(l *distlock.Lock, stop <-chan struct{}) chan error {
	ch := make(chan error, 1)
	margin := time.Until(l.Expiry()) / 10
	go func() {
		t := time.NewTimer(max(time.Until(l.Expiry())-margin, 0))
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-l.Done():
				err := l.Err()
				if err == nil {
					err = errors.New("released")
				}
				ch <- err
				return
			case <-t.C:
				left := time.Until(l.Expiry())
				if left <= margin {
					ch <- fmt.Errorf("renewal did not succeed in time (lease ends in %v)", max(left, 0).Round(time.Millisecond))
					return
				}
				t.Reset(left - margin)
			}
		}
	}()
	return ch
}

// holdFor keeps l held (renewed by its handle) for d, so that it is not
// free again before --min-hold is up. It makes sure the lock would outlive
// this process until then where the backend allows that: if the lock's
// expiry is sooner than d, it is extended to d first. It returns early,
// with nil, if the lock is lost, and with the signal if a terminating one
// arrives.
func holdFor(ctx context.Context, l *distlock.Lock, d time.Duration, sigs <-chan os.Signal) os.Signal {
	end := time.Now().Add(d)
	if time.Until(l.Expiry()) < d {
		ectx, cancel := context.WithTimeout(ctx, opTimeout)
		_ = l.Extend(ectx, d) // on failure the handle's renewals carry on
		cancel()
	}
	t := time.NewTimer(time.Until(end))
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return nil
		case <-l.Done():
			return nil
		case s := <-sigs:
			if isTerminating(s) {
				return s
			}
		}
	}
}

// execFailure is the exit status for a CMD that could not be started, as
// a shell reports it: 127 when it does not exist (not in $PATH, or no such
// file), 126 when it exists but cannot be executed.
func execFailure(err error) int {
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
		return 127
	}
	return 126
}

// lossReason says in a few words why a lock was lost, from the error its
// handle reports: the innermost cause, without the operation and key that
// the message around it already names.
func lossReason(err error) string {
	var de *distlock.Error
	for errors.As(err, &de) {
		if de.Err == nil {
			err = de.Kind
			break
		}
		err = de.Err
	}
	switch {
	case err == nil:
		return "unknown cause"
	case errors.Is(err, distlock.ErrNotHeld):
		return "the token no longer holds it: it expired, or was deleted or taken over"
	}
	return strings.TrimPrefix(err.Error(), "distlock: ")
}

// releaseQuietly releases l, ignoring errors: the lock may be gone already.
func releaseQuietly(l *distlock.Lock) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = l.Release(ctx)
}
