package postgres_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestZZRaw(t *testing.T) {
	h := newHarness(t, server(t), "")
	ctx := ctxT(t, 60*time.Second)
	var total atomic.Int64
	var wg sync.WaitGroup
	conns := make([]*pgx.Conn, 16)
	for i := range conns {
		c, err := pgx.Connect(ctx, h.srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		conns[i] = c
	}
	end := time.Now().Add(3 * time.Second)
	for i := range 16 {
		c := conns[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				if _, err := c.Exec(ctx, "SELECT pg_advisory_lock(77)"); err != nil {
					t.Error(err)
					return
				}
				total.Add(1)
				if _, err := c.Exec(ctx, "SELECT pg_advisory_unlock(77)"); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("raw total %d", total.Load())
}
