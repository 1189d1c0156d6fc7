#!/usr/bin/env bash
# Builds Bluesky's Go relay (indigo `cmd/relay`) from the Go module proxy, for side-by-side
# benchmarks only (`BENCH_RELAY=indigo cargo bench -p relay --bench daemon`). The product
# does not use it. Pinned to one upstream commit so figures can be compared over time;
# INDIGO_VERSION=latest (or another version) to change it.
set -euo pipefail

version="${INDIGO_VERSION:-v0.0.0-20260605210604-af2fec94f34c}"
bin_dir="${INDIGO_BIN_DIR:-$HOME/.cache/atproto-relay/indigo/bin}"

if [ -x "$bin_dir/relay" ] && [ "$(cat "$bin_dir/.version" 2>/dev/null)" = "$version" ]; then
  echo "indigo relay $version already at $bin_dir/relay"
  exit 0
fi
command -v go >/dev/null || { echo "go is needed to build indigo's relay" >&2; exit 1; }
mkdir -p "$bin_dir"
GOBIN="$bin_dir" go install "github.com/bluesky-social/indigo/cmd/relay@$version"
echo "$version" > "$bin_dir/.version"
echo "indigo relay $version built at $bin_dir/relay"
