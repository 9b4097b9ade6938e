#!/usr/bin/env bash
# How much of a DiT forward the GPU spends idle between kernels — the most a CUDA graph of the
# forward could remove (a graph shortens the launch path; it cannot shorten the kernels). Runs
# bench_dit_multi_gpu under Nsight Systems (CUDA trace only), then cuts the GPU timeline at the
# host's syncs (a forward runs from its time embedding's synchronous copy to the benchmark's
# device sync) and reports per forward: kernels and copies, the span from the first start to the
# last end, the busy time (union of the kernel/copy intervals), idle = span − busy, the median gap
# between kernels, and the host's enqueue time (enqueue_ms of the benchmark's JSON line).
# Nothing changes clocks or modes. The lent GPU machines had no Nsight Systems in session 19 (only
# Nsight Compute): there the script prints the benchmark's lines alone (enqueue_ms against ms).
#
#   bash scripts/gpu-idle.sh            # on the GPU machine, after a build (BUILD=build-gpu)
# Environment: OUT (./out), BUILD (build-gpu), MODELS (1.3b), MODES (full,hybrid), TINY (1: also
# the shipped tiny model's sampling steps, where the kernels are small and launches may dominate).
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
# Summarises one Nsight Systems report: the GPU work between consecutive host syncs
# (cudaDeviceSynchronize, cudaStreamSynchronize, cudaEventSynchronize, a synchronous cudaMemcpy)
# holding at least MIN_OPS kernels/copies is one segment — a forward of the benchmark, a sampling
# step of the tiny model. Prints one JSON line per segment (EACH=1) or their sum (EACH=0).
summarise() {  # report-prefix label min-ops each
  "$NSYS" stats -q --report cuda_gpu_trace,cuda_api_trace --format csv -f -o "$1" "$1.nsys-rep" > /dev/null 2>&1 ||
    { echo "nsys stats failed for $1"; return; }
  python3 - "$@" <<'PY'
import csv, json, sys
rep, label, min_ops, each = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
def rows(name):
    with open(f"{rep}_{name}.csv") as f:
        return list(csv.DictReader(f))
def col(r, key):
    return next(k for k in r if k.startswith(key))
gpu, api = rows("cuda_gpu_trace"), rows("cuda_api_trace")
gs, gd = col(gpu[0], "Start"), col(gpu[0], "Duration")
a_s, a_d, a_n = col(api[0], "Start"), col(api[0], "Duration"), col(api[0], "Name")
def is_sync(name):
    base = name.split("_v")[0]
    return base in ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy")
syncs = sorted(int(r[a_s]) + int(r[a_d]) for r in api if is_sync(r[a_n]))
ev = sorted((int(r[gs]), int(r[gs]) + int(r[gd])) for r in gpu)
enq = None
try:
    for line in open(f"{rep}.out"):
        if line.startswith("{") and '"enqueue_ms"' in line: enq = json.loads(line).get("enqueue_ms")
except OSError:
    pass
segs, j = [], 0
for lo, hi in zip(syncs, syncs[1:]):
    while j < len(ev) and ev[j][0] < lo: j += 1
    k = j
    while k < len(ev) and ev[k][1] <= hi: k += 1
    seg = ev[j:k]
    if len(seg) < min_ops: continue
    busy, cs, ce, gaps = 0, seg[0][0], seg[0][1], []
    for s, e in seg[1:]:
        if s > ce:
            busy += ce - cs; gaps.append(s - ce); cs, ce = s, e
        else:
            ce = max(ce, e)
    busy += ce - cs
    segs.append((len(seg), seg[-1][1] - seg[0][0], busy, sorted(gaps)))
def line(i, n, span, busy, gaps):
    d = {"bench": "gpu_idle", "case": label, "segment": i, "ops": n, "span_ms": round(span / 1e6, 3),
         "busy_ms": round(busy / 1e6, 3), "idle_ms": round((span - busy) / 1e6, 3),
         "idle_pct": round(100 * (span - busy) / span, 2) if span else 0,
         "median_gap_us": round(gaps[len(gaps) // 2] / 1e3, 2) if gaps else 0}
    if enq is not None: d["enqueue_ms"] = enq
    print(json.dumps(d))
if each:
    for i, (n, span, busy, gaps) in enumerate(segs): line(i, n, span, busy, gaps)
elif segs:
    line(-1, sum(s[0] for s in segs), sum(s[1] for s in segs), sum(s[2] for s in segs),
         sorted(g for s in segs for g in s[3]))
    print(json.dumps({"bench": "gpu_idle", "case": label, "segments": len(segs),
                      "ops_per_segment_median": sorted(s[0] for s in segs)[len(segs) // 2]}))
PY
}
# The 1.3B forwards, one mode per run (warm-up 1 + 2 timed; the last two segments are the timed ones).
for mode in ${MODES//,/ }; do
  rep=$OUT/idle-$MODELS-$mode
  "$NSYS" profile -t cuda --sample=none --cpuctxsw=none -f true -o "$rep" \
    "$BUILD/bench_dit_multi_gpu" --models "$MODELS" --modes "$mode" --reps 2 --warmup 1 > "$rep.out" 2>&1 ||
    { echo "nsys profile failed ($rep.out)"; tail -5 "$rep.out"; continue; }
  summarise "$rep" "$MODELS $mode forward" 100 1
done | tee "$OUT/idle.jsonl"
# The shipped tiny model (TINY=1): two videos of 30 steps, uncached, through the loaded pipeline;
# the segments are its sampling steps (the finite check's copy ends each).
if [ "${TINY:-1}" = 1 ] && [ -d models/osp-next-tiny ]; then
  ninja -C "$BUILD" bench_step_cache >> "$OUT/idle-build.log" 2>&1 || { echo "bench_step_cache build failed"; exit 1; }
  rep=$OUT/idle-tiny
  "$NSYS" profile -t cuda --sample=none --cpuctxsw=none -f true -o "$rep" \
    "$BUILD/bench_step_cache" --device cuda --n 2 --cache teacache:0 > "$rep.out" 2>&1 ||
    { echo "nsys profile failed ($rep.out)"; tail -5 "$rep.out"; exit 1; }
  summarise "$rep" "tiny model, sampling steps" 20 0 | tee -a "$OUT/idle.jsonl"
fi
