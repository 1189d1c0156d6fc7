#!/usr/bin/env bash
# Checks the Helm chart in config/helm/relay-operator against the kustomize install:
#   1. the chart's files/ are verbatim copies of their sources (crds/relays.atrelay.dev.yaml,
#      config/rbac/role.yaml, config/prometheus/relay-alerts.yaml, config/dashboards/*-dashboard.yaml);
#   2. `helm lint --strict` with the default values and with each ci/*-values.yaml;
#   3. `helm template` with the default values renders the same objects as
#      `kubectl kustomize config/default` (but the Namespace, which the chart leaves to
#      `--create-namespace` unless namespace.create), and with ci/all-optional-values.yaml the
#      same as config/default + config/prometheus + config/dashboards: same kinds, names,
#      namespaces and every field, Helm's own labels aside (scripts/lib/compare-manifests.py);
#   4. the comparison itself fails on a changed field and on a missing object (self-test);
#   5. ci/scoped-values.yaml (one watched namespace, other names) renders a Role instead of a
#      ClusterRole with the same rules, WATCH_NAMESPACE, the Lease name in both the
#      Deployment and the leader-election Role, and the placement values.
# Usage: scripts/check-helm.sh           check
#        scripts/check-helm.sh --sync    first refresh the copies in files/ from their sources
# helm is built from its Go module by scripts/lib/helm.sh (cached); kubectl from KUBECTL, the
# e2e control plane's assets ($KUBEBUILDER_ASSETS or ~/.cache/atproto-relay/kubebuilder-assets)
# or PATH.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
chart=config/helm/relay-operator
cache=${RELAY_CACHE_DIR:-$HOME/.cache/atproto-relay}

# Verbatim copies: chart file <- source.
copies=("$chart/files/crds/relays.atrelay.dev.yaml:crds/relays.atrelay.dev.yaml"
        "$chart/files/rbac/role.yaml:config/rbac/role.yaml"
        "$chart/files/prometheus/relay-alerts.yaml:config/prometheus/relay-alerts.yaml")
for source in config/dashboards/*-dashboard.yaml; do
    copies+=("$chart/files/dashboards/$(basename "$source"):$source")
done

if [[ ${1:-} == --sync ]]; then
    rm -f "$chart"/files/dashboards/*.yaml
    for pair in "${copies[@]}"; do
        cp "${pair#*:}" "${pair%%:*}"
        echo "copied ${pair#*:} -> ${pair%%:*}"
    done
fi

helm=$(scripts/lib/helm.sh)
kubectl=${KUBECTL:-}
if [[ -z $kubectl ]]; then
    for candidate in "${KUBEBUILDER_ASSETS:-}/kubectl" "$cache"/kubebuilder-assets/*/kubectl "$(command -v kubectl || true)"; do
        if [[ -x $candidate ]]; then kubectl=$candidate; break; fi
    done
fi
[[ -n $kubectl ]] || { echo "check-helm: no kubectl (set KUBECTL, or build the e2e control plane: e2e/controlplane/build.sh)" >&2; exit 1; }
python=python3
if ! $python -c 'import yaml' 2>/dev/null; then
    python=/usr/bin/python3
    if ! $python -c 'import yaml' 2>/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml >/dev/null
    fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/check-helm.XXXXXX")
trap 'rm -rf "$work"' EXIT
failures=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*" >&2; failures=$((failures + 1)); }

echo "== helm $("$helm" version --template '{{.Version}}') ($helm), kubectl $kubectl"

echo "== the chart's copies"
for pair in "${copies[@]}"; do
    copy=${pair%%:*} source=${pair#*:}
    if cmp -s "$copy" "$source"; then ok "$copy = $source"; else bad "$copy differs from $source (run scripts/check-helm.sh --sync)"; fi
done
for copy in "$chart"/files/dashboards/*.yaml; do
    [[ -f config/dashboards/$(basename "$copy") ]] || bad "$copy has no source in config/dashboards (run scripts/check-helm.sh --sync)"
done

echo "== helm lint"
lint() {
    if "$helm" lint --strict "$chart" "$@" > "$work/lint.log" 2>&1; then
        ok "helm lint --strict ${*:-(default values)}"
    else
        bad "helm lint --strict $*:"; cat "$work/lint.log" >&2
    fi
}
lint
for values in "$chart"/ci/*-values.yaml; do
    lint -f "$values"
done

echo "== helm template vs kubectl kustomize"
render() { # render OUT [helm template args...]
    local out=$1; shift
    "$helm" template relay-operator "$chart" --namespace relay-operator-system "$@" > "$out"
}
compare() { # compare DESCRIPTION EXPECTED ACTUAL [compare-manifests options]
    local description=$1 expected=$2 actual=$3; shift 3
    if $python scripts/lib/compare-manifests.py "$expected" "$actual" "$@" > "$work/compare.log"; then
        ok "$description: $(tail -1 "$work/compare.log")"
    else
        bad "$description:"; cat "$work/compare.log" >&2
    fi
}
"$kubectl" kustomize config/default > "$work/kustomize-default.yaml"
{
    cat "$work/kustomize-default.yaml"
    echo "---"; "$kubectl" kustomize config/prometheus
    echo "---"; "$kubectl" kustomize config/dashboards
} > "$work/kustomize-all.yaml"
render "$work/helm-default.yaml"
render "$work/helm-all.yaml" -f "$chart/ci/all-optional-values.yaml"
compare "default values = config/default (Namespace aside)" \
    "$work/kustomize-default.yaml" "$work/helm-default.yaml" --only-expected Namespace
compare "all optional parts = config/default + config/prometheus + config/dashboards" \
    "$work/kustomize-all.yaml" "$work/helm-all.yaml"

echo "== the comparison catches differences (self-test)"
render "$work/helm-changed.yaml" --set resources.limits.memory=300Mi
if $python scripts/lib/compare-manifests.py "$work/kustomize-default.yaml" "$work/helm-changed.yaml" \
        --only-expected Namespace > "$work/changed.log" \
        || ! grep -q '^differs: Deployment.apps relay-operator-system/relay-operator$' "$work/changed.log" \
        || ! grep -Eq '^    \+ +memory: 300Mi$' "$work/changed.log"; then
    bad "a changed memory limit went unnoticed:"; cat "$work/changed.log" >&2
else
    ok "a changed memory limit is reported: differs: Deployment.apps relay-operator-system/relay-operator (+ memory: 300Mi)"
fi
render "$work/helm-missing.yaml" --set rbac.aggregatedRoles=false
if $python scripts/lib/compare-manifests.py "$work/kustomize-default.yaml" "$work/helm-missing.yaml" \
        --only-expected Namespace > "$work/missing.log"; then
    bad "missing ClusterRoles went unnoticed"
else
    ok "missing objects are reported: $(grep -m1 '^only in' "$work/missing.log" | sed "s|$work/||")"
fi

echo "== a scoped install (ci/scoped-values.yaml)"
render "$work/helm-scoped.yaml" -f "$chart/ci/scoped-values.yaml"
if $python - "$work/kustomize-default.yaml" "$work/helm-scoped.yaml" > "$work/scoped.log" 2>&1 <<'EOF'
import sys, yaml
kustomize = [o for o in yaml.safe_load_all(open(sys.argv[1])) if o]
scoped = [o for o in yaml.safe_load_all(open(sys.argv[2])) if o]
def find(objects, kind, name):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]
kinds = sorted({o["kind"] for o in scoped})
assert "CustomResourceDefinition" not in kinds, "crds.install=false still renders the CRD"
assert not [o for o in scoped if o["kind"] in ("ClusterRole", "ClusterRoleBinding")], \
    "a scoped install renders cluster-wide RBAC"
role = find(scoped, "Role", "relays-operator")
assert role["metadata"]["namespace"] == "relays", role["metadata"]
assert role["rules"] == find(kustomize, "ClusterRole", "relay-operator")["rules"], "scoped Role rules differ from config/rbac"
binding = find(scoped, "RoleBinding", "relays-operator")
assert binding["metadata"]["namespace"] == "relays" and binding["roleRef"]["kind"] == "Role"
assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "relays-operator", "namespace": "relay-operator-system"}]
lease_role = find(scoped, "Role", "relays-operator-leader-election")
assert lease_role["rules"][1]["resourceNames"] == ["relays-operator-leader"], lease_role["rules"]
deployment = find(scoped, "Deployment", "relays-operator")
pod = deployment["spec"]["template"]["spec"]
container = pod["containers"][0]
env = {e["name"]: e.get("value") for e in container["env"]}
assert env["WATCH_NAMESPACE"] == "relays", env
assert env["OPERATOR_LEASE_NAME"] == "relays-operator-leader", env
assert env["RUST_LOG"] == "debug,kube=info", env
assert container["image"] == "ghcr.io/atrelay/relay-operator:0.1.0-abc1234", container["image"]
assert container["imagePullPolicy"] == "Always"
assert "--leader-elect" in container["args"]
assert deployment["spec"]["replicas"] == 2
assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"} and pod["tolerations"][0]["key"] == "dedicated"
assert "podAntiAffinity" in pod["affinity"] and pod["imagePullSecrets"] == [{"name": "ghcr"}]
assert find(scoped, "ServiceMonitor", "relays-operator")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
assert {o["metadata"]["namespace"] for o in scoped if o["kind"] == "ConfigMap"} == {"monitoring"}
print(f"kinds {', '.join(kinds)}; Role relays/relays-operator with config/rbac's rules; "
      "WATCH_NAMESPACE, Lease relays-operator-leader, placement and image values applied")
EOF
then
    ok "$(cat "$work/scoped.log")"
else
    bad "scoped install:"; cat "$work/scoped.log" >&2
fi

echo
if [[ $failures -gt 0 ]]; then
    echo "check-helm: $failures check(s) failed" >&2
    exit 1
fi
echo "check-helm: all checks passed"
