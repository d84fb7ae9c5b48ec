#!/usr/bin/env bash
# Private test services for Weft, all on 127.0.0.1.
#
#   scripts/services.sh start  [SERVICE...]   start (installing if needed); default: all
#   scripts/services.sh stop   [SERVICE...]   stop; default: all (reverse order)
#   scripts/services.sh status [SERVICE...]   print state; exit 3 if one is not running
#   scripts/services.sh env    [SERVICE...]   print `export NAME=value` lines for tests
#
# Services: postgres, zookeeper, kafka, prometheus. (Further ones go in as
# `svc_<name>_*` function sets; see "Adding a service" at the end of this file.)
#
# Settings (environment):
#   WEFT_SERVICES_DIR     state dir for every service   (default: <repo>/.services)
#   WEFT_PG_PORT          PostgreSQL port               (default: 55432)
#   WEFT_KAFKA_PORT       Kafka broker port; the KRaft controller uses +1 (default: 59092)
#   WEFT_KAFKA_VERSION    Apache Kafka version fetched with Maven (default: 4.1.1)
#   WEFT_KAFKA_LIB        the broker's jars (default: $WEFT_SERVICES_DIR/kafka/lib)
#   WEFT_ZK_PORT          ZooKeeper client port         (default: 52181)
#   WEFT_PROMETHEUS_PORT  Prometheus HTTP port          (default: 59090)
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
SERVICES=(postgres zookeeper kafka prometheus)

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
    pg_password_role
    log "postgres ready: postgres://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"
}

# A role that must log in with a password (scram-sha-256 over TCP), for
# the tests that take a connection's password from a secret store; every
# other connection keeps trust auth. Idempotent.
PG_PW_USER=weft_secret
PG_PW_PASSWORD=weft-secret-password
pg_password_role() {
    local hba=$PG_DATA/pg_hba.conf line="host all $PG_PW_USER 127.0.0.1/32 scram-sha-256"
    if ! as_pg grep -qxF "$line" "$hba"; then
        { echo "$line"; as_pg cat "$hba"; } > "$PG_BASE/pg_hba.new"
        as_pg tee "$hba" < "$PG_BASE/pg_hba.new" >/dev/null
        rm -f "$PG_BASE/pg_hba.new"
        pg_psql -d postgres -c "SELECT pg_reload_conf()" >/dev/null
    fi
    pg_psql -d postgres -c "DO \$\$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_PW_USER') THEN
            CREATE ROLE $PG_PW_USER LOGIN;
        END IF;
    END \$\$" >/dev/null
    pg_psql -d postgres -c "SET password_encryption = 'scram-sha-256'; ALTER ROLE $PG_PW_USER PASSWORD '$PG_PW_PASSWORD'" >/dev/null
    pg_psql -d "$PG_DB" -c "GRANT ALL ON SCHEMA public TO $PG_PW_USER" >/dev/null
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
    # The role that needs its password (tests/tests/secrets.rs).
    printf "export WEFT_TEST_PG_PASSWORD_USER=%q\n" "$PG_PW_USER"
    printf "export WEFT_TEST_PG_PASSWORD=%q\n" "$PG_PW_PASSWORD"
    printf "export WEFT_TEST_PG_CTL=%q\n" "$SCRIPT_DIR/pgctl.sh"
}

# ============================================================================
# Apache ZooKeeper (standalone server)
# ============================================================================
#
# From Debian's `zookeeper` package (installed when missing and we are root):
# its jars under /usr/share/java are run directly with a private zoo.cfg, data
# dir, pid file and log under $SERVICES_DIR/zookeeper; the system's
# /etc/zookeeper configuration and any system service are never touched.
# tickTime is 500 ms and sessions may be 1 s .. 60 s, so tests can use short
# session timeouts. `stop` keeps the data; `rm -rf $SERVICES_DIR/zookeeper/data`
# resets it.

ZK_PORT=${WEFT_ZK_PORT:-52181}
ZK_DIR=$SERVICES_DIR/zookeeper
ZK_DATA=$ZK_DIR/data
ZK_CONF=$ZK_DIR/zoo.cfg
ZK_LOG=$ZK_DIR/zookeeper.log
ZK_PID=$ZK_DIR/zookeeper.pid
ZK_JAR=/usr/share/java/zookeeper.jar

zk_log_tail() {
    if [ -f "$ZK_LOG" ]; then
        echo "----- last lines of $ZK_LOG -----" >&2
        tail -n 40 "$ZK_LOG" >&2 || true
        echo "----------------------------------" >&2
    else
        echo "(no server log at $ZK_LOG)" >&2
    fi
}

zk_ensure_installed() {
    if ! [ -f "$ZK_JAR" ]; then
        log "ZooKeeper ($ZK_JAR) not found; installing Debian package 'zookeeper'"
        apt_install zookeeper
        [ -f "$ZK_JAR" ] || die "$ZK_JAR still missing after installing the Debian package 'zookeeper'"
    fi
    command -v java >/dev/null 2>&1 || die "java not found (the Debian 'zookeeper' package should have pulled in a JRE)"
}

# The server's classpath: the Debian jar (its manifest lists the dependency
# jars) plus an slf4j binding that logs to stderr, when one is installed.
zk_classpath() {
    local cp=$ZK_JAR j
    for j in /usr/share/java/slf4j-simple.jar /usr/share/java/slf4j-log4j12.jar; do
        if [ -f "$j" ]; then cp="$cp:$j"; break; fi
    done
    echo "$cp"
}

zk_write_conf() {
    mkdir -p "$ZK_DATA"
    cat >"$ZK_CONF" <<CONF
# Written by scripts/services.sh on every start; edits are lost.
tickTime=500
minSessionTimeout=1000
maxSessionTimeout=60000
dataDir=$ZK_DATA
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr
forceSync=no
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
CONF
}

# The server's pid, if the pid file names a live server of this services dir.
zk_pid() {
    local pid
    [ -f "$ZK_PID" ] || return 1
    pid=$(cat "$ZK_PID" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$ZK_CONF" || return 1
    echo "$pid"
}

zk_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT") 2>/dev/null
}

# Sends a four-letter word and prints the answer (bounded by `timeout`).
zk_4lw() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "%s" "$2" >&3
        cat <&3' _ "$ZK_PORT" "$1" 2>/dev/null
}

# True once the server answers `srvr` as a serving standalone node.
zk_ready() {
    local out
    out=$(zk_4lw srvr) || return 1
    grep -q '^Mode: standalone' <<<"$out"
}

svc_zookeeper_start() {
    take_lock
    zk_ensure_installed
    mkdir -p "$ZK_DIR"
    local pid i
    if pid=$(zk_pid); then
        log "zookeeper already running (pid $pid, 127.0.0.1:$ZK_PORT)"
    else
        if zk_port_open; then
            die "127.0.0.1:$ZK_PORT is already in use by another process (set WEFT_ZK_PORT)"
        fi
        zk_write_conf
        log "starting zookeeper on 127.0.0.1:$ZK_PORT (data $ZK_DATA)"
        : >"$ZK_LOG"
        # New session, no stdin, lock fd closed: the server outlives this script.
        setsid java -Xms64m -Xmx256m -Djava.awt.headless=true \
            -Dzookeeper.log.dir="$ZK_DIR" \
            -Dorg.slf4j.simpleLogger.showDateTime=true \
            -Dzookeeper.jmx.log4j.disable=true \
            -cp "$(zk_classpath)" org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZK_CONF" \
            </dev/null >>"$ZK_LOG" 2>&1 9>&- &
        pid=$!
        echo "$pid" >"$ZK_PID"
        for i in $(seq 1 120); do
            kill -0 "$pid" 2>/dev/null || { zk_log_tail; die "zookeeper exited during start-up (log: $ZK_LOG)"; }
            zk_ready && break
            sleep 0.5
        done
    fi
    if ! zk_ready; then
        zk_log_tail
        die "zookeeper on 127.0.0.1:$ZK_PORT did not answer 'srvr' within 60 s"
    fi
    log "zookeeper ready: 127.0.0.1:$ZK_PORT"
}

svc_zookeeper_stop() {
    take_lock
    local pid i
    if ! pid=$(zk_pid); then
        log "zookeeper not running"
        rm -f "$ZK_PID"
        return 0
    fi
    log "stopping zookeeper (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "zookeeper did not stop within 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
    rm -f "$ZK_PID"
}

svc_zookeeper_status() {
    local pid
    if ! [ -f "$ZK_JAR" ]; then
        echo "zookeeper: not installed ($ZK_JAR missing; Debian package 'zookeeper')"
        return 3
    fi
    if pid=$(zk_pid) && zk_ready; then
        echo "zookeeper: running on 127.0.0.1:$ZK_PORT (pid $pid, data $ZK_DATA)"
    elif pid=$(zk_pid); then
        echo "zookeeper: process $pid running but not answering on 127.0.0.1:$ZK_PORT"
        return 3
    else
        echo "zookeeper: stopped (data $ZK_DATA)"
        return 3
    fi
}

svc_zookeeper_env() {
    printf "export WEFT_ZK_PORT=%q\n" "$ZK_PORT"
    printf "export WEFT_TEST_ZK_SERVERS=%q\n" "127.0.0.1:$ZK_PORT"
}

# ============================================================================
# Apache Kafka (single KRaft node: broker + controller in one JVM)
# ============================================================================
#
# Kafka is not packaged by Debian. The broker jars (org.apache.kafka:kafka_2.13
# and its runtime dependencies, plus a log4j2 binding for slf4j) are resolved
# from Maven Central with Maven, once, into $SERVICES_DIR/kafka/lib; later runs
# reuse them. Storage is formatted once (static quorum, fixed cluster id) and
# kept across restarts; `stop` leaves the data, `rm -rf $SERVICES_DIR/kafka/data`
# resets it.

KAFKA_VERSION=${WEFT_KAFKA_VERSION:-4.1.1}
KAFKA_PORT=${WEFT_KAFKA_PORT:-59092}
KAFKA_CONTROLLER_PORT=$(( KAFKA_PORT + 1 ))
KAFKA_DIR=$SERVICES_DIR/kafka
KAFKA_LIB=${WEFT_KAFKA_LIB:-$KAFKA_DIR/lib}
KAFKA_DATA=$KAFKA_DIR/data
KAFKA_CONF=$KAFKA_DIR/server.properties
KAFKA_LOG=$KAFKA_DIR/kafka.log
KAFKA_PID=$KAFKA_DIR/kafka.pid
# Any base64 UUID will do; a fixed one keeps re-formatting deterministic.
KAFKA_CLUSTER_ID=V2VmdFRlc3RDbHVzdGVyMQ
KAFKA_LOG4J_VERSION=2.24.3
KAFKA_SLF4J_VERSION=2.0.17

kafka_log_tail() {
    if [ -f "$KAFKA_LOG" ]; then
        echo "----- last lines of $KAFKA_LOG -----" >&2
        tail -n 40 "$KAFKA_LOG" >&2 || true
        echo "----------------------------------" >&2
    else
        echo "(no broker log at $KAFKA_LOG)" >&2
    fi
}

# Java 17+ runs the broker; Maven fetches its jars (once). Installed from
# Debian when missing and we are root.
kafka_ensure_java() {
    if ! command -v java >/dev/null 2>&1; then
        log "java not found (Kafka $KAFKA_VERSION needs Java 17+); installing openjdk-17-jdk-headless (the readiness probe is a single-file Java program)"
        apt_install openjdk-17-jdk-headless
    fi
    if ! command -v mvn >/dev/null 2>&1 && ! [ -f "$KAFKA_LIB/.complete-$KAFKA_VERSION" ]; then
        log "mvn not found (needed once to fetch the Kafka $KAFKA_VERSION jars); installing maven"
        apt_install maven
    fi
}

# Resolves the broker's jars into $KAFKA_LIB (once per version).
kafka_ensure_jars() {
    [ -f "$KAFKA_LIB/.complete-$KAFKA_VERSION" ] && return 0
    local work=$KAFKA_DIR/resolve
    rm -rf "$work" "$KAFKA_LIB.tmp"
    mkdir -p "$work"
    cat >"$work/pom.xml" <<POM
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/services.sh: the Kafka broker's runtime classpath. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.weft.services</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$KAFKA_SLF4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$KAFKA_LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$KAFKA_LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>$KAFKA_LOG4J_VERSION</version></dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
      </plugin>
    </plugins>
  </build>
</project>
POM
    log "resolving Apache Kafka $KAFKA_VERSION broker jars with Maven into $KAFKA_LIB (once)"
    if ! (cd "$work" && mvn -B -q -f pom.xml dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIB.tmp" >"$work/mvn.log" 2>&1) 9>&-; then
        tail -n 40 "$work/mvn.log" >&2
        die "could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION with Maven (log: $work/mvn.log)"
    fi
    ls "$KAFKA_LIB.tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 \
        || die "Maven finished but kafka_2.13-$KAFKA_VERSION.jar is missing from $KAFKA_LIB.tmp"
    rm -rf "$KAFKA_LIB"
    mv "$KAFKA_LIB.tmp" "$KAFKA_LIB"
    touch "$KAFKA_LIB/.complete-$KAFKA_VERSION"
    log "kafka jars ready ($(ls "$KAFKA_LIB"/*.jar | wc -l) jars)"
}

# Config, log4j2 settings and the readiness probe, rewritten at every start.
kafka_write_conf() {
    mkdir -p "$KAFKA_DATA"
    cat >"$KAFKA_CONF" <<CONF
# Written by scripts/services.sh on every start; edits are lost.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=8
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.consumer.min.session.timeout.ms=1000
group.min.session.timeout.ms=1000
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
CONF
    cat >"$KAFKA_DIR/log4j2.properties" <<'L4J'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
L4J
    cat >"$KAFKA_DIR/log4j2-probe.properties" <<'L4J'
status = error
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m (%c)%n
rootLogger.level = ERROR
rootLogger.appenderRef.err.ref = STDERR
L4J
    cat >"$KAFKA_DIR/KafkaProbe.java" <<'JAVA'
// Written by scripts/services.sh: exits 0 once the broker answers a
// metadata request (describeCluster + listTopics) through the admin client.
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;

public class KafkaProbe {
    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "3000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "4000");
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[1]));
        Exception last = null;
        try (Admin admin = Admin.create(p)) {
            while (System.nanoTime() < deadline) {
                try {
                    int nodes = admin.describeCluster().nodes().get(4, TimeUnit.SECONDS).size();
                    admin.listTopics().names().get(4, TimeUnit.SECONDS);
                    if (nodes > 0) {
                        System.out.println("kafka answers: " + nodes + " broker(s)");
                        return;
                    }
                } catch (Exception e) {
                    last = e;
                }
                Thread.sleep(300);
            }
        }
        System.err.println("kafka did not answer a metadata request: " + last);
        System.exit(1);
    }
}
JAVA
}

kafka_format() {
    if [ -f "$KAFKA_DATA/meta.properties" ]; then
        if grep -q "^cluster.id=$KAFKA_CLUSTER_ID\$" "$KAFKA_DATA/meta.properties"; then
            return 0
        fi
        log "kafka data dir $KAFKA_DATA has another cluster id: re-creating it (test data only)"
        rm -rf "$KAFKA_DATA"
        mkdir -p "$KAFKA_DATA"
    fi
    log "formatting kafka storage $KAFKA_DATA (cluster id $KAFKA_CLUSTER_ID)"
    if ! java -cp "$KAFKA_LIB/*" -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2-probe.properties" \
            kafka.tools.StorageTool format -t "$KAFKA_CLUSTER_ID" -c "$KAFKA_CONF" --ignore-formatted \
            >"$KAFKA_DIR/format.log" 2>&1 9>&-; then
        cat "$KAFKA_DIR/format.log" >&2
        die "kafka storage format failed for $KAFKA_DATA"
    fi
}

# The broker's pid, if the pid file names a live broker of this services dir.
kafka_pid() {
    local pid
    [ -f "$KAFKA_PID" ] || return 1
    pid=$(cat "$KAFKA_PID" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$KAFKA_CONF" || return 1
    echo "$pid"
}

kafka_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null
}

kafka_probe() {
    local secs=$1
    java -cp "$KAFKA_LIB/*" -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2-probe.properties" \
        "$KAFKA_DIR/KafkaProbe.java" "127.0.0.1:$KAFKA_PORT" "$secs" 9>&-
}

svc_kafka_start() {
    take_lock
    kafka_ensure_java
    mkdir -p "$KAFKA_DIR"
    kafka_ensure_jars
    local pid i
    if pid=$(kafka_pid); then
        log "kafka already running (pid $pid, 127.0.0.1:$KAFKA_PORT)"
    else
        if kafka_port_open; then
            die "127.0.0.1:$KAFKA_PORT is already in use by another process (set WEFT_KAFKA_PORT)"
        fi
        kafka_write_conf
        kafka_format
        log "starting kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (controller :$KAFKA_CONTROLLER_PORT, data $KAFKA_DATA)"
        : >"$KAFKA_LOG"
        # New session, no stdin, lock fd closed: the broker outlives this script.
        setsid java -Xms256m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
            -Djava.awt.headless=true \
            -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" \
            -Dkafka.logs.dir="$KAFKA_DIR" \
            -cp "$KAFKA_LIB/*" kafka.Kafka "$KAFKA_CONF" \
            </dev/null >>"$KAFKA_LOG" 2>&1 9>&- &
        echo $! >"$KAFKA_PID"
        pid=$!
        for i in $(seq 1 120); do
            kill -0 "$pid" 2>/dev/null || { kafka_log_tail; die "kafka exited during start-up (log: $KAFKA_LOG)"; }
            kafka_port_open && break
            sleep 0.5
        done
        kafka_port_open || { kafka_log_tail; die "kafka did not open 127.0.0.1:$KAFKA_PORT within 60 s"; }
    fi
    if ! kafka_probe 45 >&2; then
        kafka_log_tail
        die "kafka on 127.0.0.1:$KAFKA_PORT did not answer a metadata request within 45 s"
    fi
    log "kafka ready: 127.0.0.1:$KAFKA_PORT"
}

svc_kafka_stop() {
    take_lock
    local pid i
    if ! pid=$(kafka_pid); then
        log "kafka not running"
        rm -f "$KAFKA_PID"
        return 0
    fi
    log "stopping kafka (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "kafka did not stop within 30 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
    rm -f "$KAFKA_PID"
}

svc_kafka_status() {
    local pid
    if ! [ -f "$KAFKA_LIB/.complete-$KAFKA_VERSION" ]; then
        echo "kafka: not installed (jars not resolved into $KAFKA_LIB)"
        return 3
    fi
    if pid=$(kafka_pid) && kafka_port_open; then
        echo "kafka: running on 127.0.0.1:$KAFKA_PORT (pid $pid, version $KAFKA_VERSION, data $KAFKA_DATA)"
    elif pid=$(kafka_pid); then
        echo "kafka: process $pid running but not accepting connections on 127.0.0.1:$KAFKA_PORT"
        return 3
    else
        echo "kafka: stopped (data $KAFKA_DATA)"
        return 3
    fi
}

svc_kafka_env() {
    printf "export WEFT_KAFKA_PORT=%q\n" "$KAFKA_PORT"
    printf "export WEFT_TEST_KAFKA_BROKERS=%q\n" "127.0.0.1:$KAFKA_PORT"
    # Fault tests start brokers of their own on these jars.
    printf "export WEFT_KAFKA_LIB=%q\n" "$KAFKA_LIB"
}

# ============================================================================
# Prometheus (scrapes the runtimes under test)
# ============================================================================
#
# From Debian's `prometheus` package (installed when missing and we are root;
# the package also ships `promtool`). The server runs with a private config,
# TSDB, pid file and log under $SERVICES_DIR/prometheus; /etc/prometheus and
# any system service are never touched. It scrapes one job, `weft`
# (metrics_path /metrics, every 1 s), whose targets come from file_sd files:
# a test writes $SERVICES_DIR/prometheus/targets/<name>.json (atomically:
# temp file + rename) listing the 127.0.0.1 addresses of the runtimes it
# started, and removes it when done (tests/src/prometheus.rs). The TSDB and
# any leftover target files are cleared at every fresh start, so series from
# an earlier run never show up in a test's queries; retention is 1 h.

PROM_PORT=${WEFT_PROMETHEUS_PORT:-59090}
PROM_DIR=$SERVICES_DIR/prometheus
PROM_DATA=$PROM_DIR/data
PROM_TARGETS=$PROM_DIR/targets
PROM_CONF=$PROM_DIR/prometheus.yml
PROM_LOG=$PROM_DIR/prometheus.log
PROM_PID=$PROM_DIR/prometheus.pid

prom_log_tail() {
    if [ -f "$PROM_LOG" ]; then
        echo "----- last lines of $PROM_LOG -----" >&2
        tail -n 40 "$PROM_LOG" >&2 || true
        echo "----------------------------------" >&2
    else
        echo "(no server log at $PROM_LOG)" >&2
    fi
}

prom_ensure_installed() {
    command -v prometheus >/dev/null 2>&1 && return 0
    log "prometheus not found; installing Debian package 'prometheus'"
    apt_install prometheus
    command -v prometheus >/dev/null 2>&1 || die "prometheus still not on PATH after installing the Debian package 'prometheus'"
}

prom_version() {
    prometheus --version 2>&1 | awk 'NR == 1 { print $3 }'
}

prom_write_conf() {
    mkdir -p "$PROM_DATA" "$PROM_TARGETS"
    cat >"$PROM_CONF" <<CONF
# Written by scripts/services.sh on every start; edits are lost.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: weft
    metrics_path: /metrics
    file_sd_configs:
      - files:
          - '$PROM_TARGETS/*.json'
        refresh_interval: 1s
CONF
}

# The server's pid, if the pid file names a live server of this services dir.
prom_pid() {
    local pid
    [ -f "$PROM_PID" ] || return 1
    pid=$(cat "$PROM_PID" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$PROM_CONF" || return 1
    echo "$pid"
}

prom_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$PROM_PORT") 2>/dev/null
}

# GET $1 over HTTP/1.0 and print the raw response (bounded by `timeout`).
prom_http_get() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n" "$2" "$1" >&3
        cat <&3' _ "$PROM_PORT" "$1" 2>/dev/null
}

# True once /-/ready answers 200 (it answers 503 while the TSDB opens).
prom_ready() {
    local out
    out=$(prom_http_get /-/ready) || return 1
    [[ $out == HTTP/1.?" 200"* ]]
}

svc_prometheus_start() {
    take_lock
    prom_ensure_installed
    mkdir -p "$PROM_DIR"
    local pid i
    if pid=$(prom_pid); then
        log "prometheus already running (pid $pid, 127.0.0.1:$PROM_PORT)"
    else
        if prom_port_open; then
            die "127.0.0.1:$PROM_PORT is already in use by another process (set WEFT_PROMETHEUS_PORT)"
        fi
        # A fresh TSDB and no stale targets: nothing from an earlier run.
        rm -rf "$PROM_DATA" "$PROM_TARGETS"
        prom_write_conf
        if command -v promtool >/dev/null 2>&1; then
            if ! promtool check config "$PROM_CONF" >"$PROM_DIR/check.log" 2>&1; then
                cat "$PROM_DIR/check.log" >&2
                die "promtool rejects the generated $PROM_CONF"
            fi
        fi
        log "starting prometheus $(prom_version) on 127.0.0.1:$PROM_PORT (targets $PROM_TARGETS/*.json)"
        : >"$PROM_LOG"
        # New session, no stdin, lock fd closed: the server outlives this script.
        (cd "$PROM_DIR" && exec setsid prometheus \
            --config.file="$PROM_CONF" \
            --storage.tsdb.path="$PROM_DATA" \
            --storage.tsdb.retention.time=1h \
            --web.listen-address="127.0.0.1:$PROM_PORT" \
            --log.level=info \
            </dev/null >>"$PROM_LOG" 2>&1 9>&-) &
        pid=$!
        echo "$pid" >"$PROM_PID"
        for i in $(seq 1 120); do
            kill -0 "$pid" 2>/dev/null || { prom_log_tail; die "prometheus exited during start-up (log: $PROM_LOG)"; }
            prom_ready && break
            sleep 0.5
        done
    fi
    if ! prom_ready; then
        prom_log_tail
        die "prometheus on 127.0.0.1:$PROM_PORT did not answer /-/ready within 60 s"
    fi
    log "prometheus ready: http://127.0.0.1:$PROM_PORT"
}

svc_prometheus_stop() {
    take_lock
    local pid i
    if ! pid=$(prom_pid); then
        log "prometheus not running"
        rm -f "$PROM_PID"
        return 0
    fi
    log "stopping prometheus (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "prometheus did not stop within 15 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
    rm -f "$PROM_PID"
}

svc_prometheus_status() {
    local pid
    if ! command -v prometheus >/dev/null 2>&1; then
        echo "prometheus: not installed (Debian package 'prometheus')"
        return 3
    fi
    if pid=$(prom_pid) && prom_ready; then
        echo "prometheus: running on 127.0.0.1:$PROM_PORT (pid $pid, version $(prom_version), targets $PROM_TARGETS/*.json)"
    elif pid=$(prom_pid); then
        echo "prometheus: process $pid running but not ready on 127.0.0.1:$PROM_PORT"
        return 3
    else
        echo "prometheus: stopped"
        return 3
    fi
}

svc_prometheus_env() {
    printf "export WEFT_PROMETHEUS_PORT=%q\n" "$PROM_PORT"
    printf "export WEFT_PROMETHEUS_URL=%q\n" "http://127.0.0.1:$PROM_PORT"
    printf "export WEFT_PROMETHEUS_TARGETS_DIR=%q\n" "$PROM_TARGETS"
    printf "export WEFT_PROMTOOL=%q\n" "$(command -v promtool 2>/dev/null || true)"
}

# ============================================================================
# Adding a service (Redis, etcd, ...):
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
