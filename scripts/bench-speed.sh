#!/usr/bin/env bash
# Issue 19's measurements in ONE GPU call (baselines in the same call), a table printed last:
#   0. the VAE decode with cuDNN's engine-config tuning off, timed into an empty tuning cache, and
#      read from it in a fresh process (OSP_TUNING_CACHE=$OUT/tuning.json unless set);
#   1. the whole 1.3B 832x480x81 hybrid video, 50 UniPC steps, CFG batched, VAE untiled
#      (bench_pipeline_gpu --vae-budget-gib 24 --vae-reps 3: the first decode is a fresh
#      process's, which builds the cuDNN plans of the real shapes; "s_repeat" the fastest repeat);
#   2. the DiT forward, 1.3B full and hybrid, with the fused norm kernels off and on
#      (OSP_FUSED_NORMS=0|1 bench_dit_multi_gpu), and with cuDNN's attention instead of the own
#      Hopper kernel (OSP_ATTENTION=cudnn); the attention kernels alone at the DiT's shapes
#      (bench_ops_gpu --attention-only: cuDNN, own flash, own Hopper's default and variants);
#   3. the PyTorch forward of the same model, eager and torch.compile (bench/torch_dit_forward.py);
#   4. (MODELS14=1) the same forward at 14B 1280x720x81, full / hybrid / hybrid+fp8.
# Logs under $OUT (default ./out): build.log, vae.jsonl, pipeline.jsonl, dit.jsonl, attention.jsonl,
# torch.jsonl, stderr.log.
#
#   bash scripts/bench-speed.sh                  # on the GPU machine (OUT=$OUT from the device tool)
# Environment: OUT, BUILD (build-gpu), SKIP_BUILD (0), TORCH (1), MODELS14 (0), STEPS (50),
# TORCH_TIMEOUT_S (300).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/out}
BUILD=${BUILD:-build-gpu}
STEPS=${STEPS:-50}
export NCCL_NVLS_ENABLE=0
mkdir -p "$OUT"
: > "$OUT/stderr.log"
{ date -u; git log -1 --format='commit %h %s' 2>/dev/null | cut -c1-100
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } | tee "$OUT/card.txt"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  t0=$(date +%s)
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOSP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
        -DOSP_FFMPEG=OFF -DOSP_BENCH=ON > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
  ninja -C "$BUILD" -j "$(nproc)" bench_pipeline_gpu bench_dit_multi_gpu bench_ops_gpu >> "$OUT/build.log" 2>&1 ||
    { grep -E "error|FAILED" "$OUT/build.log" | head -20; exit 1; }
  echo "build: $(( $(date +%s) - t0 )) s"
fi

# 0. The VAE decode with cuDNN's engine configs: the heuristics' first (OSP_CUDNN_AUTOTUNE=off),
#    timed into an empty tuning cache (all, the default), and a fresh process reading that cache;
#    the whole video below then starts with the cache warm (as every run after a card's first).
export OSP_TUNING_CACHE=${OSP_TUNING_CACHE:-$OUT/tuning.json}
rm -f "$OSP_TUNING_CACHE"
: > "$OUT/vae.jsonl"
for run in off cold warm; do
  t=all; [ $run = off ] && t=off
  echo "== 0. VAE decode, OSP_CUDNN_AUTOTUNE=$t ($run)"
  OSP_CUDNN_AUTOTUNE=$t "$BUILD/bench_pipeline_gpu" --modes hybrid --steps 1 --skip-t5 --vae-budget-gib 24 \
    --vae-reps 2 2>> "$OUT/stderr.log" | grep '"stage":"vae"' | sed "s/^{/{\"tuning\":\"$run\",/" |
    tee -a "$OUT/vae.jsonl"
done
echo "== 1. whole video (hybrid, $STEPS steps, VAE untiled, decoded 3 times)"
"$BUILD/bench_pipeline_gpu" --modes hybrid --steps "$STEPS" --vae-budget-gib 24 --vae-reps 3 \
  2>> "$OUT/stderr.log" | tee "$OUT/pipeline.jsonl"
: > "$OUT/dit.jsonl"
for cfg in "auto 0" "cudnn 1" "auto 1"; do
  set -- $cfg
  echo "== 2. DiT forward 1.3B, OSP_ATTENTION=$1 OSP_FUSED_NORMS=$2"
  OSP_ATTENTION=$1 OSP_FUSED_NORMS=$2 "$BUILD/bench_dit_multi_gpu" --models 1.3b --modes full,hybrid --reps 3 \
    --warmup 1 2>> "$OUT/stderr.log" | sed "s/^{/{\"attention\":\"$1\",\"fused_norms\":$2,/" | tee -a "$OUT/dit.jsonl"
done
echo "== 2. attention kernels at the DiT's shapes"
"$BUILD/bench_ops_gpu" --attention-only 2>> "$OUT/stderr.log" | tee "$OUT/attention.jsonl"
if [ "${MODELS14:-0}" = 1 ]; then
  echo "== 4. DiT forward 14B"
  "$BUILD/bench_dit_multi_gpu" --models 14b --modes full,hybrid,hybrid+fp8 --reps 2 --warmup 1 \
    2>> "$OUT/stderr.log" | sed 's/^{/{"fused_norms":1,/' | tee -a "$OUT/dit.jsonl"
fi
: > "$OUT/torch.jsonl"
if [ "${TORCH:-1}" != 0 ] && python3 -c "import torch" 2>/dev/null; then
  models=1.3B; [ "${MODELS14:-0}" = 1 ] && models=1.3B,14B
  echo "== 3. PyTorch forward ($models), eager and compiled"
  (cd bench && timeout "${TORCH_TIMEOUT_S:-300}" python3 torch_dit_forward.py --models "$models" \
     2>> "$OUT/stderr.log") | tee "$OUT/torch.jsonl"
fi

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def rows(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p) if l.startswith("{")] if os.path.exists(p) else []
pipe = {r["stage"]: r for r in rows("pipeline.jsonl") if "stage" in r}
print("\n| stage (1.3B hybrid video) | s | note |\n|---|---|---|")
for st in ("t5", "dit", "vae", "total"):
    r = pipe.get(st)
    if r:
        note = {"dit": "%.4f s/step" % r.get("s_per_step", 0), "vae": "repeat %s s" % r.get("s_repeat", "-"),
                "total": "target <= 35 s"}.get(st, "")
        print("| %s | %.3f | %s |" % (st, r["s"], note))
print("\n| VAE decode (480P) | first s | repeat s |\n|---|---|---|")
for r in rows("vae.jsonl"):
    name = {"off": "heuristics' first config", "cold": "configs timed, empty tuning cache",
            "warm": "fresh process, tuning cache warm"}.get(r.get("tuning"), r.get("tuning"))
    print("| %s | %.3f | %s |" % (name, r["s"], r.get("s_repeat", "-")))
torch = {}
for r in rows("torch.jsonl"):
    torch[(r.get("model", "").lower(), r.get("mode", ""))] = r.get("ms")
print("\n| attention (case) | path | ms | TFLOP/s | rel. err vs cuDNN |\n|---|---|---|---|---|")
for r in rows("attention.jsonl"):
    if "ms" in r:
        print("| %s | %s | %.3f | %.1f | %s |" % (r["case"], r["path"], r["ms"], r["tflops"],
              "%.2g" % r["rel_err_vs_cudnn"] if r.get("rel_err_vs_cudnn", -1) >= 0 else "-"))
print("\n| model | mode | attention | fused norms | osp ms | vs torch eager | vs torch.compile |\n|---|---|---|---|---|---|---|")
for r in rows("dit.jsonl"):
    m = r.get("model", "").lower()
    eager, comp = torch.get((m, "eager")), torch.get((m, "compiled"))
    ratio = lambda b: "%.3fx" % (r["ms"] / b) if b else "-"
    print("| %s | %s | %s | %s | %.1f | %s | %s |" % (r.get("model"), r.get("mode"), r.get("attention"),
          r.get("fused_norms"), r["ms"], ratio(eager) if r.get("mode") == "full" else "-",
          ratio(comp) if r.get("mode") == "full" else "-"))
PY
