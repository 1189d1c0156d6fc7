#!/usr/bin/env bash
# Runs an OCI image archive's entrypoint as the image's config says (User, Env, WorkingDir,
# Entrypoint + Cmd or the given arguments), chrooted into its unpacked layers, read-only, in a
# private mount namespace. No container engine needed; needs root and python3.
#   scripts/run-oci.sh ARCHIVE [--ref TAG] [--bind SRC:DST[:ro]] [--tmpfs DST] [--env K=V] -- ARGS...
# e.g. scripts/run-oci.sh ~/.cache/atproto-relay/images/relay.oci.tar -- --version
# The archive is unpacked into a temporary directory, removed when the process exits. To unpack
# once and exec in place (the caller's pid becomes the entrypoint, e.g. for a test harness):
#   python3 scripts/lib/oci.py unpack ARCHIVE DIR
#   python3 scripts/lib/oci.py run DIR [options] -- ARGS...
# Every option: python3 scripts/lib/oci.py --help
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: $0 ARCHIVE [options] -- ARGS..." >&2; exit 2; }
exec python3 "$(dirname "$0")/lib/oci.py" exec "$@"
