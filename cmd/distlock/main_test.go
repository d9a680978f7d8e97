package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/driver"
)

// bin is the distlock binary under test, built once by TestMain.
var bin string

// childEnv selects the child mode of this test binary: the tests run it as
// CMD under `distlock run` (see childMain), which needs nothing from the
// shell.
const childEnv = "DISTLOCK_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(childMain(mode))
	}
	dir, err := os.MkdirTemp("", "distlock-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "distlock")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command(goTool, append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building distlock:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// childMain is CMD in the tests. Modes (arguments in DISTLOCK_TEST_ARGS,
// separated by '|'):
//
//	exit|N                 exit with status N
//	env|FILE               write DISTLOCK_KEY, _TOKEN and _FENCE to FILE
//	interval|FILE|DUR      append "start NANOS", sleep DUR, append "end NANOS"
//	hold|DIR[|ignoreterm]  write DIR/pid, DIR/ready (the token), wait for DIR/stop;
//	                       on SIGTERM append "term" to DIR/signals and exit
//	                       42 (or carry on, with ignoreterm); on SIGUSR1
//	                       append "usr1"
func childMain(mode string) int {
	args := strings.Split(os.Getenv("DISTLOCK_TEST_ARGS"), "|")
	switch mode {
	case "exit":
		n, _ := strconv.Atoi(args[0])
		return n
	case "env":
		data := fmt.Sprintf("%s\n%s\n%s\n", os.Getenv("DISTLOCK_KEY"), os.Getenv("DISTLOCK_TOKEN"), os.Getenv("DISTLOCK_FENCE"))
		if err := os.WriteFile(args[0], []byte(data), 0o644); err != nil {
			return 99
		}
		return 0
	case "interval":
		d, _ := time.ParseDuration(args[1])
		if appendLine(args[0], fmt.Sprintf("start %d %d", time.Now().UnixNano(), os.Getpid())) != nil {
			return 99
		}
		time.Sleep(d)
		if appendLine(args[0], fmt.Sprintf("end %d %d", time.Now().UnixNano(), os.Getpid())) != nil {
			return 99
		}
		return 0
	case "hold":
		dir := args[0]
		ignoreTerm := len(args) > 1 && args[1] == "ignoreterm"
		sigs := make(chan os.Signal, 4)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGUSR1)
		if err := os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			return 99
		}
		if err := os.WriteFile(filepath.Join(dir, "ready.tmp"), []byte(os.Getenv("DISTLOCK_TOKEN")), 0o644); err != nil {
			return 99
		}
		if err := os.Rename(filepath.Join(dir, "ready.tmp"), filepath.Join(dir, "ready")); err != nil {
			return 99
		}
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(2 * time.Minute) // never outlive a broken test
		for {
			select {
			case s := <-sigs:
				if s == syscall.SIGUSR1 {
					_ = appendLine(filepath.Join(dir, "signals"), "usr1")
					continue
				}
				_ = appendLine(filepath.Join(dir, "signals"), "term")
				if !ignoreTerm {
					return 42
				}
			case <-tick.C:
				if _, err := os.Stat(filepath.Join(dir, "stop")); err == nil {
					return 0
				}
			case <-deadline:
				return 98
			}
		}
	}
	return 97
}

func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(line + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// child returns the argv and environment that make this test binary run
// as CMD in the given mode.
func child(mode string, args ...string) (argv []string, env []string) {
	self, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return []string{self}, []string{childEnv + "=" + mode, "DISTLOCK_TEST_ARGS=" + strings.Join(args, "|")}
}

// result is a finished distlock process.
type result struct {
	code           int
	stdout, stderr string
	elapsed        time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("exit %d after %v\nstdout:\n%s\nstderr:\n%s", r.code, r.elapsed.Round(time.Millisecond), r.stdout, r.stderr)
}

// syncBuffer is a bytes.Buffer safe to read while the process writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is a running distlock process.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr syncBuffer
	start          time.Time
	done           chan struct{}
	res            result
}

// cleanEnv is the environment without DISTLOCK_ variables the user may
// have set.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DISTLOCK_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// start starts distlock with args; extra are added to its environment.
func start(t *testing.T, extra []string, args ...string) *proc {
	t.Helper()
	return startIn(t, "", extra, args...)
}

// startIn is start with stdin.
func startIn(t *testing.T, stdin string, extra []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Env = cleanEnv(extra...)
	p.cmd.Stdin = strings.NewReader(stdin)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.start = time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start distlock: %v", err)
	}
	go func() {
		err := p.cmd.Wait()
		p.res = result{code: p.cmd.ProcessState.ExitCode(), stdout: p.stdout.String(), stderr: p.stderr.String(), elapsed: time.Since(p.start)}
		if err != nil && p.res.code < 0 {
			p.res.code = -1
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait waits for p to exit, failing the test after timeout.
func (p *proc) wait(t *testing.T, timeout time.Duration) result {
	t.Helper()
	select {
	case <-p.done:
		return p.res
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("distlock %v did not exit within %v\n%s", p.cmd.Args[1:], timeout, p.res)
	}
	return result{}
}

// cli runs distlock to completion (at most a minute).
func cli(t *testing.T, extra []string, args ...string) result {
	t.Helper()
	return start(t, extra, args...).wait(t, time.Minute)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}

// liveBackend is a real server the CLI's processes share.
type liveBackend struct {
	name string
	// url starts the server (or finds it) for t and returns its URL.
	url func(t *testing.T) string
	// revoke, if set, takes every lock away from its holder as an
	// operator would; used where the backend has no cross-client release.
	revoke func(t *testing.T, url string)
}

func compiledIn(scheme string) bool { return slices.Contains(distlock.Schemes(), scheme) }

// liveBackends lists the real backends compiled into the CLI.
func liveBackends() []liveBackend {
	var bs []liveBackend
	if compiledIn("etcd") {
		bs = append(bs, liveBackend{name: "etcd", url: func(t *testing.T) string { return distlocktest.Etcd(t) }})
	}
	if compiledIn("redis") {
		bs = append(bs, liveBackend{name: "redis", url: func(t *testing.T) string { return distlocktest.Redis(t) }})
	}
	if compiledIn("postgres") {
		bs = append(bs, liveBackend{name: "postgres", url: func(t *testing.T) string { return distlocktest.Postgres(t) }, revoke: revokePostgres})
	}
	return bs
}

// forEachBackend runs fn as a subtest for every live backend.
func forEachBackend(t *testing.T, fn func(t *testing.T, b liveBackend, url string, caps driver.Capabilities)) {
	bs := liveBackends()
	if len(bs) == 0 {
		distlocktest.Unavailable(t, "a backend shared between processes", "none is compiled into cmd/distlock (backends.go)")
	}
	for _, b := range bs {
		t.Run(b.name, func(t *testing.T) {
			u := b.url(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			m, err := distlock.Open(ctx, u)
			if err != nil {
				t.Fatalf("open %s: %v", b.name, err)
			}
			caps := m.Capabilities()
			_ = m.Close()
			fn(t, b, u, caps)
		})
	}
}

func wantCode(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("want exit %d, got %s", code, r)
	}
}
