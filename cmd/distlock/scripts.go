package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/distlock/distlock"
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

Output: the token; with --env, shell assignments of DISTLOCK_KEY,
DISTLOCK_TOKEN and DISTLOCK_FENCE for eval; with --json, an object with
key, token, fence, ttl and expiry.

Examples:
  TOKEN=$(distlock acquire --url redis://localhost:6379 --key deploy --ttl 5m) || exit
  eval "$(distlock acquire --key deploy --ttl 5m --wait 1m --env)"
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
answers. With --key and a token (--token or $DISTLOCK_TOKEN), also tell
whether that token holds the lock: exit 0 if it does, 4 if not.

The portable LockManager API has no read-only query: the only way to learn
whether a token holds a lock is to extend it, so the token check resets the
lock's TTL to --ttl (default 30s) — exactly what 'distlock extend' does.
Who else holds a key cannot be learned without taking the lock, so status
never tries to acquire anything.

Examples:
  distlock status --url etcd://127.0.0.1:2379
  distlock status --key deploy --token "$TOKEN" --ttl 5m --json
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
func keyFlags(fs *flag.FlagSet, ttlHelp string) (*string, *time.Duration) {
	key := fs.String("key", "", "lock key (required)")
	ttl := fs.Duration("ttl", 30*time.Second, ttlHelp)
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

func runAcquire(ctx context.Context, env *cliEnv, args []string) int {
	const cmdName = "distlock acquire"
	fs := newFlags("acquire", "--key KEY [--ttl D] [--wait D] [flags]", acquireHelp)
	var c common
	c.register(fs)
	key, ttl := keyFlags(fs, "lock TTL (not renewed: extend or release it in time)")
	wait := fs.Duration("wait", 0, "how long to wait while another holder has the lock (0: one attempt)")
	token := fs.String("token", "", "take or refresh the lock with this token instead of a random one")
	envOut := fs.Bool("env", false, "print DISTLOCK_KEY=…, DISTLOCK_TOKEN=… and DISTLOCK_FENCE=… for eval")
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
		fmt.Fprintf(env.stdout, "DISTLOCK_KEY=%s\nDISTLOCK_TOKEN=%s\nDISTLOCK_FENCE=%s\n", shellQuote(*key), shellQuote(l.Token()), fence)
	default:
		fmt.Fprintln(env.stdout, l.Token())
	}
	return exitOK
}

// detachedProblem explains why a lock taken by this process could not
// outlive it on the backend, or returns "".
func detachedProblem(raw string, caps distlock.Capabilities) string {
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

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@%+=,") == "" {
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

func runStatus(ctx context.Context, env *cliEnv, args []string) int {
	const cmdName = "distlock status"
	fs := newFlags("status", "[--key KEY --token TOKEN [--ttl D]] [flags]", statusHelp)
	var c common
	c.register(fs)
	key, ttl := keyFlags(fs, "with --key and a token: the TTL the check sets (it extends the lock)")
	tokenFlag := fs.String("token", "", "with --key: check whether this token holds the lock; '-' reads stdin (default $DISTLOCK_TOKEN)")
	if code, done := parse(fs, env, args); done {
		return code
	}
	if code, ok := noArgs(env, fs); !ok {
		return code
	}
	if *ttl <= 0 {
		return usageError(env, cmdName, "--ttl must be positive (got %v)", *ttl)
	}
	var token string
	if *key != "" {
		var err error
		if token, err = readToken(env, *tokenFlag); err != nil {
			return usageError(env, cmdName, "%v (who else holds a key cannot be learned without taking the lock)", err)
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
	if !reachable {
		out["error"] = perr.Error()
	}
	exit := exitOK
	var held *bool
	if reachable && *key != "" {
		ectx, cancel := context.WithTimeout(ctx, opTimeout)
		err := m.Extend(ectx, *key, token, *ttl)
		cancel()
		switch {
		case err == nil:
			h := true
			held = &h
		case errors.Is(err, distlock.ErrNotHeld):
			h := false
			held, exit = &h, exitNotHeld
		default:
			out["error"] = err.Error()
			exit = exitCode(err)
		}
		out["key"] = *key
		if held != nil {
			out["held"] = *held
		}
	}
	if !reachable {
		exit = exitCode(perr)
	}
	out["ok"] = exit == exitOK

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
	if reachable {
		fmt.Fprintf(w, "reachable:    yes (round trip %v)\n", rtt.Round(time.Microsecond))
	} else {
		fmt.Fprintf(w, "reachable:    no: %v\n", perr)
	}
	if *key != "" && held != nil {
		if *held {
			fmt.Fprintf(w, "lock %q:  held by the token (TTL reset to %v)\n", *key, caps.RoundTTL(*ttl))
		} else {
			fmt.Fprintf(w, "lock %q:  NOT held by the token\n", *key)
		}
	} else if s, ok := out["error"]; ok && reachable {
		fmt.Fprintf(w, "lock %q:  unknown: %v\n", *key, s)
	}
	return exit
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
