#!/usr/bin/env bash
# Regenerates the Go code of the repository's .proto files (proto/dapr/...
# and proto/weft/runtime/v1/...) into sdk-go/proto/, or into OUT_DIR.
#
#   sdk-go/scripts/genproto.sh [OUT_DIR]
#
# The plugins (protoc-gen-go, protoc-gen-go-grpc) are built from the
# versions pinned in sdk-go/tools/go.mod. protoc is taken from $PROTOC, else
# the one the Rust build uses (the protoc-bin-vendored crate in
# ~/.cargo/registry), else `protoc` on PATH; if none is found and we are
# root with apt-get, Debian's protobuf-compiler is installed.
#
# The .proto files carry no go_package option; the Go packages are given
# here with protoc's M flags:
#   dapr/proto/common/v1   -> weft.dev/sdk-go/proto/dapr/common/v1   (commonv1)
#   dapr/proto/runtime/v1  -> weft.dev/sdk-go/proto/dapr/runtime/v1  (runtimev1)
#   weft/runtime/v1        -> weft.dev/sdk-go/proto/weft/runtime/v1  (weftv1)
set -euo pipefail

SDK=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO=$(cd "$SDK/.." && pwd)
PROTO_DIR=$REPO/proto
MODULE=weft.dev/sdk-go
OUT=${1:-$SDK/proto}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

find_protoc() {
    if [ -n "${PROTOC:-}" ] && [ -x "$PROTOC" ]; then
        echo "$PROTOC"; return
    fi
    local p
    for p in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/protoc-bin-vendored-linux-x86_64-*/bin/protoc; do
        if [ -x "$p" ]; then echo "$p"; return; fi
    done
    if command -v protoc >/dev/null 2>&1; then
        command -v protoc; return
    fi
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "protoc not found: installing Debian's protobuf-compiler" >&2
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q protobuf-compiler >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q protobuf-compiler >&2; }
        command -v protoc; return
    fi
    echo "error: protoc not found (set PROTOC, build the Rust workspace once, or install protobuf-compiler)" >&2
    return 1
}

PROTOC_BIN=$(find_protoc)
INCLUDES=(-I "$PROTO_DIR")
# The well-known types (google/protobuf/*.proto) sit beside the binary in the
# vendored crate, in /usr/include for Debian's.
for inc in "$(dirname "$PROTOC_BIN")/../include" /usr/include /usr/local/include; do
    if [ -f "$inc/google/protobuf/any.proto" ]; then
        INCLUDES+=(-I "$inc"); break
    fi
done

BIN=$(mktemp -d)
trap 'rm -rf "$BIN"' EXIT
(cd "$SDK/tools" && GOFLAGS=-mod=mod go build -o "$BIN/" \
    google.golang.org/protobuf/cmd/protoc-gen-go \
    google.golang.org/grpc/cmd/protoc-gen-go-grpc)

cd "$PROTO_DIR"
FILES=()
MAPS=()
for f in dapr/proto/common/v1/*.proto dapr/proto/runtime/v1/*.proto weft/runtime/v1/*.proto; do
    FILES+=("$f")
    case "$f" in
        dapr/proto/common/v1/*)  MAPS+=("M$f=$MODULE/proto/dapr/common/v1;commonv1") ;;
        dapr/proto/runtime/v1/*) MAPS+=("M$f=$MODULE/proto/dapr/runtime/v1;runtimev1") ;;
        weft/runtime/v1/*)       MAPS+=("M$f=$MODULE/proto/weft/runtime/v1;weftv1") ;;
    esac
done
GO_OPTS=(--go_opt=module=$MODULE/proto --go-grpc_opt=module=$MODULE/proto)
for m in "${MAPS[@]}"; do
    GO_OPTS+=(--go_opt="$m" --go-grpc_opt="$m")
done

rm -rf "$OUT/dapr" "$OUT/weft"
"$PROTOC_BIN" "${INCLUDES[@]}" \
    --plugin=protoc-gen-go="$BIN/protoc-gen-go" \
    --plugin=protoc-gen-go-grpc="$BIN/protoc-gen-go-grpc" \
    --go_out="$OUT" --go-grpc_out="$OUT" \
    "${GO_OPTS[@]}" \
    "${FILES[@]}"
echo "generated $(find "$OUT" -name '*.go' | wc -l) files into $OUT with $("$PROTOC_BIN" --version)"
