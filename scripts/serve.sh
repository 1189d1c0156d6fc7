#!/usr/bin/env bash
# The main job: `relay serve` with embedded defaults (SQLite, the event log and the
# collection index under ./data/relay; firehose and XRPC on :2470; admin, metrics and health
# on :2471). Installs what the build needs on a fresh Debian/Ubuntu machine, then builds and
# runs. Extra arguments go to `relay serve` (see docs/relay.md), e.g. --upstream "".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/rocksdb.sh
if ! command -v cc >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq build-essential
fi
use_system_rocksdb
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${RELAY_CACHE_DIR:-$HOME/.cache/atproto-relay}/target}"
exec cargo run --release --locked -p relay -- serve "$@"
