#!/usr/bin/env bash
# Multi-GPU benchmark of the DiT forward (bench/dit_multi_gpu.cpp): builds Release with CUDA
# (sm_90a), MPI and NCCL, then runs
#   1 GPU:                 hybrid (dual-end Skiparse) and full (Wan2.1), no MPI;
#   mpirun -np 2 and -np 4: hybrid + SSP and full + Ulysses over NCCL, one process per GPU
# for 14B at 1280×720×81 and 1.3B at 832×480×81, with NCCL_NVLS_ENABLE=0. Every rank sees only
# its own GPU (CUDA_VISIBLE_DEVICES = its local rank, or the local-rank-th entry of an existing
# CUDA_VISIBLE_DEVICES list). JSON lines go to $OUT/multi.jsonl, logs to $OUT/*.log, and a
# table is printed last.
#
# Environment knobs:
#   OUT=dir          logs + JSON lines (default ./out-multi)
#   BUILD=dir        build directory (default build-gpu, shared with scripts/gpu-test.sh)
#   JOBS=n           build parallelism (default nproc)
#   BENCH_ARGS=...   extra arguments for bench_dit_multi_gpu (e.g. --quick, --models 1.3b)
#   NPS="2 4"        the mpirun sizes to run (those above the GPU count are skipped, visibly)
#   RUN_TIMEOUT=s    wall-clock limit per run (default 1500)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out-multi}
BUILD=${BUILD:-build-gpu}
JOBS=${JOBS:-$(nproc)}
NPS=${NPS:-"2 4"}
RUN_TIMEOUT=${RUN_TIMEOUT:-1500}
mkdir -p "$OUT"
status=0

fail() { echo "gpu-multi.sh: $*" >&2; exit 1; }

command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: no NVIDIA driver on this machine"
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
[ "${ngpu:-0}" -ge 1 ] || fail "no GPU visible (nvidia-smi -L lists none)"
command -v mpirun >/dev/null || fail "mpirun not found: install openmpi-bin libopenmpi-dev (scripts/install-deps.sh)"
{ date -u; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv;
  nvidia-smi topo -m 2>/dev/null | head -12; mpirun --version 2>&1 | head -1; } > "$OUT/card.txt" 2>&1
cat "$OUT/card.txt"
echo "GPUs visible: $ngpu"

t0=$(date +%s)
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOSP_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90a -DOSP_FFMPEG=OFF -DOSP_MPI=ON > "$OUT/configure.log" 2>&1 \
  || { tail -30 "$OUT/configure.log"; fail "configure failed (see $OUT/configure.log)"; }
grep -q "osp: NCCL ON" "$OUT/configure.log" || {
  grep -E "osp: (CUDA|MPI|NCCL)" "$OUT/configure.log"
  fail "the NCCL backend is not enabled (needs CUDA, MPI and nccl.h/libnccl); see $OUT/configure.log"
}
ninja -C "$BUILD" -j "$JOBS" bench_dit_multi_gpu > "$OUT/build.log" 2>&1 || {
  grep -E "error|FAILED" "$OUT/build.log" | head -20
  fail "build of bench_dit_multi_gpu failed (see $OUT/build.log)"
}
echo "build: $(( $(date +%s) - t0 )) s"
BIN=$PWD/$BUILD/bench_dit_multi_gpu
[ -x "$BIN" ] || BIN=$BUILD/bench_dit_multi_gpu

# Per-rank wrapper: pin the rank to one GPU before the process starts (CUDA reads the variable
# at initialisation), keep NCCL's NVLink SHARP (multicast) off.
WRAP="$OUT/rank_wrapper.sh"
cat > "$WRAP" <<'EOF'
#!/usr/bin/env bash
lr=${OMPI_COMM_WORLD_LOCAL_RANK:-${MPI_LOCALRANKID:-${SLURM_LOCALID:-0}}}
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  IFS=, read -r -a devs <<< "$CUDA_VISIBLE_DEVICES"
  export CUDA_VISIBLE_DEVICES=${devs[$lr]}
else
  export CUDA_VISIBLE_DEVICES=$lr
fi
export NCCL_NVLS_ENABLE=0
exec "$@"
EOF
chmod +x "$WRAP"
export NCCL_NVLS_ENABLE=0

: > "$OUT/multi.jsonl"
run() {  # run <label> <command...>
  local label=$1; shift
  echo "== $label: $*"
  timeout --signal=KILL "$RUN_TIMEOUT" "$@" 2> "$OUT/$label.log" | tee -a "$OUT/multi.jsonl"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    status=1
    echo "!! $label failed with exit code $rc (137 = killed after ${RUN_TIMEOUT}s); last log lines:"
    tail -15 "$OUT/$label.log"
  fi
}

# shellcheck disable=SC2086
run np1 "$BIN" ${BENCH_ARGS:-}
for np in $NPS; do
  if [ "$np" -gt "$ngpu" ]; then
    echo "== np$np: skipped (only $ngpu GPUs visible)"
    echo "{\"bench\":\"dit_multi_gpu\",\"gpus\":$np,\"skipped\":\"only $ngpu GPUs\"}" >> "$OUT/multi.jsonl"
    continue
  fi
  # shellcheck disable=SC2086
  run "np$np" mpirun --allow-run-as-root --bind-to none -np "$np" \
      -x NCCL_NVLS_ENABLE=0 -x NCCL_DEBUG="${NCCL_DEBUG:-WARN}" -x PATH -x LD_LIBRARY_PATH \
      "$WRAP" "$BIN" ${BENCH_ARGS:-}
done

python3 - "$OUT/multi.jsonl" <<'PY' || { echo "(table needs python3; JSON lines are in $OUT/multi.jsonl)"; }
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
errs = [r for r in rows if "error" in r or "skipped" in r]
ok = [r for r in rows if "ms" in r]
card = ok[0]["card"] if ok else "?"
print("\n==== multi-GPU DiT forward (%s), ms per forward, B = 1 ====" % card)
by = {}
for r in ok:
    by.setdefault((r["model"], r["res"]), {})[(r["mode"], r["gpus"])] = r
cols = [("hybrid", 1), ("full", 1), ("hybrid+ssp", 2), ("full+ulysses", 2), ("hybrid+ssp", 4),
        ("full+ulysses", 4)]
print("| model | " + " | ".join("%s %dGPU" % c for c in cols) + " |")
print("|---|" + "---|" * len(cols))
for (model, res), d in by.items():
    base = d.get(("hybrid", 1), {}).get("ms")
    cells = []
    for c in cols:
        r = d.get(c)
        if not r:
            cells.append("–")
            continue
        cell = "%.0f" % r["ms"]
        if base and c != ("hybrid", 1):
            cell += " (%.2fx)" % (base / r["ms"])
        if r.get("rel_err_vs_1gpu", -1) >= 0:
            cell += " err %.1e" % r["rel_err_vs_1gpu"]
        cells.append(cell)
    print("| %s %s | %s |" % (model, res, " | ".join(cells)))
print("(speed-ups relative to hybrid on 1 GPU; err = max relative error of the parallel output"
      " vs the 1-GPU forward, 1.3B only)")
for (model, res), d in by.items():
    for (mode, g), r in sorted(d.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if g > 1:
            print("  %s %s %-13s %d GPUs: %.2f GiB sent per rank per forward, peak %.1f GiB" % (
                model, res, mode, g, r["bytes_sent_per_rank"] / 2**30, r["peak_gib"]))
for r in errs:
    print("note:", json.dumps(r))
PY
echo "gpu-multi.sh status $status (logs and JSON lines in $OUT)"
exit $status
