#!/usr/bin/env bash
# The Java SDK benchmark (docs/benchmarks.md, "Java SDK"): builds with -Pbench
# and runs dev.weft.bench.StateGetBench against a release weft.
#
#   sdk-java/bench/run.sh [--weft target/release/weft] [--rounds 2] ...
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
M2=${WEFT_M2:-$ROOT/.services/m2}
LOG=$(mktemp)
trap 'rm -f "$LOG" "$LOG.cp"' EXIT
mvn -B -ntp -f "$ROOT/sdk-java/pom.xml" -Pbench -Dmaven.repo.local="$M2" -DskipTests install > "$LOG" 2>&1 \
    || { cat "$LOG"; exit 1; }
mvn -B -ntp -f "$ROOT/sdk-java/bench/pom.xml" -Dmaven.repo.local="$M2" dependency:build-classpath \
    -Dmdep.outputFile="$LOG.cp" > "$LOG" 2>&1 || { cat "$LOG"; exit 1; }
exec java -Xms512m -Xmx512m -cp "$ROOT/sdk-java/bench/target/classes:$(cat "$LOG.cp")" dev.weft.bench.StateGetBench "$@"
