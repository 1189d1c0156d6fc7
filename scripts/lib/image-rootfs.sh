#!/usr/bin/env bash
# Lays out the files of a FROM-scratch image for one dynamically linked binary:
#   OUT/rootfs/usr/local/bin/NAME      the binary, stripped (strip --strip-all)
#   OUT/rootfs/<path>                  every shared library `ldd` resolves for it, at the path
#                                      ldd prints, and the dynamic loader (PT_INTERP)
#   OUT/rootfs/tmp                     mode 1777 (a pod mounts an emptyDir over it)
#   OUT/empty/                         an empty directory, for `COPY --chown=... OUT/empty/ /DIR/`
#   OUT/libs.txt                       the libraries copied, one per line (for the image report)
# Nothing else: no shell, no package manager, no /etc. Run by scripts/build-images.sh on the
# host and by the Dockerfiles' build stage (relay/Dockerfile, operator/Dockerfile), so both
# produce the same file set. Needs ldd, strip and cp (a Debian bookworm build environment: the
# libraries are the build machine's, so build where the binary was linked).
# Usage: scripts/lib/image-rootfs.sh BINARY OUT
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 BINARY OUT" >&2; exit 2; }
binary=$1
out=$2
[[ -x $binary ]] || { echo "$0: $binary is not an executable" >&2; exit 1; }
name=$(basename "$binary")

rm -rf "$out"
mkdir -p "$out/rootfs/usr/local/bin" "$out/rootfs/tmp" "$out/empty"
chmod 1777 "$out/rootfs/tmp"
cp "$binary" "$out/rootfs/usr/local/bin/$name"
# --strip-all: the release profile keeps line tables (debug = "line-tables-only") for local
# profiling; the image carries none of it (panic messages keep file:line, backtraces lose
# symbol names). Set IMAGE_STRIP=--strip-debug to keep the symbol table.
strip ${IMAGE_STRIP:---strip-all} "$out/rootfs/usr/local/bin/$name"
chmod 0755 "$out/rootfs/usr/local/bin/$name"

# ldd prints the whole transitive closure: "libX.so => /path (0x...)", the loader as
# "/lib64/ld-linux-x86-64.so.2 (0x...)", and the kernel's vDSO with no path (skipped).
ldd_out=$(ldd "$out/rootfs/usr/local/bin/$name")
if grep -q 'not found' <<<"$ldd_out"; then
    echo "$0: unresolved libraries for $binary:" >&2
    grep 'not found' <<<"$ldd_out" >&2
    exit 1
fi
: > "$out/libs.txt"
while read -r lib; do
    [[ -n $lib ]] || continue
    # The file, not the symlink (cp -L), at the path the loader looks it up by.
    mkdir -p "$out/rootfs$(dirname "$lib")"
    cp -L --preserve=mode "$lib" "$out/rootfs$lib"
    echo "$lib" >> "$out/libs.txt"
done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$ldd_out" | sort -u)
