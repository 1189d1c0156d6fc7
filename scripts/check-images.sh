#!/usr/bin/env bash
# Builds the relay and operator images (scripts/build-images.sh) and checks what ships:
#   - each archive is a valid OCI layout whose config has User 65532:65532, a WorkingDir, an
#     Entrypoint, the org.opencontainers.image.* labels, and a root filesystem of exactly the
#     binary, the libraries it links and the loader (no shell, nothing else);
#   - a second build with nothing changed keeps both archives (idempotent, fast);
#   - umoci (a reference OCI unpacker), where installed, unpacks the same files and derives the
#     same process (args, env, cwd, uid/gid) as scripts/lib/oci.py;
#   - run from the images as their config says (scripts/lib/oci.py: chroot, read-only root,
#     uid 65532): `relay --version` (also with a file bound under /dev), `relay-operator --help`,
#     and `relay serve` with a writable
#     data directory bind-mounted at /data and a tmpfs at /tmp, on loopback, answering /_health,
#     writing its data as uid 65532, and exiting 0 on SIGTERM.
# Environment: as scripts/build-images.sh (IMAGES_DIR, CARGO_TARGET_DIR, IMAGES_SKIP_CARGO, ...).
# Needs root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cache=${RELAY_CACHE_DIR:-$HOME/.cache/atproto-relay}
images=${IMAGES_DIR:-$cache/images}
oci() { python3 scripts/lib/oci.py "$@"; }

failures=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*" >&2; failures=$((failures + 1)); }

work=$(mktemp -d "${TMPDIR:-/tmp}/check-images.XXXXXX")
relay_pid=""
cleanup() {
    if [[ -n $relay_pid ]] && kill -0 "$relay_pid" 2>/dev/null; then
        kill -KILL "$relay_pid" 2>/dev/null || true
        wait "$relay_pid" 2>/dev/null || true
    fi
    if grep -q " $work" /proc/self/mountinfo; then
        echo "mounts left under $work (not deleted):" >&2
        grep " $work" /proc/self/mountinfo >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

echo "== build"
scripts/build-images.sh
echo "== rebuild with nothing changed"
started=$SECONDS
IMAGES_SKIP_CARGO=1 scripts/build-images.sh > "$work/rebuild.log" 2>&1 || { cat "$work/rebuild.log" >&2; exit 1; }
if [[ $(grep -c ': unchanged, keeping' "$work/rebuild.log") == 2 ]]; then
    ok "second build kept both archives ($((SECONDS - started))s)"
else
    bad "second build rebuilt an image:"; cat "$work/rebuild.log" >&2
fi

echo "== image contents and config"
for name in relay relay-operator; do
    archive=$images/$name.oci.tar
    meta=$images/$name.json
    dir=$work/$name
    mkdir -p "$dir"
    oci unpack "$archive" "$dir" > "$dir/view.json"
    config=$dir/config.json
    check() { # check DESCRIPTION JQ-EXPRESSION (true when fine)
        if jq -e "$2" "$config" >/dev/null; then ok "$name: $1"; else bad "$name: $1 ($(jq -c "$2" "$config"))"; fi
    }
    check "User is 65532:65532" '.config.User == "65532:65532"'
    check "Entrypoint is /usr/local/bin/$name" ".config.Entrypoint == [\"/usr/local/bin/$name\"]"
    check "WorkingDir is set" '.config.WorkingDir | type == "string" and length > 0'
    check "OCI labels (title, version, revision, licenses)" \
        ".config.Labels | .[\"org.opencontainers.image.title\"] == \"$name\" and (.[\"org.opencontainers.image.version\"] | length > 0) and (.[\"org.opencontainers.image.revision\"] | length > 0) and .[\"org.opencontainers.image.licenses\"] == \"MIT OR Apache-2.0\""
    check "one layer" '.rootfs.diff_ids | length == 1'
    # Exactly the binary, the libraries it links and the loader; directories aside.
    (cd "$dir/rootfs" && find . ! -type d | sed 's|^\.||' | sort) > "$dir/files"
    { echo "/usr/local/bin/$name"; jq -r '.libraries[]' "$meta"; } | sort > "$dir/expected"
    if diff -u "$dir/expected" "$dir/files" > "$dir/files.diff"; then
        ok "$name: files are exactly the binary and its $(jq '.libraries | length' "$meta") libraries"
    else
        bad "$name: unexpected files in the image:"; cat "$dir/files.diff" >&2
    fi
    for shell in /bin/sh /bin/bash /usr/bin/sh /busybox; do
        [[ -e $dir/rootfs$shell ]] && bad "$name: the image has $shell"
    done
    dirs=$(cd "$dir/rootfs" && find . -mindepth 1 -type d | sed 's|^\.||' | sort | tr '\n' ' ')
    ok "$name: directories $dirs"
    if [[ $(stat -c %a "$dir/rootfs/tmp") == 1777 ]]; then ok "$name: /tmp is 1777"; else bad "$name: /tmp mode $(stat -c %a "$dir/rootfs/tmp")"; fi
done
if [[ $(stat -c %u:%g "$work/relay/rootfs/data") == 65532:65532 ]]; then ok "relay: /data belongs to 65532"; else bad "relay: /data belongs to $(stat -c %u:%g "$work/relay/rootfs/data")"; fi

if ! command -v umoci >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq umoci; } >/dev/null 2>&1 || true
fi
if command -v umoci >/dev/null; then
    echo "== umoci agrees"
    for name in relay relay-operator; do
        dir=$work/$name
        mkdir -p "$dir/layout"
        tar -C "$dir/layout" -xf "$images/$name.oci.tar"
        tag=$(jq -r '.tags[0]' "$images/$name.json")
        umoci unpack --image "$dir/layout:$tag" "$dir/bundle" >/dev/null
        (cd "$dir/bundle/rootfs" && find . | sort) > "$dir/umoci.files"
        (cd "$dir/rootfs" && find . | sort) > "$dir/ours.files"
        if diff -q "$dir/umoci.files" "$dir/ours.files" >/dev/null; then ok "$name: same files as umoci unpack"; else bad "$name: files differ from umoci's unpack"; fi
        ours=$(jq -c '{args: .argv, env: .env, cwd: .workdir, uid: .uid, gid: .gid}' "$dir/view.json")
        theirs=$(jq -c '.process | {args, env: [.env[] | select(startswith("TERM=") or startswith("HOME=") | not)], cwd, uid: .user.uid, gid: .user.gid}' "$dir/bundle/config.json")
        if [[ $ours == "$theirs" ]]; then ok "$name: same process as umoci's runtime config: $ours"; else bad "$name: process differs: ours $ours, umoci $theirs"; fi
        rm -rf "$dir/layout" "$dir/bundle"
    done
else
    echo "umoci not installed: cross-check skipped"
fi

echo "== run from the images"
version=$(jq -r '.tags[0]' "$images/relay.json")
if out=$(scripts/run-oci.sh "$images/relay.oci.tar" -- --version 2>&1) && [[ $out == "relay $version" ]]; then
    ok "relay --version (scripts/run-oci.sh): $out"
else
    bad "relay --version printed: $out"
fi
# A bind under /dev (the e2e node agent puts a pod's termination message file there) lands in
# the container's own tmpfs /dev, never on the host's.
touch "$work/termination-log"
if out=$(oci run "$work/relay" --bind "$work/termination-log:/dev/termination-log" -- --version 2>&1) \
    && [[ $out == "relay $version" && ! -e /dev/termination-log ]]; then
    ok "a file bound at /dev/termination-log stays in the container's /dev"
else
    bad "bind at /dev/termination-log: $out"
fi
if out=$(oci run "$work/relay-operator" -- --help 2>&1) && grep -q 'run' <<<"$out"; then
    ok "relay-operator --help: $(head -1 <<<"$out")"
else
    bad "relay-operator --help printed: $out"
fi

# relay serve, as the operator's pod runs it: read-only root, data volume at /data, tmpfs /tmp.
ports=$(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')
read -r public internal <<<"$ports"
data=$work/data
mkdir -p "$data"
chown 65532:65532 "$data"
# Not through the oci() function: a background function is a subshell, and $! must be the pid
# that oci.py execs the relay in.
python3 scripts/lib/oci.py run "$work/relay" --bind "$data:/data" --tmpfs /tmp \
    --env RELAY_API_BIND=127.0.0.1:$public --env RELAY_METRICS_LISTEN=127.0.0.1:$internal \
    --env RELAY_UPSTREAM= --env RELAY_PLC_HOST=http://127.0.0.1:9 --env RELAY_ADMIN_PASSWORD=check-images \
    -- serve > "$work/serve.log" 2>&1 &
relay_pid=$!
health=""
for _ in $(seq 1 60); do
    health=$(curl -fsS "http://127.0.0.1:$internal/_health" 2>/dev/null) && break
    kill -0 "$relay_pid" 2>/dev/null || break
    sleep 0.5
done
if [[ $(jq -r .status <<<"$health" 2>/dev/null) == ok ]]; then
    ok "relay serve answers /_health on 127.0.0.1:$internal: $health"
else
    bad "relay serve: no healthy /_health answer ($health); its log:"; tail -20 "$work/serve.log" >&2
fi
if kill -0 "$relay_pid" 2>/dev/null; then
    uid=$(awk '/^Uid:/ {print $2}' "/proc/$relay_pid/status")
    exe=$(readlink "/proc/$relay_pid/exe" || true)
    if [[ $uid == 65532 ]]; then ok "relay serve runs as uid $uid ($exe)"; else bad "relay serve runs as uid $uid"; fi
    root_fs=$(readlink "/proc/$relay_pid/root")
    if [[ $root_fs == "$work/relay/rootfs" ]]; then ok "relay serve is chrooted into the unpacked image"; else bad "relay serve's root is $root_fs"; fi
    root_opts=$(awk '$5 == "/" {print $6}' "/proc/$relay_pid/mountinfo" | tail -1)
    if [[ ,$root_opts, == *,ro,* ]]; then ok "relay serve's root filesystem is read-only ($root_opts)"; else bad "relay serve's root is mounted $root_opts"; fi
    if [[ -f $data/relay.sqlite && $(stat -c %u "$data/relay.sqlite") == 65532 ]]; then
        ok "relay serve wrote its data to the bind-mounted /data as 65532: $(cd "$data" && ls | tr '\n' ' ')"
    else
        bad "relay serve: no relay.sqlite owned by 65532 in the data directory"
    fi
    kill -TERM "$relay_pid"
    code=0
    wait "$relay_pid" || code=$?
    relay_pid=""
    if [[ $code == 0 ]]; then ok "relay serve exited 0 on SIGTERM"; else bad "relay serve exited $code on SIGTERM"; fi
fi

echo
if [[ $failures -gt 0 ]]; then
    echo "check-images: $failures check(s) failed" >&2
    exit 1
fi
echo "check-images: all checks passed"
