#!/usr/bin/env bash
# How much of a DiT forward the GPU spends idle between kernels — the most a CUDA graph of the
# forward could remove (a graph shortens the launch path; it cannot shorten the kernels).
# `bench_dit_multi_gpu --kernel-gaps` times the forwards as usual (its JSON line also has
# enqueue_ms: how long the host took to queue the forward), then records one more forward per mode
# with CUPTI's activity API (kernels, copies, memsets) and prints a "kernel_gaps" line: operations,
# span, GPU busy time, idle = span − busy, median and 90th-percentile gap. Cases: the 1.3B model at
# 832×480×81 and the shipped tiny model's shapes at 64×64×9 (48 tokens), random weights.
# Nothing changes clocks or modes.
#
#   bash scripts/gpu-idle.sh            # on the GPU machine (BUILD=build-gpu, configured here if needed)
# Environment: OUT (./out), BUILD (build-gpu), MODELS (1.3b,tiny), MODES (full,hybrid).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/out}
BUILD=${BUILD:-build-gpu}
MODELS=${MODELS:-1.3b,tiny}
MODES=${MODES:-full,hybrid}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOSP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
        -DOSP_FFMPEG=OFF -DOSP_BENCH=ON > "$OUT/idle-build.log" 2>&1 || { echo "configure failed (idle-build.log)"; exit 1; }
fi
ninja -C "$BUILD" bench_dit_multi_gpu >> "$OUT/idle-build.log" 2>&1 || { echo "build failed (idle-build.log)"; exit 1; }
"$BUILD/bench_dit_multi_gpu" --models "$MODELS" --modes "$MODES" --reps 3 --warmup 1 --kernel-gaps \
  > "$OUT/idle.jsonl" 2> "$OUT/idle.err"
python3 - "$OUT/idle.jsonl" <<'PY'
import json, sys
fwd = {}
print("%-6s %-7s %10s %11s %6s %10s %10s %9s %10s %9s" % ("model", "mode", "forward ms", "enqueue ms", "ops",
      "span ms", "idle ms", "idle %", "median µs", "p90 µs"))
for line in open(sys.argv[1]):
    if not line.startswith("{"): continue
    r = json.loads(line)
    if r.get("bench") == "dit_multi_gpu" and "ms" in r:
        fwd[(r["model"], r["mode"])] = r
    elif r.get("bench") == "kernel_gaps":
        f = fwd.get((r["model"], r["mode"]), {})
        print("%-6s %-7s %10.2f %11.2f %6d %10.3f %10.3f %9.2f %10.2f %9.2f" % (r["model"], r["mode"],
              f.get("ms", -1), f.get("enqueue_ms", -1), r["ops"], r["span_ms"], r["idle_ms"], r["idle_pct"],
              r["median_gap_us"], r["p90_gap_us"]))
PY
grep -v '^{' "$OUT/idle.err" | tail -3
