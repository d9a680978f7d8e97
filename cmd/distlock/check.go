package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/conformance"
	"github.com/distlock/distlock/driver"
)

const checkHelp = `
Run the conformance checks — the suite every distlock backend passes in its
own tests — against a live deployment, and print a pass/fail table. Then
look for settings of the deployment that make locks unsafe (for Redis, a
maxmemory-policy that can evict keys with a TTL; for PostgreSQL, a
transaction pooler or a standby between you and the primary) and print
them as warnings.

The checks take and release locks of their own, under keys prefixed
distlock-conformance/<random>/; they never touch other keys, and what they
leave behind expires by its TTL. Checks that need to stop the server or
delete a lock as an operator would are skipped.

Exit status: 0 if every check passed or was skipped, 7 if one failed (or,
with --strict, if there was a warning), 6 if the backend is unreachable.

Examples:
  distlock check --url redis://localhost:6379
  distlock check --url 'postgres://app@db.internal:5432/app?sslmode=require' --json
  DISTLOCK_URL=etcd://10.0.0.5:2379 distlock check --skip Fencing/AcrossManagers
`

// A warner inspects a live deployment for settings that make locks unsafe.
// It returns warnings for people; an error means it could not tell, and is
// shown as a warning too.
type warner func(ctx context.Context, u *url.URL) ([]string, error)

var (
	warnersMu sync.Mutex
	warners   = map[string][]warner{}
)

// registerWarner adds w for the URL schemes given. Backend-specific files
// of this package call it from init.
func registerWarner(w warner, schemes ...string) {
	warnersMu.Lock()
	defer warnersMu.Unlock()
	for _, s := range schemes {
		warners[s] = append(warners[s], w)
	}
}

type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Type() string   { return "names" }
func (l *listFlag) Set(s string) error {
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

func runCheck(ctx context.Context, env *cliEnv, args []string) int {
	const cmdName = "distlock check"
	fs := newFlags("check", "[--url URL] [flags]", checkHelp)
	var c common
	c.register(fs)
	var skip listFlag
	fs.Var(&skip, "skip", "skip these checks (Topic/Name, comma-separated or repeated)")
	shortTTL := duration(fs, "short-ttl", 0, "TTL of the locks the checks let expire (default: 500ms or the backend's minimum)")
	timeout := duration(fs, "timeout", 5*time.Minute, "give up on the whole check after this long")
	strict := fs.Bool("strict", false, "exit 7 on warnings too")
	noWarn := fs.Bool("no-warnings", false, "run only the conformance checks, not the deployment inspection")
	inspectOnly := fs.Bool("inspect-only", false, "only inspect the deployment's settings (the warnings); run no checks")
	if code, done := parse(fs, env, args); done {
		return code
	}
	if code, ok := noArgs(env, fs); !ok {
		return code
	}
	if *timeout <= 0 {
		return usageError(env, cmdName, "--timeout must be positive (got %v)", *timeout)
	}
	if *inspectOnly && *noWarn {
		return usageError(env, cmdName, "--inspect-only and --no-warnings exclude each other")
	}
	raw, code, ok := c.resolveURL(env, cmdName)
	if !ok {
		return code
	}
	u, _ := url.Parse(raw)
	ctx, stop := signalContext(ctx)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	// Open once first: a bad or unreachable URL is reported as such rather
	// than as every check failing.
	caps := driver.Capabilities{Name: strings.ToLower(u.Scheme)}
	octx, ocancel := context.WithTimeout(ctx, opTimeout)
	m, err := distlock.Open(octx, raw)
	ocancel()
	if err == nil {
		pctx, pcancel := context.WithTimeout(ctx, opTimeout)
		err = m.Release(pctx, "distlock-check-probe/"+distlock.NewToken(), distlock.NewToken())
		pcancel()
		caps = m.Capabilities()
		_ = m.Close()
		if err != nil && exitCode(err) != exitUnavailable {
			err = nil // ErrNotHeld: the backend answered
		}
	}
	// --inspect-only runs no checks, but it fails (exit 6, "ok": false)
	// when nothing could be inspected: the inspection could not reach the
	// deployment, or there is nothing to inspect for the scheme and the
	// backend did not answer. An open error with a successful inspection
	// (PostgreSQL behind a transaction pooler, say) is what the warnings
	// explain.
	var (
		warnings  []string
		inspected bool
		ierr      error
	)
	if *inspectOnly || (err != nil && !*noWarn) { // the deployment's settings may explain the failure
		warnings, inspected, ierr = inspect(ctx, u)
	}
	if *inspectOnly && err == nil && ierr != nil {
		err = distlock.Unavailable(fmt.Errorf("could not inspect the deployment: %w", ierr))
	}
	if err != nil && (!*inspectOnly || !inspected) {
		code := exitCode(err)
		msg := strings.TrimPrefix(err.Error(), "distlock: ")
		fmt.Fprintf(env.stderr, "%s: %s\n", cmdName, msg)
		for _, s := range warnings {
			fmt.Fprintf(env.stderr, "  ! %s\n", s)
		}
		if c.json {
			writeJSON(env.stdout, map[string]any{"ok": false, "error": msg, "code": errorCode(code), "exit_code": code, "warnings": nonNil(warnings)})
		}
		return code
	}

	opts := []conformance.Option{}
	if len(skip) > 0 {
		opts = append(opts, conformance.WithSkip(skip...))
	}
	if *shortTTL > 0 {
		opts = append(opts, conformance.WithShortTTL(*shortTTL))
	}
	var results []conformance.Result
	t0 := time.Now()
	if !*inspectOnly {
		if !c.json {
			fmt.Fprintf(env.stderr, "checking %s (backend %s)…\n", redact(raw), caps.Name)
		}
		if results, err = conformance.Check(ctx, conformance.URL(raw, conformance.WithRevoker(nil)), opts...); err != nil {
			return c.fail(env, cmdName, err)
		}
	}
	elapsed := time.Since(t0)

	if !*noWarn && !*inspectOnly {
		warnings, _, _ = inspect(ctx, u)
	}

	counts := map[string]int{}
	for _, r := range results {
		counts[r.Status]++
	}
	exit := exitOK
	if counts["fail"] > 0 || (*strict && len(warnings) > 0) {
		exit = exitCheckFailed
	}
	if ctx.Err() != nil {
		exit = exitError
	}

	if c.json {
		type jr struct {
			Name     string `json:"name"`
			Status   string `json:"status"`
			Message  string `json:"message,omitempty"`
			Duration string `json:"duration"`
		}
		rs := make([]jr, len(results)) // empty, not null, with --inspect-only
		for i, r := range results {
			rs[i] = jr{r.Name, r.Status, r.Message, r.Duration.Round(time.Millisecond).String()}
		}
		writeJSON(env.stdout, map[string]any{
			"ok": exit == exitOK, "url": redact(raw), "backend": caps.Name,
			"capabilities": map[string]any{
				"fencing": caps.Fencing, "cross_instance_release": caps.CrossInstanceRelease,
				"min_ttl": caps.MinTTL.String(), "granularity": caps.Granularity.String(),
			},
			"passed": counts["pass"], "failed": counts["fail"], "skipped": counts["skip"],
			"duration": elapsed.Round(time.Millisecond).String(),
			"results":  rs, "warnings": nonNil(warnings),
		})
		return exit
	}
	printCheck(env.stdout, raw, caps, results, warnings, elapsed, counts)
	if ctx.Err() != nil {
		fmt.Fprintf(env.stderr, "%s: stopped: %v\n", cmdName, ctx.Err())
	}
	return exit
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// inspect runs the warners registered for u's scheme. It returns their
// warnings (a warner's error among them, worded as one), whether the
// deployment was inspected (there are warners and none failed), and the
// first warner error.
func inspect(ctx context.Context, u *url.URL) (warnings []string, inspected bool, err error) {
	warnersMu.Lock()
	ws := slices.Clone(warners[strings.ToLower(u.Scheme)])
	warnersMu.Unlock()
	for _, w := range ws {
		wctx, cancel := context.WithTimeout(ctx, opTimeout)
		msgs, werr := w(wctx, u)
		cancel()
		warnings = append(warnings, msgs...)
		if werr != nil {
			warnings = append(warnings, fmt.Sprintf("could not inspect the deployment: %v", werr))
			if err == nil {
				err = werr
			}
		}
	}
	return warnings, len(ws) > 0 && err == nil, err
}

func printCheck(w io.Writer, raw string, caps driver.Capabilities, results []conformance.Result, warnings []string, elapsed time.Duration, counts map[string]int) {
	fmt.Fprintf(w, "%s: backend %s, fencing %s, cross-client release %s, min TTL %v\n\n",
		redact(raw), caps.Name, yesNo(caps.Fencing), yesNo(caps.CrossInstanceRelease), caps.MinTTL)
	width := 0
	for _, r := range results {
		width = max(width, len(r.Name))
	}
	if len(results) == 0 {
		fmt.Fprintln(w, "  (no checks run)")
	}
	for _, r := range results {
		msg := r.Message
		if len(msg) > 200 {
			msg = msg[:200] + "…"
		}
		fmt.Fprintf(w, "  %-4s  %-*s  %8s  %s\n", strings.ToUpper(r.Status), width, r.Name, r.Duration.Round(time.Millisecond), msg)
	}
	fmt.Fprintf(w, "\n%d passed, %d failed, %d skipped in %v\n", counts["pass"], counts["fail"], counts["skip"], elapsed.Round(time.Millisecond))
	if len(warnings) == 0 {
		fmt.Fprintln(w, "\nNo warnings about the deployment's settings.")
	} else {
		fmt.Fprintln(w, "\nWarnings:")
		for _, s := range warnings {
			fmt.Fprintf(w, "  ! %s\n", s)
		}
	}
}
