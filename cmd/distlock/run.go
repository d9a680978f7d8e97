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
distlock exits 3 (or --conflict-exit-code).

CMD gets the environment variables DISTLOCK_KEY, DISTLOCK_TOKEN and
DISTLOCK_FENCE (the fencing number; 0 when the backend has none). Pass the
fence to the resource you protect so it can reject a stale holder's writes.

SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to distlock are
passed on to CMD. Unless stdin is a terminal, CMD runs in its own process
group and signals go to the whole group, so CMD's children stop with it.
With a terminal, CMD shares the terminal's foreground group, gets Ctrl-C
and Ctrl-\ from the terminal itself, and distlock does not pass SIGINT and
SIGQUIT on a second time.

Examples:
  distlock run --url redis://localhost:6379 --key nightly-report --ttl 30s -- ./report.sh
  distlock run --key deploy --wait 10m -- make deploy          # URL from $DISTLOCK_URL
  distlock run --key cron:backup --conflict-exit-code 0 -- ./backup.sh   # skip quietly if it runs elsewhere
  distlock run --key job -- sh -c 'echo "fence $DISTLOCK_FENCE"; ./job'
`

func runRun(ctx context.Context, env *cliEnv, args []string) int {
	const cmdName = "distlock run"
	fs := newFlags("run", "--key KEY [--ttl D] [--wait D] [flags] -- CMD [ARGS...]", runHelp)
	var c common
	fs.StringVar(&c.url, "url", "", "backend URL (default $"+envURL+")")
	key := fs.String("key", "", "lock key (required)")
	ttl := fs.Duration("ttl", 30*time.Second, "lock TTL; the lock is renewed every TTL/3 while CMD runs")
	wait := fs.Duration("wait", 0, "how long to wait while another holder has the lock (0: one attempt)")
	grace := fs.Duration("grace", 10*time.Second, "after the lock is lost, time between SIGTERM and SIGKILL to CMD")
	conflict := fs.Int("conflict-exit-code", exitNotAcquired, "exit code when the lock is held elsewhere")
	token := fs.String("token", "", "hold the lock with this token instead of a random one")
	verbose := fs.Bool("verbose", false, "report acquisition, loss and release on stderr")
	fs.BoolVar(verbose, "v", false, "short for --verbose")
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
	case *conflict < 0 || *conflict > 255:
		return usageError(env, cmdName, "--conflict-exit-code must be in 0..255 (got %d)", *conflict)
	case len(argv) == 0:
		return usageError(env, cmdName, "no command given (distlock run [flags] -- CMD [ARGS...])")
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

	// Fail fast, before touching the lock, if CMD cannot be found.
	path, err := exec.LookPath(argv[0])
	if err != nil {
		errorf("%v", err)
		if errors.Is(err, exec.ErrNotFound) {
			return 127
		}
		return 126
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
	if *wait > 0 {
		logf("waiting up to %v for %q", *wait, *key)
		lctx, lcancel = context.WithTimeout(actx, *wait)
		opts = append(opts, distlock.WithLockRetry(distlock.ExponentialBackoff(5*time.Millisecond, 250*time.Millisecond)))
	} else {
		lctx, lcancel = context.WithTimeout(actx, opTimeout)
		opts = append(opts, distlock.WithLockRetry(distlock.NoRetry()))
	}
	l, err := m.Lock(lctx, *key, *ttl, opts...)
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
			if *wait > 0 {
				errorf("lock %q is held by another holder; gave up after --wait %v", *key, *wait)
			} else {
				errorf("lock %q is held by another holder (use --wait to wait for it)", *key)
			}
			return *conflict
		}
		errorf("%s", strings.TrimPrefix(err.Error(), "distlock: "))
		return code
	}
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
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return 127
		}
		return 126
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
			errorf("lock %q lost: %v; stopping %s (SIGTERM, SIGKILL after %v)", *key, lerr, argv[0], *grace)
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
		errorf("%s stopped (status %d) because the lock was lost", argv[0], status)
		return exitLockLost
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer rcancel()
	if err := l.Release(rctx); err != nil {
		if errors.Is(err, distlock.ErrNotHeld) {
			errorf("lock %q was lost before %s finished (status %d): %v", *key, argv[0], status, err)
			return exitLockLost
		}
		errorf("warning: could not release %q (it expires by its TTL): %v", *key, err)
		return status
	}
	logf("%s exited with status %d; released %q", argv[0], status, *key)
	return status
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

// releaseQuietly releases l, ignoring errors: the lock may be gone already.
func releaseQuietly(l *distlock.Lock) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = l.Release(ctx)
}
