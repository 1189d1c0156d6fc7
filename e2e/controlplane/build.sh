#!/usr/bin/env bash
# Builds the e2e control plane from upstream Go modules and lays it out as
# controller-runtime's KUBEBUILDER_ASSETS directory:
#   etcd kube-apiserver kube-controller-manager kube-scheduler kubectl
# Usage: e2e/controlplane/build.sh [OUT_DIR]   (prints OUT_DIR when done)
# Rebuilds only when the pinned go.mod/go.sum files change.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/kubernetes/go.mod")
cache=${RELAY_CACHE_DIR:-$HOME/.cache/atproto-relay}
out=${1:-$cache/kubebuilder-assets/k8s-${version#v}}
stamp=$(cat "$here"/kubernetes/go.mod "$here"/kubernetes/go.sum "$here"/etcd/go.mod "$here"/etcd/go.sum | sha256sum | cut -c1-16)
if [[ -f $out/.stamp && $(cat "$out/.stamp") == "$stamp" ]]; then
    echo "$out"
    exit 0
fi
command -v go >/dev/null || { echo "go is required to build the control plane (or set KUBEBUILDER_ASSETS)" >&2; exit 1; }
mkdir -p "$out"
export GOFLAGS="-trimpath -buildvcs=false"
echo "building etcd into $out" >&2
(cd "$here/etcd" && go build -o "$out/etcd" go.etcd.io/etcd/server/v3) >&2
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    echo "building $cmd ($version) into $out" >&2
    (cd "$here/kubernetes" && go build -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd") >&2
done
echo "$stamp" > "$out/.stamp"
echo "$out"
