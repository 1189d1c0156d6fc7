#!/usr/bin/env bash
# Try the operator locally in one command: builds the relay, the operator and the e2e tools,
# then starts a real Kubernetes control plane on loopback with the test node agent, installs
# the operator, starts a simulated PDS fleet, and prints a KUBECONFIG and the next commands.
# Ctrl-C stops everything. Options are passed on (see `--help`): --hosts, --rate, --work-dir.
set -euo pipefail
cd "$(dirname "$0")/.."
cache_dir="${RELAY_CACHE_DIR:-$HOME/.cache/atproto-relay}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache_dir/target}"
. scripts/lib/rocksdb.sh
use_system_rocksdb
cargo build --locked -p relay -p relay-operator -p relay-e2e --bins
if [ -z "${KUBEBUILDER_ASSETS:-}" ]; then
  KUBEBUILDER_ASSETS=$(e2e/controlplane/build.sh)
  export KUBEBUILDER_ASSETS
fi
exec "$CARGO_TARGET_DIR/debug/dev-cluster" "$@"
