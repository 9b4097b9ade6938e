#!/usr/bin/env bash
# The training half's GPU check in one device call: configure with CUDA (sm_90a), build only the
# GPU tests of the training work plus the inference regressions they could break, run each with a
# time bound, keep logs under $OUT and print a table last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
BUILD=${BUILD:-build-gpu}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
TESTS=${TESTS:-"model_dit_train_golden_gpu_test ops_backward_parity_gpu_test ops_vae_backward_parity_gpu_test model_vae_train_gpu_test train_train_gpu_test train_grpo_gpu_test model_dit_gpu_test ops_backend_parity_gpu_test model_dit_fp8_gpu_test"}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } > "$OUT/card.txt" 2>&1
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOSP_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90a -DOSP_FFMPEG=OFF -DOSP_BENCH=OFF > "$OUT/build.log" 2>&1 ||
  { echo "configure failed"; tail -20 "$OUT/build.log"; exit 1; }
t0=$(date +%s)
ninja -C "$BUILD" -j "$(nproc)" -k 0 $TESTS >> "$OUT/build.log" 2>&1 || grep -E "error|FAILED" "$OUT/build.log" | head -20
echo "build: $(( $(date +%s) - t0 )) s"
: > "$OUT/gpu-tests.log"
rows=()
for t in $TESTS; do
  if [ ! -x "$BUILD/$t" ]; then rows+=("$t | not built"); continue; fi
  s=$(date +%s)
  (cd "$BUILD" && timeout "${PER_TEST_S:-90}" "./$t") >> "$OUT/gpu-tests.log" 2>&1
  rc=$?
  res=$(grep -E "^\[  (PASSED|FAILED)  \]" "$OUT/gpu-tests.log" | tail -1)
  rows+=("$t | rc $rc | $(( $(date +%s) - s )) s | $res")
done
grep -E "^\[  FAILED  \]|^\[ info|Failure|error" "$OUT/gpu-tests.log" | head -40
cat "$OUT/card.txt"
printf '%s\n' "${rows[@]}"
