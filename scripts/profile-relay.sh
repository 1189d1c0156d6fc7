#!/usr/bin/env bash
# The relay's per-event CPU budget at saturation: runs the daemon bench's saturation phase
# with `perf record --call-graph dwarf` attached to the relay process, then prints the table
# of docs/benchmarks.md (µs of CPU per event by stage and kind of work; scripts/perf-stages.py).
#   scripts/profile-relay.sh                       # the bench's defaults (50 % P-256 accounts)
#   BENCH_P256_PERCENT=0 scripts/profile-relay.sh  # secp256k1 only, as the network signs
# Needs perf (Debian: linux-perf) and root or kernel.perf_event_paranoid <= 1.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/atproto-relay/target}"
export ROCKSDB_LIB_DIR="${ROCKSDB_LIB_DIR:-/usr/lib/x86_64-linux-gnu}"
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
out="${PROFILE_DIR:-$(mktemp -d /tmp/relay-profile.XXXXXX)}"
echo "building the daemon bench (release)..." >&2
bench=$(cargo bench --locked -p relay --bench daemon --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "daemon" and m.get("executable"):
        print(m["executable"])')
[ -x "$bench" ] || { echo "could not build the daemon bench" >&2; exit 1; }
BENCH_PHASES=saturation "$bench" --bench > "$out/bench.txt" 2>&1 &
bench_pid=$!
echo "generating the corpus and waiting for the relay to start..." >&2
relay_pid=""
for _ in $(seq 1 1200); do
  relay_pid=$(pgrep -P "$bench_pid" -f "relay serve" | head -n 1 || true)
  [ -n "$relay_pid" ] && break
  sleep 0.1
done
[ -n "$relay_pid" ] || { echo "the relay did not start; bench output:" >&2; cat "$out/bench.txt" >&2; exit 1; }
echo "profiling relay pid $relay_pid until the phase ends..." >&2
perf record -F 1999 --call-graph dwarf,32768 -p "$relay_pid" -o "$out/perf.data" >/dev/null 2>&1 &
perf_pid=$!
wait "$bench_pid" || true
wait "$perf_pid" || true
grep '^| saturation' "$out/bench.txt"
events=$(grep -o '[0-9]* of [0-9]* out' "$out/bench.txt" | head -n 1 | cut -d' ' -f1)
perf script -i "$out/perf.data" -F comm,tid,period,ip,sym --no-inline 2>/dev/null > "$out/perf.txt"
python3 scripts/perf-stages.py "${events:-0}" < "$out/perf.txt"
echo "(profile kept in $out)" >&2
