#!/usr/bin/env bash
# Runs one Go example against real runtimes on embedded defaults (no
# external service), over shared memory unless WEFT_TRANSPORT says grpc.
#
#   examples/go/run.sh state-etag | ordered-consumer | invoke
#
# The runtime is $WEFT_BIN, else target/debug/weft (built with cargo when
# missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
example=${1:-}
case "$example" in
    state-etag|ordered-consumer|invoke) ;;
    *) echo "usage: $0 state-etag|ordered-consumer|invoke" >&2; exit 2 ;;
esac

weft=${WEFT_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/weft}
if [ ! -x "$weft" ]; then
    echo "== building weft"
    (cd "$repo" && cargo build --quiet -p weft)
fi

work=$(mktemp -d /tmp/weft-example-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start APP: a runtime for APP under $work/APP, on embedded defaults with an
# in-memory state store; sets APP_DIR.
start() {
    local app=$1 dir=$work/$1 http
    mkdir -p "$dir/res"
    cat > "$dir/res/statestore.yaml" <<EOF
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.in-memory
  version: v1
  metadata: []
EOF
    cat > "$dir/res/pubsub.yaml" <<EOF
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.embedded
  version: v1
  metadata: []
EOF
    http=$(free_port)
    echo "== weft run --app-id $app (data dir $dir)"
    WEFT_LOCAL_REGISTRY_DIR=$work/registry "$weft" run --app-id "$app" --data-dir "$dir" \
        --resources-path "$dir/res" --grpc-port "$(free_port)" --http-port "$http" \
        --uds "$dir/grpc.sock" --dev-ca-dir "$work/ca" --log error &
    pids+=($!)
    for _ in $(seq 1 200); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$http/v1.0/healthz" 2>/dev/null; then return; fi
        sleep 0.05
    done
    echo "weft for $app did not become healthy" >&2
    exit 1
}

cd "$here"
echo "== building the example"
go build -o "$work/example" "./$example"

case "$example" in
    invoke)
        start checkout
        start orders
        CHECKOUT_SHM_SOCKET=$work/checkout/shm.sock CHECKOUT_UDS=$work/checkout/grpc.sock \
        ORDERS_SHM_SOCKET=$work/orders/shm.sock ORDERS_UDS=$work/orders/grpc.sock \
            "$work/example"
        ;;
    *)
        start demo
        WEFT_APP_ID=demo WEFT_SHM_SOCKET=$work/demo/shm.sock WEFT_UDS=$work/demo/grpc.sock \
            "$work/example"
        ;;
esac
