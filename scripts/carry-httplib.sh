#!/usr/bin/env bash
# The GPU machine has no cpp-httplib, so an osp built there has no `osp serve` (the server
# throughput benchmark, scripts/bench-serve.py, needs one). This copies Debian's cpp-httplib — its
# header, shared library and the brotli libraries that library links — from this machine into DIR
# (default runs/carry/httplib, git-ignored; ≈ 1.5 MB) with a pkg-config file, for the device
# tool's `carry`. On the GPU machine, before configuring:
#
#   bash scripts/carry-httplib.sh                       # here: writes runs/carry/httplib
#   eval "$(bash scripts/carry-httplib.sh --env runs/carry/httplib)"   # there: PKG_CONFIG_PATH, LD_LIBRARY_PATH
#
# The pkg-config file leaves out Debian's OpenSSL / zlib / brotli flags (the GPU machine has no
# OpenSSL headers): osp uses httplib::Server only, whose layout those flags do not change.
set -euo pipefail
if [ "${1:-}" = --env ]; then
  dir=$(cd "${2:?--env DIR}" && pwd)
  sed -i "s#^prefix=.*#prefix=$dir#" "$dir/lib/pkgconfig/cpp-httplib.pc"
  echo "export PKG_CONFIG_PATH=$dir/lib/pkgconfig\${PKG_CONFIG_PATH:+:\$PKG_CONFIG_PATH}"
  echo "export LD_LIBRARY_PATH=$dir/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
  exit 0
fi
dir=${1:-runs/carry/httplib}
lib=/usr/lib/x86_64-linux-gnu
[ -f /usr/include/httplib.h ] || { echo "no /usr/include/httplib.h: bash scripts/install-deps.sh first" >&2; exit 1; }
real=$(readlink -f "$lib/libcpp-httplib.so")
soname=$(objdump -p "$real" | awk '/SONAME/ {print $2}')
rm -rf "$dir"
mkdir -p "$dir/include" "$dir/lib/pkgconfig"
cp /usr/include/httplib.h "$dir/include/"
# plain copies, no symlinks: the link name for -lcpp-httplib and the soname for the loader
cp "$real" "$dir/lib/libcpp-httplib.so"
cp "$real" "$dir/lib/$soname"
for b in libbrotlienc.so.1 libbrotlidec.so.1 libbrotlicommon.so.1; do cp "$(readlink -f "$lib/$b")" "$dir/lib/$b"; done
cat > "$dir/lib/pkgconfig/cpp-httplib.pc" <<EOF
prefix=$(cd "$dir" && pwd)
includedir=\${prefix}/include
libdir=\${prefix}/lib

Name: cpp-httplib
Description: Debian's cpp-httplib, carried (scripts/carry-httplib.sh)
Version: $(pkg-config --modversion cpp-httplib 2>/dev/null || echo unknown)
Libs: -L\${libdir} -lcpp-httplib
Cflags: -I\${includedir}
EOF
du -sh "$dir"
