#!/usr/bin/env bash
# One GPU-machine call of the OSP-Next-Tiny training (issue 16, docs/MODEL_CARD_TINY.md), sized for
# the device tool's 10-minute calls; every stage is scripts/train-tiny.sh's.  Results: the weights
# as separate files in $OUT, logs and evaluations in $OUT/tiny-phaseN.tar, and $OUT/gpu-tiny.log.
#
#   PHASE=1  build; the VAE GPU tests (in the background); the VAE continued from
#            models/osp-next-tiny/Wan2.1_VAE.safetensors for VAE_SECONDS; its held-out
#            reconstruction checked by the clip detector; umT5 + tokenizer; the latent cache;
#            model (a): the DiT from scratch with full attention for what is left; eval of (a).
#   PHASE=2  build; the latent cache again (ENCODE_SECONDS, with models/osp-next-tiny's VAE and umT5);
#            fine-tunes of the model folder DIT_INIT (default models/osp-next-tiny; the paper's table
#            starts from model (a)) side by side on the one GPU for what is left (VARIANTS, default
#            "a b c"): (a) full attention continued, (b) hybrid Skiparse (OSP-Next), (c) hybrid +
#            HiF8 QAT; each for DIT_STEPS steps (equal budget; the clock stops them earlier when
#            the call runs out), packaged and evaluated on the held-out prompts on the GPU ((c)
#            sampled with --quant hif8).  EVAL_SHIPPED=1 also evaluates models/osp-next-tiny on the
#            same prompts.  DIT_BATCH, DIT_LR, DIT_EMA; DIT_INIT_WEIGHTS=file lays one
#            DiT weights file over a copy of models/osp-next-tiny and starts from that.
#  Either:   OSP_BIN=path uses a built osp instead of building build-tiny.
#
#   run:  OUT=$OUT PHASE=1 bash scripts/gpu-tiny.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-tiny-out}
PHASE=${PHASE:-1}
RUN=${RUN:-runs/tiny}
T0=$(date +%s)
CALL_SECONDS=${CALL_SECONDS:-575}   # the device tool's per-call limit, less a margin
mkdir -p "$OUT" "$RUN"
OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/gpu-tiny.log") 2>&1
log() { echo "[gpu-tiny $(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( CALL_SECONDS - ($(date +%s) - T0) )); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if [ -n "${OSP_BIN:-}" ]; then
  log "using $OSP_BIN (no build)"
  export OSP=$OSP_BIN
else
  log "build"
  cmake -S . -B build-tiny -G Ninja -DCMAKE_BUILD_TYPE=Release -DOSP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DOSP_FFMPEG=OFF -DOSP_BENCH=OFF -DOSP_MPI=OFF -DOSP_TESTS=$([ "$PHASE" = 1 ] && echo ON || echo OFF) \
    > "$RUN/cmake.log" 2>&1 || { tail -30 "$RUN/cmake.log"; exit 1; }
  ninja -C build-tiny osp > "$RUN/build.log" 2>&1 || { tail -40 "$RUN/build.log"; exit 1; }
  log "built osp"
  export OSP=build-tiny/osp
fi
export DEVICE=cuda GEN_DEVICE=cuda RUN
# DIT_INIT_WEIGHTS=file: a DiT safetensors (e.g. model (a)'s, carried as one 4.6 MB file) laid over a
# copy of models/osp-next-tiny in $RUN/init, which becomes DIT_INIT (the folder's other files are the same).
if [ -n "${DIT_INIT_WEIGHTS:-}" ]; then
  rm -rf "$RUN/init" && cp -r models/osp-next-tiny "$RUN/init"
  cp "$DIT_INIT_WEIGHTS" "$RUN/init/diffusion_pytorch_model.safetensors"
  DIT_INIT=$RUN/init
fi

if [ "$PHASE" = 1 ]; then
  tests_pid=
  if [ "${TESTS:-1}" = 1 ]; then
    (
      ninja -C build-tiny ops_vae_backward_parity_gpu_test model_vae_gpu_test model_vae_train_gpu_test > "$RUN/build-tests.log" 2>&1 &&
      for t in ops_vae_backward_parity_gpu_test model_vae_gpu_test model_vae_train_gpu_test; do
        (cd build-tiny && timeout 240 ./$t --gtest_brief=1) > "$RUN/test-$t.log" 2>&1
        echo "$t rc=$?" >> "$RUN/tests.txt"
      done
    ) &
    tests_pid=$!
  fi
  VAE_INIT=models/osp-next-tiny/Wan2.1_VAE.safetensors VAE_SECONDS=${VAE_SECONDS:-270} VAE_STEPS=100000 \
    STAGES="data vae" bash scripts/train-tiny.sh
  cp "$RUN/vae/Wan2.1_VAE.safetensors" "$OUT/"
  log "vae done; held-out reconstructions through the clip detector"
  "$OSP" -q train-vae --data "$RUN/data-train" --eval-only --init "$RUN/vae/Wan2.1_VAE.safetensors" \
    --eval-data "$RUN/data-heldout" --eval-clips 64 --recon-out "$RUN/recon.safetensors" --out "$RUN/vae-eval" --device cuda
  "$OSP" eval --dataset "$RUN/data-heldout" --pred "$RUN/recon.safetensors" --psnr --limit 64 \
    --json "$RUN/recon-eval.json" | tee "$RUN/recon-eval.txt"
  STAGES="text" bash scripts/train-tiny.sh
  ENCODE_SECONDS=${ENCODE_SECONDS:-100} STAGES="encode" bash scripts/train-tiny.sh
  DIT_SECONDS=$(( $(left) - 50 )) DIT_STEPS=100000 DIT_ATTENTION=full DIT_OUT="$RUN/dit-a" MODEL_DIR="$RUN/model-a" \
    STAGES="dit package" bash scripts/train-tiny.sh
  cp "$RUN/model-a/diffusion_pytorch_model.safetensors" "$OUT/dit-a.safetensors"
  if [ "$(left)" -gt 30 ]; then
    GEN_ATTENTION=full MODEL_DIR="$RUN/model-a" EVAL_OUT="$RUN/eval-a" EVAL_CLIPS=${EVAL_CLIPS:-48} STAGES="eval" \
      bash scripts/train-tiny.sh
  fi
  [ -n "$tests_pid" ] && wait $tests_pid
  cat "$RUN/tests.txt" 2>/dev/null; tail -3 "$RUN"/test-*.log 2>/dev/null
  files=(model-a/config.json vae/vae_log.jsonl vae/vae_eval.json recon-eval.json recon-eval.txt dit-a/train_log.jsonl
         eval-a/eval.json eval-a/eval.txt eval-a/eval-detector.txt tests.txt test-*.log)
else
  ENCODE_MODEL=models/osp-next-tiny ENCODE_SECONDS=${ENCODE_SECONDS:-100} STAGES="data encode" bash scripts/train-tiny.sh
  budget=$(( $(left) - 70 ))
  VARIANTS=${VARIANTS:-a b c}
  log "fine-tunes of models/osp-next-tiny side by side ($VARIANTS), $budget s each"
  common=(DIT_INIT=${DIT_INIT:-models/osp-next-tiny} ENCODE_MODEL=models/osp-next-tiny DIT_SECONDS=$budget
          DIT_STEPS=${DIT_STEPS:-100000} DIT_LR=${DIT_LR:-4e-4} DIT_BATCH=${DIT_BATCH:-64} DIT_EMA=${DIT_EMA:-0.995}
          DIT_WARMUP=50 STAGES="dit package")
  # variant V → its attention and quantization (training and sampling alike): att, q
  variant() { att=hybrid; q=none; [ "$1" = a ] && att=full; [ "$1" = c ] && q=hif8; return 0; }
  # `wait` names its jobs: a bare `wait` would also wait for the `tee` of the exec line above, which
  # ends only with this script (session 7 lost a call's evaluations and weights to that hang).
  pids=()
  for v in $VARIANTS; do
    variant $v
    # Logged straight into $OUT: a call cut off by the time limit still brings them back.
    env "${common[@]}" DIT_ATTENTION=$att DIT_QUANT=$q DIT_OUT="$RUN/dit-$v" MODEL_DIR="$RUN/model-$v" \
      bash scripts/train-tiny.sh > "$OUT/$v.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  pids=()
  for v in $VARIANTS; do tail -2 "$OUT/$v.log"; cp "$RUN/model-$v/diffusion_pytorch_model.safetensors" "$OUT/dit-$v.safetensors" || true; done
  for v in $VARIANTS; do
    variant $v
    GEN_ATTENTION=$att GEN_QUANT=$q MODEL_DIR="$RUN/model-$v" EVAL_OUT="$RUN/eval-$v" EVAL_CLIPS=${EVAL_CLIPS:-48} \
      STAGES="eval" bash scripts/train-tiny.sh > "$RUN/eval-$v.log" 2>&1 &
    pids+=($!)
  done
  # EVAL_SHIPPED=1: the shipped model on the same prompts in the same call (the baseline a
  # reproduction is compared with; its dir name "shipped" joins the variants' in the listing below).
  if [ "${EVAL_SHIPPED:-0}" = 1 ]; then
    rm -rf "$RUN/model-shipped" && cp -r models/osp-next-tiny "$RUN/model-shipped"
    GEN_ATTENTION=hybrid MODEL_DIR="$RUN/model-shipped" EVAL_OUT="$RUN/eval-shipped" EVAL_CLIPS=${EVAL_CLIPS:-48} \
      STAGES="eval" bash scripts/train-tiny.sh > "$RUN/eval-shipped.log" 2>&1 &
    pids+=($!)
  fi
  wait "${pids[@]}"
  files=()
  if [ "${EVAL_SHIPPED:-0}" = 1 ]; then
    echo "== the shipped model"; cat "$RUN/eval-shipped/eval.txt"; files+=("eval-shipped" "eval-shipped.log")
  fi
  for v in $VARIANTS; do
    echo "== model $v"; cat "$RUN/eval-$v/eval.txt"
    files+=("dit-$v/train_log.jsonl" "model-$v/config.json" "eval-$v" "eval-$v.log")
  done
fi
# The eval videos stay behind (PNG folders); the models went to $OUT above, the rest in one tar.
(cd "$RUN" && tar --exclude='videos' -cf "$OUT/tiny-phase$PHASE.tar" "${files[@]}") || true
ls -la "$OUT"
log "done"
