#!/usr/bin/env bash
# Checks the dashboards (config/dashboards) and alerts (config/prometheus):
#   1. the dashboard ConfigMaps are what config/dashboards/generate.py writes, carry the Grafana
#      sidecar label, and their JSON parses;
#   2. the PrometheusRule's groups, extracted to a plain rules file, pass `promtool check rules`
#      and the unit tests in config/prometheus/tests (`promtool test rules`);
#   3. the tests can fail: each alert, made never to fire, must fail them;
#   4. every metric name in a dashboard query or a rule (read with Prometheus's PromQL parser)
#      is in a running relay's /metrics output, except the cAdvisor/kube-state-metrics names
#      listed in scripts/lib/monitoring.py (EXTERNAL); label names are checked too where the
#      metric has samples.
# promtool is built once from the Prometheus Go module (scripts/lib/promtool.sh, cached).
#
# Usage: scripts/check-monitoring.sh [RELAY_METRICS_FILE]
#   RELAY_METRICS_FILE (argument or environment): a relay's /metrics output, e.g.
#   curl -s http://127.0.0.1:2471/metrics > relay.metrics. Without it, step 4 is skipped
#   (and reported); with CHECK_MONITORING_REQUIRE_METRICS=1 that is an error.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
metrics_file=${1:-${RELAY_METRICS_FILE:-}}

step() { printf '\n== %s\n' "$*"; }

if ! python3 -c 'import yaml' 2>/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "installing python3-yaml" >&2
        (apt-get install -y -qq python3-yaml >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null && apt-get install -y -qq python3-yaml >/dev/null; }) >&2
    else
        echo "PyYAML is missing: install python3-yaml (Debian) or pip install pyyaml" >&2
        exit 1
    fi
fi

bin=$(scripts/lib/promtool.sh)
promtool=$bin/promtool
echo "promtool: $("$promtool" --version 2>&1 | head -1)"

work=$(mktemp -d "${TMPDIR:-/tmp}/check-monitoring.XXXXXX")
trap 'rm -rf "$work"' EXIT

step "dashboards"
python3 config/dashboards/generate.py --check
python3 scripts/lib/monitoring.py dashboards config/dashboards > "$work/dashboard-exprs.json"
echo "config/dashboards: generated files up to date; $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$work/dashboard-exprs.json") queries in valid dashboard JSON"

step "kustomize"
kubectl_bin=$(command -v kubectl || true)
if [[ -z $kubectl_bin ]]; then
    for candidate in "${KUBEBUILDER_ASSETS:-/nonexistent}/kubectl" "${RELAY_CACHE_DIR:-$HOME/.cache/atproto-relay}"/kubebuilder-assets/*/kubectl; do
        [[ -x $candidate ]] && { kubectl_bin=$candidate; break; }
    done
fi
if [[ -n $kubectl_bin ]]; then
    for dir in config/dashboards config/prometheus; do
        objects=$("$kubectl_bin" kustomize "$dir" | grep -c '^kind:')
        echo "$dir: renders $objects objects"
    done
else
    echo "SKIPPED: no kubectl (PATH, KUBEBUILDER_ASSETS or the e2e control plane cache) to render the kustomizations"
fi

step "rules: promtool check rules"
rule_files=()
for source in config/prometheus/*.yaml; do
    grep -q '^kind: PrometheusRule' "$source" || continue
    name=$(basename "$source" .yaml)
    python3 scripts/lib/monitoring.py extract-rules "$source" "$work/$name.rules.yaml"
    rule_files+=("$work/$name.rules.yaml")
done
if [[ ${#rule_files[@]} == 0 ]]; then
    echo "no PrometheusRule in config/prometheus" >&2
    exit 1
fi
"$promtool" check rules "${rule_files[@]}"

step "rules: promtool test rules"
cp config/prometheus/tests/*.test.yaml "$work/"
tests=()
for test in "$work"/*.test.yaml; do tests+=("$(basename "$test")"); done
(cd "$work" && "$promtool" test rules "${tests[@]}")

step "rules: every alert has a test that sees it fire"
mkdir -p "$work/mutant"
cp "$work"/*.test.yaml "$work/mutant/"
uncovered=()
alerts=0
for rules in "${rule_files[@]}"; do
    base=$(basename "$rules")
    for alert in $(sed -n 's/^[[:space:]-]*alert: *\([A-Za-z0-9_]*\).*/\1/p' "$rules"); do
        alerts=$((alerts + 1))
        cp "${rule_files[@]}" "$work/mutant/"
        python3 scripts/lib/monitoring.py mutate-rules "$rules" "$alert" "$work/mutant/$base"
        if (cd "$work/mutant" && "$promtool" test rules "${tests[@]}" >/dev/null 2>&1); then
            uncovered+=("$alert")
        fi
    done
done
if [[ ${#uncovered[@]} != 0 ]]; then
    echo "the tests still pass when these alerts never fire (add a test where each fires): ${uncovered[*]}" >&2
    exit 1
fi
echo "$alerts alerts: disabling any one of them fails the tests"

step "metric names against a relay's /metrics"
python3 scripts/lib/monitoring.py rule-exprs "${rule_files[@]}" > "$work/rule-exprs.json"
python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1])) + json.load(open(sys.argv[2]))))' \
    "$work/dashboard-exprs.json" "$work/rule-exprs.json" > "$work/exprs.json"
"$bin/promql-names" < "$work/exprs.json" > "$work/selectors.json"
if [[ -z $metrics_file ]]; then
    if [[ ${CHECK_MONITORING_REQUIRE_METRICS:-0} == 1 ]]; then
        echo "no relay metrics file: pass one as the argument or RELAY_METRICS_FILE" >&2
        exit 1
    fi
    # The expressions still have to parse.
    python3 scripts/lib/monitoring.py check-parse "$work/selectors.json"
    echo "SKIPPED: no relay metrics file (argument or RELAY_METRICS_FILE); all queries parse"
else
    [[ -s $metrics_file ]] || { echo "$metrics_file: missing or empty" >&2; exit 1; }
    python3 scripts/lib/monitoring.py check-names "$metrics_file" "$work/selectors.json"
fi

printf '\ncheck-monitoring: OK\n'
