#!/usr/bin/env bash
# Weft's whole test run: the command the README shows and CI runs.
#
#   scripts/test.sh
#
# Installs what is missing (Debian postgresql, zookeeper and prometheus;
# Apache Kafka's jars via Maven; a Python venv with the Dapr SDK and pytest
# under .services/venv), starts the private test services
# (scripts/services.sh: PostgreSQL, ZooKeeper, Kafka, Prometheus),
# then runs, stopping at the first failure:
#   cargo fmt --check · cargo clippy -D warnings · cargo build ·
#   go SDK tests (gofmt -l, go vet, go test in sdk-go against target/debug/weft) ·
#   mvn -B verify in sdk-java (the Java SDK against target/debug/weft; Maven's
#   local repository cached in .services/m2) ·
#   mvn package tests/dubbo-java (Apache Dubbo test programs) · cargo test ·
#   pytest tests/python (the official Dapr Python SDK against target/debug/weft)
# Services are stopped on exit, whatever happened.
#
# Environment:
#   CARGO_TARGET_DIR     honoured (default <repo>/target)
#   WEFT_SERVICES_DIR    services state and the venv (default <repo>/.services)
#   WEFT_PG_PORT         private PostgreSQL port (default 55432)
#   WEFT_KAFKA_PORT      private Kafka broker port, controller on +1 (default 59092)
#   WEFT_ZK_PORT         private ZooKeeper client port (default 52181)
#   WEFT_PROMETHEUS_PORT private Prometheus HTTP port (default 59090)
#   WEFT_TEST_THREADS    if set, passed to cargo test as --test-threads
# WEFT_REQUIRE_SERVICES=1 is exported: tests needing a service never skip.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

export WEFT_SERVICES_DIR=${WEFT_SERVICES_DIR:-$REPO_ROOT/.services}
case "$WEFT_SERVICES_DIR" in /*) ;; *) WEFT_SERVICES_DIR="$REPO_ROOT/$WEFT_SERVICES_DIR" ;; esac
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO_ROOT/$TARGET_DIR" ;; esac
VENV=$WEFT_SERVICES_DIR/venv
PY_REQS=$REPO_ROOT/tests/python/requirements.txt

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# This run starts every service, so no test may skip one: tests that need
# PostgreSQL, Kafka, ZooKeeper or Prometheus run and fail without it
# (components/build/services.rs).
export WEFT_REQUIRE_SERVICES=1
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

# ---------------------------------------------------------------- reporting
STEPS=()
CURRENT=""
CURRENT_START=0
RUN_START=$(date +%s)
SERVICES_STARTED=0

banner() {
    printf '\n========================================================================\n'
    printf '== %s\n' "$*"
    printf '========================================================================\n'
}

# step NAME CMD... : runs CMD under a banner and records the outcome.
step() {
    local name=$1; shift
    CURRENT=$name
    CURRENT_START=$(date +%s)
    banner "$name"
    printf '$ %s\n' "$*"
    "$@"
    STEPS+=("PASS  $(printf '%5ss' $(( $(date +%s) - CURRENT_START )))  $name")
    CURRENT=""
}

on_exit() {
    local rc=$?
    set +e
    if [ -n "$CURRENT" ]; then
        STEPS+=("FAIL  $(printf '%5ss' $(( $(date +%s) - CURRENT_START )))  $CURRENT")
    fi
    if [ "$SERVICES_STARTED" = 1 ]; then
        banner "stopping services"
        "$REPO_ROOT/scripts/services.sh" stop || echo "warning: stopping services failed"
    fi
    banner "summary ($(( $(date +%s) - RUN_START ))s)"
    local s
    for s in "${STEPS[@]}"; do echo "  $s"; done
    if [ "$rc" -eq 0 ]; then
        echo "  ALL STEPS PASSED"
    else
        echo "  FAILED (exit $rc)${CURRENT:+ in: $CURRENT}"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- steps
check_toolchain() {
    cargo --version
    cargo fmt --version
    cargo clippy --version
    python3 --version
}

setup_python() {
    local python=${PYTHON:-python3}
    if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        rm -rf "$VENV"
        mkdir -p "$WEFT_SERVICES_DIR"
        if ! "$python" -m venv "$VENV"; then
            # Debian's own python3 needs python3-venv for `-m venv`.
            if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
                rm -rf "$VENV"
                DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q python3-venv
                "$python" -m venv "$VENV"
            else
                echo "error: '$python -m venv' failed" >&2
                return 1
            fi
        fi
    fi
    # Reinstall only when requirements.txt changed since the last install.
    local stamp=$VENV/.weft-requirements
    if ! cmp -s "$PY_REQS" "$stamp" 2>/dev/null || ! "$VENV/bin/python" -c 'import dapr.clients, pytest' >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$PY_REQS"
        cp "$PY_REQS" "$stamp"
    fi
    "$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | grep -iE '^(dapr|pytest|grpcio|protobuf) ' || true
}

start_services() {
    SERVICES_STARTED=1
    "$REPO_ROOT/scripts/services.sh" start
    local env_lines
    env_lines=$("$REPO_ROOT/scripts/services.sh" env)
    eval "$env_lines"
    echo "$env_lines"
}

# --no-fail-fast: a failing test binary does not hide the others' results.
cargo_test() {
    if [ -n "${WEFT_TEST_THREADS:-}" ]; then
        cargo test --workspace --no-fail-fast -- --test-threads="$WEFT_TEST_THREADS"
    else
        cargo test --workspace --no-fail-fast
    fi
}

# The Apache Dubbo programs the Dubbo tests run (their helper builds
# them again, incrementally); built here first so that a Maven failure shows
# as its own step. Dependencies are cached in $WEFT_SERVICES_DIR/m2.
dubbo_java() {
    mvn -q -B -f "$REPO_ROOT/tests/dubbo-java/pom.xml" \
        -Dmaven.repo.local="$WEFT_SERVICES_DIR/m2" package
}

# Exports WEFT_BIN, the runtime the SDK and Python tests start (the one
# `cargo build` just made unless WEFT_BIN says otherwise).
use_weft_bin() {
    export WEFT_BIN=${WEFT_BIN:-$TARGET_DIR/debug/weft}
    if [ ! -x "$WEFT_BIN" ]; then
        echo "error: $WEFT_BIN not found (cargo build should have produced it)" >&2
        return 1
    fi
    echo "WEFT_BIN=$WEFT_BIN"
}

python_sdk_tests() {
    use_weft_bin || return 1
    "$VENV/bin/python" -m pytest "$REPO_ROOT/tests/python" -q -ra -p no:cacheprovider
}

# The Go SDK: formatting, vet (the SDK, its benchmark module and the Go
# examples) and its tests against the weft just built (both transports,
# the shared-memory test vectors, generated code freshness).
go_sdk_tests() {
    use_weft_bin || return 1
    go version
    local unformatted
    unformatted=$(gofmt -l "$REPO_ROOT/sdk-go" "$REPO_ROOT/examples/go")
    if [ -n "$unformatted" ]; then
        echo "gofmt -l: these files need gofmt:" >&2
        echo "$unformatted" >&2
        return 1
    fi
    local m
    for m in sdk-go sdk-go/bench examples/go; do
        echo "go vet ./... in $m"
        (cd "$REPO_ROOT/$m" && go vet ./...)
    done
    (cd "$REPO_ROOT/sdk-go" && go test -count=1 ./...)
}

java_sdk_tests() {
    use_weft_bin || return 1
    (cd "$REPO_ROOT/sdk-java" && mvn -B -ntp -Dmaven.repo.local="$WEFT_SERVICES_DIR/m2" verify)
}

step "toolchain"                   check_toolchain
step "python venv (dapr, pytest)"  setup_python
step "services: start"             start_services
step "cargo fmt --check"           cargo fmt --all --check
step "cargo clippy -D warnings"    cargo clippy --workspace --all-targets -- -D warnings
step "cargo build"                 cargo build --workspace --bins
step "go SDK tests"                go_sdk_tests
step "java SDK tests (mvn verify)" java_sdk_tests
step "Dubbo test programs (mvn)"   dubbo_java
step "cargo test"                  cargo_test
step "python SDK tests (pytest)"   python_sdk_tests
