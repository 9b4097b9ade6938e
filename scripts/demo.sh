#!/usr/bin/env bash
# Builds osp (Release, CPU is enough) and runs the whole text-to-video pipeline end to end with
# a tiny RANDOM-weight model ("osp-demo-random"): tokenizer → umT5 → DiT (OSP-Next hybrid
# Skiparse attention, batched CFG, UniPC) → Wan-VAE → H.264 MP4. The video is noise: the point
# is that every stage runs. The generation itself takes well under a minute on 2 CPU cores.
#
#   bash scripts/demo.sh                 # writes build-demo/demo/osp-demo.mp4
#   BUILD_DIR=mybuild OUT=/tmp/demo bash scripts/demo.sh
# The build is CPU-only (-DOSP_CUDA=OFF) so it works anywhere; add --device cuda to a CUDA build
# of `osp` to run the same thing on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-demo}
OUT=${OUT:-$BUILD_DIR/demo}
JOBS=${JOBS:-$(nproc)}

cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOSP_CUDA=OFF -DOSP_TESTS=OFF \
      -DOSP_BENCH=OFF
cmake --build "$BUILD_DIR" -j "$JOBS" --target osp

mkdir -p "$OUT"
rm -rf "$OUT/osp-demo-random"
"$BUILD_DIR/osp" make-demo-model "$OUT/osp-demo-random"
"$BUILD_DIR/osp" inspect "$OUT/osp-demo-random"

start=$(date +%s)
"$BUILD_DIR/osp" generate \
  --model "$OUT/osp-demo-random" \
  --prompt "a red fox runs through the snowy forest at dawn" \
  --size 192x128 --frames 17 --steps 10 --sampler unipc --guidance 5 --seed 42 \
  --device cpu --out "$OUT/osp-demo.mp4" --overwrite
end=$(date +%s)

"$BUILD_DIR/osp" inspect "$OUT/osp-demo.mp4"
echo "demo: generated $OUT/osp-demo.mp4 in $((end - start)) s (random weights: the video is noise)"
