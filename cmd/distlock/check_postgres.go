package main

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"
)

func init() { registerWarner(postgresWarnings, "postgres", "postgresql") }

// postgresWarnings connects to the server the way the backend does and
// looks for what breaks session advisory locks: a pooler between client
// and server (transaction pooling hands each transaction to any server
// session), a standby (it does not share the primary's locks), and servers
// without idle_session_timeout (a stalled holder keeps its locks).
func postgresWarnings(ctx context.Context, u *url.URL) ([]string, error) {
	c := *u
	q := c.Query()
	for k := range q {
		if strings.HasPrefix(k, "distlock_") {
			q.Del(k)
		}
	}
	c.RawQuery = q.Encode()
	cfg, err := pgx.ParseConfig(c.String())
	if err != nil {
		return nil, scrubbed(err, u)
	}
	// The simple protocol: no prepared statements, which a transaction
	// pooler would mix up between clients.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, scrubbed(err, u)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var warns []string
	var pid uint32
	var standby bool
	var version int
	if err := conn.QueryRow(ctx, `SELECT pg_backend_pid(), pg_is_in_recovery(), current_setting('server_version_num')::int`).Scan(&pid, &standby, &version); err != nil {
		return nil, scrubbed(err, u)
	}
	if announced := conn.PgConn().PID(); announced != pid {
		warns = append(warns, fmt.Sprintf("postgres: a connection pooler sits between distlock and the server (the session's PID is %d, the server backend's %d). "+
			"Session advisory locks need a real session: in transaction or statement pooling mode (PgBouncer's default for many setups) locks are taken and "+
			"released on unrelated server sessions. Connect to PostgreSQL directly, or use a session-mode pool and distlock_allow_pooler=true.", announced, pid))
	}
	if standby {
		warns = append(warns, "postgres: the server is a standby (pg_is_in_recovery): advisory locks on it are not shared with the primary or other standbys; point the URL at the primary")
	}
	if version > 0 && version < 140000 {
		warns = append(warns, fmt.Sprintf("postgres: server version %d has no idle_session_timeout (PostgreSQL 14+): a stalled holder keeps its locks until its connection dies", version))
	}
	return warns, nil
}

// scrubbed hides the URL's password from err's message.
func scrubbed(err error, u *url.URL) error {
	msg := err.Error()
	if u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			msg = strings.ReplaceAll(msg, p, "xxxxx")
		}
	}
	return fmt.Errorf("%s", msg)
}
