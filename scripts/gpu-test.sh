#!/usr/bin/env bash
# What a GPU machine runs: configure Release with CUDA (sm_90a), build the GPU tests and GPU
# benchmarks, run every `gpu`-labelled ctest test and every bench_*gpu* binary (and the
# PyTorch baseline bench/torch_dit_block.py when torch is importable), keep the logs under
# $OUT (card.txt, build.log, gpu-tests.log, bench.jsonl, bench-stderr.log: few files, since the
# device tool brings back at most 8), and print a short table last.
#
# The memory-mode measurement of issue 18 is bench_dit_offload_gpu (run with the others): 14B at
# 1280x720x81 under 24 GiB and 1.3B at 832x480x81 under 8 GiB, each against the unlimited
# resident run, the `vram` rows of the table (the GPU test is model_dit_block_stream_gpu_test).
#
# Environment knobs:
#   OUT=dir          logs and JSON lines (default ./out)
#   BUILD=dir        build directory (default build-gpu)
#   JOBS=n           build parallelism (default nproc)
#   TESTS=0          skip the gpu tests;  BENCH=0  skip the benchmarks;  TORCH=0  skip torch
#   BENCH_ARGS=...   extra arguments for every bench_*gpu* binary (e.g. --quick)
#   TEST_REGEX=...   ctest -R filter inside the gpu label
#   OSP_GOLDEN_DIR   where golden_*.safetensors are (default: the build folder's copy unpacked from tests/data/golden)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
BUILD=${BUILD:-build-gpu}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$OUT"
status=0

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; } \
  > "$OUT/card.txt" 2>&1
cat "$OUT/card.txt"

t0=$(date +%s)
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOSP_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90a -DOSP_FFMPEG=OFF > "$OUT/build.log" 2>&1 \
  || { echo "configure failed (see build.log)"; tail -30 "$OUT/build.log"; exit 1; }
# Only the GPU tests and GPU benchmarks (and what they need); -k 0 keeps going past a broken one.
targets=$(ninja -C "$BUILD" -t targets all 2>/dev/null |
          sed -n 's/^\([A-Za-z0-9_]*\(_gpu_test\|gpu[A-Za-z0-9_]*\)\): .*/\1/p' |
          grep -E '(_gpu_test$|^bench_.*gpu)' | grep -v '^cmake_' | sort -u)
# BENCH=0 builds no benchmark (TESTS=0 no test): what is not run is not built.
[ "${BENCH:-1}" = 0 ] && targets=$(echo "$targets" | grep -v '^bench_')
[ "${TESTS:-1}" = 0 ] && targets=$(echo "$targets" | grep -v '_gpu_test$')
echo "building: $(echo $targets | wc -w) targets with $JOBS jobs"
if [ -n "$targets" ] && ! ninja -C "$BUILD" -j "$JOBS" -k 0 $targets >> "$OUT/build.log" 2>&1; then
  status=1
  echo "BUILD ERRORS (first lines):"
  grep -E "error|FAILED" "$OUT/build.log" | head -20
fi
echo "build: $(( $(date +%s) - t0 )) s"

if [ "${TESTS:-1}" != 0 ]; then
  # -V keeps every test's output (the measured errors the tests print as "[ info ... ]" lines)
  (cd "$BUILD" && ctest -L gpu ${TEST_REGEX:+-R "$TEST_REGEX"} -V --timeout 900) \
    > "$OUT/gpu-tests.log" 2>&1 || status=1
  grep -E "^[0-9]+: \[ info" "$OUT/gpu-tests.log" | cut -c1-220 | tail -40
  grep -E "tests passed|tests failed|\*\*\*Failed|Test +#|Not Run|SKIP" "$OUT/gpu-tests.log" | tail -40
fi

if [ "${BENCH:-1}" != 0 ]; then
  : > "$OUT/bench.jsonl"
  : > "$OUT/bench-stderr.log"  # every benchmark's stderr (OSP_VERBOSE path logs), one file
  for b in "$BUILD"/bench_*gpu*; do
    [ -x "$b" ] || continue
    echo "running $(basename "$b") ${BENCH_ARGS:-}"
    echo "==== $(basename "$b")" >> "$OUT/bench-stderr.log"
    "$b" ${BENCH_ARGS:-} 2>> "$OUT/bench-stderr.log" | tee -a "$OUT/bench.jsonl" || status=1
  done
  if [ "${TORCH:-1}" != 0 ] && python3 -c "import torch" 2>/dev/null; then
    echo "running bench/torch_dit_block.py"
    echo "==== torch_dit_block.py" >> "$OUT/bench-stderr.log"
    PYTHONUNBUFFERED=1 python3 bench/torch_dit_block.py ${BENCH_ARGS:-} 2>> "$OUT/bench-stderr.log" \
      | tee -a "$OUT/bench.jsonl" || status=1
    echo "running bench/torch_dit_block_train.py"
    echo "==== torch_dit_block_train.py" >> "$OUT/bench-stderr.log"
    PYTHONUNBUFFERED=1 python3 bench/torch_dit_block_train.py 2>> "$OUT/bench-stderr.log" \
      | tee -a "$OUT/bench.jsonl" || status=1
  fi
  python3 - "$OUT/bench.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print("\n==== summary (%s) ====" % (rows[0].get("card", "?") if rows else "no results"))
for r in rows:
    b = r.get("bench")
    if b == "attention":
        print("attn  %-20s %-6s %9s ms %7s TF/s" % (r["case"], r["path"], r.get("ms", "-"), r.get("tflops", "-")))
    elif b == "gemm":
        print("gemm  %-20s        %9.3f ms %7.1f TF/s" % (r["case"], r["ms"], r["tflops"]))
    elif b == "dit_block":
        print("block %-16s %-6s %9.2f ms  attn %6.1f TF/s (%s)  gemm %6.1f TF/s" % (
            r["model"], r["kind"], r["ms"], r["attn_tflops"], r["attn_path"], r["gemm_tflops"]))
    elif b == "dit_forward":
        print("fwd   %-16s full %9.1f ms  hybrid %9.1f ms  speedup %.2fx  peak %.1f GiB" % (
            r["model"], r["full_ms"], r["hybrid_ms"], r["hybrid_speedup"], r["peak_gib"]))
    elif b == "torch_dit_block":
        print("torch %-16s full %9.2f ms/block  sdpa %s %6.1f TF/s" % (r["model"], r["ms"], r["sdpa"], r["attn_tflops"]))
    elif b == "hif8_gpu" and r.get("section") == "codec":
        print("hif8  %-22s %9.3f ms %7.0f GB/s (%.0f%% of %.0f GB/s peak)" % (
            r["op"], r["ms"], r["GBps"], 100 * r["frac_of_peak"], r["peak_GBps"]))
    elif b == "hif8_gpu" and r.get("section") == "gemm":
        print("hif8  %-22s M=%-6d N=%-6d K=%-6d %9.3f ms %7.1f TF/s" % (
            r["variant"], r["M"], r["N"], r["K"], r["ms"], r["tflops"]))
    elif b == "hif8_gpu" and r.get("section") == "gemm_summary":
        print("hif8  fp8/bf16 speedup       M=%-6d N=%-6d K=%-6d %.2fx (fast accum %.2fx, incl. x quant %.2fx)" % (
            r["M"], r["N"], r["K"], r["speedup_fp8"], r["speedup_fp8_fast"], r["speedup_fp8_incl_x_quant"]))
    elif b == "torch_dit_forward":
        print("torch %-16s full %9.1f ms/forward" % (r["model"], r["full_ms"]))
    elif b in ("dit_block_train", "torch_dit_block_train"):
        # issue 13: one block's forward + backward (osp: the training path, 2-block minus 1-block model)
        print("train %-5s %-6s %-6s block fwd+bwd %9.2f ms %7.1f TF/s" % (
            "osp" if b == "dit_block_train" else "torch", r["model"], r["kind"], r["block_fwd_bwd_ms"], r["tflops"]))
    elif b == "dit_offload" and r.get("summary"):
        # issue 18 memory modes: step time under --max-vram vs the unlimited resident run
        print("vram  %-4s %-12s limit %4g GiB: %-40s %8.2f s/step vs unlimited %8.2f (x%.2f)  peak %.2f GiB (est %.2f, unlimited %.2f) within: %s" % (
            r["model"], r["size"], r["limit_gib"], r["mode"], r["limited_s"], r["unlimited_s"], r["ratio"],
            r["limited_peak_gib"], r["limited_est_gib"], r["unlimited_peak_gib"], r["within_limit"]))
    elif b == "dit_offload":
        if not r.get("ok", True):
            print("vram  %-4s %-12s %-9s FAILED: %s" % (r.get("model"), r.get("size"), r.get("run"), r.get("error", "")[:200]))
    else:
        print(json.dumps(r)[:160])
PY
fi
echo "gpu-test.sh status $status"
exit $status
