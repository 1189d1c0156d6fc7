#!/usr/bin/env bash
# Builds the relay and operator images as OCI archives, without a Docker engine:
#   1. cargo build --release -p relay -p relay-operator --bins   (CARGO_TARGET_DIR is reused)
#   2. per image, scripts/lib/image-rootfs.sh lays out the stripped binary and the shared
#      libraries it links (ldd), and `buildah bud` runs the `image` stage of relay/Dockerfile or
#      operator/Dockerfile with that directory as its `build` stage: FROM scratch, user 65532,
#      WORKDIR, ENTRYPOINT, org.opencontainers.image.* labels; no shell.
#   3. `buildah push` into an OCI layout under two tags, VERSION and VERSION-GITSHA (plus
#      `-dirty` when relay/, operator/ or Cargo.* have uncommitted changes), tarred as
#      $IMAGES_DIR/<name>.oci.tar (an `oci-archive`: skopeo, podman and `docker load` read it).
# An image is rebuilt only when its inputs changed (the stripped binary, the libraries, the
# Dockerfile, image-rootfs.sh, the image name); otherwise the archive is kept as it is.
# Prints a table of image sizes.
#
# Environment:
#   IMAGES_DIR       output directory (default $RELAY_CACHE_DIR/images, ~/.cache/atproto-relay/images)
#   IMAGE_REGISTRY   repository prefix of the image names (default ghcr.io/atrelay)
#   IMAGE_SOURCE     adds the org.opencontainers.image.source label (e.g. the repository URL)
#   IMAGES_SKIP_CARGO=1  use the binaries already in CARGO_TARGET_DIR/release
# Output files, per image NAME (relay, relay-operator):
#   NAME.oci.tar     the archive;  NAME.json   name, tags, digest, sizes, binary sha256
# Needs root (buildah with the vfs driver and chroot isolation; installed with apt-get if
# missing). buildah's storage lives in $RELAY_CACHE_DIR/buildah and is emptied after each build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cache=${RELAY_CACHE_DIR:-$HOME/.cache/atproto-relay}
out=${IMAGES_DIR:-$cache/images}
registry=${IMAGE_REGISTRY:-ghcr.io/atrelay}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
mkdir -p "$out"
work_dirs=()
trap 'rm -rf "${work_dirs[@]}"' EXIT

if ! command -v buildah >/dev/null; then
    echo "installing buildah (Debian package)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >&2
fi
export BUILDAH_ISOLATION=chroot
buildah_store=$cache/buildah
bah() { buildah --root "$buildah_store/root" --runroot "$buildah_store/run" --storage-driver vfs "$@"; }

if [[ ${IMAGES_SKIP_CARGO:-0} != 1 ]]; then
    # shellcheck source=lib/rocksdb.sh
    source scripts/lib/rocksdb.sh
    use_system_rocksdb
    started=$SECONDS
    cargo build --release -p relay -p relay-operator --bins
    echo "cargo build --release: $((SECONDS - started))s" >&2
fi

git_sha=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ $git_sha != unknown && -n $(git status --porcelain -- relay operator Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    git_sha=$git_sha-dirty
fi
# Image timestamps are the commit's, so the same inputs give the same image config.
created=$(git log -1 --format=%ct 2>/dev/null || echo 0)

package_version() { awk -F'"' '/^\[package\]/ {p = 1} p && /^version *=/ {print $2; exit}' "$1/Cargo.toml"; }

human() { numfmt --to=iec-i --suffix=B --format=%.1f "$1"; }

# build_image NAME DOCKERFILE CRATE_DIR
build_image() {
    local name=$1 dockerfile=$2 crate=$3
    local binary=$CARGO_TARGET_DIR/release/$name
    [[ -x $binary ]] || { echo "no binary at $binary (build with cargo first)" >&2; return 1; }
    local version tag_version tag_rev
    version=$(package_version "$crate")
    tag_version=$version
    tag_rev=$version-$git_sha
    local work
    work=$(mktemp -d "${TMPDIR:-/tmp}/image-$name.XXXXXX")
    work_dirs+=("$work")
    scripts/lib/image-rootfs.sh "$binary" "$work/image" >/dev/null

    # Everything the image is made of; the archive is kept while this stays the same.
    local inputs
    inputs=$( {
        echo "$registry/$name $version"
        (cd "$work/image/rootfs" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
        sha256sum "$dockerfile" scripts/lib/image-rootfs.sh scripts/build-images.sh | awk '{print $1}'
        echo "${IMAGE_SOURCE:-}"
    } | sha256sum | cut -c1-32)
    local archive=$out/$name.oci.tar meta=$out/$name.json
    if [[ -f $archive && -f $meta ]] && [[ $(jq -r .inputs "$meta" 2>/dev/null) == "$inputs" ]]; then
        echo "$name: unchanged, keeping $(jq -r '.tags | join(", ")' "$meta")" >&2
        return 0
    fi

    local ref=localhost/$name:build-$$
    local labels=()
    [[ -n ${IMAGE_SOURCE:-} ]] && labels+=(--label "org.opencontainers.image.source=$IMAGE_SOURCE")
    echo "$name: building $registry/$name:$tag_rev" >&2
    bah bud --quiet --layers=false --format oci --timestamp "$created" \
        --build-context "build=$work" --target image \
        --build-arg "VERSION=$version" --build-arg "REVISION=$git_sha" \
        "${labels[@]}" \
        -f "$dockerfile" -t "$ref" "$work/image/empty" >/dev/null
    local layout=$work/layout
    bah push --quiet "$ref" "oci:$layout:$tag_version"
    bah push --quiet "$ref" "oci:$layout:$tag_rev"
    bah rmi "$ref" >/dev/null
    # Full names in the index (org.opencontainers.image.ref.name holds the tag only, per the
    # OCI layout spec); io.containerd.image.name lets `ctr`/`docker load` name the image.
    jq --arg repo "$registry/$name" '.manifests |= map(.annotations["io.containerd.image.name"] = ($repo + ":" + .annotations["org.opencontainers.image.ref.name"]))' \
        "$layout/index.json" > "$layout/index.json.new"
    mv "$layout/index.json.new" "$layout/index.json"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$created" \
        -C "$layout" -cf "$archive.tmp" oci-layout index.json blobs
    mv "$archive.tmp" "$archive"

    local manifest_digest config_digest layer_bytes compressed_bytes
    manifest_digest=$(jq -r '.manifests[0].digest' "$layout/index.json")
    local manifest=$layout/blobs/sha256/${manifest_digest#sha256:}
    config_digest=$(jq -r .config.digest "$manifest")
    compressed_bytes=$(jq '[.layers[].size] | add' "$manifest")
    layer_bytes=$(du -sb --apparent-size "$work/image/rootfs" | cut -f1)
    jq -n --arg name "$name" --arg repo "$registry/$name" --arg inputs "$inputs" \
        --arg manifest "$manifest_digest" --arg config "$config_digest" \
        --arg binary_sha256 "$(sha256sum "$work/image/rootfs/usr/local/bin/$name" | cut -d' ' -f1)" \
        --argjson binary_bytes "$(stat -c %s "$work/image/rootfs/usr/local/bin/$name")" \
        --argjson rootfs_bytes "$layer_bytes" --argjson compressed_bytes "$compressed_bytes" \
        --argjson archive_bytes "$(stat -c %s "$archive")" \
        --rawfile libs "$work/image/libs.txt" \
        --arg t1 "$tag_version" --arg t2 "$tag_rev" \
        '{name: $name, repository: $repo, tags: [$t1, $t2], manifest: $manifest, config: $config,
          binary_sha256: $binary_sha256, binary_bytes: $binary_bytes, rootfs_bytes: $rootfs_bytes,
          compressed_bytes: $compressed_bytes, archive_bytes: $archive_bytes,
          libraries: ($libs | split("\n") | map(select(. != ""))), inputs: $inputs}' > "$meta"
}

build_image relay relay/Dockerfile relay
build_image relay-operator operator/Dockerfile operator
# The vfs store holds nothing between builds (every image is removed after its push).
rm -rf "$buildah_store/run"

printf '\n%-16s %-34s %10s %12s %12s %10s\n' IMAGE TAGS BINARY UNCOMPRESSED COMPRESSED LIBRARIES
for name in relay relay-operator; do
    meta=$out/$name.json
    printf '%-16s %-34s %10s %12s %12s %10s\n' "$name" "$(jq -r '.tags | join(",")' "$meta")" \
        "$(human "$(jq .binary_bytes "$meta")")" "$(human "$(jq .rootfs_bytes "$meta")")" \
        "$(human "$(jq .compressed_bytes "$meta")")" "$(jq '.libraries | length' "$meta")"
done
echo
echo "archives in $out:"
ls -1 "$out"/*.oci.tar
