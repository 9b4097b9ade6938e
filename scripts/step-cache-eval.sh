#!/usr/bin/env bash
# Step caching on the shipped OSP-Next-Tiny (issue 19), on the CPU (or DEVICE=cuda), in one
# command: for every `--cache` setting, against the uncached run of the same invocation —
#   1. speed and drift (bench_step_cache: models loaded once, N held-out captions with seeds
#      1000 + i; steps reused, process CPU seconds, latent drift, frames' mean |Δ|);
#   2. held-out adherence of the clips each setting generates (scripts/train-tiny.sh's eval stage:
#      osp generate + osp eval on the same captions and seeds).
# The held-out captions are those of the model card (scripts/train-tiny.sh's heldout stage; the
# first N). A summary table is printed last; logs under RUN.
#
#   bash scripts/step-cache-eval.sh
# Environment: BUILD (build: where osp and bench_step_cache are), MODEL_DIR (models/osp-next-tiny),
# RUN (runs/step-cache), N (48), STEPS (30), CACHES ("teacache:0 teacache:0.05 teacache:0.1
# teacache:0.2 teacache:0.3"), DEVICE (cpu | cuda). One thread each (OMP/OpenBLAS), so on the CPU
# the CPU seconds describe the code; on a GPU read the wall seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
OSP=${OSP:-$BUILD/osp}
BENCH=${BENCH:-$BUILD/bench_step_cache}
MODEL_DIR=${MODEL_DIR:-models/osp-next-tiny}
RUN=${RUN:-runs/step-cache}
N=${N:-48}
STEPS=${STEPS:-30}
CACHES=${CACHES:-"teacache:0 teacache:0.05 teacache:0.1 teacache:0.2 teacache:0.3"}
DEVICE=${DEVICE:-cpu}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
for exe in "$OSP" "$BENCH"; do
  [ -x "$exe" ] || { echo "$exe: not built (cmake -DOSP_BENCH=ON, then ninja osp bench_step_cache)" >&2; exit 1; }
done
mkdir -p "$RUN"

RUN=$RUN OSP=$OSP STAGES=heldout bash scripts/train-tiny.sh > "$RUN/heldout.log" 2>&1
python3 - "$RUN/data-heldout/manifest.jsonl" "$N" > "$RUN/prompts.txt" <<'EOF'
import json, sys
for i, line in enumerate(open(sys.argv[1])):
    if i >= int(sys.argv[2]): break
    print(json.loads(line)["caption"])
EOF

cache_args=()
for c in $CACHES; do cache_args+=(--cache "$c"); done
echo "== speed and drift: $BENCH, $N videos, $STEPS steps, $DEVICE"
"$BENCH" --model "$MODEL_DIR" --prompts "$RUN/prompts.txt" --n "$N" --steps "$STEPS" --device "$DEVICE" "${cache_args[@]}" |
  tee "$RUN/bench.jsonl"

for c in none $CACHES; do
  echo "== adherence, --cache $c"
  RUN=$RUN OSP=$OSP STAGES=eval GEN_DEVICE=$DEVICE EVAL_CLIPS=$N GEN_STEPS=$STEPS MODEL_DIR=$MODEL_DIR \
    EVAL_OUT="$RUN/eval-${c//:/-}" GEN_EXTRA="--cache $c" bash scripts/train-tiny.sh > "$RUN/eval-${c//:/-}.log" 2>&1
done

python3 - "$RUN" $CACHES <<'PY'
import json, os, sys
run, caches = sys.argv[1], ["none"] + sys.argv[2:]
bench = {}
for line in open(os.path.join(run, "bench.jsonl")):
    if line.startswith("{"):
        r = json.loads(line)
        bench[r["cache"]] = r
none = bench["none"]
print("\n%d videos of %d steps on %s" % (none["videos"], none["steps"], none.get("device", "cpu")))
print("\n| `--cache` | steps reused | CPU s | speed-up | wall s | speed-up | DiT s | speed-up | latent drift mean / max | frames mean \\|Δ\\| (of 255) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for c in caches:
    r = bench.get(c)
    if not r: continue
    drift = "—" if c == "none" else "%.3f / %.3f" % (r["latent_drift_mean"], r["latent_drift_max"])
    levels = "—" if c == "none" else "%.1f" % r["frames_mean_abs_levels"]
    print("| %s | %d | %.1f | %.2f× | %.1f | %.2f× | %.1f | %.2f× | %s | %s |" % (c, r["reused_per_video"], r["cpu_s"],
          none["cpu_s"] / r["cpu_s"], r["wall_s"], none["wall_s"] / r["wall_s"], r["dit_s"], none["dit_s"] / r["dit_s"],
          drift, levels))
attrs = ["background", "count", "color", "shape", "motion", "all"]
print("\n| `--cache` | " + " | ".join(attrs) + " | mean frame change | background flicker |")
print("|---" * (len(attrs) + 3) + "|")
for c in caches:
    p = os.path.join(run, "eval-" + c.replace(":", "-"), "eval.json")
    if not os.path.exists(p): continue
    s = json.load(open(p))["summary"]
    print("| %s | %s | %.4f | %.4f |" % (c, " | ".join("%.1f %%" % (100 * s["accuracy"][a]) for a in attrs),
          s["frame_change"], s["background_flicker"]))
PY
