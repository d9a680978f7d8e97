#!/usr/bin/env bash
# Runs every distlock test under the race detector against real servers.
# On a fresh Debian/Ubuntu machine it first installs what the tests need
# (redis-server, PostgreSQL, PgBouncer); the test harness starts them itself on free
# loopback ports. etcd runs embedded in-process: nothing to install.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v pgbouncer >/dev/null 2>&1 || need+=(pgbouncer) # the CLI's pooler-warning test
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

go vet ./...
(cd bench && go vet ./...) # the benchmark module (its own go.mod): keep it compiling
go test -race -count=1 -timeout 20m ./...
