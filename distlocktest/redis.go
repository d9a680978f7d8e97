package distlocktest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
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

// RedisURLEnv names the environment variable that points the tests at an
// existing Redis server (redis://[:password@]host:port[/db]) instead of
// starting one. Tests that must stop, restart or kill servers, or need
// several masters, still start their own.
const RedisURLEnv = "DISTLOCK_TEST_REDIS_URL"

// RedisHowTo says how to get a redis-server for the tests.
const RedisHowTo = "install redis-server (Debian/Ubuntu: apt-get install redis-server) or set " + RedisURLEnv

// RedisServer is a redis-server process started for a test, listening on a fixed
// 127.0.0.1 port in a temp dir, with persistence off. Stop, Start and Kill
// are safe for concurrent use.
type RedisServer struct {
	// Addr is host:port.
	Addr string
	// Password is the server's requirepass, or "".
	Password string

	bin  string
	dir  string
	port int
	args []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	exit chan struct{} // closed when cmd has exited
}

// RedisOptions tunes StartRedis.
type RedisOptions struct {
	// Password sets requirepass.
	Password string
	// Args are extra redis-server arguments, such as "--maxmemory", "1mb".
	Args []string
}

// RedisBinary returns the path of redis-server, or "" if there is none.
func RedisBinary() string {
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/bin/redis-server", "/usr/local/bin/redis-server"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// RedisURL is Redis, under the name this kit had inside the repository.
//
// Deprecated: use Redis.
func RedisURL(t testing.TB) string {
	t.Helper()
	return Redis(t)
}

// StartRedis starts a redis-server on a free loopback port and removes it
// when the test ends. Without a redis-server binary it fails the test
// under CI=true and skips it elsewhere.
func StartRedis(t testing.TB, opts RedisOptions) *RedisServer {
	t.Helper()
	if RedisBinary() == "" {
		Unavailable(t, "redis-server", RedisHowTo)
	}
	r, err := NewRedis(opts)
	if err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// ErrNoRedis is returned by NewRedis when no redis-server is installed.
var ErrNoRedis = errors.New("redis-server not installed: " + RedisHowTo)

// NewRedis starts a redis-server on a free loopback port, in a temp dir,
// outside any test (TestMain, benchmarks' setup). The caller must Close it.
func NewRedis(opts RedisOptions) (*RedisServer, error) {
	bin := RedisBinary()
	if bin == "" {
		return nil, ErrNoRedis
	}
	dir, err := os.MkdirTemp("", "distlock-redis-")
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 3 { // a free port can be taken by someone else before we bind it
		port, err := FreePort()
		if err != nil {
			lastErr = err
			continue
		}
		r := &RedisServer{
			Addr:     net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			Password: opts.Password,
			bin:      bin,
			dir:      dir,
			port:     port,
		}
		r.args = []string{
			"--port", strconv.Itoa(port),
			"--bind", "127.0.0.1",
			"--dir", r.dir,
			"--save", "",
			"--appendonly", "no",
			"--protected-mode", "no",
			"--daemonize", "no",
			"--loglevel", "warning",
			"--logfile", filepath.Join(r.dir, "redis.log"),
		}
		if opts.Password != "" {
			r.args = append(r.args, "--requirepass", opts.Password)
		}
		r.args = append(r.args, opts.Args...)
		if lastErr = r.Start(context.Background()); lastErr == nil {
			return r, nil
		}
	}
	_ = os.RemoveAll(dir)
	return nil, lastErr
}

// Close kills the server and removes its directory.
func (r *RedisServer) Close() error {
	err := r.Kill()
	_ = os.RemoveAll(r.dir)
	return err
}

// Start starts the server (again) on its port and waits until it answers
// PING. It is a no-op while the server runs.
func (r *RedisServer) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var lastErr error
	for ctx.Err() == nil { // the port may linger briefly after a restart
		cmd := exec.Command(r.bin, r.args...)
		cmd.Dir = r.dir
		dieWithParent(cmd)
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("redis-server: %w", err)
		}
		exit := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exit) }()
		if lastErr = r.waitReady(ctx, exit); lastErr == nil {
			r.cmd, r.exit = cmd, exit
			return nil
		}
		_ = cmd.Process.Kill()
		<-exit
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("redis-server on %s did not come up: %w (log: %s)", r.Addr, lastErr, r.logTail())
}

// waitReady polls PING until the server answers, it exits, or ctx ends.
func (r *RedisServer) waitReady(ctx context.Context, exit <-chan struct{}) error {
	for {
		err := r.ping(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-exit:
			return fmt.Errorf("exited: %w", err)
		case <-ctx.Done():
			return err
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// ping speaks just enough RESP to ask the server for PONG.
func (r *RedisServer) ping(ctx context.Context) error { return redisPing(ctx, r.Addr, r.Password) }

// redisPing asks the Redis server at addr for PONG, speaking just enough
// RESP (no client library).
func redisPing(ctx context.Context, addr, password string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	cmd := "*1\r\n$4\r\nPING\r\n"
	if password != "" {
		cmd = fmt.Sprintf("*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n", len(password), password) + cmd
	}
	if _, err := c.Write([]byte(cmd)); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	if password != "" {
		if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
			return fmt.Errorf("auth: %q %v", line, err)
		}
	}
	line, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("unexpected reply %q", strings.TrimSpace(line))
	}
	return nil
}

// Stop shuts the server down (SIGTERM, then SIGKILL after 5s) and waits for
// it to exit. Locks are lost: persistence is off. Stop is a no-op when the
// server is not running.
func (r *RedisServer) Stop() error { return r.halt(syscall.SIGTERM) }

// Kill kills the server at once (SIGKILL), as a crash would.
func (r *RedisServer) Kill() error { return r.halt(syscall.SIGKILL) }

func (r *RedisServer) halt(sig syscall.Signal) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return nil
	}
	_ = r.cmd.Process.Signal(sig)
	select {
	case <-r.exit:
	case <-time.After(5 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.exit
	}
	r.cmd, r.exit = nil, nil
	return nil
}

// Running reports whether the server process is up.
func (r *RedisServer) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cmd != nil
}

// URL returns redis://[:password@]addr.
func (r *RedisServer) URL() string {
	if r.Password != "" {
		return "redis://:" + r.Password + "@" + r.Addr
	}
	return "redis://" + r.Addr
}

func (r *RedisServer) logTail() string {
	b, err := os.ReadFile(filepath.Join(r.dir, "redis.log"))
	if err != nil {
		return "no log"
	}
	s := strings.TrimSpace(string(b))
	if len(s) > 500 {
		s = s[len(s)-500:]
	}
	return s
}

// StartRedisN starts n independent redis-server masters (for Redlock).
func StartRedisN(t testing.TB, n int, opts RedisOptions) []*RedisServer {
	t.Helper()
	rs := make([]*RedisServer, n)
	for i := range rs {
		rs[i] = StartRedis(t, opts)
	}
	return rs
}

// RedisContainer runs a Redis server in a container for t, with
// testcontainers-go, persistence off, and returns it once it answers PING.
// The image is image if not "", else the one in DISTLOCK_TEST_REDIS_IMAGE,
// else DefaultRedisImage; it is started with redis-server's options as its
// command (as the official image takes them), so an image whose entrypoint
// is redis-server works too (BuildImage("/usr/bin/redis-server") makes
// one). The test is skipped (failed under CI=true) when no Docker engine
// answers.
func RedisContainer(t testing.TB, image string) *Container {
	t.Helper()
	return startContainer(t, containerSpec{
		what:   "Redis",
		image:  imageFor(image, RedisImageEnv, DefaultRedisImage),
		envVar: RedisImageEnv,
		port:   "6379/tcp",
		cmd: func(string) []string {
			return []string{"--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no",
				"--save", "", "--appendonly", "no", "--loglevel", "warning"}
		},
		url:   func(addr string) string { return "redis://" + addr },
		ready: func(ctx context.Context, addr string) error { return redisPing(ctx, addr, "") },
	})
}
