// Command distlock runs commands under a distributed lock, books seats in a
// zero-setup demo, and checks a live lock deployment against the
// conformance suite.
//
//	distlock demo                                        # embedded engine, nothing to install
//	distlock run --url redis://localhost:6379 --key nightly-report --ttl 30s -- ./report.sh
//	distlock elect --url etcd://10.0.0.5:2379 --key scheduler -- ./scheduler
//	TOKEN=$(distlock acquire --key deploy --ttl 5m)      # shell scripts: acquire / extend / release
//	distlock check --url etcd://10.0.0.5:2379            # conformance checks against a deployment
//
// Every command takes --url (default $DISTLOCK_URL), --json and --help.
// Exit codes are listed in docs/cli.md and by `distlock help exit-codes`.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/distlock/distlock"
	"github.com/spf13/pflag"
)

// Exit codes. They are part of the command's interface: scripts test them.
const (
	exitOK          = 0 // success
	exitError       = 1 // any other failure
	exitUsage       = 2 // bad flags, arguments or URL
	exitNotAcquired = 3 // the lock is held by someone else (and --wait ran out)
	exitNotHeld     = 4 // the token does not hold the lock (release, extend, status)
	exitLockLost    = 5 // run: the lock was lost while CMD ran
	exitUnavailable = 6 // the backend could not be reached or failed
	exitCheckFailed = 7 // check: at least one conformance check failed
)

// envURL is the environment variable --url defaults to.
const envURL = "DISTLOCK_URL"

// opTimeout bounds one backend round trip (open, release, extend, probe)
// made by the CLI.
const opTimeout = 10 * time.Second

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env *cliEnv, args []string) int
}

var commands []command

func init() {
	commands = []command{
		{"demo", "book seats with many concurrent clients, without and with the lock", runDemo},
		{"run", "run a command while holding a lock (or a shared hold, or a semaphore permit)", runRun},
		{"elect", "run a command while leading an election", runElect},
		{"acquire", "take a lock and print its token (for shell scripts)", runAcquire},
		{"release", "release a lock held by a token", runRelease},
		{"extend", "reset the TTL of a lock held by a token", runExtend},
		{"status", "show the backend, and whether a token holds a lock", runStatus},
		{"check", "run the conformance checks against a live deployment", runCheck},
	}
}

// cliEnv is what commands read from and write to: the process's stdio and
// environment in the binary.
type cliEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	// json is set once the command is known to print JSON (--json), so
	// that usage errors are printed as a JSON object too.
	json bool
}

func main() {
	env := &cliEnv{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	os.Exit(mainArgs(context.Background(), env, os.Args[1:]))
}

func mainArgs(ctx context.Context, env *cliEnv, args []string) int {
	if len(args) == 0 {
		topUsage(env.stderr)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 {
			if args[1] == "exit-codes" {
				fmt.Fprint(env.stdout, exitCodesHelp)
				return exitOK
			}
			for _, c := range commands {
				if c.name == args[1] {
					return c.run(ctx, env, []string{"--help"})
				}
			}
			fmt.Fprintf(env.stderr, "distlock: unknown command %q\n", args[1])
			return exitUsage
		}
		topUsage(env.stdout)
		return exitOK
	case "version", "--version", "-version":
		fmt.Fprintln(env.stdout, "distlock", version())
		return exitOK
	}
	for _, c := range commands {
		if c.name == name {
			return c.run(ctx, env, args[1:])
		}
	}
	env.json = wantsJSON(args[1:])
	return usageError(env, "distlock", "unknown command %q (run 'distlock --help' for the list of commands)", name)
}

func topUsage(w io.Writer) {
	fmt.Fprint(w, `distlock: distributed locks from the command line.

Usage:
  distlock <command> [flags] [-- CMD ARGS...]

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, `
Every command takes --url (default $%s) and --json; 'distlock <command> --help'
shows its flags and examples; 'distlock help exit-codes' lists the exit codes.

Backends compiled in: %s

Examples:
  distlock demo
  export %s=redis://localhost:6379
  distlock run --key nightly-report --ttl 30s -- ./report.sh
`, envURL, strings.Join(distlock.Schemes(), ", "), envURL)
}

const exitCodesHelp = `Exit codes:
  0    success
  1    other failure (see the message on stderr)
  2    usage: bad flags or arguments, malformed URL, unknown scheme
  3    lock not acquired: another token holds it (after --wait); 'run' takes
       --conflict-exit-code to choose another value
  4    not held: the token does not hold the lock (release, extend, status)
  5    run: the lock was lost while CMD ran; CMD was stopped
  6    backend unavailable
  7    check: at least one conformance check failed
  run exits with CMD's own status otherwise: its exit code, 128+N when it was
  killed by signal N, 126 when it cannot be executed, 127 when not found.
`

// version is the module version the binary was built from, if known.
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// newFlags returns a FlagSet for a command, with nothing registered yet.
// Flags are GNU-style (--name value, --name=value, -v). Its Usage prints
// the command's help, examples and flags.
func newFlags(name, synopsis, help string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("distlock "+name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: distlock %s %s\n\n%s\nFlags:\n", name, synopsis, strings.TrimLeft(help, "\n"))
		fs.VisitAll(func(f *pflag.Flag) {
			if f.Hidden {
				return
			}
			typ, usage := pflag.UnquoteUsage(f)
			if typ != "" {
				typ = " " + typ
			}
			def := ""
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0s" && f.DefValue != "0" && f.DefValue != "[]" {
				def = fmt.Sprintf(" (default %s)", f.DefValue)
			}
			names := "--" + f.Name
			if f.Shorthand != "" {
				names = "-" + f.Shorthand + ", " + names
			}
			fmt.Fprintf(w, "  %s%s\n        %s%s\n", names, typ, usage, def)
		})
	}
	return fs
}

// durationValue is a duration flag whose parse errors say how to write a
// duration.
type durationValue time.Duration

func (d *durationValue) String() string { return time.Duration(*d).String() }
func (d *durationValue) Type() string   { return "duration" }
func (d *durationValue) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
			return fmt.Errorf("missing unit in duration %q: use e.g. %ss", s, s)
		}
		return fmt.Errorf("invalid duration %q: use e.g. 500ms, 30s, 5m or 1h30m", s)
	}
	*d = durationValue(v)
	return nil
}

// duration registers a duration flag.
func duration(fs *pflag.FlagSet, name string, def time.Duration, usage string) *time.Duration {
	d := def
	fs.Var((*durationValue)(&d), name, usage)
	return &d
}

// common are the flags every command that talks to a backend shares.
type common struct {
	url  string
	json bool
}

func (c *common) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.url, "url", "", "backend URL, e.g. redis://host:6379, etcd://host:2379, postgres://user@host/db, memory:// (default $"+envURL+")")
	fs.BoolVar(&c.json, "json", false, "print the result as one JSON object on stdout")
}

// wantsJSON reports whether args ask for --json, for errors found before
// (or while) the flags are parsed.
func wantsJSON(args []string) bool { return hasFlag(args, "--json") }

// hasFlag reports whether the boolean flag name (--json) is set in args
// before any "--".
func hasFlag(args []string, name string) bool {
	for _, a := range args {
		switch {
		case a == "--":
			return false
		case a == name:
			return true
		case strings.HasPrefix(a, name+"="):
			v, err := strconv.ParseBool(strings.TrimPrefix(a, name+"="))
			return err == nil && v
		}
	}
	return false
}

// parse parses args. On --help it prints the help to stdout and returns
// exitOK with done; on a bad flag it prints a short error (as JSON too,
// with --json) and returns exitUsage with done.
func parse(fs *pflag.FlagSet, env *cliEnv, args []string) (code int, done bool) {
	hasJSON := fs.Lookup("json") != nil
	env.json = hasJSON && wantsJSON(args)
	err := fs.Parse(args)
	switch {
	case err == nil:
		if hasJSON {
			env.json, _ = fs.GetBool("json")
		}
		return 0, false
	case errors.Is(err, pflag.ErrHelp):
		fs.SetOutput(env.stdout)
		fs.Usage()
		return exitOK, true
	}
	return usageError(env, fs.Name(), "%s", flagError(fs, err)), true
}

// flagError words a flag parsing error: it names the flag as typed on the
// command line (--ttl) and says how to fix the value.
func flagError(fs *pflag.FlagSet, err error) string {
	var inv *pflag.InvalidValueError
	var nx *pflag.NotExistError
	switch {
	case errors.As(err, &inv):
		name, cause := "--"+inv.GetFlag().Name, inv.Unwrap()
		if _, ok := inv.GetFlag().Value.(*durationValue); ok {
			return name + ": " + cause.Error()
		}
		var ne *strconv.NumError
		if errors.As(cause, &ne) {
			what := "not a number"
			if errors.Is(ne, strconv.ErrRange) {
				what = "out of range"
			} else if inv.GetFlag().Value.Type() == "bool" {
				what = "want true or false"
			}
			return fmt.Sprintf("%s: invalid value %q: %s", name, inv.GetValue(), what)
		}
		return fmt.Sprintf("%s: invalid value %q: %v", name, inv.GetValue(), cause)
	case errors.As(err, &nx):
		// -ttl: a long flag written with one dash reads as shorthands.
		if s := nx.GetSpecifiedShortnames(); len(s) > 1 && fs.Lookup(s) != nil {
			return fmt.Sprintf("unknown flag -%s: long flags take two dashes: --%s", s, s)
		}
	}
	return err.Error()
}

// usageError prints a usage error (and, with --json, a JSON error object
// on stdout) and returns exitUsage.
func usageError(env *cliEnv, cmd, format string, args ...any) int {
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintf(env.stderr, "%s: %s\nRun '%s --help' for usage.\n", cmd, msg, cmd)
	if env.json {
		writeJSON(env.stdout, map[string]any{"ok": false, "error": msg, "code": errorCode(exitUsage), "exit_code": exitUsage})
	}
	return exitUsage
}

// resolveURL applies the $DISTLOCK_URL default and checks the URL's shape
// without contacting the backend.
func (c *common) resolveURL(env *cliEnv, cmd string) (string, int, bool) {
	raw := c.url
	if raw == "" {
		raw = env.getenv(envURL)
	}
	if raw == "" {
		return "", usageError(env, cmd, "no backend URL: pass --url or set %s (schemes: %s)", envURL, strings.Join(distlock.Schemes(), ", ")), false
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return "", usageError(env, cmd, "malformed backend URL (want scheme://…, e.g. redis://localhost:6379)"), false
	}
	scheme := strings.ToLower(u.Scheme)
	known := false
	for _, s := range distlock.Schemes() {
		if s == scheme {
			known = true
		}
	}
	if !known {
		return "", usageError(env, cmd, "unknown URL scheme %q in %s (compiled in: %s)", scheme, distlock.RedactURL(u), strings.Join(distlock.Schemes(), ", ")), false
	}
	return raw, 0, true
}

// redact returns raw with its secrets hidden, for messages.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(malformed URL)"
	}
	r := distlock.RedactURL(u)
	if r == u.String() {
		return raw // nothing secret: keep the spelling the user gave (memory://)
	}
	return r
}

// open resolves the URL and opens a Manager over it.
func (c *common) open(ctx context.Context, env *cliEnv, cmd string, opts ...distlock.Option) (*distlock.Manager, string, int, bool) {
	raw, code, ok := c.resolveURL(env, cmd)
	if !ok {
		return nil, "", code, false
	}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	m, err := distlock.Open(octx, raw, opts...)
	if err != nil {
		return nil, raw, c.fail(env, cmd, err), false
	}
	return m, raw, 0, true
}

// exitCode maps an error from distlock to the documented exit code.
func exitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, distlock.ErrInvalidArgument), errors.Is(err, distlock.ErrLimitMismatch):
		return exitUsage
	case errors.Is(err, distlock.ErrNotAcquired):
		return exitNotAcquired
	case errors.Is(err, distlock.ErrNotHeld):
		return exitNotHeld
	case errors.Is(err, distlock.ErrLockLost):
		return exitLockLost
	case errors.Is(err, distlock.ErrUnavailable):
		return exitUnavailable
	}
	return exitError
}

// errorCode names an exit code in JSON output.
func errorCode(code int) string {
	switch code {
	case exitUsage:
		return "usage"
	case exitNotAcquired:
		return "not_acquired"
	case exitNotHeld:
		return "not_held"
	case exitLockLost:
		return "lock_lost"
	case exitUnavailable:
		return "unavailable"
	case exitCheckFailed:
		return "check_failed"
	}
	return "error"
}

// fail reports err (on stderr, and as JSON on stdout with --json) and
// returns its exit code.
func (c *common) fail(env *cliEnv, cmd string, err error) int {
	code := exitCode(err)
	msg := strings.TrimPrefix(err.Error(), "distlock: ")
	fmt.Fprintf(env.stderr, "%s: %s\n", cmd, msg)
	if c.json {
		writeJSON(env.stdout, map[string]any{"ok": false, "error": msg, "code": errorCode(code), "exit_code": code})
	}
	return code
}

func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// noArgs reports an error if positional arguments remain.
func noArgs(env *cliEnv, fs *pflag.FlagSet) (int, bool) {
	if fs.NArg() > 0 {
		return usageError(env, fs.Name(), "unexpected argument %q", fs.Arg(0)), false
	}
	return 0, true
}
