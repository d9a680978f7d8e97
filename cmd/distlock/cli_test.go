package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/distlock/distlock/driver"
	"github.com/distlock/distlock/internal/testwait"
)

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	argv, _ := child("exit", "0")
	cases := []struct {
		name string
		env  []string
		args []string
		want string // in stderr
	}{
		{"no command", nil, nil, "Usage:"},
		{"unknown command", nil, []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown flag", nil, []string{"run", "--bogus", "--", "true"}, "unknown flag: --bogus"},
		{"bad duration", nil, []string{"run", "--url", "memory://", "--key", "k", "--ttl", "soon", "--", "true"}, `--ttl: invalid duration "soon": use e.g. 500ms, 30s`},
		{"duration without unit", nil, []string{"acquire", "--url", "memory://", "--key", "k", "--ttl", "10"}, `--ttl: missing unit in duration "10": use e.g. 10s`},
		{"duration without unit, = form", nil, []string{"run", "--url", "memory://", "--key", "k", "--wait=1.5", "--", "true"}, `--wait: missing unit in duration "1.5": use e.g. 1.5s`},
		{"long flag with one dash", nil, []string{"acquire", "--url", "memory://", "--key", "k", "-ttl", "10s"}, "unknown flag -ttl: long flags take two dashes: --ttl"},
		{"bad number", nil, []string{"demo", "--workers", "many"}, `--workers: invalid value "many": not a number`},
		{"flag without value", nil, []string{"release", "--url", "memory://", "--key"}, "flag needs an argument: --key"},
		{"negative min-hold", nil, []string{"run", "--url", "memory://", "--key", "k", "--min-hold", "-1s", "--", "true"}, "--min-hold must not be negative"},
		{"negative ttl", nil, []string{"acquire", "--url", "memory://", "--key", "k", "--ttl", "-1s"}, "--ttl must be positive"},
		{"no key", nil, []string{"run", "--url", "memory://", "--", "true"}, "--key is required"},
		{"no command to run", nil, []string{"run", "--url", "memory://", "--key", "k"}, "no command given"},
		{"no url", nil, append([]string{"run", "--key", "k", "--"}, argv...), "no backend URL: pass --url or set DISTLOCK_URL"},
		{"malformed url", nil, []string{"release", "--url", "::nope", "--key", "k", "--token", "t"}, "malformed backend URL"},
		{"unknown scheme", nil, []string{"acquire", "--url", "nosuch://h/x", "--key", "k"}, `unknown URL scheme "nosuch"`},
		{"unknown scheme from env", []string{"DISTLOCK_URL=nosuch://h"}, []string{"status"}, `unknown URL scheme "nosuch"`},
		{"no token", nil, []string{"release", "--url", "memory://", "--key", "k"}, "no token"},
		{"stray argument", nil, []string{"status", "--url", "memory://", "extra"}, `unexpected argument "extra"`},
		{"demo workers", nil, []string{"demo", "--workers", "0"}, "--workers must be in"},
		{"process-local acquire", nil, []string{"acquire", "--url", "memory://", "--key", "k"}, "use 'distlock run'"},
		{"conflict code range", nil, []string{"run", "--url", "memory://", "--key", "k", "--conflict-exit-code", "300", "--", "true"}, "--conflict-exit-code must be in 0..255"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := cli(t, c.env, c.args...)
			wantCode(t, r, exitUsage)
			if !strings.Contains(r.stderr, c.want) {
				t.Fatalf("stderr lacks %q:\n%s", c.want, r)
			}
			// Flags are named as they are typed: --ttl, never -ttl.
			if strings.Contains(r.stderr, "flag -") && !strings.Contains(r.stderr, "two dashes") {
				t.Errorf("a flag named with one dash:\n%s", r)
			}
		})
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	t.Parallel()
	const secret = "hunter2xyz"
	urls := []string{
		"nosuch://admin:" + secret + "@127.0.0.1:1/",
		"memory://x?password=" + secret,
	}
	if compiledIn("postgres") {
		urls = append(urls, "postgres://admin:"+secret+"@127.0.0.1:1/db?connect_timeout=2")
	}
	if compiledIn("redis") {
		urls = append(urls, "redis://admin:"+secret+"@127.0.0.1:1/0")
	}
	for _, u := range urls {
		for _, args := range [][]string{
			{"status", "--url", u},
			{"status", "--url", u, "--json"},
			{"release", "--url", u, "--key", "k", "--token", "t", "--json"},
			{"run", "--url", u, "--key", "k", "-v", "--", "true"},
			{"check", "--url", u, "--json"},
		} {
			t.Run("", func(t *testing.T) {
				t.Parallel()
				r := cli(t, nil, args...)
				if r.code == exitOK && strings.Contains(u, "127.0.0.1:1/") {
					t.Errorf("%v succeeded against a dead server:\n%s", redact(u), r)
				}
				if strings.Contains(r.stdout+r.stderr, secret) {
					t.Errorf("%v printed the password:\n%s", args, r)
				}
			})
		}
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, c := range commands {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := cli(t, nil, c.name, "--help")
			wantCode(t, r, exitOK)
			for _, want := range []string{"Usage: distlock " + c.name, "Examples:", "  distlock " + c.name, "--url"} {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("%s --help lacks %q:\n%s", c.name, want, r.stdout)
				}
			}
		})
	}
	r := cli(t, nil, "--help")
	wantCode(t, r, exitOK)
	for _, c := range commands {
		if !strings.Contains(r.stdout, c.name) {
			t.Errorf("--help does not list %s", c.name)
		}
	}
	r = cli(t, nil, "help", "exit-codes")
	wantCode(t, r, exitOK)
	if !strings.Contains(r.stdout, "lock not acquired") {
		t.Errorf("help exit-codes:\n%s", r.stdout)
	}
}

func TestRunExitStatusAndEnv(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, code := range []int{0, 1, 7, 42} {
		argv, env := child("exit", strconv.Itoa(code))
		r := cli(t, env, append([]string{"run", "--url", "memory://", "--key", "k"}, argv...)...)
		wantCode(t, r, code)
	}

	file := filepath.Join(dir, "env")
	argv, env := child("env", file)
	r := cli(t, env, append([]string{"run", "--url", "memory://", "--key", "job:1", "--token", "tok-123", "--"}, argv...)...)
	wantCode(t, r, 0)
	lines := readLines(t, file)
	if len(lines) != 3 || lines[0] != "job:1" || lines[1] != "tok-123" {
		t.Fatalf("CMD saw DISTLOCK_KEY, _TOKEN, _FENCE = %q", lines)
	}
	if f, err := strconv.ParseUint(lines[2], 10, 64); err != nil || f == 0 {
		t.Fatalf("DISTLOCK_FENCE = %q, want a positive fence (memory has fencing)", lines[2])
	}

	r = cli(t, nil, "run", "--url", "memory://", "--key", "k", "--", "distlock-no-such-command")
	wantCode(t, r, 127)
	// As a shell: 127 for a path that does not exist (./missing), 126 for
	// one that exists but cannot be executed.
	if err := os.WriteFile(filepath.Join(dir, "not-executable"), []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "a-directory"), 0o755); err != nil {
		t.Fatal(err)
	}
	for cmd, want := range map[string]int{"./missing": 127, "./no/such/dir/cmd": 127, "./not-executable": 126, "./a-directory": 126} {
		c := exec.Command(bin, "run", "--url", "memory://", "--key", "k", "--", cmd)
		c.Dir, c.Env = dir, cleanEnv()
		out, err := c.CombinedOutput()
		if code := c.ProcessState.ExitCode(); code != want {
			t.Errorf("run -- %s: exit %d (%v), want %d:\n%s", cmd, code, err, want, out)
		}
	}

	// A CMD killed by a signal: 128+N, as a shell reports it.
	argv, env = child("hold", dir)
	p := start(t, env, append([]string{"run", "--url", "memory://", "--key", "k", "--"}, argv...)...)
	testwait.For(t, 30*time.Second, "CMD to start", func() bool { return fileExists(filepath.Join(dir, "ready")) })
	data, err := os.ReadFile(filepath.Join(dir, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(string(data))
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wantCode(t, p.wait(t, 30*time.Second), 128+int(syscall.SIGKILL))
}

func TestRunForwardsSignals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	argv, env := child("hold", dir)
	p := start(t, env, append([]string{"run", "--url", "memory://", "--key", "k", "--"}, argv...)...)
	testwait.For(t, 30*time.Second, "CMD to start", func() bool { return fileExists(filepath.Join(dir, "ready")) })
	sigs := filepath.Join(dir, "signals")
	if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 10*time.Second, "CMD to get SIGUSR1", func() bool { return len(readLines(t, sigs)) == 1 })
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := p.wait(t, 30*time.Second)
	wantCode(t, r, 42) // CMD's own status after its SIGTERM handler
	if got := strings.Join(readLines(t, sigs), ","); got != "usr1,term" {
		t.Fatalf("CMD got signals %q, want usr1,term", got)
	}
}

func TestRunInterruptedWhileWaiting(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b liveBackend, url string, caps driver.Capabilities) {
		dir := t.TempDir()
		argv, env := child("hold", dir)
		holder := start(t, env, append([]string{"run", "--url", url, "--key", "busy", "--"}, argv...)...)
		testwait.For(t, 30*time.Second, "the holder's CMD", func() bool { return fileExists(filepath.Join(dir, "ready")) })
		marker := filepath.Join(dir, "waiter-ran")
		argv2, env2 := child("env", marker)
		waiter := start(t, env2, append([]string{"run", "--url", url, "--key", "busy", "--wait", "1m", "-v", "--"}, argv2...)...)
		testwait.For(t, 30*time.Second, "the waiter to wait", func() bool { return strings.Contains(waiter.stderr.String(), "waiting up to") })
		if err := waiter.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		r := waiter.wait(t, 30*time.Second)
		wantCode(t, r, 128+int(syscall.SIGINT))
		if fileExists(marker) {
			t.Fatal("the interrupted waiter ran CMD")
		}
		if err := os.WriteFile(filepath.Join(dir, "stop"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		wantCode(t, holder.wait(t, 30*time.Second), 0)
	})
}

func TestRunNeverOverlaps(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b liveBackend, url string, caps driver.Capabilities) {
		const n = 3
		log := filepath.Join(t.TempDir(), "intervals")
		argv, env := child("interval", log, "150ms")
		ps := make([]*proc, n)
		for i := range ps {
			ps[i] = start(t, env, append([]string{"run", "--url", url, "--key", "shared-job", "--ttl", "5s", "--wait", "1m", "--"}, argv...)...)
		}
		for _, p := range ps {
			wantCode(t, p.wait(t, 2*time.Minute), 0)
		}
		lines := readLines(t, log)
		if len(lines) != 2*n {
			t.Fatalf("want %d lines, got %q", 2*n, lines)
		}
		var last int64
		for i, line := range lines {
			f := strings.Fields(line)
			want := "start"
			if i%2 == 1 {
				want = "end"
			}
			if f[0] != want {
				t.Fatalf("intervals interleave: line %d is %q, want %s:\n%s", i, line, want, strings.Join(lines, "\n"))
			}
			ts, _ := strconv.ParseInt(f[1], 10, 64)
			if ts < last {
				t.Fatalf("intervals overlap in time at line %d:\n%s", i, strings.Join(lines, "\n"))
			}
			last = ts
			if i%2 == 1 && f[2] != strings.Fields(lines[i-1])[2] {
				t.Fatalf("interval %d started and ended in different processes:\n%s", i/2, strings.Join(lines, "\n"))
			}
		}
	})
}

func TestRunNotAcquired(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b liveBackend, url string, caps driver.Capabilities) {
		dir := t.TempDir()
		argv, env := child("hold", dir)
		holder := start(t, env, append([]string{"run", "--url", url, "--key", "busy", "--ttl", "5s", "--"}, argv...)...)
		testwait.For(t, 30*time.Second, "the holder's CMD", func() bool { return fileExists(filepath.Join(dir, "ready")) })

		marker := filepath.Join(dir, "other-ran")
		argv2, env2 := child("env", marker)
		r := cli(t, env2, append([]string{"run", "--url", url, "--key", "busy", "--"}, argv2...)...)
		wantCode(t, r, exitNotAcquired)
		if !strings.Contains(r.stderr, "held by another holder") {
			t.Errorf("message: %s", r)
		}
		r = cli(t, env2, append([]string{"run", "--url", url, "--key", "busy", "--conflict-exit-code", "0", "--"}, argv2...)...)
		wantCode(t, r, 0)
		r = cli(t, env2, append([]string{"run", "--url", url, "--key", "busy", "--wait", "400ms", "--"}, argv2...)...)
		wantCode(t, r, exitNotAcquired)
		if r.elapsed < 400*time.Millisecond {
			t.Errorf("--wait 400ms gave up after %v", r.elapsed)
		}
		if fileExists(marker) {
			t.Fatal("CMD ran although the lock was held elsewhere")
		}

		if err := os.WriteFile(filepath.Join(dir, "stop"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		wantCode(t, holder.wait(t, 30*time.Second), 0)
		// Released: the next one gets it at once.
		r = cli(t, env2, append([]string{"run", "--url", url, "--key", "busy", "--"}, argv2...)...)
		wantCode(t, r, 0)
	})
}

func TestRunLockLost(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b liveBackend, url string, caps driver.Capabilities) {
		if !caps.CrossInstanceRelease && b.revoke == nil {
			t.Skipf("%s: no way to take a lock away from its holder", b.name)
		}
		for _, ignoreTerm := range []bool{false, true} {
			name := "CMD stops on SIGTERM"
			if ignoreTerm {
				name = "CMD ignores SIGTERM"
			}
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				args := []string{dir}
				if ignoreTerm {
					args = append(args, "ignoreterm")
				}
				argv, env := child("hold", args...)
				key := "lost-" + strconv.FormatBool(ignoreTerm)
				p := start(t, env, append([]string{"run", "--url", url, "--key", key, "--ttl", "3s", "--grace", "500ms", "--"}, argv...)...)
				ready := filepath.Join(dir, "ready")
				testwait.For(t, 30*time.Second, "CMD to start", func() bool { return fileExists(ready) })
				token, err := os.ReadFile(ready)
				if err != nil {
					t.Fatal(err)
				}
				if caps.CrossInstanceRelease {
					wantCode(t, cli(t, nil, "release", "--url", url, "--key", key, "--token", string(token)), 0)
				} else {
					b.revoke(t, url)
				}
				r := p.wait(t, 30*time.Second)
				wantCode(t, r, exitLockLost)
				// The loss is reported once, in one line naming the key
				// once, without the library's nested "distlock: …" wording.
				if n := strings.Count(strings.ReplaceAll(r.stderr, strconv.Quote(key), "KEY"), "lost"); n != 1 {
					t.Errorf("the loss is reported %d times, want once: %s", n, r)
				}
				for _, line := range strings.Split(r.stderr, "\n") {
					if strings.Contains(line, "lost") && (strings.Count(line, strconv.Quote(key)) != 1 || strings.Contains(line, "distlock: ")) {
						t.Errorf("the loss message repeats itself: %q", line)
					}
				}
				if got := readLines(t, filepath.Join(dir, "signals")); len(got) == 0 || got[0] != "term" {
					t.Errorf("CMD did not get SIGTERM (signals %q)", got)
				}
				if ignoreTerm && !strings.Contains(r.stderr, "SIGKILL") {
					t.Errorf("no SIGKILL reported: %s", r)
				}
			})
		}
	})
}

func TestScriptCommands(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b liveBackend, url string, caps driver.Capabilities) {
		u := []string{"--url", url}
		if !caps.CrossInstanceRelease {
			r := cli(t, nil, append([]string{"acquire", "--key", "s", "--ttl", "10s"}, u...)...)
			wantCode(t, r, exitUsage)
			if !strings.Contains(r.stderr, "distlock run") {
				t.Errorf("no advice to use run: %s", r)
			}
			return
		}
		r := cli(t, nil, append([]string{"acquire", "--key", "s", "--ttl", "10s"}, u...)...)
		wantCode(t, r, 0)
		token := strings.TrimSpace(r.stdout)
		if token == "" || strings.Contains(token, "\n") {
			t.Fatalf("acquire printed %q, want one token", r.stdout)
		}
		wantCode(t, cli(t, nil, append([]string{"acquire", "--key", "s"}, u...)...), exitNotAcquired)
		wantCode(t, cli(t, nil, append([]string{"status", "--key", "s", "--token", token}, u...)...), 0)
		wantCode(t, cli(t, []string{"DISTLOCK_TOKEN=" + token}, append([]string{"extend", "--key", "s", "--ttl", "20s"}, u...)...), 0)
		wantCode(t, cli(t, nil, append([]string{"status", "--key", "s", "--token", "not-the-token"}, u...)...), exitNotHeld)

		// --token - reads stdin.
		r = startIn(t, token+"\n", nil, append([]string{"release", "--key", "s", "--token", "-"}, u...)...).wait(t, time.Minute)
		wantCode(t, r, 0)
		wantCode(t, cli(t, nil, append([]string{"release", "--key", "s", "--token", token}, u...)...), exitNotHeld)
		wantCode(t, cli(t, nil, append([]string{"extend", "--key", "s", "--token", token}, u...)...), exitNotHeld)

		// --env and --json.
		r = cli(t, []string{"DISTLOCK_URL=" + url}, "acquire", "--key", "s2", "--env")
		wantCode(t, r, 0)
		vars := map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			k, v, _ := strings.Cut(strings.TrimPrefix(line, "export "), "=")
			vars[k] = v
		}
		if vars["DISTLOCK_KEY"] != "s2" || vars["DISTLOCK_TOKEN"] == "" || vars["DISTLOCK_FENCE"] == "" {
			t.Fatalf("--env printed %q", r.stdout)
		}
		r = cli(t, nil, append([]string{"acquire", "--key", "s2", "--json"}, u...)...)
		wantCode(t, r, exitNotAcquired)
		var out map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out["code"] != "not_acquired" {
			t.Fatalf("--json on failure: %v %s", err, r)
		}
		r = cli(t, nil, append([]string{"status", "--json"}, u...)...)
		wantCode(t, r, 0)
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out["reachable"] != true || out["backend"] != caps.Name {
			t.Fatalf("status --json: %v %s", err, r)
		}
	})
}
