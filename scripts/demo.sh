#!/usr/bin/env bash
# Builds osp (Release, CPU is enough) and turns a prompt into a video with OSP-Next-Tiny, the
# model osp trained itself (models/osp-next-tiny, docs/MODEL_CARD_TINY.md): tokenizer → umT5 →
# DiT (OSP-Next hybrid Skiparse-2D attention, batched CFG, UniPC) → Wan-VAE → H.264 MP4, then
# `osp eval` checks the video against the prompt (background, objects, colour, shape, motion).
# The model knows the synthetic-clip language of `osp make-dataset` ("a red circle moves up on
# a black background"), 64×64 pixels and 9 frames; generation takes seconds on 2 CPU cores.
#
#   bash scripts/demo.sh                      # writes build-demo/demo/osp-tiny.mp4
#   PROMPT="a yellow square moves down on a black background" bash scripts/demo.sh
#   BUILD_DIR=mybuild OUT=/tmp/demo DEVICE=cuda bash scripts/demo.sh   # DEVICE=cuda needs -DOSP_CUDA=ON
# The random-weight demo model (`osp make-demo-model`) remains for the tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-demo}
OUT=${OUT:-$BUILD_DIR/demo}
JOBS=${JOBS:-$(nproc)}
DEVICE=${DEVICE:-cpu}
MODEL=${MODEL:-models/osp-next-tiny}
PROMPT=${PROMPT:-"a red circle moves up on a black background"}
SEED=${SEED:-42}

if [ "$DEVICE" = cpu ]; then cuda=OFF; else cuda=ON; fi
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOSP_CUDA=$cuda -DOSP_TESTS=OFF \
      -DOSP_BENCH=OFF
cmake --build "$BUILD_DIR" -j "$JOBS" --target osp

mkdir -p "$OUT"
"$BUILD_DIR/osp" inspect "$MODEL"
# MP4 needs FFmpeg's libraries at configure time; a build without them (e.g. a GPU machine with
# no libav*) writes the frames as PNG files instead, and `osp eval` reads either.
video="$OUT/osp-tiny.mp4"
if "$BUILD_DIR/osp" --version | grep -q "MP4 output (FFmpeg) off"; then
  video="$OUT/osp-tiny/"
  echo "demo: this osp has no MP4 writer (built without FFmpeg's libav*): writing PNG frames to $video"
fi
start=$(date +%s)
# Size, frames, steps, guidance and fps come from the model's osp_generate.json.
"$BUILD_DIR/osp" generate --model "$MODEL" --prompt "$PROMPT" --seed "$SEED" \
  --device "$DEVICE" --out "$video" --overwrite
end=$(date +%s)
[ "${video%/}" = "$video" ] && "$BUILD_DIR/osp" inspect "$video"
echo "demo: generated $video in $((end - start)) s"
"$BUILD_DIR/osp" eval --video "${video%/}" --prompt "$PROMPT" --json "$OUT/osp-tiny-eval.json"
