#!/usr/bin/env bash
# Builds promtool and promql-names (a PromQL selector lister, promtool/promql-names/) from the
# Prometheus Go module pinned in scripts/lib/promtool/go.mod, each only when missing:
#   $RELAY_CACHE_DIR/promtool/<module version>/{promtool,promql-names}   (default ~/.cache/atproto-relay)
# A later run with the same go.mod/go.sum (and promql-names source) reuses them. Prints the directory.
# Usage: scripts/lib/promtool.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/promtool" && pwd)
module_version=$(awk '$1 == "require" && $2 == "github.com/prometheus/prometheus" {print $3}' "$here/go.mod")
cache=${RELAY_CACHE_DIR:-$HOME/.cache/atproto-relay}
out=$cache/promtool/$module_version
module_stamp=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)
names_stamp=$(cat "$here/go.mod" "$here/go.sum" "$here/promql-names/main.go" | sha256sum | cut -c1-16)
fresh() { [[ -x $out/$1 && -f $out/.$1.stamp && $(cat "$out/.$1.stamp") == "$2" ]]; }
if fresh promtool "$module_stamp" && fresh promql-names "$names_stamp"; then
    echo "$out"
    exit 0
fi
if ! command -v go >/dev/null; then
    if [[ -x /usr/local/go/bin/go ]]; then
        export PATH=$PATH:/usr/local/go/bin
    else
        echo "go is required to build promtool (scripts/lib/promtool.sh)" >&2
        exit 1
    fi
fi
mkdir -p "$out"
export GOFLAGS="-trimpath -buildvcs=false"
# A private build cache, removed afterwards: only the two binaries (about 90 MB) stay.
GOCACHE=$(mktemp -d "${TMPDIR:-/tmp}/promtool-gocache.XXXXXX")
export GOCACHE
trap 'chmod -R u+w "$GOCACHE" 2>/dev/null; rm -rf "$GOCACHE"' EXIT
started=$SECONDS
if ! fresh promtool "$module_stamp"; then
    # The module's VERSION file names the release (module v0.316.0 is Prometheus 3.16.0).
    moddir=$(cd "$here" && go mod download -json github.com/prometheus/prometheus | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    release=$(cat "$moddir/VERSION" 2>/dev/null || echo "$module_version")
    echo "building promtool $release (module $module_version) into $out" >&2
    # remove_all_sd leaves out the cloud service-discovery plugins (AWS, Azure, GCE, ...), which
    # rule checks and rule unit tests never use: a smaller download, build and binary.
    (cd "$here" && go build -o "$out/promtool.tmp" -tags remove_all_sd \
        -ldflags "-X github.com/prometheus/common/version.Version=$release" \
        github.com/prometheus/prometheus/cmd/promtool) >&2
    mv "$out/promtool.tmp" "$out/promtool"
    echo "$module_stamp" > "$out/.promtool.stamp"
fi
if ! fresh promql-names "$names_stamp"; then
    echo "building promql-names into $out" >&2
    (cd "$here" && go build -o "$out/promql-names.tmp" ./promql-names) >&2
    mv "$out/promql-names.tmp" "$out/promql-names"
    echo "$names_stamp" > "$out/.promql-names.stamp"
fi
echo "built in $((SECONDS - started))s" >&2
echo "$out"
