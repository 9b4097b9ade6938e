#!/usr/bin/env bash
# Before/after measurement of the HiF8 codec kernels on one GPU in one device call (what
# docs/PERF.md "HiF8 codec kernels" ran).
#
#   bench/hif8_codec_run.sh prepare DIR BASE   (here, in the git checkout) writes a snapshot of
#       HEAD to DIR with the golden file and, under DIR/old/, BASE's versions of the codec
#       kernel sources (hif8_kernels.cu, fp8_linear.cu, hif8_device.cuh, philox.h)
#   DIR/bench/hif8_codec_run.sh run            (on the GPU machine, in DIR) configures Release
#       sm_90a, builds the quant GPU tests and bench_hif8_gpu, compiles BASE's two kernel .cu
#       files beside them and links bench_hif8_gpu_old (libosp_quant with those two objects
#       swapped in), runs the tests, then `bench_hif8_gpu --codec-only` with the new and the old
#       kernels; logs and JSON lines under $OUT.
set -uo pipefail
mode=${1:-}
if [ "$mode" = prepare ]; then
  dir=$2 base=$3
  mkdir -p "$dir" && rm -rf "${dir:?}"/*
  git archive HEAD | tar -x -C "$dir"
  mkdir -p "$dir/golden-copy"
  cp "${GOLDEN:-../shared/golden}/golden_sampler_hif8_skiparse.safetensors" "$dir/golden-copy/"
  git rev-parse --short "$base" > "$dir/BASE_COMMIT"
  for f in src/osp/quant/cuda/hif8_kernels.cu src/osp/quant/cuda/fp8_linear.cu \
           src/osp/quant/cuda/hif8_device.cuh src/osp/quant/philox.h; do
    mkdir -p "$dir/old/$(dirname "$f")"
    git show "$base:$f" > "$dir/old/$f"
  done
  exit 0
fi
[ "$mode" = run ] || { echo "usage: $0 prepare DIR BASE | run"; exit 2; }
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}; mkdir -p "$OUT"
BASE=$(cat BASE_COMMIT)
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv; } > "$OUT/card.txt" 2>&1
cat "$OUT/card.txt"
t0=$(date +%s)
cmake -S . -B b -G Ninja -DCMAKE_BUILD_TYPE=Release -DOSP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
      -DOSP_FFMPEG=OFF > "$OUT/build.log" 2>&1 || { echo configure failed; tail -20 "$OUT/build.log"; exit 1; }
NVCC=$(sed -n 's/^CMAKE_CUDA_COMPILER:[A-Z]*=//p' b/CMakeCache.txt)
NVCC=${NVCC:-nvcc}
NVCC_FLAGS="-DOSP_HAVE_CUDA=1 -DOSP_HAVE_CUDNN=1 -Iold/src -Isrc -O3 -DNDEBUG --generate-code=arch=compute_90a,code=[compute_90a,sm_90a] -Xcompiler=-fPIC --expt-relaxed-constexpr -std=c++20 -x cu"
mkdir -p old/obj
( $NVCC $NVCC_FLAGS -c old/src/osp/quant/cuda/hif8_kernels.cu -o old/obj/hif8_kernels.cu.o &&
  $NVCC $NVCC_FLAGS -c old/src/osp/quant/cuda/fp8_linear.cu -o old/obj/fp8_linear.cu.o ) > "$OUT/old-build.log" 2>&1 &
oldpid=$!
ninja -C b -j "$(nproc)" quant_hif8_gpu_test quant_fp8_gpu_test quant_hif8_e4m3_gpu_test bench_hif8_gpu \
  >> "$OUT/build.log" 2>&1 || { echo BUILD FAILED; grep -E "error|FAILED" "$OUT/build.log" | head -20; }
wait $oldpid || echo "old kernels failed to build (see old-build.log)"
echo "build: $(( $(date +%s) - t0 )) s"
if [ -f old/obj/fp8_linear.cu.o ] && [ -f b/libosp_quant.a ]; then
  cp b/libosp_quant.a b/libosp_quant_old.a
  ar d b/libosp_quant_old.a hif8_kernels.cu.o fp8_linear.cu.o
  ar r b/libosp_quant_old.a old/obj/hif8_kernels.cu.o old/obj/fp8_linear.cu.o
  link=$(ninja -C b -t commands bench_hif8_gpu | tail -1 |
         sed "s/libosp_quant\.a/libosp_quant_old.a/g; s/-o bench_hif8_gpu /-o bench_hif8_gpu_old /")
  (cd b && eval "$link") >> "$OUT/old-build.log" 2>&1 || echo "baseline link failed"
fi
OSP_GOLDEN_DIR=$PWD/golden-copy ctest --test-dir b -L gpu -R "quant_(hif8|fp8_gpu)" --output-on-failure \
  --timeout 300 > "$OUT/tests.log" 2>&1
grep -E "tests passed|tests failed|Passed|Failed|Not Run|SKIP" "$OUT/tests.log" | tail -12
table() {
  python3 -c "
import json,sys
for l in sys.stdin:
    r=json.loads(l)
    if r.get('section')=='codec': print('%-44s %8.4f ms %7.1f GB/s  peak %.3f  copy %.3f'%(r['op'],r['ms'],r['GBps'],r['frac_of_peak'],r['frac_of_copy']))
    elif 'section' not in r or r.get('section')=='device': print(l.strip())
"
}
echo "== new kernels"
./b/bench_hif8_gpu --codec-only 2> "$OUT/bench-stderr.log" | tee "$OUT/bench-new.jsonl" | table
if [ -x b/bench_hif8_gpu_old ]; then
  echo "== old kernels ($BASE)"
  ./b/bench_hif8_gpu_old --codec-only 2>> "$OUT/bench-stderr.log" | tee "$OUT/bench-old.jsonl" | table
fi
command -v cuobjdump > /dev/null && cuobjdump -sass b/libosp_quant.a > "$OUT/quant-sass.txt" 2>/dev/null
echo "total: $(( $(date +%s) - t0 )) s"
