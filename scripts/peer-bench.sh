#!/usr/bin/env bash
# Side-by-side benchmark of weft against Dapr's own sidecar (daprd), with the
# same clients on the same machine (docs/benchmarks.md, "Side by side with
# daprd"). Run by hand, not in CI.
#
# Usage:
#   scripts/peer-bench.sh [peer flags…]
#     e.g. scripts/peer-bench.sh -rounds 3
#          scripts/peer-bench.sh -cells invoke -rounds 2 -keep
#
# Needs: Go, a release weft (cargo build --release -p weft; $WEFT_BIN
# overrides target/release/weft). The first run fetches Dapr's source
# (github.com/dapr/dapr@$DAPR_VERSION through the Go module proxy) and builds
# daprd (and sentry, for the daprd-with-mTLS pair) into .cache/daprd/; later
# runs reuse those binaries. DAPR_MTLS=0 skips sentry and the mTLS pair.
# Everything listens on 127.0.0.1; every process started is stopped on exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
DAPR_VERSION=${DAPR_VERSION:-v1.14.0}
cache=$root/.cache/daprd
weft=${WEFT_BIN:-$root/target/release/weft}
mtls=${DAPR_MTLS:-1}

[[ -x $weft ]] || { echo "no weft binary at $weft: cargo build --release -p weft" >&2; exit 1; }

build_dapr() { # $1 = cmd/<name>
	local name=$1
	[[ -x $cache/$name ]] && return 0
	mkdir -p "$cache"
	if [[ ! -d $cache/src ]]; then
		local dir
		dir=$(go mod download -json "github.com/dapr/dapr@$DAPR_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
		[[ -n $dir ]] || { echo "go mod download github.com/dapr/dapr@$DAPR_VERSION failed" >&2; exit 1; }
		cp -r "$dir" "$cache/src.tmp" && chmod -R u+w "$cache/src.tmp" && mv "$cache/src.tmp" "$cache/src"
	fi
	echo "building $name $DAPR_VERSION (several minutes, once) …" >&2
	(cd "$cache/src" && go build -tags stablecomponents \
		-ldflags "-X github.com/dapr/dapr/pkg/buildinfo.version=${DAPR_VERSION#v}" -o "../$name.tmp" "./cmd/$name") && mv "$cache/$name.tmp" "$cache/$name"
}

build_dapr daprd
sentry_flag=()
if [[ $mtls == 1 ]]; then
	build_dapr sentry
	sentry_flag=(-sentry "$cache/sentry")
fi

bin=$(mktemp -d -t weft-peer-bin-XXXXXX)
trap 'rm -rf "$bin"' EXIT
(cd "$root/sdk-go/bench" && go build -o "$bin/peer" ./peer && go build -o "$bin/peerleg" ./peer/peerleg)

# The benchmark stops its own children (sidecars, apps, legs) on exit; they
# also die with it (parent-death signal) if it is killed.
"$bin/peer" -weft "$weft" -daprd "$cache/daprd" -peerleg "$bin/peerleg" "${sentry_flag[@]}" "$@"
