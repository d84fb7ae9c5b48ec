#!/usr/bin/env bash
# Runs Weft on its embedded defaults (SQLite state, a YAML configuration
# file; no external service) beside the quickstart app, and edits the
# configuration file while the app watches it.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building weft (embedded backends only) and the quickstart app"
# --no-default-features: no Kafka, PostgreSQL or ZooKeeper backend, none of
# their build (librdkafka's cmake build above all); the quickstart needs none.
cargo build --quiet -p weft --no-default-features -p weft-example-quickstart
target_dir="${CARGO_TARGET_DIR:-target}"

work="$(mktemp -d)"
grpc_port="${DAPR_GRPC_PORT:-50001}"
http_port="${DAPR_HTTP_PORT:-3500}"
cleanup() {
    if [[ -n "${weft_pid:-}" ]] && kill -0 "$weft_pid" 2>/dev/null; then
        kill -TERM "$weft_pid"
        wait "$weft_pid" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "== starting: weft run --app-id quickstart --data-dir $work (gRPC $grpc_port, HTTP $http_port)"
"$target_dir/debug/weft" run --app-id quickstart --data-dir "$work" \
    --grpc-port "$grpc_port" --http-port "$http_port" --log warn &
weft_pid=$!

for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$http_port/v1.0/healthz" 2>/dev/null; then break; fi
    sleep 0.1
done

echo "== running the app"
WATCH_SECONDS=4 DAPR_GRPC_PORT="$grpc_port" "$target_dir/debug/quickstart" &
app_pid=$!
sleep 1.5
echo "== editing $work/configuration.yaml"
printf 'greeting: hello from the quickstart\nfeature-x: "on"\n' > "$work/configuration.yaml"
wait "$app_pid"
echo "== stopping weft"
