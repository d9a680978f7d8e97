// A user's module: the whole conformance suite against a Redis, an etcd and
// a PostgreSQL that distlocktest provides. TestUserModule runs it from a
// temporary module outside the repository; docs/testing.md shows the same.
package locks_test

import (
	"testing"

	_ "github.com/distlock/distlock/backends/etcd"     // etcd://
	_ "github.com/distlock/distlock/backends/postgres" // postgres://
	_ "github.com/distlock/distlock/backends/redsync"  // redis://
	"github.com/distlock/distlock/conformance"
	"github.com/distlock/distlock/distlocktest"
)

func TestRedis(t *testing.T) {
	url, stopper := conformance.Proxy(t, distlocktest.Redis(t))
	conformance.Run(t, conformance.URL(url, conformance.WithStopper(stopper)))
}

func TestEtcd(t *testing.T) {
	url, stopper := conformance.Proxy(t, distlocktest.Etcd(t))
	conformance.Run(t, conformance.URL(url, conformance.WithStopper(stopper)))
}

func TestPostgres(t *testing.T) {
	url, stopper := conformance.Proxy(t, distlocktest.Postgres(t))
	conformance.Run(t, conformance.URL(url, conformance.WithStopper(stopper)))
}
