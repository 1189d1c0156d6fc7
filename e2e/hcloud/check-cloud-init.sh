#!/usr/bin/env bash
# Validates the cloud-init golden fixtures (operator/tests/fixtures/cloud-init/*.yaml) with
# Debian's `cloud-init schema --config-file`, installing the package with apt-get when it is
# missing and we may.
#
# Exit codes: 0 all valid; 1 a fixture is invalid; 3 cloud-init is not available here (the
# reason is printed: not Debian/Ubuntu, not root, the package would not install, or the
# command does not run) — CI treats 3 as "skipped, with a reason", never as a pass.
set -uo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
fixtures=("$root"/operator/tests/fixtures/cloud-init/*.yaml)
UNAVAILABLE=3

unavailable() {
  echo "check-cloud-init: SKIPPED: $*" >&2
  exit "$UNAVAILABLE"
}

if ! command -v cloud-init >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || unavailable "cloud-init is not installed and there is no apt-get (not Debian/Ubuntu)"
  [ "$(id -u)" = 0 ] || unavailable "cloud-init is not installed and installing it needs root (apt-get install cloud-init)"
  echo "check-cloud-init: installing cloud-init with apt-get" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends cloud-init >/tmp/check-cloud-init-apt.log 2>&1; then
    apt-get update -q >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends cloud-init >/tmp/check-cloud-init-apt.log 2>&1 ||
      unavailable "apt-get install cloud-init failed: $(tail -n 3 /tmp/check-cloud-init-apt.log | tr '\n' ' ')"
  fi
fi
version="$(cloud-init --version 2>&1)" || unavailable "cloud-init does not run: $version"
[ -e "${fixtures[0]}" ] || { echo "check-cloud-init: no fixtures in operator/tests/fixtures/cloud-init" >&2; exit 1; }

status=0
for fixture in "${fixtures[@]}"; do
  if output="$(cloud-init schema --config-file "$fixture" 2>&1)"; then
    echo "check-cloud-init: ok: ${fixture#"$root"/} ($version)"
  else
    echo "check-cloud-init: INVALID: ${fixture#"$root"/}" >&2
    echo "$output" >&2
    status=1
  fi
done
exit "$status"
