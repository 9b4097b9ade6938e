#!/usr/bin/env bash
# Trains OSP-Next-Tiny end to end with osp alone (issue 16; docs/MODEL_CARD_TINY.md):
#
#   data     osp make-dataset: TRAIN_CLIPS training clips + HELDOUT_CLIPS held-out clips (64x64, 9 frames)
#   heldout  only the held-out clips of the data stage (what eval reads; scripts/step-cache-eval.sh)
#   vae      osp train-vae: a Wan-VAE at base width 16 (z 16, 4x time / 8x space) for reconstruction
#   text     osp make-text-encoder: SentencePiece word tokenizer on the captions + frozen random umT5 (dim 64)
#   encode   osp encode-clips: clips -> latent cache (16x3x8x8 latents, umT5 contexts)
#   dit      osp train --from-scratch: the OSP-Next hybrid DiT (dual-end: 4 full blocks, Skiparse P=2 in the middle)
#   package  the model folder MODEL_DIR (DiT bf16 from the EMA, umT5, tokenizer, VAE, config, card)
#   eval     osp generate on EVAL_CLIPS held-out captions + osp eval (adherence table and JSON)
#
#   bash scripts/train-tiny.sh                         # everything, on the GPU (DEVICE=cuda)
#   STAGES="package eval" bash scripts/train-tiny.sh   # only some stages
#   VAE_INIT=models/osp-next-tiny/Wan2.1_VAE.safetensors bash scripts/train-tiny.sh
#                                                      # continue the VAE from the shipped stage-1 weights
#   The shipped preview DiT (CPU, docs/MODEL_CARD_TINY.md) is, in steps rather than minutes:
#   DEVICE=cpu VAE_WEIGHTS=models/osp-next-tiny/Wan2.1_VAE.safetensors ENCODE_LIMIT=217 DIT_STEPS=1652 \
#     DIT_BATCH=4 DIT_LR=1e-3 DIT_WARMUP=50 DIT_EMA=0.99 STAGES="data text encode dit package eval" \
#     MODEL_DIR=runs/preview bash scripts/train-tiny.sh
# Settings (environment): OSP (the osp binary), DEVICE, RUN (work folder, default runs/tiny),
# MODEL_DIR, TRAIN_CLIPS, HELDOUT_CLIPS, VAE_STEPS, VAE_BATCH, VAE_LR, DIT_STEPS, DIT_BATCH, DIT_LR,
# DIT_EMA, EVAL_CLIPS, GEN_STEPS, GEN_GUIDANCE, GEN_DEVICE, GEN_EXTRA (more `osp generate` flags for
# the eval stage, e.g. GEN_EXTRA="--cache teacache:0.1"), and DEADLINE (unix time): when set, the
# VAE, the encoding and the DiT get shares of the time left (train-vae --max-seconds,
# encode-clips --max-seconds, osp train stopped with SIGINT, which saves a checkpoint) —
# that is how the shipped model was trained inside one 8-minute GPU call; the steps each stage
# reached are in RUN/vae/vae_eval.json and RUN/dit/train_log.jsonl, and re-running with those
# step counts and no DEADLINE repeats the run (same seeds).
set -euo pipefail
cd "$(dirname "$0")/.."

OSP=${OSP:-build-tiny/osp}
DEVICE=${DEVICE:-cuda}
RUN=${RUN:-runs/tiny}
MODEL_DIR=${MODEL_DIR:-models/osp-next-tiny}
SIZE=64x64
FRAMES=9
TRAIN_CLIPS=${TRAIN_CLIPS:-4096}
HELDOUT_CLIPS=${HELDOUT_CLIPS:-256}
VAE_STEPS=${VAE_STEPS:-3000}
VAE_BATCH=${VAE_BATCH:-4}
VAE_LR=${VAE_LR:-6e-4}
VAE_INIT=${VAE_INIT:-}
VAE_WEIGHTS=${VAE_WEIGHTS:-}      # skip the vae stage: use these weights in the text stage
ENCODE_LIMIT=${ENCODE_LIMIT:-0}  # encode only the first N clips (0: all)
DIT_WARMUP=${DIT_WARMUP:-100}
DIT_STEPS=${DIT_STEPS:-20000}
DIT_BATCH=${DIT_BATCH:-64}
DIT_LR=${DIT_LR:-8e-4}
DIT_EMA=${DIT_EMA:-0.995}
DIT_INIT=${DIT_INIT:-}            # fine-tune this model folder (osp train -m) instead of --from-scratch
DIT_ATTENTION=${DIT_ATTENTION:-hybrid}   # full | hybrid
DIT_QUANT=${DIT_QUANT:-none}      # none | hif8 (quantization-aware training)
DIT_OUT=${DIT_OUT:-$RUN/dit}      # osp train's output folder (package reads its latest checkpoint)
ENCODE_MODEL=${ENCODE_MODEL:-}    # encode with this model folder's umT5 + VAE (default: RUN/base)
GEN_ATTENTION=${GEN_ATTENTION:-auto}
GEN_QUANT=${GEN_QUANT:-none}
EVAL_OUT=${EVAL_OUT:-$RUN/eval}   # eval stage: EVAL_OUT/videos/<id>/frame_*.png, eval.json, eval.txt
EVAL_CLIPS=${EVAL_CLIPS:-48}
GEN_STEPS=${GEN_STEPS:-30}
GEN_GUIDANCE=${GEN_GUIDANCE:-5}
GEN_DEVICE=${GEN_DEVICE:-cpu}
GEN_EXTRA=${GEN_EXTRA:-}          # extra osp generate flags (eval stage), split on spaces
STAGES=${STAGES:-"data vae text encode dit package eval"}
DEADLINE=${DEADLINE:-0}

has() { [[ " $STAGES " == *" $1 "* ]]; }
now() { date +%s; }
left() { echo $((DEADLINE - $(now))); }
# budget SECONDS_VAR SHARE_PERCENT: the stage's time budget in seconds (0: none) — the explicit
# VAE_SECONDS / ENCODE_SECONDS / DIT_SECONDS when set, else SHARE_PERCENT of what DEADLINE leaves.
budget() {
  local explicit=${!1:-0}
  if [ "$explicit" -gt 0 ]; then echo "$explicit"
  elif [ "$DEADLINE" -gt 0 ]; then echo $(( ($(left) - 40) * $2 / 100 ))
  else echo 0; fi
}
log() { echo "[train-tiny $(date -u +%H:%M:%S)] $*"; }
mkdir -p "$RUN"

if has data; then
  log "data: $TRAIN_CLIPS train + $HELDOUT_CLIPS held-out clips, $SIZE x $FRAMES frames"
  "$OSP" -q make-dataset --out "$RUN/data-train" --count "$TRAIN_CLIPS" --seed 1 --size $SIZE --frames $FRAMES \
    --split train --overwrite
fi
if has data || has heldout; then
  "$OSP" -q make-dataset --out "$RUN/data-heldout" --count "$HELDOUT_CLIPS" --seed 2 --size $SIZE --frames $FRAMES \
    --split heldout --overwrite
fi

if has vae; then
  extra=()
  b=$(budget VAE_SECONDS 45)
  if [ "$b" -gt 0 ]; then
    extra=(--max-seconds "$b")
    log "vae: time budget $b s"
  fi
  vae_args=(--data "$RUN/data-train" --eval-data "$RUN/data-heldout" --eval-clips "${VAE_EVAL_CLIPS:-64}" --out "$RUN/vae"
    --dim 16 --res-blocks 2 --steps "$VAE_STEPS" --batch "$VAE_BATCH" --lr "$VAE_LR" --warmup 100
    --min-lr-ratio 0.05 --clip 1.0 --kl-weight 0 --recon mse --seed 0 --calib-clips "${VAE_CALIB_CLIPS:-128}" --overwrite --no-progress)
  [ -n "$VAE_INIT" ] && vae_args+=(--init "$VAE_INIT")
  if ! "$OSP" train-vae "${vae_args[@]}" --device "$DEVICE" "${extra[@]}"; then
    [ "$DEVICE" = cpu ] && exit 1
    log "vae: train-vae on $DEVICE failed; falling back to the CPU"
    b=$(budget VAE_SECONDS 40)
    [ "$b" -gt 0 ] && extra=(--max-seconds "$b")
    "$OSP" train-vae "${vae_args[@]}" --device cpu "${extra[@]}"
  fi
  cat "$RUN/vae/vae_eval.json"
fi

if has text; then
  log "text: caption tokenizer + frozen random umT5"
  rm -rf "$RUN/base" && mkdir -p "$RUN/base"
  "$OSP" -q make-text-encoder --dataset "$RUN/data-train" --out "$RUN/base" --seed 0 --dim 64 --layers 2 --heads 4 \
    --ffn 160 --vocab 256
  cp "${VAE_WEIGHTS:-$RUN/vae/Wan2.1_VAE.safetensors}" "$RUN/base/Wan2.1_VAE.safetensors"
fi

if has encode; then
  extra=()
  b=$(budget ENCODE_SECONDS 15)
  if [ "$b" -gt 0 ]; then
    extra=(--max-seconds "$b")
    log "encode: time budget $b s"
  fi
  "$OSP" -q encode-clips -m "${ENCODE_MODEL:-$RUN/base}" --dataset "$RUN/data-train" --out "$RUN/cache" --text-len 64 \
    --device "$DEVICE" --limit "$ENCODE_LIMIT" --overwrite "${extra[@]}"
  log "encode: $(grep -c '"latent_shape"' "$RUN/cache/manifest.json") latents"
fi

if has dit; then
  cat > "$RUN/dit_config.json" <<'EOF'
{"_class_name": "WanModel", "model_type": "t2v", "dim": 128, "ffn_dim": 512, "num_heads": 2, "num_layers": 8,
 "text_dim": 64, "text_len": 64, "freq_dim": 256, "in_dim": 16, "out_dim": 16, "eps": 1e-06, "patch_size": [1, 2, 2],
 "skiparse_model_type": "dual_end", "sparse_ratio": 2, "num_full_blocks": 4}
EOF
  rm -rf "$DIT_OUT"
  if [ -n "$DIT_INIT" ]; then init=(-m "$DIT_INIT"); else init=(--from-scratch --config-model "$RUN/dit_config.json"); fi
  dit_cmd=("$OSP" -q train "${init[@]}" --data "$RUN/cache" --attention "$DIT_ATTENTION" --quant "$DIT_QUANT"
    --device "$DEVICE" --steps "$DIT_STEPS" --batch "$DIT_BATCH" --lr "$DIT_LR" --warmup $(( DIT_STEPS < DIT_WARMUP ? DIT_STEPS : DIT_WARMUP )) --schedule constant
    --clip fixed:1.0 --ema "$DIT_EMA" --caption-dropout 0.1 --seed 0 --out "$DIT_OUT" --keep 1)
  rc=0
  b=$(budget DIT_SECONDS 100)
  if [ "$b" -gt 0 ]; then
    log "dit: time budget $b s (SIGINT then: osp train saves a checkpoint and exits 130)"
    # --foreground: only osp gets the one SIGINT (without it timeout also signals its process
    # group, and a second SIGINT makes osp quit at once without writing the checkpoint).
    timeout --foreground -s INT "$b" "${dit_cmd[@]}" || rc=$?
  else
    "${dit_cmd[@]}" || rc=$?
  fi
  [ $rc -eq 0 ] || [ $rc -eq 130 ] || [ $rc -eq 124 ] || { log "dit: osp train failed ($rc)"; exit $rc; }
  log "dit: $(wc -l < "$DIT_OUT/train_log.jsonl") steps, last: $(tail -1 "$DIT_OUT/train_log.jsonl")"
fi

if has package; then
  ck="$DIT_OUT/$(cat "$DIT_OUT/latest")"
  src="$ck/ema"
  [ -f "$src/diffusion_pytorch_model.safetensors" ] || src="$ck"
  log "package: $MODEL_DIR from $src"
  rm -rf "$MODEL_DIR" && mkdir -p "$MODEL_DIR/google/umt5-xxl"
  cp "$src/config.json" "$src/diffusion_pytorch_model.safetensors" "$MODEL_DIR/"
  base=${ENCODE_MODEL:-$RUN/base}
  cp "$base/models_t5_umt5-xxl-enc-bf16.safetensors" "$base/Wan2.1_VAE.safetensors" "$MODEL_DIR/"
  cp "$base/google/umt5-xxl/spiece.model" "$MODEL_DIR/google/umt5-xxl/"
  "$OSP" inspect "$MODEL_DIR"
  du -sh "$MODEL_DIR"
fi

if has eval; then
  # One batch (models loaded once): held-out caption i with seed 1000 + i, written losslessly as
  # PNG frames EVAL_OUT/videos/<id>/ (the metric measures the model, not the video codec).
  vid="$EVAL_OUT/videos"
  rm -rf "$EVAL_OUT" && mkdir -p "$vid"
  log "eval: $EVAL_CLIPS held-out prompts, $GEN_STEPS steps, guidance $GEN_GUIDANCE on $GEN_DEVICE"
  python3 - "$RUN/data-heldout/manifest.jsonl" "$EVAL_CLIPS" > "$EVAL_OUT/prompts.jsonl" <<'EOF'
import json, sys
for i, line in enumerate(open(sys.argv[1])):
    if i >= int(sys.argv[2]): break
    j = json.loads(line)
    print(json.dumps({"prompt": j["caption"], "seed": 1000 + i, "out": j["id"] + "/"}))
EOF
  start=$(now)
  "$OSP" -q generate -m "$MODEL_DIR" --prompts "$EVAL_OUT/prompts.jsonl" --size $SIZE --frames $FRAMES \
    --steps "$GEN_STEPS" --guidance "$GEN_GUIDANCE" --attention "$GEN_ATTENTION" --quant "$GEN_QUANT" \
    --device "$GEN_DEVICE" --out "$vid/" --overwrite $GEN_EXTRA
  log "eval: generated $(ls "$vid" | wc -l) videos in $(( $(now) - start )) s"
  "$OSP" eval --dataset "$RUN/data-heldout" --videos "$vid" --json "$EVAL_OUT/eval.json" | tee "$EVAL_OUT/eval.txt"
  "$OSP" eval --dataset "$RUN/data-heldout" --limit "$EVAL_CLIPS" --json "$EVAL_OUT/eval-detector.json" > "$EVAL_OUT/eval-detector.txt"
fi
log "done: $STAGES"
