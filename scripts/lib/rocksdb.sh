# Sourced by scripts/test.sh and scripts/serve.sh: link Debian's RocksDB instead of compiling it.
#
# librocksdb-sys would otherwise compile RocksDB's C++ from source for every build profile
# (about 25 minutes each on 2 cores). Linking the distribution's librocksdb (7.8) needs its
# headers and libclang for bindgen. With ROCKSDB_LIB_DIR already set, or on a machine without
# apt, nothing is changed (the crate then builds RocksDB from its bundled sources, which needs
# libclang and a C++ compiler).
use_system_rocksdb() {
  [ -n "${ROCKSDB_LIB_DIR:-}" ] && return 0
  local multiarch
  multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
  if [ ! -e "/usr/lib/$multiarch/librocksdb.so" ] || ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
      local sudo=""
      [ "$(id -u)" != 0 ] && sudo="sudo"
      $sudo apt-get update -qq && $sudo apt-get install -y -qq librocksdb-dev libclang-dev
    fi
  fi
  if [ -e "/usr/lib/$multiarch/librocksdb.so" ]; then
    export ROCKSDB_LIB_DIR="/usr/lib/$multiarch"
  fi
}
