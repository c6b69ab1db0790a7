#!/usr/bin/env bash
# Throw-away PostgreSQL server for the test suite (`make test` runs this).
#
#   bash scripts/pg_test_server.sh          # install if missing, init if needed, start; idempotent
#   bash scripts/pg_test_server.sh stop     # stop it
#   bash scripts/pg_test_server.sh status   # exit 0 when it answers, 3 otherwise
#
# The server listens only on 127.0.0.1:54329 (no Unix socket), trusts loopback
# connections, keeps its data under $REPO/.pgtest/ (git-ignored) and runs as the
# `postgres` OS user when started by root (PostgreSQL refuses to run as root).
# It is tuned for speed, not durability (fsync off): never put anything in it
# you want to keep. Safe to run concurrently (pytest-xdist workers each call
# it): a lock file serialises the callers.
set -euo pipefail

PORT=54329
HOST=127.0.0.1
URL="postgresql://postgres@${HOST}:${PORT}/postgres"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
PGTEST="$REPO/.pgtest"
ACTION="${1:-start}"
cd /   # every path below is absolute; and the server user may not be allowed into the caller's cwd

log() { printf 'pg_test_server: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

case "$ACTION" in
    start|stop|status) ;;
    -h|--help|help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown action '$ACTION' (use: start, stop or status)" ;;
esac

# --- where the PostgreSQL server binaries are (Debian: /usr/lib/postgresql/<major>/bin) ---
find_bindir() {
    local d best=""
    for d in /usr/lib/postgresql/*/bin; do
        if [ ! -x "$d/pg_ctl" ] || [ ! -x "$d/initdb" ] || [ ! -x "$d/postgres" ]; then
            continue
        fi
        if [ -z "$best" ] || [ "$(printf '%s\n%s\n' "$best" "$d" | sort -V | tail -n1)" = "$d" ]; then
            best="$d"
        fi
    done
    printf '%s' "$best"
}

# --- who runs the server: `postgres` when we are root, otherwise ourselves ---
as_server_user() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

install_postgres() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            die "PostgreSQL server binaries are missing and installing them needs root: run 'apt-get install -y postgresql' as root"
        fi
    fi
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL server binaries are missing and apt-get is not available to install them"
    log "installing Debian's postgresql packages (apt-get) ..."
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2 \
        || die "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        postgresql </dev/null >&2 \
        || die "apt-get install postgresql failed"
}

# --- the data directory: $REPO/.pgtest/data, unless the server user cannot reach it ---
# (e.g. a clone under /root, which is mode 0700: then a per-repo directory in /tmp,
# recorded in $PGTEST/datadir so that `stop` finds it again).
choose_datadir() {
    mkdir -p "$PGTEST"
    if [ -f "$PGTEST/datadir" ]; then
        cat "$PGTEST/datadir"
        return
    fi
    local dir="$PGTEST/data"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres:postgres "$PGTEST"
        if ! runuser -u postgres -- test -w "$PGTEST" 2>/dev/null; then
            local key
            key="$(printf '%s' "$REPO" | cksum | cut -d' ' -f1)"
            dir="${TMPDIR:-/tmp}/loyalist-pgtest-$key/data"
            log "user postgres cannot reach $PGTEST; using $dir instead"
            mkdir -p "$(dirname "$dir")"
            chown postgres:postgres "$(dirname "$dir")"
            chmod 0700 "$(dirname "$dir")"
        fi
    fi
    printf '%s\n' "$dir" >"$PGTEST/datadir"
    printf '%s' "$dir"
}

answers() {   # is a PostgreSQL server accepting connections on HOST:PORT?
    "$BINDIR/pg_isready" -q -h "$HOST" -p "$PORT" -U postgres -d postgres -t 2 >/dev/null 2>&1
}

ours_running() {
    [ -f "$PGDATA/PG_VERSION" ] && as_server_user "$BINDIR/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1
}

init_cluster() {
    local want_major
    want_major="$(basename "$(dirname "$BINDIR")")"
    if [ -d "$PGDATA" ]; then
        if [ -f "$PGDATA/PG_VERSION" ] && [ -f "$PGDATA/.loyalist-ready" ] \
            && [ "$(cat "$PGDATA/PG_VERSION")" = "$want_major" ]; then
            return 0
        fi
        # Half-initialised, or made by another PostgreSQL major version: it is
        # throw-away by design, so start afresh.
        log "re-creating $PGDATA (incomplete or from another PostgreSQL version)"
        rm -rf "$PGDATA"
    fi
    log "initialising a cluster in $PGDATA"
    mkdir -p "$PGDATA"
    if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$PGDATA"; fi
    chmod 0700 "$PGDATA"
    as_server_user "$BINDIR/initdb" -D "$PGDATA" -U postgres --auth=trust \
        -E UTF8 --locale=C --no-instructions </dev/null >"$PGTEST/initdb.log" 2>&1 \
        || { cat "$PGTEST/initdb.log" >&2; die "initdb failed (log above)"; }

    # Loopback TCP only, no Unix socket; speed over durability.
    as_server_user tee -a "$PGDATA/postgresql.conf" >/dev/null <<EOF

# --- loyalist test server (scripts/pg_test_server.sh) ---
listen_addresses = '$HOST'
port = $PORT
unix_socket_directories = ''
max_connections = 100
shared_buffers = 64MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
log_timezone = 'UTC'
timezone = 'UTC'
EOF
    as_server_user tee "$PGDATA/pg_hba.conf" >/dev/null <<EOF
# loyalist test server: trust, loopback TCP only (IPv4). Nothing else may connect.
# TYPE  DATABASE  USER  ADDRESS         METHOD
host    all       all   127.0.0.1/32    trust
EOF
    as_server_user touch "$PGDATA/.loyalist-ready"
}

do_start() {
    if ours_running; then
        answers || die "the test server in $PGDATA is running but does not answer on $HOST:$PORT (see $(dirname "$PGDATA")/postgres.log)"
        echo "PostgreSQL test server already running: $URL"
        return 0
    fi
    if answers; then
        # Another cluster (e.g. from another clone on this machine) already serves the port.
        echo "PostgreSQL test server already running (started elsewhere): $URL"
        return 0
    fi
    init_cluster
    if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$(dirname "$PGDATA")"; fi
    # The server log lives beside the data directory (where the server user can write).
    local logfile
    logfile="$(dirname "$PGDATA")/postgres.log"
    if [ "$(id -u)" -eq 0 ]; then
        touch "$logfile"
        chown postgres:postgres "$logfile"
    fi
    # 9>&-: the server must not inherit (and so hold forever) the lock below.
    if ! as_server_user "$BINDIR/pg_ctl" start -D "$PGDATA" -l "$logfile" -w -t 60 \
        </dev/null >"$PGTEST/pg_ctl.log" 2>&1 9>&-; then
        cat "$PGTEST/pg_ctl.log" >&2 || true
        tail -n 20 "$logfile" >&2 || true
        die "could not start PostgreSQL (output above; server log in $logfile)"
    fi
    local _
    for _ in $(seq 1 50); do
        answers && break
        sleep 0.2
    done
    answers || die "PostgreSQL started but does not answer on $HOST:$PORT (see $logfile)"
    echo "PostgreSQL test server started: $URL"
}

do_stop() {
    if ours_running; then
        as_server_user "$BINDIR/pg_ctl" stop -D "$PGDATA" -m fast -w -t 60 </dev/null >/dev/null \
            || die "could not stop the PostgreSQL test server in $PGDATA"
        echo "PostgreSQL test server stopped: $URL"
    else
        echo "PostgreSQL test server not running: $URL"
    fi
}

BINDIR="$(find_bindir)"
if [ -z "$BINDIR" ]; then
    if [ "$ACTION" != "start" ]; then
        echo "PostgreSQL is not installed; test server not running: $URL"
        [ "$ACTION" = "status" ] && exit 3
        exit 0
    fi
    install_postgres
    BINDIR="$(find_bindir)"
    [ -n "$BINDIR" ] || die "postgresql installed, but no /usr/lib/postgresql/*/bin/pg_ctl found"
fi
[ "$(id -u)" -ne 0 ] || id postgres >/dev/null 2>&1 || die "the 'postgres' OS user does not exist (is the postgresql package fully installed?)"

mkdir -p "$PGTEST"
# One caller at a time (pytest-xdist workers may all call us at once).
exec 9>>"$PGTEST/lock"
if command -v flock >/dev/null 2>&1; then
    flock -w 600 9 || die "timed out waiting for $PGTEST/lock"
fi

PGDATA="$(choose_datadir)"

case "$ACTION" in
    start) do_start ;;
    stop) do_stop ;;
    status)
        if answers; then echo "PostgreSQL test server running: $URL"; else echo "PostgreSQL test server not running: $URL"; exit 3; fi ;;
esac
