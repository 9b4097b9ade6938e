#!/usr/bin/env bash
# The other side of an A/B comparison (scripts/ab-tree.sh): unpacks ab/<rev>.tar.gz under
# build-ab/<rev>/src and builds the named targets (benchmarks, or the library they need) in
# build-ab/<rev>/build with the GPU build's settings (Release, CUDA sm_90a, no tests, no FFmpeg),
# so the same benchmark can run from both trees in one call on one card.
#
#   bash scripts/ab-build.sh ab/1a2b3c4.tar.gz bench_ops_gpu bench_fp8_attention_gpu
#   build-ab/1a2b3c4/build/bench_ops_gpu --attention-only     # vs build-gpu/bench_ops_gpu ...
# Environment: JOBS (nproc). Prints the build folder last; the build log is build-ab/<rev>/build.log.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
[ $# -ge 2 ] || { echo "usage: $0 ab/REV.tar.gz TARGET..." >&2; exit 2; }
archive=$1
shift
[ -f "$archive" ] || { echo "$archive: no such archive (scripts/ab-tree.sh writes it; carry ab/)" >&2; exit 1; }
rev=$(basename "$archive" .tar.gz)
dir=build-ab/$rev
mkdir -p "$dir/src"
tar xzf "$archive" -C "$dir/src"
cmake -S "$dir/src" -B "$dir/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOSP_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90a -DOSP_FFMPEG=OFF -DOSP_TESTS=OFF -DOSP_PYTHON=OFF \
      -DOSP_SHARED_LIB=OFF > "$dir/build.log" 2>&1 || { echo "configure failed ($dir/build.log)" >&2; exit 1; }
ninja -C "$dir/build" -j "${JOBS:-$(nproc)}" "$@" >> "$dir/build.log" 2>&1 ||
  { echo "build failed ($dir/build.log):" >&2; grep -E "error|FAILED" "$dir/build.log" | head -10 >&2; exit 1; }
echo "$dir/build"
