package main

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// revokePostgres ends every session that holds an advisory lock, as an
// operator's pg_terminate_backend would: their holders lose their locks.
func revokePostgres(t *testing.T, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("revoke: connect: %v", err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND pid <> pg_backend_pid()`).Scan(&n); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if n == 0 {
		t.Fatalf("revoke: no session held an advisory lock")
	}
}
