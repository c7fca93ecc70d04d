#!/bin/sh
# A throw-away PostgreSQL cluster for the tests (tests/postgres/harness.ts).
#
#   postgres_test_server.sh start DIR   creates the cluster under DIR on first use, starts it and
#                                       prints the directory of its Unix socket
#   postgres_test_server.sh stop DIR    stops it (fast shutdown: open sessions are ended)
#   postgres_test_server.sh bindir      prints where the server binaries are, or fails
#
# The server listens on a Unix socket in DIR/socket only (no TCP port, so parallel test files and
# other clusters on the machine never collide) and trusts every local connection, except the role
# `tvix_password`, which must give its password (to test a refused login). fsync is off: the data is
# thrown away with DIR. initdb refuses to run as root, so as root the cluster runs as the `postgres`
# user, who is given DIR. Binaries: $PG_BINDIR, else initdb on PATH, else /usr/lib/postgresql/*/bin.
set -eu

bindir() {
  if [ -n "${PG_BINDIR:-}" ]; then
    if [ -x "$PG_BINDIR/initdb" ] && [ -x "$PG_BINDIR/pg_ctl" ]; then
      echo "$PG_BINDIR"
      return
    fi
    echo "PG_BINDIR=$PG_BINDIR holds no initdb and pg_ctl" >&2
    exit 1
  fi
  if p=$(command -v initdb 2>/dev/null); then
    # Debian links /usr/local/bin/initdb and friends to the versioned directory.
    dirname "$(readlink -f "$p")"
    return
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ]; then
      echo "$d"
      return
    fi
  done
  echo "PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql or set PG_BINDIR" >&2
  exit 1
}

# Runs a command as the cluster's owner.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

cmd=${1:-}
case "$cmd" in
bindir)
  bindir
  ;;
start)
  dir=${2:?usage: $0 start DIR}
  bin=$(bindir)
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    mkdir -p "$dir/data" "$dir/socket"
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$dir"; fi
    as_owner "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C --no-sync \
      >"$dir/initdb.log" 2>&1 || {
      cat "$dir/initdb.log" >&2
      exit 1
    }
    hba="$dir/data/pg_hba.conf"
    printf '%s\n' "local all tvix_password scram-sha-256" "local all all trust" >"$hba"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$hba"; fi
  fi
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-k $dir/socket -c listen_addresses= -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || {
    tail -n 20 "$dir/server.log" >&2
    exit 1
  }
  echo "$dir/socket"
  ;;
stop)
  dir=${2:?usage: $0 stop DIR}
  bin=$(bindir)
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
  fi
  ;;
*)
  echo "usage: $0 start DIR | stop DIR | bindir" >&2
  exit 2
  ;;
esac
