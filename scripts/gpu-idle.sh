#!/usr/bin/env bash
# How much of a DiT forward the GPU spends idle between kernels — the most a CUDA graph of the
# forward could remove (a graph shortens the launch path; it cannot shorten the kernels). Runs
# bench_dit_multi_gpu under Nsight Systems (CUDA trace only), then cuts the GPU timeline at the
# benchmark's device syncs (one forward between two cudaDeviceSynchronize calls) and reports per
# forward: kernels and copies, the span from the first start to the last end, the busy time (union
# of the kernel/copy intervals), idle = span − busy, and the host's enqueue time (enqueue_ms of the
# benchmark's JSON line). Nothing changes clocks or modes.
#
#   bash scripts/gpu-idle.sh            # on the GPU machine, after a build (BUILD=build-gpu)
# Environment: OUT (./out), BUILD (build-gpu), MODELS (1.3b), MODES (full,hybrid).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/out}
BUILD=${BUILD:-build-gpu}
MODELS=${MODELS:-1.3b}
MODES=${MODES:-full,hybrid}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
ninja -C "$BUILD" bench_dit_multi_gpu > "$OUT/idle-build.log" 2>&1 || { echo "build failed (idle-build.log)"; exit 1; }
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
if [ -z "$NSYS" ]; then
  echo "nsys (Nsight Systems) is not on this machine: only the host's enqueue time is measured"
  "$BUILD/bench_dit_multi_gpu" --models "$MODELS" --modes "$MODES" --reps 3 --warmup 1 | tee "$OUT/idle.jsonl"
  exit 0
fi
# One mode per run, so each trace's forwards are of one kind (warm-up 1 + 2 timed).
for mode in ${MODES//,/ }; do
  rep=$OUT/idle-$MODELS-$mode
  "$NSYS" profile -t cuda --sample=none --cpuctxsw=none -f true -o "$rep" \
    "$BUILD/bench_dit_multi_gpu" --models "$MODELS" --modes "$mode" --reps 2 --warmup 1 > "$rep.out" 2>&1 ||
    { echo "nsys profile failed ($rep.out)"; tail -5 "$rep.out"; continue; }
  "$NSYS" stats -q --report cuda_gpu_trace,cuda_api_trace --format csv -f -o "$rep" "$rep.nsys-rep" > /dev/null 2>&1 ||
    { echo "nsys stats failed"; continue; }
  python3 - "$rep" "$mode" <<'PY'
import csv, json, sys
rep, mode = sys.argv[1], sys.argv[2]
def rows(name):
    with open(f"{rep}_{name}.csv") as f:
        return list(csv.DictReader(f))
def col(r, *keys):
    for k in r:
        if any(k.startswith(x) for x in keys): return k
gpu, api = rows("cuda_gpu_trace"), rows("cuda_api_trace")
gs, gd, gn = col(gpu[0], "Start"), col(gpu[0], "Duration"), col(gpu[0], "Name")
a_s, a_d, a_n = col(api[0], "Start"), col(api[0], "Duration"), col(api[0], "Name")
syncs = sorted(int(r[a_s]) + int(r[a_d]) for r in api if "DeviceSynchronize" in r[a_n])
ev = sorted((int(r[gs]), int(r[gs]) + int(r[gd])) for r in gpu)
enq = None
for line in open(f"{rep}.out"):
    if line.startswith("{") and '"enqueue_ms"' in line: enq = json.loads(line).get("enqueue_ms")
# the forwards: GPU work between consecutive device syncs holding more than 100 operations
out = []
for lo, hi in zip(syncs, syncs[1:]):
    seg = [e for e in ev if e[0] >= lo and e[1] <= hi]
    if len(seg) < 100: continue
    busy, cur_s, cur_e = 0, seg[0][0], seg[0][1]
    gaps = []
    for s, e in seg[1:]:
        if s > cur_e:
            busy += cur_e - cur_s; gaps.append(s - cur_e); cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    span = seg[-1][1] - seg[0][0]
    gaps.sort()
    out.append((len(seg), span / 1e6, busy / 1e6, (span - busy) / 1e6, gaps[len(gaps) // 2] / 1e3 if gaps else 0,
                gaps[-1] / 1e3 if gaps else 0))
for i, (n, span, busy, idle, med, mx) in enumerate(out):
    print(json.dumps({"bench": "gpu_idle", "mode": mode, "forward": i, "ops": n, "span_ms": round(span, 2),
                      "busy_ms": round(busy, 2), "idle_ms": round(idle, 3), "idle_pct": round(100 * idle / span, 3),
                      "median_gap_us": round(med, 2), "max_gap_us": round(mx, 1), "enqueue_ms": enq}))
PY
done | tee "$OUT/idle.jsonl"
