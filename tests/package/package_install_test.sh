#!/usr/bin/env bash
# package_install_test (ctest): `cmake --install` of this build into a fresh prefix, then a
# program outside the tree (tests/package/consumer) built against it twice — with
# find_package(osp) and with pkg-config — and run: it must print what the library computes.
# Usage: package_install_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
work=$(mktemp -d "${TMPDIR:-/tmp}/osp_package.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" > "$work/install.log"
for f in bin/osp lib/libosp.so include/osp/core/tensor.h include/osp/io/yaml.h lib/cmake/osp/ospConfig.cmake \
         lib/pkgconfig/osp.pc; do
  [ -e "$prefix/$f" ] || { echo "FAIL: $f was not installed"; cat "$work/install.log"; exit 1; }
done
! [ -e "$prefix/include/osp/cli" ] || { echo "FAIL: the CLI's headers were installed"; exit 1; }
want="yaml steps 3 lr 0.0001 | dim 1536, ffn 8960, heads 12, layers 30"
# 1. CMake: find_package(osp)
cmake -S "$src/tests/package/consumer" -B "$work/cmake" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" \
      -DCMAKE_BUILD_TYPE=Release > "$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; exit 1; }
cmake --build "$work/cmake" > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
out=$("$work/cmake/consumer" "$src/models/osp-next-tiny")
echo "find_package: $out"
case "$out" in *"$want"*"axpby 7"*"model: dit config found"*) ;; *) echo "FAIL: unexpected output"; exit 1 ;; esac
# 2. pkg-config
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
c++ "$src/tests/package/consumer/main.cpp" $(pkg-config --cflags --libs osp) -o "$work/consumer_pc"
out=$(LD_LIBRARY_PATH=$prefix/lib "$work/consumer_pc")
echo "pkg-config: $out"
case "$out" in *"$want"*"axpby 7"*) ;; *) echo "FAIL: unexpected output"; exit 1 ;; esac
# 3. the installed CLI runs from the prefix
"$prefix/bin/osp" --version | head -1
echo "PASS"
