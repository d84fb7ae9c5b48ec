#!/usr/bin/env bash
# Private test services for Weft, all on 127.0.0.1.
#
#   scripts/services.sh start  [SERVICE...]   start (installing if needed); default: all
#   scripts/services.sh stop   [SERVICE...]   stop; default: all (reverse order)
#   scripts/services.sh status [SERVICE...]   print state; exit 3 if one is not running
#   scripts/services.sh env    [SERVICE...]   print `export NAME=value` lines for tests
#
# Services: postgres. (ZooKeeper and Kafka go in as further `svc_<name>_*`
# function sets; see "Adding a service" at the end of this file.)
#
# Settings (environment):
#   WEFT_SERVICES_DIR   state dir for every service   (default: <repo>/.services)
#   WEFT_PG_PORT        PostgreSQL port               (default: 55432)
#
# The PostgreSQL cluster is a private one (its own initdb'd data dir, port and
# socket dir); the system cluster is never touched. When run as root, the
# server runs as the `postgres` OS user, which must own the data dir.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
SERVICES_DIR=${WEFT_SERVICES_DIR:-$REPO_ROOT/.services}
case "$SERVICES_DIR" in /*) ;; *) SERVICES_DIR="$PWD/$SERVICES_DIR" ;; esac

# Known services, in start order.
SERVICES=(postgres)

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

# Serialise operations on one services dir (tests may call pgctl from
# several threads). The lock is released when this process exits.
take_lock() {
    mkdir -p "$SERVICES_DIR"
    exec 9>"$SERVICES_DIR/.lock"
    if command -v flock >/dev/null 2>&1; then
        flock -w 180 9 || die "timed out waiting for the lock on $SERVICES_DIR/.lock"
    fi
}

apt_install() {
    is_root || die "need root to apt-get install $*; install it by hand or run as root"
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get update"
    apt-get -o DPkg::Lock::Timeout=300 update -q >&2
    log "apt-get install $*"
    apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$@" >&2
}

# ============================================================================
# PostgreSQL
# ============================================================================

PG_PORT=${WEFT_PG_PORT:-55432}
PG_USER=weft
PG_DB=weft
PG_BIN=""

# The newest /usr/lib/postgresql/*/bin with pg_ctl, else pg_ctl on PATH.
pg_find_bin() {
    local d best=""
    while read -r d; do
        [ -x "$d/pg_ctl" ] && best=$d
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V)
    if [ -z "$best" ] && command -v pg_ctl >/dev/null 2>&1; then
        best=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
    fi
    PG_BIN=$best
    [ -n "$PG_BIN" ]
}

pg_ensure_installed() {
    pg_find_bin && return 0
    log "PostgreSQL (pg_ctl) not found; installing Debian package 'postgresql'"
    apt_install postgresql
    pg_find_bin || die "pg_ctl still not found after installing postgresql (looked in /usr/lib/postgresql/*/bin and PATH)"
}

# Where the cluster lives. Normally $SERVICES_DIR/postgres; when the
# `postgres` user cannot reach that dir (e.g. a checkout under /root) or the
# socket path would be too long for a Unix socket, a dir under /tmp keyed by
# the services dir is used instead (same answer every call).
pg_base() {
    local base="$SERVICES_DIR/postgres"
    local fallback
    fallback="/tmp/weft-pg-$(printf '%s' "$SERVICES_DIR" | cksum | cut -d' ' -f1)"
    if [ -e "$fallback/.in-use" ]; then
        echo "$fallback"; return
    fi
    if [ $(( ${#base} + 20 )) -gt 100 ]; then
        echo "$fallback"; return
    fi
    if is_root && id postgres >/dev/null 2>&1; then
        mkdir -p "$base"
        chown postgres: "$base"
        if ! as_pg test -w "$base" 2>/dev/null; then
            echo "$fallback"; return
        fi
    fi
    echo "$base"
}

pg_init_paths() {
    PG_BASE=$(pg_base)
    PG_DATA=$PG_BASE/data
    PG_SOCK=$PG_BASE/run
    PG_LOG=$PG_BASE/postgres.log
}

# Runs a command as the cluster owner: `postgres` when we are root, else us.
# fd 9 (the lock) is closed so that a server started here does not hold it.
as_pg() {
    if is_root; then
        if command -v runuser >/dev/null 2>&1; then
            (cd / && runuser -u postgres -- "$@") 9>&-
        else
            local cmd
            cmd=$(printf '%q ' "$@")
            (cd / && su postgres -s /bin/sh -c "$cmd") 9>&-
        fi
    else
        "$@" 9>&-
    fi
}

pg_log_tail() {
    if [ -f "$PG_LOG" ]; then
        echo "----- last lines of $PG_LOG -----" >&2
        tail -n 40 "$PG_LOG" >&2 || true
        echo "----------------------------------" >&2
    else
        echo "(no server log at $PG_LOG)" >&2
    fi
}

pg_running() {
    [ -f "$PG_DATA/PG_VERSION" ] || return 1
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

pg_initdb() {
    local want have=""
    want=$("$PG_BIN/pg_ctl" --version | awk '{print $3}' | cut -d. -f1)
    [ -f "$PG_DATA/PG_VERSION" ] && have=$(cat "$PG_DATA/PG_VERSION")
    if [ -n "$have" ] && [ "$have" != "$want" ]; then
        log "data dir $PG_DATA is from PostgreSQL $have, server is $want: re-creating it (test data only)"
        rm -rf "$PG_DATA"
        have=""
    fi
    mkdir -p "$PG_BASE" "$PG_SOCK"
    if is_root; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' OS user (install the Debian postgresql package)"
        chown postgres: "$PG_BASE" "$PG_SOCK"
        [ -d "$PG_DATA" ] && chown -R postgres: "$PG_DATA"
    fi
    touch "$PG_BASE/.in-use"
    if [ -z "$have" ]; then
        log "initdb $PG_DATA (PostgreSQL $want, user $PG_USER, trust auth)"
        rm -rf "$PG_DATA"
        if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" --auth=trust -U "$PG_USER" \
                -E UTF8 --locale=C --no-sync >"$PG_BASE/initdb.log" 2>&1; then
            cat "$PG_BASE/initdb.log" >&2
            die "initdb failed for $PG_DATA"
        fi
        echo "include_if_exists = 'weft.conf'" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
    fi
}

# Settings applied at every start (so a changed port takes effect).
pg_write_conf() {
    cat <<EOF | as_pg tee "$PG_DATA/weft.conf" >/dev/null
# Written by scripts/services.sh on every start; edits are lost.
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_SOCK'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
}

pg_wait_ready() {
    local i
    for i in $(seq 1 60); do
        if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres; then
            return 0
        fi
        sleep 0.5
    done
    return 1
}

pg_psql() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$@"
}

svc_postgres_start() {
    take_lock
    pg_ensure_installed
    pg_init_paths
    if [ "$PG_BASE" != "$SERVICES_DIR/postgres" ]; then
        log "note: cluster kept in $PG_BASE ($SERVICES_DIR/postgres is not reachable by user postgres, or its socket path would be too long)"
    fi
    if pg_running; then
        log "postgres already running (port $PG_PORT, data $PG_DATA)"
    else
        pg_initdb
        pg_write_conf
        log "starting postgres on 127.0.0.1:$PG_PORT (data $PG_DATA)"
        if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 30 start >/dev/null; then
            pg_log_tail
            die "postgres failed to start on port $PG_PORT (is something else listening there? see log above)"
        fi
    fi
    if ! pg_wait_ready; then
        pg_log_tail
        die "postgres did not become ready on 127.0.0.1:$PG_PORT within 30 s"
    fi
    if [ "$(pg_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
        log "creating database $PG_DB"
        pg_psql -d postgres -c "CREATE DATABASE $PG_DB" || { pg_log_tail; die "could not create database $PG_DB"; }
    fi
    log "postgres ready: postgres://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"
}

svc_postgres_stop() {
    take_lock
    if ! pg_find_bin; then
        log "postgres not installed; nothing to stop"
        return 0
    fi
    pg_init_paths
    if ! pg_running; then
        log "postgres not running (data $PG_DATA)"
        return 0
    fi
    log "stopping postgres (port $PG_PORT)"
    if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null; then
        pg_log_tail
        die "pg_ctl stop failed for $PG_DATA"
    fi
}

svc_postgres_status() {
    if ! pg_find_bin; then
        echo "postgres: not installed"
        return 3
    fi
    pg_init_paths
    if pg_running && "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
        echo "postgres: running on 127.0.0.1:$PG_PORT (data $PG_DATA)"
    elif pg_running; then
        echo "postgres: process running but not accepting connections on 127.0.0.1:$PG_PORT (data $PG_DATA)"
        return 3
    else
        echo "postgres: stopped (data $PG_DATA)"
        return 3
    fi
}

svc_postgres_env() {
    printf "export WEFT_PG_PORT=%q\n" "$PG_PORT"
    printf "export WEFT_TEST_PG_URL=%q\n" "postgres://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"
    printf "export WEFT_TEST_PG_CTL=%q\n" "$SCRIPT_DIR/pgctl.sh"
}

# ============================================================================
# Adding a service (ZooKeeper, Kafka, ...):
#   1. append its name to SERVICES (start order; stop runs in reverse);
#   2. define svc_<name>_start, svc_<name>_stop, svc_<name>_status (exit 3
#      when not running) and svc_<name>_env (export lines), keeping its
#      state in "$SERVICES_DIR/<name>" and its port in a WEFT_<NAME>_PORT
#      variable with a default that no other service uses.
# ============================================================================

usage() {
    cat >&2 <<EOF
usage: $0 start|stop|status|env [SERVICE...]
services: ${SERVICES[*]}
EOF
    exit 2
}

check_service() {
    local s
    for s in "${SERVICES[@]}"; do [ "$s" = "$1" ] && return 0; done
    die "unknown service '$1' (known: ${SERVICES[*]})"
}

main() {
    [ $# -ge 1 ] || usage
    local cmd=$1; shift
    local names=("$@") s rc=0
    if [ ${#names[@]} -eq 0 ]; then names=("${SERVICES[@]}"); fi
    for s in "${names[@]}"; do check_service "$s"; done
    case "$cmd" in
        start)
            for s in "${names[@]}"; do "svc_${s}_start"; done ;;
        stop)
            local i
            for (( i=${#names[@]}-1; i>=0; i-- )); do "svc_${names[$i]}_stop"; done ;;
        status)
            for s in "${names[@]}"; do "svc_${s}_status" || rc=3; done
            return $rc ;;
        env)
            printf "export WEFT_SERVICES_DIR=%q\n" "$SERVICES_DIR"
            for s in "${names[@]}"; do "svc_${s}_env"; done ;;
        -h|--help|help) usage ;;
        *) usage ;;
    esac
}

main "$@"
