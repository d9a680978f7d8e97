package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/driver"
	"github.com/spf13/pflag"
)

const acquireHelp = `
Take the lock KEY for --ttl and print its token on stdout. The lock is not
renewed: extend it with 'distlock extend' before the TTL passes, and release
it with 'distlock release'. With --wait, wait that long while another holder
has it; without, make one attempt. Acquiring again with --token set to the
token that holds the lock resets its TTL.

The lock outlives this process, so the backend must let another client
release it (Redis, etcd); with PostgreSQL advisory locks, which end with the
session, and memory://, which is per process, use 'distlock run' instead.

Output: the token; with --env, 'export' lines for DISTLOCK_KEY,
DISTLOCK_TOKEN and DISTLOCK_FENCE (values quoted for a POSIX shell) to
eval, after which 'distlock release' and 'distlock extend' find the token
in $DISTLOCK_TOKEN (on failure --env prints "(exit N)", so that the eval
fails too, with acquire's exit status); with --json, an object with key,
token, fence, ttl and expiry.

Examples:
  TOKEN=$(distlock acquire --url redis://localhost:6379 --key deploy --ttl 5m) || exit
  eval "$(distlock acquire --key deploy --ttl 5m --wait 1m --env)" || exit
  distlock release --key "$DISTLOCK_KEY"          # the token from $DISTLOCK_TOKEN
  distlock acquire --key deploy --ttl 5m --json
`

const releaseHelp = `
Release the lock KEY if TOKEN holds it. The token comes from --token, or
from $DISTLOCK_TOKEN; '--token -' reads it from stdin. Exits 4 if the token
does not hold the lock (expired, released, or another token's).

Examples:
  distlock release --key deploy --token "$TOKEN"
  DISTLOCK_TOKEN=$TOKEN distlock release --key deploy
  echo "$TOKEN" | distlock release --key deploy --token -
`

const extendHelp = `
Reset the TTL of the lock KEY to --ttl if TOKEN holds it. The token comes
from --token or $DISTLOCK_TOKEN ('-' reads stdin). Exits 4 if the token
does not hold the lock; an expired lock is never re-created.

Examples:
  distlock extend --key deploy --token "$TOKEN" --ttl 5m
  while sleep 60; do distlock extend --key deploy --ttl 5m || break; done   # token from $DISTLOCK_TOKEN
`

const statusHelp = `
Show the backend the URL names (its name and capabilities) and whether it
answers. Exits 6 if it does not.

With --key (and a token from --token or $DISTLOCK_TOKEN) it reports on that
lock without changing it: status never extends, acquires or releases
anything. Exit 0 if the token holds the lock, 4 if not. Where the lock
cannot be inspected read-only, status says so and exits 1: use
'distlock extend', which answers the same question by resetting the TTL.

With --election NAME it shows the election's leader: the value it
published and its fence, or that nobody leads.

Examples:
  distlock status --url etcd://127.0.0.1:2379
  distlock status --key deploy --token "$TOKEN" --json
  distlock status --election scheduler
`

// readToken resolves --token, $DISTLOCK_TOKEN and '-' (stdin).
func readToken(env *cliEnv, flagVal string) (string, error) {
	tok := flagVal
	if tok == "" {
		tok = env.getenv("DISTLOCK_TOKEN")
	}
	if tok == "-" {
		line, err := bufio.NewReader(env.stdin).ReadString('\n')
		if err != nil && line == "" {
			return "", fmt.Errorf("reading the token from stdin: %v", err)
		}
		tok = strings.TrimSpace(line)
	}
	if tok == "" {
		return "", errors.New("no token: pass --token TOKEN (or '-' for stdin) or set DISTLOCK_TOKEN")
	}
	return tok, nil
}

// signalContext cancels on SIGINT and SIGTERM.
func signalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
}

// keyFlags registers --key and --ttl.
func keyFlags(fs *pflag.FlagSet, ttlHelp string) (*string, *time.Duration) {
	key := fs.String("key", "", "lock key (required)")
	ttl := duration(fs, "ttl", 30*time.Second, ttlHelp)
	return key, ttl
}

func checkKeyTTL(env *cliEnv, cmd, key string, ttl time.Duration) (int, bool) {
	switch {
	case key == "":
		return usageError(env, cmd, "--key is required"), false
	case ttl <= 0:
		return usageError(env, cmd, "--ttl must be positive (got %v)", ttl), false
	}
	return 0, true
}

// runAcquire runs acquire. With --env a failure also prints "(exit N)" on
// stdout: eval "$(distlock acquire … --env)" then fails with acquire's exit
// status (an empty string would eval to success, and a script would go on
// without the lock).
func runAcquire(ctx context.Context, env *cliEnv, args []string) int {
	code := acquire(ctx, env, args)
	if code != exitOK && !env.json && hasFlag(args, "--env") {
		fmt.Fprintf(env.stdout, "(exit %d)\n", code)
	}
	return code
}

func acquire(ctx context.Context, env *cliEnv, args []string) int {
	const cmdName = "distlock acquire"
	fs := newFlags("acquire", "--key KEY [--ttl D] [--wait D] [flags]", acquireHelp)
	var c common
	c.register(fs)
	key, ttl := keyFlags(fs, "lock TTL (not renewed: extend or release it in time)")
	wait := duration(fs, "wait", 0, "how long to wait while another holder has the lock (0: one attempt)")
	token := fs.String("token", "", "take or refresh the lock with this token instead of a random one")
	envOut := fs.Bool("env", false, "print 'export DISTLOCK_KEY=…' lines (and _TOKEN, _FENCE) for eval")
	if code, done := parse(fs, env, args); done {
		return code
	}
	if code, ok := noArgs(env, fs); !ok {
		return code
	}
	if code, ok := checkKeyTTL(env, cmdName, *key, *ttl); !ok {
		return code
	}
	if *wait < 0 {
		return usageError(env, cmdName, "--wait must not be negative (got %v)", *wait)
	}
	if *envOut && c.json {
		return usageError(env, cmdName, "--env and --json exclude each other")
	}
	ctx, stop := signalContext(ctx)
	defer stop()
	m, raw, code, ok := c.open(ctx, env, cmdName)
	if !ok {
		return code
	}
	defer m.Close()
	if msg := detachedProblem(raw, m.Capabilities()); msg != "" {
		return usageError(env, cmdName, "%s", msg)
	}

	opts := []distlock.LockOption{}
	if *token != "" {
		opts = append(opts, distlock.WithToken(*token))
	}
	var lctx context.Context
	var cancel context.CancelFunc
	if *wait > 0 {
		lctx, cancel = context.WithTimeout(ctx, *wait)
		opts = append(opts, distlock.WithLockRetry(distlock.ExponentialBackoff(5*time.Millisecond, 250*time.Millisecond)))
	} else {
		lctx, cancel = context.WithTimeout(ctx, opTimeout)
		opts = append(opts, distlock.WithLockRetry(distlock.NoRetry()))
	}
	defer cancel()
	l, err := m.Lock(lctx, *key, *ttl, opts...)
	if err != nil {
		return c.fail(env, cmdName, err)
	}
	fence := strconv.FormatUint(l.Fence(), 10)
	switch {
	case c.json:
		writeJSON(env.stdout, map[string]any{
			"ok": true, "key": *key, "token": l.Token(), "fence": l.Fence(),
			"ttl": time.Until(l.Expiry()).Round(time.Millisecond).String(), "expiry": l.Expiry().UTC().Format(time.RFC3339Nano),
		})
	case *envOut:
		// export: the variables must reach the distlock commands the
		// script runs next (release and extend read $DISTLOCK_TOKEN).
		fmt.Fprintf(env.stdout, "export DISTLOCK_KEY=%s\nexport DISTLOCK_TOKEN=%s\nexport DISTLOCK_FENCE=%s\n", shellQuote(*key), shellQuote(l.Token()), fence)
	default:
		fmt.Fprintln(env.stdout, l.Token())
	}
	return exitOK
}

// detachedProblem explains why a lock taken by this process could not
// outlive it on the backend, or returns "".
func detachedProblem(raw string, caps driver.Capabilities) string {
	scheme := ""
	if i := strings.Index(raw, "://"); i > 0 {
		scheme = strings.ToLower(raw[:i])
	}
	switch {
	case scheme == "memory":
		return "memory:// locks live in one process and end with it; use 'distlock run' (or a shared backend such as redis:// or etcd://)"
	case !caps.CrossInstanceRelease:
		return fmt.Sprintf("the %s backend ties a lock to the client that took it, so the lock would end with this process; use 'distlock run' instead", caps.Name)
	}
	return ""
}

// shellQuote quotes s for a POSIX shell: left alone when it holds only
// characters no shell treats specially, else in single quotes (inside
// which nothing is special); a quote mark inside is written as the four
// characters quote, backslash, quote, quote.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@%+,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func runRelease(ctx context.Context, env *cliEnv, args []string) int {
	const cmdName = "distlock release"
	fs := newFlags("release", "--key KEY [--token TOKEN|-] [flags]", releaseHelp)
	var c common
	c.register(fs)
	key := fs.String("key", "", "lock key (required)")
	tokenFlag := fs.String("token", "", "the token that holds the lock; '-' reads it from stdin (default $DISTLOCK_TOKEN)")
	if code, done := parse(fs, env, args); done {
		return code
	}
	if code, ok := noArgs(env, fs); !ok {
		return code
	}
	if *key == "" {
		return usageError(env, cmdName, "--key is required")
	}
	token, err := readToken(env, *tokenFlag)
	if err != nil {
		return usageError(env, cmdName, "%v", err)
	}
	ctx, stop := signalContext(ctx)
	defer stop()
	m, _, code, ok := c.open(ctx, env, cmdName)
	if !ok {
		return code
	}
	defer m.Close()
	rctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if err := m.Release(rctx, *key, token); err != nil {
		return c.fail(env, cmdName, err)
	}
	if c.json {
		writeJSON(env.stdout, map[string]any{"ok": true, "key": *key, "released": true})
	}
	return exitOK
}

func runExtend(ctx context.Context, env *cliEnv, args []string) int {
	const cmdName = "distlock extend"
	fs := newFlags("extend", "--key KEY [--token TOKEN|-] [--ttl D] [flags]", extendHelp)
	var c common
	c.register(fs)
	key, ttl := keyFlags(fs, "the lock's new TTL, from now")
	tokenFlag := fs.String("token", "", "the token that holds the lock; '-' reads it from stdin (default $DISTLOCK_TOKEN)")
	if code, done := parse(fs, env, args); done {
		return code
	}
	if code, ok := noArgs(env, fs); !ok {
		return code
	}
	if code, ok := checkKeyTTL(env, cmdName, *key, *ttl); !ok {
		return code
	}
	token, err := readToken(env, *tokenFlag)
	if err != nil {
		return usageError(env, cmdName, "%v", err)
	}
	ctx, stop := signalContext(ctx)
	defer stop()
	m, _, code, ok := c.open(ctx, env, cmdName)
	if !ok {
		return code
	}
	defer m.Close()
	ectx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	t0 := time.Now()
	if err := m.Extend(ectx, *key, token, *ttl); err != nil {
		return c.fail(env, cmdName, err)
	}
	if c.json {
		granted := m.Capabilities().RoundTTL(*ttl)
		writeJSON(env.stdout, map[string]any{"ok": true, "key": *key, "ttl": granted.String(), "expiry": t0.Add(granted).UTC().Format(time.RFC3339Nano)})
	}
	return exitOK
}

// lockState is what status reports about one lock, read without changing
// it.
type lockState struct {
	Held        bool          // some token holds the lock
	HeldByToken bool          // the token given holds it
	TTL         time.Duration // time left on the lock (0: unknown)
	Fence       uint64        // the holder's fencing number (0: unknown or none)
	Waiters     int           // waiters queued on the server
}

// errInspectUnsupported: no read-only way to look at a lock is available.
var errInspectUnsupported = errors.New("this backend cannot inspect a lock read-only; 'distlock extend --key KEY' tells whether the token holds it, but resets its TTL")

// inspectLock reads the state of key, and whether token holds it, without
// changing anything on the backend (Manager.Inspect: no extend, acquire or
// release).
func inspectLock(ctx context.Context, m *distlock.Manager, key, token string) (lockState, error) {
	info, err := m.Inspect(ctx, key)
	if errors.Is(err, distlock.ErrUnsupported) {
		return lockState{}, errInspectUnsupported
	}
	if err != nil {
		return lockState{}, err
	}
	return lockState{
		Held:        info.Held,
		HeldByToken: info.Held && token != "" && info.Holder == token,
		TTL:         info.TTL,
		Fence:       info.Fence,
		Waiters:     info.Waiters,
	}, nil
}

func runStatus(ctx context.Context, env *cliEnv, args []string) int {
	const cmdName = "distlock status"
	fs := newFlags("status", "[--key KEY [--token TOKEN]] [flags]", statusHelp)
	var c common
	c.register(fs)
	key := fs.String("key", "", "report on this lock (read-only: its TTL is never changed)")
	tokenFlag := fs.String("token", "", "with --key: the token to check; '-' reads stdin (default $DISTLOCK_TOKEN)")
	election := fs.String("election", "", "show the leader of this election")
	// --ttl once set the TTL status extended the lock to; status no longer
	// extends, and the flag is accepted (and ignored) so scripts keep working.
	ttl := duration(fs, "ttl", 0, "ignored: status never changes a lock's TTL")
	_ = fs.MarkHidden("ttl")
	if code, done := parse(fs, env, args); done {
		return code
	}
	if code, ok := noArgs(env, fs); !ok {
		return code
	}
	if fs.Changed("ttl") {
		fmt.Fprintf(env.stderr, "%s: --ttl %v is ignored: status never changes a lock's TTL (use 'distlock extend')\n", cmdName, *ttl)
	}
	var token string
	if *key != "" {
		var err error
		if token, err = readToken(env, *tokenFlag); err != nil {
			return usageError(env, cmdName, "%v", err)
		}
	} else if *tokenFlag != "" {
		return usageError(env, cmdName, "--token needs --key")
	}
	ctx, stop := signalContext(ctx)
	defer stop()
	m, raw, code, ok := c.open(ctx, env, cmdName)
	if !ok {
		return code
	}
	defer m.Close()
	caps := m.Capabilities()

	out := map[string]any{
		"url":     redact(raw),
		"backend": caps.Name,
		"capabilities": map[string]any{
			"fencing":                caps.Fencing,
			"cross_instance_release": caps.CrossInstanceRelease,
			"min_ttl":                caps.MinTTL.String(),
			"granularity":            caps.Granularity.String(),
			"read_write":             caps.ReadWrite,
			"semaphore":              caps.Semaphore,
			"election":               caps.Election,
		},
	}
	// Reachability: releasing a random token on a probe key changes
	// nothing and answers ErrNotHeld from a live backend.
	pctx, cancel := context.WithTimeout(ctx, opTimeout)
	t0 := time.Now()
	perr := m.Release(pctx, "distlock-status-probe/"+distlock.NewToken(), distlock.NewToken())
	rtt := time.Since(t0)
	cancel()
	reachable := perr == nil || errors.Is(perr, distlock.ErrNotHeld)
	out["reachable"] = reachable
	out["round_trip"] = rtt.Round(time.Microsecond).String()
	exit := exitOK
	if !reachable {
		out["error"] = perr.Error()
		exit = exitCode(perr)
	}
	var (
		st   lockState
		serr error
	)
	if reachable && *key != "" {
		ictx, cancel := context.WithTimeout(ctx, opTimeout)
		st, serr = inspectLock(ictx, m, *key, token)
		cancel()
		out["key"] = *key
		switch {
		case errors.Is(serr, errInspectUnsupported):
			out["inspect"] = "unsupported"
			out["error"] = serr.Error()
			exit = exitError
		case serr != nil:
			out["error"] = serr.Error()
			exit = exitCode(serr)
		default:
			out["held"] = st.HeldByToken
			if st.TTL > 0 {
				out["ttl"] = st.TTL.Round(time.Millisecond).String()
			}
			if st.Fence > 0 {
				out["fence"] = st.Fence
			}
			out["waiters"] = st.Waiters
			if !st.HeldByToken {
				exit = exitNotHeld
			}
		}
	}
	var (
		leader distlock.LeaderInfo
		lerr   error
	)
	if reachable && *election != "" {
		lctx, cancel := context.WithTimeout(ctx, opTimeout)
		leader, lerr = m.Election(*election, time.Second).Leader(lctx)
		cancel()
		out["election"] = *election
		switch {
		case errors.Is(lerr, distlock.ErrNoLeader):
			out["leader"] = nil
		case lerr != nil:
			out["error"] = lerr.Error()
			exit = exitCode(lerr)
		default:
			out["leader"] = map[string]any{"value": leader.Value, "fence": leader.Fence, "ttl": leader.TTL.Round(time.Millisecond).String()}
		}
	}
	out["ok"] = exit == exitOK
	if exit != exitOK {
		out["code"], out["exit_code"] = errorCode(exit), exit
	}

	if c.json {
		writeJSON(env.stdout, out)
		return exit
	}
	w := env.stdout
	fmt.Fprintf(w, "url:          %s\n", redact(raw))
	fmt.Fprintf(w, "backend:      %s\n", caps.Name)
	fmt.Fprintf(w, "fencing:      %s\n", yesNo(caps.Fencing))
	fmt.Fprintf(w, "cross-client release: %s\n", yesNo(caps.CrossInstanceRelease))
	fmt.Fprintf(w, "min TTL:      %v (granularity %v)\n", caps.MinTTL, caps.Granularity)
	fmt.Fprintf(w, "primitives:   read-write %s, semaphore %s, election %s\n", yesNo(caps.ReadWrite), yesNo(caps.Semaphore), yesNo(caps.Election))
	if reachable {
		fmt.Fprintf(w, "reachable:    yes (round trip %v)\n", rtt.Round(time.Microsecond))
	} else {
		fmt.Fprintf(w, "reachable:    no: %v\n", perr)
	}
	if reachable && *key != "" {
		switch {
		case serr != nil:
			fmt.Fprintf(w, "lock %q:  unknown: %v\n", *key, serr)
			fmt.Fprintf(env.stderr, "%s: %v\n", cmdName, serr)
		case st.HeldByToken:
			fmt.Fprintf(w, "lock %q:  held by the token", *key)
			if st.TTL > 0 {
				fmt.Fprintf(w, " (%v left)", st.TTL.Round(time.Millisecond))
			}
			fmt.Fprintln(w)
		case st.Held:
			fmt.Fprintf(w, "lock %q:  held by another token\n", *key)
		default:
			fmt.Fprintf(w, "lock %q:  not held\n", *key)
		}
		if serr == nil && st.Waiters > 0 {
			fmt.Fprintf(w, "waiters:      %d queued on the server\n", st.Waiters)
		}
	}
	if reachable && *election != "" {
		switch {
		case errors.Is(lerr, distlock.ErrNoLeader):
			fmt.Fprintf(w, "election %q: no leader\n", *election)
		case lerr != nil:
			fmt.Fprintf(w, "election %q: unknown: %v\n", *election, lerr)
			fmt.Fprintf(env.stderr, "%s: %v\n", cmdName, lerr)
		default:
			fmt.Fprintf(w, "election %q: led by %q (fence %d, %v left)\n", *election, leader.Value, leader.Fence, leader.TTL.Round(time.Millisecond))
		}
	}
	return exit
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
