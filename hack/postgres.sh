#!/usr/bin/env bash
# Starts a PostgreSQL server of its own for the tests (installing Debian's
# postgresql package if there is none) and prints the variable that points
# the tests at it:
#
#   eval "$(bash hack/postgres.sh)"    # export WOPR_TEST_POSTGRES_URL=...
#
# The cluster lives in $WOPR_TEST_POSTGRES_DIR (default
# /tmp/wopr-test-postgres) on 127.0.0.1:$WOPR_TEST_POSTGRES_PORT (default
# 55432), trusts local connections and is reused while it runs. Any failure
# exits non-zero: the store's tests never skip PostgreSQL silently.
# `bash hack/postgres.sh --stop` stops it.
set -euo pipefail
dir=${WOPR_TEST_POSTGRES_DIR:-/tmp/wopr-test-postgres}
port=${WOPR_TEST_POSTGRES_PORT:-55432}

bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)
if [ -z "$bin" ]; then
  echo "hack/postgres.sh: installing Debian's postgresql package" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
  bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -1)
fi

# PostgreSQL refuses to run as root: as root, run it as the package's user.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

if [ "${1:-}" = --stop ]; then
  as_owner "$bin/pg_ctl" -D "$dir" -m fast stop >&2
  exit 0
fi

if ! as_owner "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
  if [ ! -f "$dir/PG_VERSION" ]; then
    mkdir -p "$dir"
    [ "$(id -u)" -ne 0 ] || chown postgres: "$dir"
    as_owner "$bin/initdb" -D "$dir" -U wopr --auth=trust >/dev/null
  fi
  as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >&2 \
    || { echo "hack/postgres.sh: PostgreSQL did not start; its log:" >&2; cat "$dir/server.log" >&2; exit 1; }
fi
echo "export WOPR_TEST_POSTGRES_URL=postgres://wopr@127.0.0.1:$port/postgres"
