#!/usr/bin/env bash
# Builds `helm` from the Helm Go module pinned in scripts/lib/helm/go.mod, only when missing:
#   $RELAY_CACHE_DIR/helm/<module version>/helm        (default ~/.cache/atproto-relay)
# A later run with the same go.mod/go.sum reuses it (a stamp beside the binary says which).
# The build uses a private GOCACHE that is deleted afterwards, so only the binary (~60 MB) stays;
# the downloaded modules stay in the ordinary Go module cache.
# Usage: scripts/lib/helm.sh            prints the path of the helm binary
#        source scripts/lib/helm.sh     (from bash) defines helm_bin, which prints it too

helm_bin() {
    local here module_version cache out stamp
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")/helm" && pwd)
    module_version=$(awk '$1 == "require" && $2 == "helm.sh/helm/v3" {print $3}' "$here/go.mod")
    cache=${RELAY_CACHE_DIR:-$HOME/.cache/atproto-relay}
    out=$cache/helm/$module_version
    stamp=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)
    if [[ -x $out/helm && -f $out/.stamp && $(cat "$out/.stamp") == "$stamp" ]]; then
        echo "$out/helm"
        return 0
    fi
    if ! command -v go >/dev/null; then
        if [[ -x /usr/local/go/bin/go ]]; then
            export PATH=$PATH:/usr/local/go/bin
        else
            echo "go is required to build helm (scripts/lib/helm.sh)" >&2
            return 1
        fi
    fi
    mkdir -p "$out"
    local gocache started
    gocache=$(mktemp -d "${TMPDIR:-/tmp}/helm-gocache.XXXXXX")
    started=$SECONDS
    echo "building helm $module_version into $out" >&2
    # -s -w: no symbol table or DWARF (a smaller binary; helm's own release builds do the same).
    if ! (cd "$here" && GOCACHE=$gocache GOFLAGS="-trimpath -buildvcs=false" CGO_ENABLED=0 \
        go build -o "$out/helm.tmp" \
            -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$module_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
            helm.sh/helm/v3/cmd/helm) >&2; then
        chmod -R u+w "$gocache" 2>/dev/null; rm -rf "$gocache" "$out/helm.tmp"
        return 1
    fi
    chmod -R u+w "$gocache" 2>/dev/null; rm -rf "$gocache"
    mv "$out/helm.tmp" "$out/helm"
    echo "$stamp" > "$out/.stamp"
    echo "helm $module_version built in $((SECONDS - started))s" >&2
    echo "$out/helm"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    helm_bin
fi
