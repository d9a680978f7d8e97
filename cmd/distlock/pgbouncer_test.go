//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/distlock/distlock/distlocktest"
	"github.com/distlock/distlock/internal/testwait"
)

// startPgBouncer starts PgBouncer in transaction pooling mode in front of
// pg and returns its port. The test is skipped when pgbouncer is not
// installed (apt-get install pgbouncer).
func startPgBouncer(t *testing.T, pg *distlocktest.PostgresServer) int {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		for _, p := range []string{"/usr/sbin/pgbouncer", "/usr/local/bin/pgbouncer"} {
			if fileExists(p) {
				bin = p
			}
		}
	}
	if bin == "" {
		t.Skip("pgbouncer not installed (apt-get install pgbouncer): the pooler warning is not tested")
	}
	// PgBouncer refuses to run as root: run it as an unprivileged user, in
	// a directory it can use.
	dir, err := os.MkdirTemp("", "distlock-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	port, err := distlocktest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ini := fmt.Sprintf(`[databases]
postgres = host=127.0.0.1 port=%d dbname=postgres user=postgres password=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = transaction
logfile = %s
`, pg.Port, distlocktest.PostgresPassword, port, filepath.Join(dir, "users.txt"), filepath.Join(dir, "pgbouncer.log"))
	for name, data := range map[string]string{"pgbouncer.ini": ini, "users.txt": `"postgres" ""` + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, filepath.Join(dir, "pgbouncer.ini"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if os.Geteuid() == 0 {
		for _, name := range []string{"postgres", "nobody"} {
			if u, err := user.Lookup(name); err == nil {
				uid, _ := strconv.Atoi(u.Uid)
				gid, _ := strconv.Atoi(u.Gid)
				cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
				break
			}
		}
	}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("pgbouncer: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	testwait.For(t, 30*time.Second, "pgbouncer to listen", func() bool {
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			t.Fatalf("pgbouncer exited: %s\n%s", out.String(), log)
		default:
		}
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return port
}

// TestCheckPostgresPooler: `distlock check` warns about PostgreSQL behind
// a transaction pooler, which breaks session advisory locks.
func TestCheckPostgresPooler(t *testing.T) {
	if !compiledIn("postgres") {
		t.Skip("postgres backend not compiled in")
	}
	pg := distlocktest.StartPostgres(t)
	if pg.External() {
		t.Skip("external PostgreSQL: pgbouncer setup not known")
	}
	port := startPgBouncer(t, pg)
	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)

	r := cli(t, nil, "check", "--url", url, "--inspect-only", "--json")
	wantCode(t, r, exitOK)
	var out checkOutput
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("%v\n%s", err, r)
	}
	if !strings.Contains(strings.Join(out.Warnings, "\n"), "connection pooler") {
		t.Fatalf("no pooler warning: %q", out.Warnings)
	}

	// Directly: no warning.
	r = cli(t, nil, "check", "--url", pg.URL, "--inspect-only", "--json")
	wantCode(t, r, exitOK)
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || len(out.Warnings) != 0 {
		t.Fatalf("direct connection: %v %q", err, out.Warnings)
	}

	// The full check: the backend refuses the pooler, and check says why.
	r = cli(t, nil, "check", "--url", url)
	if r.code == exitOK || !strings.Contains(r.stderr, "pooler") {
		t.Fatalf("check through a transaction pooler: %s", r)
	}
}
