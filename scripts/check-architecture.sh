#!/usr/bin/env bash
# Import rules of the relay's stage modules (docs/architecture.md), checked with grep:
#   - a stage (ingest, validate, sequence, fanout, collections, coverage) never imports the
#     wiring module nor the HTTP façade (`app`): it gets its handles from `wiring::start`;
#   - the HTTP APIs (xrpc, admin) never import the wiring module, nor each other (what they
#     share is in `http`);
#   - the sequencer names no ingest or validation type (what flows between them is in
#     `progress`).
# Exits non-zero naming each offending line.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)/relay/src"
failed=0

# forbid DIRS PATTERN WHY: fails when a non-comment line under DIRS matches PATTERN.
forbid() {
  local pattern=$2 why=$3 dir hits
  for dir in $1; do
    hits=$(grep -rnE "$pattern" "$src/$dir" --include='*.rs' | grep -vE '^[^:]+:[0-9]+:\s*//' || true)
    if [ -n "$hits" ]; then
      echo "architecture: $dir $why:" >&2
      echo "$hits" | sed "s|$src/|  relay/src/|" >&2
      failed=1
    fi
  done
}

forbid "ingest validate sequence fanout collections coverage" 'crate::(app|wiring)\b' \
  "imports the wiring module or the HTTP façade (take narrow handles from wiring::start instead)"
forbid "xrpc admin" 'crate::wiring\b' "imports the wiring module"
forbid "xrpc" 'crate::admin\b' "imports the admin API (shared HTTP pieces belong in http.rs)"
forbid "admin" 'crate::xrpc\b' "imports the XRPC API (shared HTTP pieces belong in http.rs)"
forbid "sequence" 'crate::(ingest|validate)\b' "names ingest or validation types (use progress.rs)"

if [ "$failed" -ne 0 ]; then
  exit 1
fi
echo "architecture: stage modules import neither the wiring module nor the façade; xrpc and admin are independent; the sequencer names no ingest type"
