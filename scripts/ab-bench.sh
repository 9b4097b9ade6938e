#!/usr/bin/env bash
# One benchmark from two trees on one card in one call, alternating (A B A B ...), so a change is
# compared with its baseline under the same clocks: the working tree (build-gpu) against the
# archive of another commit (scripts/ab-tree.sh, built by scripts/ab-build.sh). Every JSON line the
# benchmark prints comes out with "tree":"head" or "tree":"<rev>" and "round":N added first.
#
#   bash scripts/ab-bench.sh ab/1a2b3c4.tar.gz bench_fp8_attention_gpu --case "14B-720P self"
# Environment: ROUNDS (2), BUILD (build-gpu; configured by scripts/gpu-test.sh or here),
# TIMEOUT_S (per run, 300). Only the JSON lines are printed (the rest of both runs is dropped).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
[ $# -ge 2 ] || { echo "usage: $0 ab/REV.tar.gz BENCH [ARGS...]" >&2; exit 2; }
archive=$1
bench=$2
shift 2
BUILD=${BUILD:-build-gpu}
rev=$(basename "$archive" .tar.gz)
base=$(bash scripts/ab-build.sh "$archive" "$bench") || exit 1
if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOSP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
        -DOSP_FFMPEG=OFF > /dev/null 2>&1 || { echo "configure of $BUILD failed" >&2; exit 1; }
fi
ninja -C "$BUILD" "$bench" > /dev/null 2>&1 || { echo "build of $BUILD/$bench failed" >&2; exit 1; }
for round in $(seq 1 "${ROUNDS:-2}"); do
  for side in head "$rev"; do
    exe=$BUILD/$bench
    [ "$side" = head ] || exe=$base/$bench
    timeout "${TIMEOUT_S:-300}" "$exe" "$@" 2>/dev/null |
      sed -n "s/^{/{\"tree\":\"$side\",\"round\":$round,/p"
  done
done
