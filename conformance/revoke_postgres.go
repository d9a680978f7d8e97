package conformance

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/distlock/distlock/backends/postgres"
	"github.com/distlock/distlock/driver"
)

// postgresModeRevoke takes a primitive's key away from all its holders as
// an operator would on the PostgreSQL server of a postgres:// URL: it
// terminates the server sessions holding the key's advisory lock
// (postgres.ModeLockID of the URL's distlock_namespace, kind and key) and
// deletes the key's rows of the primitives' table that they wrote (readers,
// the leader) and its waiting writers' marks, leaving a holder that took
// the key meanwhile alone. It succeeds when nobody holds the key.
func postgresModeRevoke(rawURL string) func(ctx context.Context, key string, kind driver.Kind) error {
	return func(ctx context.Context, key string, kind driver.Kind) error {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), revokeTimeout)
		defer cancel()
		dsn, q, err := postgresDSN(rawURL)
		if err != nil {
			return err
		}
		ns, table := q.Get("distlock_namespace"), q.Get("distlock_table")
		if table == "" {
			table = postgres.DefaultTable
		}
		id := postgres.ModeLockID(ns, kind, key)
		if id == 0 {
			return errors.New("conformance: unknown kind")
		}
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		// Terminate the holders, then wait (at most ten seconds) until
		// their sessions are gone: a waiter may take the key at once.
		const where = `locktype = 'advisory' AND granted AND objsubid = 1 AND classid::bigint = $1 AND objid::bigint = $2`
		hi, lo := int64(uint64(id)>>32), int64(uint32(id))
		var pids []int32
		if err := conn.QueryRow(ctx, "SELECT coalesce(array_agg(pid), '{}') FROM (SELECT pid, pg_terminate_backend(pid) FROM pg_locks WHERE "+where+") t",
			hi, lo).Scan(&pids); err != nil {
			return err
		}
		for i := 0; len(pids) > 0 && i < 1000; i++ {
			var left bool
			if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = ANY($1))", pids).Scan(&left); err != nil || !left {
				break
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(10 * time.Millisecond):
			}
		}
		_, err = conn.Exec(ctx, "DELETE FROM "+pgx.Identifier(strings.Split(table, ".")).Sanitize()+" WHERE id = $1 AND (pid = ANY($2) OR fence = 0)", id, pids)
		var pe interface{ SQLState() string }
		if errors.As(err, &pe) && pe.SQLState() == "42P01" {
			return nil // no table: nothing recorded
		}
		return err
	}
}

func init() {
	modeRevokers["postgres"] = postgresModeRevoke
	modeRevokers["postgresql"] = postgresModeRevoke
}
