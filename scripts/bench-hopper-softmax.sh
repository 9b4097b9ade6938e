#!/usr/bin/env bash
# The own Hopper attention kernels' softmax variants (OSP_HOPPER_SOFTMAX, attention_hopper.cu's
# softmax_tile): 0 serial max/sum chains, every exponential on the SFU (the default, the softmax of
# every measurement before session 22); 1 tree max + four partial sums; 2 / 3 as 1 with a quarter
# / a third of the exponentials from ops::exp2_poly on the FMA pipe. One call on the GPU machine:
#   1. the suites that check the kernels, under variants 2 and 3 (1's changes are inside them):
#      quant_fp8_attention_gpu_test (FP8 against its emulation and bf16), the attention cases of
#      ops_backend_parity_gpu_test (bf16 against the CPU), model_dit_cuda_graph_gpu_test;
#   2. A/B, alternating processes on the same card: bench_fp8_attention_gpu --case "14B-720P self"
#      and "1.3B-480P self" (its bf16 row is the own 176-key bf16 kernel, its fp8_hopper rows the
#      FP8 kernel at each tile and scheduling) for every variant, ROUNDS times;
#   3. if time is left (LIMIT_S, default 480 s from the start): the 1.3B full forward with
#      variants 0 and 1 and the 14B hybrid+FP8 forward with 0 and 2 (bench_dit_multi_gpu).
# Prints a table last (TFLOP/s per case, kernel and variant; forwards in ms). Logs under $OUT.
#   bash scripts/bench-hopper-softmax.sh     # on the GPU machine; nothing changes clocks or modes
# Environment: OUT (./out), BUILD (build-gpu), ROUNDS (2), LIMIT_S (480), VARIANTS ("0 1 2 3").
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/out}
BUILD=${BUILD:-build-gpu}
ROUNDS=${ROUNDS:-2}
LIMIT_S=${LIMIT_S:-480}
VARIANTS=${VARIANTS:-0 1 2 3}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; } > "$OUT/card.txt" 2>&1
cat "$OUT/card.txt"
if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOSP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
        -DOSP_FFMPEG=OFF -DOSP_BENCH=ON > "$OUT/build.log" 2>&1 || { echo "configure failed (build.log)"; exit 1; }
fi
ninja -C "$BUILD" quant_fp8_attention_gpu_test ops_backend_parity_gpu_test model_dit_cuda_graph_gpu_test \
  bench_fp8_attention_gpu bench_dit_multi_gpu >> "$OUT/build.log" 2>&1 \
  || { grep -E 'error|FAILED' "$OUT/build.log" | head -30; exit 1; }
echo "build: $(elapsed) s"

# 1. correctness under the variants
{
  for sm in 2 3; do
    echo "=== OSP_HOPPER_SOFTMAX=$sm quant_fp8_attention_gpu_test"
    OSP_HOPPER_SOFTMAX=$sm timeout 120 "$BUILD/quant_fp8_attention_gpu_test" 2>&1
    echo "=== OSP_HOPPER_SOFTMAX=$sm ops_backend_parity_gpu_test (attention)"
    OSP_HOPPER_SOFTMAX=$sm timeout 120 "$BUILD/ops_backend_parity_gpu_test" --gtest_filter='*attn*:*Paths*' 2>&1
  done
  echo "=== model_dit_cuda_graph_gpu_test"
  timeout 120 "$BUILD/model_dit_cuda_graph_gpu_test" 2>&1
} > "$OUT/softmax-tests.log"
grep -E '^===|^\[  (PASSED|FAILED) |^\[  FAILED' "$OUT/softmax-tests.log"
echo "tests: $(elapsed) s"

# 2. the kernels alone, alternating variants
: > "$OUT/softmax-ab.jsonl"
for round in $(seq 1 "$ROUNDS"); do
  for sm in $VARIANTS; do
    for c in "14B-720P self" "1.3B-480P self"; do
      [ "$(elapsed)" -lt $(( LIMIT_S - 60 )) ] || continue
      OSP_HOPPER_SOFTMAX=$sm timeout 120 "$BUILD/bench_fp8_attention_gpu" --case "$c" 2>>"$OUT/softmax-bench.err" \
        | sed "s/^{/{\"softmax\":$sm,\"round\":$round,/" >> "$OUT/softmax-ab.jsonl"
    done
  done
done
echo "kernels: $(elapsed) s"

# 3. whole forwards, if there is time
for run in "0 1.3b full" "1 1.3b full" "0 14b hybrid+fp8" "2 14b hybrid+fp8"; do
  set -- $run
  [ "$(elapsed)" -lt $(( LIMIT_S - 60 )) ] || continue
  reps=3; [ "$2" = 14b ] && reps=2
  OSP_HOPPER_SOFTMAX=$1 timeout 90 "$BUILD/bench_dit_multi_gpu" --models "$2" --modes "$3" --reps $reps --warmup 1 \
    2>>"$OUT/softmax-bench.err" | sed "s/^{/{\"softmax\":$1,/" >> "$OUT/softmax-ab.jsonl"
done
echo "total: $(elapsed) s"

python3 - "$OUT/softmax-ab.jsonl" <<'PY'
import collections, json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
kern = collections.defaultdict(list)
for r in rows:
    if r.get("bench") == "fp8_attention_gpu" and "tflops" in r and r.get("variant", "").startswith(("bf16", "fp8_hopper")):
        kern[(r["case"], r["variant"], r["softmax"])].append(r["tflops"])
    elif r.get("bench") == "fp8_attention_gpu" and r.get("variant") == "summary":
        print("variant %d %-16s own FP8 vs bf16 rel. error %.4g" % (r["softmax"], r["case"], r["rel_err_fp8_hopper_vs_bf16_first_4M"]))
    elif r.get("bench") == "dit_multi_gpu" and "ms" in r:
        print("variant %d forward %s %s: %.1f ms (min %.1f)" % (r["softmax"], r["model"], r["mode"], r["ms"], r["ms_min"]))
print("%-16s %-24s %s" % ("case", "kernel", "TFLOP/s by variant (rounds)"))
for case, var in sorted({(k[0], k[1]) for k in kern}):
    cells = ["%d: %s" % (sm, "/".join("%.1f" % x for x in kern[(case, var, sm)]))
             for sm in sorted({k[2] for k in kern if k[:2] == (case, var)})]
    print("%-16s %-24s %s" % (case, var, "   ".join(cells)))
PY
