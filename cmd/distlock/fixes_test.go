package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/driver"
	"github.com/distlock/distlock/internal/testwait"
)

// TestGNUFlags: flags are GNU-style: --name value, --name=value, -v; and
// run stops reading flags at CMD, whose own flags are its own.
func TestGNUFlags(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "env")
	argv, env := child("env", file)
	r := cli(t, env, append([]string{"run", "--url=memory://", "--key=job:2", "--ttl=5s", "-v", "--"}, argv...)...)
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, `acquired "job:2"`) {
		t.Errorf("-v did not turn on --verbose:\n%s", r)
	}
	if lines := readLines(t, file); len(lines) != 3 || lines[0] != "job:2" {
		t.Errorf("CMD saw %q", lines)
	}
	// Without "--" the first argument that is not a flag starts CMD, and
	// what follows (-v here) belongs to CMD, not to distlock.
	r = cli(t, env, append([]string{"run", "--url", "memory://", "--key", "job:3"}, append(argv, "-v")...)...)
	wantCode(t, r, 0)
	if strings.Contains(r.stderr, "acquired") {
		t.Errorf("CMD's -v was taken as distlock's:\n%s", r)
	}
}

// TestJSONUsageErrors: with --json, usage errors print a JSON error object
// on stdout too, wherever --json stands and whether the flags parsed.
func TestJSONUsageErrors(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"status", "--json", "--bogus"},
		{"status", "--bogus", "--json"},
		{"acquire", "--json", "--url", "memory://", "--key", "k", "--ttl", "10"},
		{"release", "--url", "memory://", "--json=true"},
		{"extend", "--json", "--url", "memory://", "--key", "k", "--token", "t", "--ttl", "0s"},
		{"check", "--json", "--url", "nosuch://x"},
		{"demo", "--json", "--workers", "0"},
		{"status", "--json", "stray"},
		{"frobnicate", "--json"},
	} {
		r := cli(t, nil, args...)
		wantCode(t, r, exitUsage)
		var out struct {
			OK       *bool  `json:"ok"`
			Error    string `json:"error"`
			Code     string `json:"code"`
			ExitCode int    `json:"exit_code"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			t.Errorf("%v: stdout is not one JSON object: %v\n%s", args, err, r)
			continue
		}
		if out.OK == nil || *out.OK || out.Code != "usage" || out.ExitCode != exitUsage || out.Error == "" || !strings.Contains(r.stderr, out.Error) {
			t.Errorf("%v: JSON error %+v\n%s", args, out, r)
		}
	}
	// Without --json, stdout stays empty.
	if r := cli(t, nil, "status", "--bogus"); r.stdout != "" {
		t.Errorf("a usage error printed on stdout without --json:\n%s", r)
	}
}

// TestAcquireEnvRecipe runs the documented recipe in a real shell:
//
//	eval "$(distlock acquire … --env)"
//	distlock release --key "$DISTLOCK_KEY"    # token from $DISTLOCK_TOKEN
//
// with a key full of shell metacharacters, and checks that the lock was
// released and that nothing in the key was executed.
func TestAcquireEnvRecipe(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not installed")
	}
	forEachBackend(t, func(t *testing.T, b liveBackend, url string, caps driver.Capabilities) {
		if !caps.CrossInstanceRelease {
			t.Skipf("%s: acquire refuses (its locks end with the process)", b.name)
		}
		dir := t.TempDir()
		key := "deploy it's \"$(touch pwned1)\" `touch pwned2` $HOME ;&|<>*?~!#\\ \t\nend"
		const script = `set -eu
eval "$("$DISTLOCK" acquire --key "$KEY" --ttl 1m --env)"
[ "$DISTLOCK_KEY" = "$KEY" ] || { echo "DISTLOCK_KEY is [$DISTLOCK_KEY]" >&2; exit 90; }
case "$DISTLOCK_FENCE" in *[!0-9]*|'') echo "DISTLOCK_FENCE is [$DISTLOCK_FENCE]" >&2; exit 91;; esac
"$DISTLOCK" release --key "$DISTLOCK_KEY"
`
		c := exec.Command(bash, "-c", script)
		c.Dir = dir
		c.Env = cleanEnv("DISTLOCK="+bin, "KEY="+key, "DISTLOCK_URL="+url)
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("the recipe failed: %v\n%s", err, out)
		}
		for _, f := range []string{"pwned1", "pwned2"} {
			if fileExists(filepath.Join(dir, f)) {
				t.Fatalf("eval ran a command hidden in the key (%s)", f)
			}
		}
		// Released: another client gets the lock at once.
		r := cli(t, nil, "acquire", "--url", url, "--key", key, "--ttl", "1m")
		wantCode(t, r, 0)

		// While it is held, the eval fails with acquire's exit status, so
		// the script stops (set -e, or || exit) instead of going on
		// without the lock.
		for _, script := range []string{
			`set -eu; eval "$("$DISTLOCK" acquire --key "$KEY" --env)"; echo "went on without the lock"`,
			`eval "$("$DISTLOCK" acquire --key "$KEY" --env)" || exit; echo "went on without the lock"`,
		} {
			c := exec.Command(bash, "-c", script)
			c.Dir = dir
			c.Env = cleanEnv("DISTLOCK="+bin, "KEY="+key, "DISTLOCK_URL="+url)
			out, _ := c.CombinedOutput()
			if code := c.ProcessState.ExitCode(); code != exitNotAcquired || strings.Contains(string(out), "went on") {
				t.Errorf("%s: exit %d, want %d:\n%s", script, code, exitNotAcquired, out)
			}
		}
		wantCode(t, cli(t, nil, "release", "--url", url, "--key", key, "--token", strings.TrimSpace(r.stdout)), 0)
	})
}

// TestStatusNeverChangesTTL: status --key --token must not touch the lock.
// A 10 min lock keeps its TTL, read on the Redis server itself.
func TestStatusNeverChangesTTL(t *testing.T) {
	if !compiledIn("redis") {
		t.Skip("redis backend not compiled in")
	}
	t.Parallel()
	srv := distlocktest.StartRedis(t, distlocktest.RedisOptions{})
	url := "redis://" + srv.Addr
	const key = "status-ttl"
	r := cli(t, nil, "acquire", "--url", url, "--key", key, "--ttl", "10m")
	wantCode(t, r, 0)
	token := strings.TrimSpace(r.stdout)

	for _, args := range [][]string{
		{"status", "--url", url, "--key", key, "--token", token},
		{"status", "--url", url, "--key", key, "--token", token, "--json"},
		{"status", "--url", url, "--key", key, "--token", token, "--ttl", "30s"}, // the old flag: ignored
		{"status", "--url", url, "--key", key, "--token", "not-the-token", "--json"},
	} {
		r := cli(t, []string{"DISTLOCK_TOKEN=" + token}, args...)
		if slices.Contains(args, "not-the-token") {
			wantCode(t, r, exitNotHeld)
		} else {
			wantCode(t, r, exitOK)
		}
		if slices.Contains(args, "--json") {
			var out map[string]any
			if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out["reachable"] != true {
				t.Errorf("%v: %v\n%s", args, err, r)
			}
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rc.Close()
	ttl, err := rc.PTTL(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl < 9*time.Minute {
		t.Fatalf("after status the lock's TTL on the server is %v, want > 9m (it was taken for 10m)", ttl)
	}
	// And the lock is still the token's.
	wantCode(t, cli(t, nil, "release", "--url", url, "--key", key, "--token", token), 0)
}

// TestCheckInspectOnlyUnreachable: --inspect-only against a backend that
// does not answer inspected nothing: exit 6 and "ok": false.
func TestCheckInspectOnlyUnreachable(t *testing.T) {
	t.Parallel()
	var urls []string
	if compiledIn("redis") {
		urls = append(urls, "redis://127.0.0.1:1/0", "redlock://127.0.0.1:1,127.0.0.1:2")
	}
	if compiledIn("postgres") {
		urls = append(urls, "postgres://u@127.0.0.1:1/db?connect_timeout=2")
	}
	if len(urls) == 0 {
		t.Skip("no redis or postgres backend compiled in")
	}
	for _, u := range urls {
		r := cli(t, nil, "check", "--url", u, "--inspect-only", "--json")
		wantCode(t, r, exitUnavailable)
		var out struct {
			OK   *bool  `json:"ok"`
			Code string `json:"code"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.OK == nil || *out.OK || out.Code != "unavailable" {
			t.Errorf("%s: %v\n%s", u, err, r)
		}
		wantCode(t, cli(t, nil, "check", "--url", u, "--inspect-only"), exitUnavailable)
	}
}

// TestRunMinHold: two replicas run the same job with --min-hold 2s, their
// schedules 200 ms apart, each trying once: the job runs once. The lock is
// free again about 2 s after it was taken, not before.
func TestRunMinHold(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b liveBackend, url string, caps driver.Capabilities) {
		log := filepath.Join(t.TempDir(), "runs")
		argv, env := child("interval", log, "0s")
		args := append([]string{"run", "--url", url, "--key", "nightly", "--ttl", "5s", "--min-hold", "2s", "--"}, argv...)
		first := start(t, env, args...)
		time.Sleep(200 * time.Millisecond) // the second replica's schedule fires 200 ms later
		second := start(t, env, args...)
		r1, r2 := first.wait(t, time.Minute), second.wait(t, time.Minute)
		codes := []int{r1.code, r2.code}
		if !(codes[0] == 0 && codes[1] == exitNotAcquired) && !(codes[0] == exitNotAcquired && codes[1] == 0) {
			t.Fatalf("want one run (exit 0) and one refusal (exit %d):\n%s\n%s", exitNotAcquired, r1, r2)
		}
		runs := readLines(t, log)
		if len(runs) != 2 {
			t.Fatalf("the job ran %d times, want once: %q", len(runs)/2, runs)
		}
		ran := r1
		if r2.code == 0 {
			ran = r2
		}
		if ran.elapsed < 2*time.Second {
			t.Errorf("the replica that ran exited after %v, before --min-hold 2s was up:\n%s", ran.elapsed, ran)
		}

		// The next run (waiting for the lock) starts 2 s after the first
		// one's lock was taken at the earliest. Its CMD started a little
		// after the grant, so allow some of the 2 s for that.
		r := cli(t, env, append([]string{"run", "--url", url, "--key", "nightly", "--ttl", "5s", "--wait", "30s", "--"}, argv...)...)
		wantCode(t, r, 0)
		runs = readLines(t, log)
		if len(runs) != 4 {
			t.Fatalf("runs: %q", runs)
		}
		t0, t1 := startNanos(t, runs[0]), startNanos(t, runs[2])
		if gap := time.Duration(t1 - t0); gap < 1500*time.Millisecond {
			t.Errorf("the next run started %v after the first, want about 2s (--min-hold)", gap)
		}
	})
}

// startNanos reads the time of an "interval" child's "start NANOS PID" line.
func startNanos(t *testing.T, line string) int64 {
	t.Helper()
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "start" {
		t.Fatalf("not a start line: %q", line)
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestRunMinHoldInterrupted: a distlock stopped during --min-hold does not
// release the lock: it is left to expire by itself no sooner than
// --min-hold after the grant, even when that is longer than --ttl.
func TestRunMinHoldInterrupted(t *testing.T) {
	if !compiledIn("redis") {
		t.Skip("redis backend not compiled in")
	}
	t.Parallel()
	srv := distlocktest.StartRedis(t, distlocktest.RedisOptions{})
	url := "redis://" + srv.Addr
	argv, env := child("exit", "0")
	p := start(t, env, append([]string{"run", "--url", url, "--key", "held-on", "--ttl", "2s", "--min-hold", "1m", "-v", "--"}, argv...)...)
	testwait.For(t, 30*time.Second, "CMD to finish and the hold to begin", func() bool {
		return strings.Contains(p.stderr.String(), "keeping \"held-on\" until --min-hold")
	})
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := p.wait(t, 30*time.Second)
	wantCode(t, r, 128+int(syscall.SIGTERM))
	if !strings.Contains(r.stderr, "left to expire by itself") {
		t.Errorf("no word about the lock left behind:\n%s", r)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rc.Close()
	ttl, err := rc.PTTL(ctx, "held-on").Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl < 45*time.Second {
		t.Fatalf("the lock's TTL on the server is %v, want it to last until --min-hold 1m is up", ttl)
	}
	wantCode(t, cli(t, nil, "run", "--url", url, "--key", "held-on", "--", "true"), exitNotAcquired)
}
