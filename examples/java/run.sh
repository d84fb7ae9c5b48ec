#!/usr/bin/env bash
# Runs one Java SDK example against a fresh `weft` runtime:
#
#   examples/java/run.sh state     # state with etags
#   examples/java/run.sh ordered   # an ordered consumer with a retry
#   examples/java/run.sh invoke    # invocation without an app port, with a deadline
#
# The runtime is $WEFT_BIN, else target/release/weft or target/debug/weft
# (cargo build -p weft). WEFT_TRANSPORT=shm|grpc|auto picks the transport
# (default auto: shared memory). Maven's local repository is .services/m2.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
case "${1:-}" in
    state) MAIN=dev.weft.examples.StateWithEtag ;;
    ordered) MAIN=dev.weft.examples.OrderedConsumer ;;
    invoke) MAIN=dev.weft.examples.Invocation ;;
    *) echo "usage: $0 state|ordered|invoke" >&2; exit 2 ;;
esac
WEFT=${WEFT_BIN:-}
if [ -z "$WEFT" ]; then
    for b in "$ROOT/target/release/weft" "$ROOT/target/debug/weft"; do
        if [ -x "$b" ]; then WEFT=$b; break; fi
    done
fi
[ -n "$WEFT" ] && [ -x "$WEFT" ] || { echo "error: no weft binary: run 'cargo build -p weft' or set WEFT_BIN" >&2; exit 1; }
M2=${WEFT_M2:-$ROOT/.services/m2}

TMP=$(mktemp -d)
PID=
trap '[ -n "$PID" ] && { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }; rm -rf "$TMP"' EXIT
echo "building the SDK and the examples (mvn install -DskipTests) ..."
mvn -B -ntp -f "$ROOT/sdk-java/pom.xml" -Dmaven.repo.local="$M2" -DskipTests install > "$TMP/mvn.log" 2>&1 \
    || { cat "$TMP/mvn.log"; exit 1; }
CP=$TMP/classpath
mvn -B -ntp -f "$ROOT/examples/java/pom.xml" -Dmaven.repo.local="$M2" dependency:build-classpath \
    -Dmdep.outputFile="$CP" > "$TMP/mvn.log" 2>&1 || { cat "$TMP/mvn.log"; exit 1; }
mkdir -p "$TMP/resources" "$TMP/data"
for c in "statestore state.in-memory" "pubsub pubsub.embedded"; do
    set -- $c
    printf 'apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: %s\nspec:\n  type: %s\n  version: v1\n  metadata: []\n' "$1" "$2" > "$TMP/resources/$1.yaml"
done
GRPC=$((40000 + RANDOM % 10000)); HTTP=$((GRPC + 10000))
"$WEFT" run --app-id java-example --grpc-port "$GRPC" --http-port "$HTTP" --data-dir "$TMP/data" \
    --resources-path "$TMP/resources" > "$TMP/weft.log" 2>&1 &
PID=$!
for _ in $(seq 200); do
    curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP/v1.0/healthz" 2>/dev/null | grep -q 204 && break
    kill -0 "$PID" 2>/dev/null || { cat "$TMP/weft.log"; exit 1; }
    sleep 0.1
done
WEFT_APP_ID=java-example DAPR_GRPC_PORT=$GRPC WEFT_SHM_SOCKET=$TMP/data/shm.sock \
    java -cp "$ROOT/examples/java/target/classes:$(cat "$CP")" "$MAIN"
