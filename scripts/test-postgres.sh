#!/usr/bin/env bash
# Start, stop or describe the throwaway PostgreSQL server that the test suite uses.
#
# Usage: scripts/test-postgres.sh start|stop|env
#   start  create the data folder once, start the server and the hpc_tune_test database;
#          does nothing more when the server already runs
#   stop   stop the server whose pid is in postmaster.pid (fast shutdown)
#   env    print the line that exports HPC_TUNE_TEST_STORAGE, for eval
#
# Settings (environment):
#   HPC_TUNE_TEST_PGPORT    TCP port on 127.0.0.1 (default 55432)
#   HPC_TUNE_TEST_PGPREFIX  folder for data, socket and log (default /tmp/hpc-tune-test-pg)
#   HPC_TUNE_TEST_PGBIN     folder of initdb/pg_ctl/psql (default: newest
#                           /usr/lib/postgresql/*/bin, then pg_ctl on PATH)
#   HPC_TUNE_TEST_PGMAXCONN max_connections of the server (default 200; the benchmark's
#                           128-worker run uses PostgreSQL's own default, 100)
#
# TEST DATA ONLY: authentication is "trust" (every local user, and every process on this
# host that reaches 127.0.0.1, connects as superuser postgres without password), and fsync
# is off, so a machine crash can corrupt the data.
#
# As root, it installs Debian's postgresql-15 with apt-get when no server binaries are
# found, and runs the server as user postgres (PostgreSQL refuses to run as root).
set -euo pipefail

PORT=${HPC_TUNE_TEST_PGPORT:-55432}
PREFIX=${HPC_TUNE_TEST_PGPREFIX:-/tmp/hpc-tune-test-pg}
MAX_CONNECTIONS=${HPC_TUNE_TEST_PGMAXCONN:-200}
DATABASE=hpc_tune_test
DATA=$PREFIX/data
SOCKET_DIR=$PREFIX/sock
LOG=$PREFIX/log/server.log
URL="postgresql+psycopg2://postgres@127.0.0.1:$PORT/$DATABASE"
# Variables such as PGPORT or PGHOST would change which server psql and pg_ctl reach.
while read -r name; do unset "$name"; done < <(compgen -e | grep '^PG' || true)

log() { echo "test-postgres: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Print the pid of the live postgres process named in postmaster.pid, or fail.
running_pid() {
    local pid name state
    [ -r "$DATA/postmaster.pid" ] || return 1
    pid=$(head -n 1 "$DATA/postmaster.pid")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    # /proc/<pid>/stat reads "<pid> (<name>) <state> ...", and a zombie (Z) has exited.
    read -r _ name state _ < "/proc/$pid/stat" 2>/dev/null || return 1
    [ "$name" = "(postgres)" ] && [ "$state" != Z ] || return 1
    echo "$pid"
}

find_bin_dir() {
    local dir pg_ctl
    if [ -n "${HPC_TUNE_TEST_PGBIN:-}" ]; then
        echo "$HPC_TUNE_TEST_PGBIN"
        return
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ] \
            && { echo "$dir"; return; }
    done
    pg_ctl=$(command -v pg_ctl || true)
    if [ -n "$pg_ctl" ]; then
        dir=$(dirname "$(readlink -f "$pg_ctl")")
        [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && { echo "$dir"; return; }
    fi
    return 1
}

# NOTE: this branch ran only where postgresql-15 was already installed. Debian's package
# also creates and may start a default cluster on port 5432; this script ignores it.
install_server() {
    [ "$(id -u)" = 0 ] || die "no PostgreSQL server binaries found; install postgresql-15 \
(apt-get install postgresql-15), set HPC_TUNE_TEST_PGBIN, or set HPC_TUNE_TEST_STORAGE \
to the URL of a test server"
    command -v apt-get >/dev/null || die "no PostgreSQL server binaries and no apt-get: \
install PostgreSQL server binaries and set HPC_TUNE_TEST_PGBIN"
    log "installing postgresql-15 with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    local install=(timeout 900 apt-get install -y -q --no-install-recommends postgresql-15)
    if ! "${install[@]}" >"$PREFIX/apt.log" 2>&1; then
        # A fresh container has no package lists yet.
        timeout 300 apt-get update -q >>"$PREFIX/apt.log" 2>&1 \
            && "${install[@]}" >>"$PREFIX/apt.log" 2>&1 \
            || { tail -n 20 "$PREFIX/apt.log" >&2; die "apt-get install postgresql-15 failed \
(full output in $PREFIX/apt.log)"; }
    fi
}

start() {
    local bin_dir owner pid attempt
    mkdir -p "$PREFIX"
    # One start at a time, when several test runs begin together.
    exec 9>"$PREFIX/start.lock"
    flock -w 300 9 || die "timed out waiting for $PREFIX/start.lock"

    if pid=$(running_pid); then
        local running_port
        running_port=$(sed -n 4p "$DATA/postmaster.pid")
        [ "$running_port" = "$PORT" ] || die "the server in $DATA already runs on port \
$running_port, not $PORT: run '$0 stop' first"
        log "already running (pid $pid)"
    else
        bin_dir=$(find_bin_dir) || { install_server; bin_dir=$(find_bin_dir) \
            || die "apt-get installed postgresql-15 but no initdb/pg_ctl/postgres were found"; }
        if [ "$(id -u)" = 0 ]; then
            id -u postgres >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
                --home-dir /nonexistent --shell /usr/sbin/nologin postgres
            owner=postgres
            as_owner=(runuser -u postgres --)
        else
            owner=$(id -un)
            as_owner=()
        fi
        chmod 755 "$PREFIX"
        mkdir -p "$DATA" "$SOCKET_DIR" "$(dirname "$LOG")"
        chown "$owner" "$DATA" "$SOCKET_DIR" "$(dirname "$LOG")"
        chmod 700 "$DATA"

        if [ ! -f "$DATA/PG_VERSION" ]; then
            # Test data only: a folder left by an interrupted initdb is thrown away.
            find "$DATA" -mindepth 1 -delete
            "${as_owner[@]}" "$bin_dir/initdb" -D "$DATA" -U postgres --auth=trust \
                --encoding=UTF8 --no-locale >"$PREFIX/log/initdb.log" 2>&1 \
                || { cat "$PREFIX/log/initdb.log" >&2; die "initdb failed"; }
        fi
        # PostgreSQL refuses to start while the pid in its lock files exists, even as a
        # zombie left by kill -9. Its shared-memory check still protects a live old server.
        rm -f "$DATA/postmaster.pid" "$SOCKET_DIR/.s.PGSQL.$PORT.lock"

        local options="-h 127.0.0.1 -p $PORT -k $SOCKET_DIR -c max_connections=$MAX_CONNECTIONS"
        options+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        for attempt in 1 2 3 4 5; do
            # 9>&-: the server must not inherit, and so hold, the start lock.
            "${as_owner[@]}" "$bin_dir/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 -s \
                -o "$options" start 9>&- && break
            # Backends of a server killed with kill -9 exit within moments of it.
            if [ "$attempt" = 5 ] || ! tail -n 5 "$LOG" | grep -q "shared memory block"; then
                tail -n 20 "$LOG" >&2
                die "pg_ctl start failed (server log: $LOG)"
            fi
            sleep 1
        done
        log "started (pid $(running_pid)), log in $LOG"
    fi

    bin_dir=$(find_bin_dir)
    local psql=(timeout 30 "$bin_dir/psql" -h 127.0.0.1 -p "$PORT" -U postgres -X -A -t -q)
    if [ -z "$("${psql[@]}" -d postgres -c \
        "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" ]; then
        "${psql[@]}" -d postgres -c "CREATE DATABASE $DATABASE"
        log "created database $DATABASE"
    fi
    log "ready: $URL"
}

stop() {
    local pid
    pid=$(running_pid) || { log "not running"; return 0; }
    # SIGINT is PostgreSQL's fast shutdown: roll back open transactions, then exit.
    kill -INT "$pid"
    for _ in $(seq 1 600); do
        running_pid >/dev/null || { log "stopped (pid $pid)"; return 0; }
        sleep 0.1
    done
    log "still running after 60 s: sending SIGQUIT (immediate shutdown)"
    kill -QUIT "$pid" 2>/dev/null || true
    sleep 2
    ! running_pid >/dev/null || die "pid $pid did not stop"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) echo "export HPC_TUNE_TEST_STORAGE=$URL" ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
