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
command -v ldd >/dev/null 2>&1 || need+=(libc-bin) # distlocktest.BuildImage lists a binary's libraries with it
command -v etcd >/dev/null 2>&1 || need+=(etcd-server) # only for the image of the etcd container test
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  if [[ " ${need[*]} " == *" etcd-server "* ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true # the tests start their own servers
  fi
fi

go vet ./...
(cd bench && go vet ./...) # the benchmark module (its own go.mod): keep it compiling
# The conformance suite on Redis and on etcd in containers that testcontainers-go starts on this
# machine's Docker engine, from images the tests build here out of the installed redis-server and
# etcd (no registry needed). Verbose, so that the result shows; they skip, saying so, where no
# Docker engine answers.
containers='^Test(Etcd)?ContainerConformance$'
out=$(mktemp)
if ! go test -race -count=1 -timeout 10m -v -run "$containers" ./distlocktest/ >"$out" 2>&1; then
  cat "$out"; rm -f "$out"; exit 1
fi
grep -E '^(--- |ok )|started by testcontainers-go|no Docker engine' "$out" || true
rm -f "$out"
go test -race -count=1 -timeout 20m -skip "$containers" ./...
