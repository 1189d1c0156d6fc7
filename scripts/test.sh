#!/usr/bin/env bash
# The project's whole test suite: formatting, lints, unit/property/vector tests,
# conformance against the reference TypeScript PDS and firehose client, the
# operator's end-to-end suite on a real Kubernetes control plane, a CRD drift
# check, and a short smoke run of every fuzz target. Safe to run on a fresh machine:
# it installs what it needs. Build output goes outside the clone (RELAY_CACHE_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

cache_dir="${RELAY_CACHE_DIR:-$HOME/.cache/atproto-relay}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache_dir/target}"
mkdir -p "$CARGO_TARGET_DIR"
# Incremental state is keyed by the checkout's path, and every CI run is a fresh clone in a new
# folder: it would only pile up (gigabytes a run) on a shared target directory. Dependencies
# are reused either way.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
rm -rf "$CARGO_TARGET_DIR/debug/incremental" "$CARGO_TARGET_DIR/release/incremental"
fuzz_seconds="${RELAY_FUZZ_SMOKE_SECONDS:-15}"

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
need_c_compiler() { command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1; }
if ! need_c_compiler; then
  # libsecp256k1, ring and mimalloc compile C code.
  apt-get update -qq && apt-get install -y -qq build-essential
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    rustup component add "$component"
  fi
done
cargo --version

step "RocksDB (the collection index) from the distribution"
. scripts/lib/rocksdb.sh
use_system_rocksdb
echo "ROCKSDB_LIB_DIR: ${ROCKSDB_LIB_DIR:-unset (RocksDB is compiled from source)}"

step "PostgreSQL for the storage and daemon tests"
# A throwaway cluster on a loopback port, owned by the postgres user, removed on exit.
if [ -z "${RELAY_TEST_POSTGRES_URL:-}" ]; then
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq postgresql
  fi
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  pg_data=$(mktemp -d /tmp/relay-test-pg.XXXXXX)
  run_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
  trap 'run_pg "$pg_bin/pg_ctl -D $pg_data -m immediate stop" >/dev/null 2>&1; rm -rf "$pg_data"' EXIT
  [ "$(id -u)" = 0 ] && chown postgres "$pg_data"
  run_pg "$pg_bin/initdb -D $pg_data -A trust -U postgres" >/dev/null
  # A port per run, below the kernel's ephemeral range (so the many loopback connections of
  # the tests and benches cannot hold it), retried a few times in case another listener has it.
  pg_started=""
  for attempt in 1 2 3 4 5; do
    pg_port="${RELAY_TEST_POSTGRES_PORT:-$((20000 + ($$ * 7 + attempt * 613) % 10000))}"
    if run_pg "$pg_bin/pg_ctl -D $pg_data -l $pg_data/server.log -w -o \"-p $pg_port -k $pg_data -c listen_addresses=127.0.0.1 -c fsync=off\" start" >/dev/null; then
      pg_started=1
      break
    fi
    echo "PostgreSQL did not start on port $pg_port (attempt $attempt):" >&2
    tail -n 3 "$pg_data/server.log" >&2 || true
  done
  [ -n "$pg_started" ] || { echo "could not start PostgreSQL for the tests" >&2; exit 1; }
  export RELAY_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
fi
echo "PostgreSQL: $RELAY_TEST_POSTGRES_URL"

step "Kubernetes control plane for the e2e suite (built from upstream Go modules, cached)"
if ! command -v openssl >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq openssl
fi
if [ -z "${KUBEBUILDER_ASSETS:-}" ]; then
  KUBEBUILDER_ASSETS=$(e2e/controlplane/build.sh)
  export KUBEBUILDER_ASSETS
fi
echo "KUBEBUILDER_ASSETS: $KUBEBUILDER_ASSETS"

step "Helm chart: helm lint, helm template against kubectl kustomize (helm from its Go module, cached)"
scripts/check-helm.sh

step "real ATProto peers for the conformance test (npm ci, cached)"
# The reference PDS/PLC (@atproto/dev-env) and validating client (@atproto/sync), pinned
# by relay/tests/peers/package-lock.json; better-sqlite3 builds from source (no network
# for prebuilt binaries), which needs a C++ compiler and python3.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq nodejs npm
fi
peers_dir="$cache_dir/peers"
peers_stamp=$(cat relay/tests/peers/package.json relay/tests/peers/package-lock.json | sha256sum | cut -c1-16)
if [ "$(cat "$peers_dir/.stamp" 2>/dev/null)" != "$peers_stamp" ]; then
  rm -rf "$peers_dir" && mkdir -p "$peers_dir"
  cp relay/tests/peers/package.json relay/tests/peers/package-lock.json "$peers_dir/"
  (cd "$peers_dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$peers_stamp" > "$peers_dir/.stamp"
fi
export RELAY_PEERS_NODE_MODULES="$peers_dir/node_modules"
echo "node $(node --version), peers in $RELAY_PEERS_NODE_MODULES"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "CRD drift check (crds/ and docs/crd-reference.md must equal what relay-operator prints)"
cargo run --quiet --locked -p relay-operator -- crd > "$cache_dir/crd.yaml"
if ! diff -u crds/relays.atrelay.dev.yaml "$cache_dir/crd.yaml"; then
  echo "crds/ is out of date: run cargo run -p relay-operator -- crd > crds/relays.atrelay.dev.yaml" >&2
  exit 1
fi
cargo run --quiet --locked -p relay-operator -- reference > "$cache_dir/crd-reference.md"
if ! diff -u docs/crd-reference.md "$cache_dir/crd-reference.md"; then
  echo "docs/crd-reference.md is out of date: run cargo run -p relay-operator -- reference > docs/crd-reference.md" >&2
  exit 1
fi

step "the protocol core has no daemon dependencies"
# relay-atproto is what the fuzz targets, `relay verify` and the coverage tool build on: no
# async runtime, database, HTTP stack or RocksDB may creep into it.
forbidden=$(cargo tree --locked -p relay-atproto -e normal --prefix none | sed 's/ v[0-9].*//' | sort -u \
  | grep -E '^(tokio|sqlx|sqlx-core|rocksdb|librocksdb-sys|reqwest|hyper|axum|tungstenite)$' || true)
if [ -n "$forbidden" ]; then
  echo "relay-atproto depends on daemon crates: $forbidden" >&2
  exit 1
fi
echo "relay-atproto: $(cargo tree --locked -p relay-atproto -e normal --prefix none | sed 's/ v[0-9].*//' | sort -u | wc -l) crates, none of tokio/sqlx/rocksdb/reqwest/hyper/axum"
fuzz_forbidden=$(cd relay/fuzz && cargo tree --locked -e normal --prefix none | sed 's/ v[0-9].*//' | sort -u \
  | grep -E '^(tokio|sqlx|rocksdb|reqwest|axum)$' || true)
if [ -n "$fuzz_forbidden" ]; then
  echo "the fuzz crate depends on daemon crates: $fuzz_forbidden" >&2
  exit 1
fi

step "relay architecture: stages take handles from the wiring function, never the wiring module"
scripts/check-architecture.sh

step "cloud-init user data for Hetzner nodes: golden fixtures against Debian's cloud-init schema"
# Exit 3: cloud-init could not be installed or run here (the script says why); not a failure.
cloud_init_rc=0
e2e/hcloud/check-cloud-init.sh || cloud_init_rc=$?
if [ "$cloud_init_rc" -ne 0 ] && [ "$cloud_init_rc" -ne 3 ]; then
  exit "$cloud_init_rc"
fi

step "Argo CD health check of Relays (Lua 5.4 against saved Relay objects)"
# Before the e2e suite, which also runs it on the objects of its own run once lua5.4 is here.
e2e/argocd/test.sh

step "images: release binaries, OCI archives built with buildah, run from the image"
# Before cargo test: the e2e suite runs the relay and operator pods from these archives, so
# what ships is what is tested.
scripts/check-images.sh
images_dir="${IMAGES_DIR:-$cache_dir/images}"
export E2E_RELAY_IMAGE_ARCHIVE="$images_dir/relay.oci.tar"
export E2E_OPERATOR_IMAGE_ARCHIVE="$images_dir/relay-operator.oci.tar"

step "cargo test (the e2e suite runs the relay and operator pods from the images above)"
cargo build --workspace --locked --bins
cargo test --workspace --locked

step "dashboards and alerts (promtool, and every metric they name in a busy relay's /metrics)"
# relay/tests/coverage.rs saved that /metrics output during the test run above.
CHECK_MONITORING_REQUIRE_METRICS=1 scripts/check-monitoring.sh "$CARGO_TARGET_DIR/tmp/relay-metrics.prom"

step "benchmark builds"
cargo bench -p relay --benches --locked --no-run

step "fuzz smoke (${fuzz_seconds}s per target)"
if [ "$fuzz_seconds" -gt 0 ]; then
  if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz smoke needs a nightly toolchain (cargo fuzz uses sanitizer flags); install it with: rustup toolchain install nightly" >&2
    exit 1
  fi
  if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
  fi
  fuzz_target_dir="$cache_dir/fuzz-target"
  # Seed the corpora with real frames and CARs from the test vectors.
  FUZZ_SEED_DIR="$cache_dir/fuzz-corpus" cargo test --locked -p relay --test indigo_data -- --ignored write_fuzz_seeds
  for target in frame_decode car_read cbor_decode mst_ops; do
    corpus="$cache_dir/fuzz-corpus/$target"
    mkdir -p "$corpus"
    log="$cache_dir/fuzz-$target.log"
    if ! (cd relay && CARGO_TARGET_DIR="$fuzz_target_dir" cargo +nightly fuzz run "$target" "$corpus" -- \
        -max_total_time="$fuzz_seconds" -max_len=65536 -print_final_stats=1 >"$log" 2>&1); then
      tail -n 60 "$log" >&2
      echo "fuzz target $target failed (crash inputs, if any, are in relay/fuzz/artifacts/$target)" >&2
      exit 1
    fi
    echo "$target: $(grep -m1 'stat::number_of_executed_units' "$log" || echo 'no stats')"
  done
fi

step "all checks passed"
