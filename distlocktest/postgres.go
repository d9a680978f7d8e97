package distlocktest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// PostgresURLEnv names the environment variable holding the URL of a
// PostgreSQL server to test against instead of starting one.
const PostgresURLEnv = "DISTLOCK_TEST_POSTGRES_URL"

// PostgresPassword is the superuser password of a server started by
// StartPostgres (user "postgres", host authentication scram-sha-256).
const PostgresPassword = "distlock-test-pw"

// PostgresServer is a PostgreSQL server for tests: an external one named by
// DISTLOCK_TEST_POSTGRES_URL, or a throwaway cluster (initdb into a temp dir,
// postgres on a free 127.0.0.1 port) that the test can stop and restart.
type PostgresServer struct {
	// URL connects as the superuser to the database "postgres".
	URL string
	// Port is the server's TCP port.
	Port int

	external bool
	bin      string
	dir      string
	cred     *syscall.Credential

	mu  sync.Mutex
	cmd *exec.Cmd
	ch  chan struct{} // closed when cmd exits
}

// StartPostgres returns a running server, stopped again when the test ends.
// Without a server URL or PostgreSQL binaries the test fails under CI=true
// and is skipped elsewhere.
func StartPostgres(t testing.TB) *PostgresServer {
	t.Helper()
	if u := os.Getenv(PostgresURLEnv); u != "" {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatalf("%s: malformed URL", PostgresURLEnv)
		}
		port, _ := strconv.Atoi(pu.Port())
		return &PostgresServer{URL: u, Port: port, external: true}
	}
	bin := postgresBinDir()
	if bin == "" {
		Unavailable(t, "PostgreSQL", PostgresHowTo)
	}
	p, err := newPostgres(bin)
	if err != nil {
		t.Fatalf("starting postgres: %v", err)
	}
	t.Cleanup(p.cleanup)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := p.startOnFreePort(ctx); err != nil {
		t.Fatalf("starting postgres: %v", err)
	}
	return p
}

// NewPostgres starts a throwaway server outside a test (benchmarks, tools).
// The caller must call Close.
func NewPostgres(ctx context.Context) (*PostgresServer, error) {
	bin := postgresBinDir()
	if bin == "" {
		return nil, errors.New("PostgreSQL binaries not found (apt-get install postgresql)")
	}
	p, err := newPostgres(bin)
	if err != nil {
		return nil, err
	}
	if err := p.startOnFreePort(ctx); err != nil {
		p.cleanup()
		return nil, err
	}
	return p, nil
}

// Close stops the server and removes its files.
func (p *PostgresServer) Close() { p.cleanup() }

// External reports whether the server came from DISTLOCK_TEST_POSTGRES_URL
// (it cannot be stopped then).
func (p *PostgresServer) External() bool { return p.external }

// PostgresAvailable reports whether a server can be had: a URL in
// DISTLOCK_TEST_POSTGRES_URL or initdb and postgres binaries.
func PostgresAvailable() bool {
	return os.Getenv(PostgresURLEnv) != "" || postgresBinDir() != ""
}

// PostgresHowTo says how to make PostgreSQL available to the tests.
const PostgresHowTo = "install the Debian package postgresql (apt-get install postgresql) or set " + PostgresURLEnv

// postgresBinDir finds initdb and postgres: on PATH, else the newest
// /usr/lib/postgresql/*/bin.
func postgresBinDir() string {
	if path, err := exec.LookPath("initdb"); err == nil {
		dir := filepath.Dir(path)
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
			return dir
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
				return d
			}
		}
	}
	return ""
}

func newPostgres(bin string) (*PostgresServer, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "distlock-pg-")
	if err != nil {
		return nil, err
	}
	p := &PostgresServer{bin: bin, dir: dir, Port: port}
	p.setPort(port)
	// initdb and postgres refuse to run as root: run them as the
	// postgres system user (or nobody) instead.
	if os.Geteuid() == 0 {
		cred, err := unprivileged()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		p.cred = cred
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	pwfile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwfile, []byte(PostgresPassword+"\n"), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if p.cred != nil {
		_ = os.Chown(pwfile, int(p.cred.Uid), int(p.cred.Gid))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"),
		"-U", "postgres", "--pwfile", pwfile, "--auth-local=trust", "--auth-host=scram-sha-256",
		"--no-sync", "-E", "UTF8", "--locale=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	return p, nil
}

func unprivileged() (*syscall.Credential, error) {
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New("running as root and no unprivileged user (postgres, nobody) to run postgres as")
}

func (p *PostgresServer) setPort(port int) {
	p.Port = port
	p.URL = fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/postgres?sslmode=disable", PostgresPassword, port)
}

// startOnFreePort starts the server the first time: when its port was
// taken since FreePort chose it (other processes share the machine), it
// tries another one, three times at most.
func (p *PostgresServer) startOnFreePort(ctx context.Context) error {
	var err error
	for range 3 {
		if err = p.Start(ctx); err == nil || !strings.Contains(err.Error(), "could not create") {
			return err
		}
		port, perr := FreePort()
		if perr != nil {
			return errors.Join(err, perr)
		}
		p.setPort(port)
	}
	return err
}

// Start starts the server (again) on its port and waits until it accepts
// connections.
func (p *PostgresServer) Start(ctx context.Context) error {
	if p.external {
		return errors.New("external server (" + PostgresURLEnv + ") cannot be started")
	}
	p.mu.Lock()
	if p.cmd != nil {
		p.mu.Unlock()
		return errors.New("postgres already running")
	}
	logf, err := os.OpenFile(filepath.Join(p.dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.mu.Unlock()
		return err
	}
	cmd := exec.Command(filepath.Join(p.bin, "postgres"), "-D", filepath.Join(p.dir, "data"),
		"-p", strconv.Itoa(p.Port), "-h", "127.0.0.1", "-k", p.dir,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=300", "-c", "shared_buffers=32MB", "-c", "max_locks_per_transaction=256")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred, Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	if err := cmd.Start(); err != nil {
		logf.Close()
		p.mu.Unlock()
		return fmt.Errorf("postgres: %w", err)
	}
	ch := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(ch) }()
	p.cmd, p.ch = cmd, ch
	p.mu.Unlock()

	for i := 0; ; i++ { // bounded by ctx
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := pgconn.Connect(cctx, p.URL)
		cancel()
		if err == nil {
			c.Close(ctx)
			return nil
		}
		select {
		case <-ch:
			log, _ := os.ReadFile(filepath.Join(p.dir, "postgres.log"))
			p.mu.Lock()
			p.cmd = nil
			p.mu.Unlock()
			return fmt.Errorf("postgres exited: %s", tail(string(log), 2000))
		case <-ctx.Done():
			return fmt.Errorf("postgres did not come up: %w (last: %v)", ctx.Err(), err)
		case <-time.After(time.Duration(min(i+1, 10)) * 20 * time.Millisecond):
		}
	}
}

// Stop shuts the server down (fast shutdown: sessions are terminated) and
// waits until it has exited. Its data stays for Start.
func (p *PostgresServer) Stop(ctx context.Context) error {
	if p.external {
		return errors.New("external server (" + PostgresURLEnv + ") cannot be stopped")
	}
	p.mu.Lock()
	cmd, ch := p.cmd, p.ch
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-ch:
		return nil
	case <-time.After(20 * time.Second):
	case <-ctx.Done():
	}
	_ = cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-ch:
		return nil
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-ch
		return errors.New("postgres did not stop; killed")
	}
}

func (p *PostgresServer) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = p.Stop(ctx)
	if p.dir != "" {
		os.RemoveAll(p.dir)
	}
}

// Log returns the tail of the server log, for failure messages.
func (p *PostgresServer) Log() string {
	if p.dir == "" {
		return ""
	}
	b, _ := os.ReadFile(filepath.Join(p.dir, "postgres.log"))
	return tail(string(b), 4000)
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}

// PostgresContainer runs a PostgreSQL server in a container for t, with
// testcontainers-go, and returns it once it accepts connections; its URL
// connects as the superuser postgres with PostgresPassword to the database
// postgres. The image is image if not "", else the one in
// DISTLOCK_TEST_POSTGRES_IMAGE, else DefaultPostgresImage; it must take
// the official image's POSTGRES_PASSWORD variable and "postgres -c …"
// command. The test is skipped (failed under CI=true) when no Docker
// engine answers.
func PostgresContainer(t testing.TB, image string) *Container {
	t.Helper()
	return startContainer(t, containerSpec{
		what:   "PostgreSQL",
		image:  imageFor(image, PostgresImageEnv, DefaultPostgresImage),
		envVar: PostgresImageEnv,
		port:   "5432/tcp",
		env:    map[string]string{"POSTGRES_PASSWORD": PostgresPassword},
		cmd: func(string) []string {
			return []string{"postgres", "-c", "fsync=off", "-c", "synchronous_commit=off",
				"-c", "full_page_writes=off", "-c", "max_connections=300"}
		},
		url: func(addr string) string {
			return fmt.Sprintf("postgres://postgres:%s@%s/postgres?sslmode=disable", PostgresPassword, addr)
		},
		ready: func(ctx context.Context, addr string) error {
			c, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://postgres:%s@%s/postgres?sslmode=disable", PostgresPassword, addr))
			if err != nil {
				return err
			}
			return c.Close(ctx)
		},
	})
}
