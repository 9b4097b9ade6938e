#!/usr/bin/env bash
# Issue 15's RL benchmark in ONE GPU call: one Mix-GRPO iteration (`osp rl`) of the Wan2.1-T2V-1.3B
# DiT at 832x480x81 with G = 4 samples of one prompt, 25 rollout steps of which 10 are SDE
# (trained) steps, CFG 5, LoRA rank 32 on the attention projections, the built-in temporal
# reward on the decoded videos. Its log line splits the iteration into rollout (the G sampled
# videos: forward passes only — the iteration's forward-only cost, what `osp generate` would
# spend on the same G videos with the same steps), reward (VAE decode + scoring) and update
# (log-probabilities with tapes, backward into the LoRA, AdamW) and counts the forwards and
# backwards of each part.
#
# The weights are random (`osp make-demo-model --config`: the 1.3B DiT, a umT5 at text_dim 4096
# with 2 blocks, the Wan-VAE decoder at width 96): the cost of an iteration does not depend on
# what the weights are; the reward values mean nothing here.
#
#   bash scripts/bench-rl.sh                # on the GPU machine (OUT=$OUT from the device tool)
#   TINY=1 bash scripts/bench-rl.sh         # CPU smoke test of the flow (the tiny model's config)
#
# Environment: OUT (logs: summary.txt, rl.log, rl_log.jsonl), BUILD (build-gpu), WORK
# (/tmp/osp-bench-rl), OSP (binary; built in BUILD unless SKIP_BUILD=1), ITERATIONS (1),
# SIZE (832x480), FRAMES (81), GROUP (4), STEPS (25), SDE_STEPS (10), DEVICE (cuda),
# RUN_TIMEOUT_S (520), RL_ARGS (extra `osp rl` flags, e.g. "--keep-attention").
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

OUT=${OUT:-$PWD/out}
TINY=${TINY:-0}
if [ "$TINY" = 1 ]; then
  BUILD=${BUILD:-build}
  DEVICE=${DEVICE:-cpu}
  SKIP_BUILD=${SKIP_BUILD:-1}
  SIZE=${SIZE:-64x64}
  FRAMES=${FRAMES:-9}
  STEPS=${STEPS:-4}
  SDE_STEPS=${SDE_STEPS:-2}
  GROUP=${GROUP:-2}
  VAE_DIM=${VAE_DIM:-16}
  MODEL_JSON=$(cat models/osp-next-tiny/config.json)
else
  BUILD=${BUILD:-build-gpu}
  DEVICE=${DEVICE:-cuda}
  SKIP_BUILD=${SKIP_BUILD:-0}
  SIZE=${SIZE:-832x480}
  FRAMES=${FRAMES:-81}
  STEPS=${STEPS:-25}
  SDE_STEPS=${SDE_STEPS:-10}
  GROUP=${GROUP:-4}
  VAE_DIM=${VAE_DIM:-96}
  # Wan2.1-T2V-1.3B (wan-spec §2.1): scripts/configs/wan2.1-t2v-1.3b.json
  MODEL_JSON=$(cat scripts/configs/wan2.1-t2v-1.3b.json)
fi
WORK=${WORK:-/tmp/osp-bench-rl}
OSP=${OSP:-$BUILD/osp}
ITERATIONS=${ITERATIONS:-1}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-520}
export NCCL_NVLS_ENABLE=0
mkdir -p "$OUT" "$WORK"
t_start=$(date +%s)
say() { echo "[bench-rl $(date -u +%H:%M:%S) +$(( $(date +%s) - t_start ))s] $*"; }

{
  date -u
  git log -1 --format='commit %h %s' 2>/dev/null | cut -c1-120
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} > "$OUT/summary.txt" 2>&1
if [ "$SKIP_BUILD" != 1 ]; then
  say "configure + build osp in $BUILD"
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOSP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
        -DOSP_FFMPEG=OFF > "$OUT/build.log" 2>&1 || { echo "configure failed"; tail -20 "$OUT/build.log"; exit 1; }
  ninja -C "$BUILD" -j "$(nproc)" osp >> "$OUT/build.log" 2>&1 ||
    { echo "build failed"; grep -E "error|FAILED" "$OUT/build.log" | head -20; exit 1; }
  say "built"
fi
[ -x "$OSP" ] || { echo "missing executable $OSP"; exit 1; }

printf '%s\n' "$MODEL_JSON" > "$WORK/dit_config.json"
rm -rf "$WORK/model" "$WORK/rl"
say "random model at the config's size (make-demo-model --config, VAE width $VAE_DIM)"
"$OSP" -q make-demo-model "$WORK/model" --config "$WORK/dit_config.json" --vae-dim "$VAE_DIM" ||
  { echo "make-demo-model failed"; exit 1; }
"$OSP" inspect "$WORK/model" | grep -E "parameters|DiT config" | tee -a "$OUT/summary.txt"
echo "a red fox runs through the snowy forest, cinematic" > "$WORK/prompts.txt"

say "osp rl: $ITERATIONS iteration(s), G $GROUP, $STEPS steps ($SDE_STEPS SDE), ${SIZE}x$FRAMES on $DEVICE"
timeout --foreground -s INT "$RUN_TIMEOUT_S" "$OSP" rl -m "$WORK/model" --prompts "$WORK/prompts.txt" \
  --group "$GROUP" --prompts-per-iter 1 --steps "$STEPS" --sde-steps "$SDE_STEPS" --size "$SIZE" --frames "$FRAMES" \
  --reward builtin:temporal --iterations "$ITERATIONS" --seed 0 --device "$DEVICE" --out "$WORK/rl" ${RL_ARGS:-} \
  > "$OUT/rl.log" 2>&1
rc=$?
say "osp rl rc=$rc"
tail -5 "$OUT/rl.log"
cp "$WORK/rl/rl_log.jsonl" "$OUT/rl_log.jsonl" 2>/dev/null || { echo "osp rl wrote no log"; exit 1; }

python3 - "$OUT/rl_log.jsonl" "$GROUP" "$STEPS" "$SDE_STEPS" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
G, steps, sde = sys.argv[2:5]
print(f"osp rl iteration, G {G}, {steps} steps ({sde} SDE)")
print("| iteration | rollout s | reward s | update s | total s | total / rollout | rollout fwd | update fwd | update bwd | s per rollout fwd |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    ro, rw, up = r["seconds_rollout"], r["seconds_reward"], r["seconds_update"]
    tot = ro + rw + up
    nf = max(r.get("rollout_forwards", 0), 1)
    print(f"| {r['iteration']} | {ro:.1f} | {rw:.1f} | {up:.1f} | {tot:.1f} | {tot / ro:.2f}x | {r.get('rollout_forwards')} | "
          f"{r.get('update_forwards')} | {r.get('update_backwards')} | {ro / nf:.3f} |")
# The on-policy check (issue 15): with a fresh LoRA the first iteration's ratios are 1 and the
# KL 0 up to what separates the update's training forward from the rollout's inference forward;
# ref_rel is that gap relative to the velocity (rl_trainer.h), v_rms the velocity's size.
for r in rows:
    print(f"iteration {r['iteration']}: ratio [{r['ratio_min']:.4g}, {r['ratio_max']:.4g}], kl {r['kl']:.3g}, "
          f"clip fraction {r['clip_fraction']:.3g}, v rms {r.get('v_rms', float('nan')):.4g}, "
          f"policy-reference gap {r.get('ref_rel', float('nan')):.3g}")
PY
