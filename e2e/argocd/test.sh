#!/usr/bin/env bash
# Tests the Argo CD health check of Relays (operator/health/argocd-health.lua) with Debian's
# Lua 5.4 against Relay objects saved from an e2e run (e2e/argocd/fixtures/*.json; the e2e
# suite writes fresh ones to <work dir>/argocd-fixtures). Installs lua5.4 when missing.
# Fails when the check answers a different health than a fixture's name says.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
fixtures="${1:-$here/fixtures}"

if ! command -v lua5.4 >/dev/null 2>&1; then
  echo "installing lua5.4 (Debian package)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq lua5.4 >/dev/null
fi

shopt -s nullglob
files=("$fixtures"/*.json)
if [ "${#files[@]}" -eq 0 ]; then
  echo "no fixtures in $fixtures" >&2
  exit 1
fi
exec lua5.4 "$here/run.lua" "$repo/operator/health/argocd-health.lua" "${files[@]}"
