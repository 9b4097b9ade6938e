#!/usr/bin/env bash
# Nsight Compute profiles of the own Hopper attention kernels at the 14B 1280x720x81
# self-attention shape (75,600 tokens, 40 heads, D 128): the bf16 kernel with the default 176-key
# tiles and the FP8 kernel with each key tile of FP8_TILES, one launch each, the full section set,
# GPU clocks left alone (--clock-control none, as docs of the GPU machines ask). Reports under $OUT
# (attn-bf16.ncu-rep, attn-fp8-128.ncu-rep, ...: open them in Nsight Compute) with their details
# page as text and their SASS table as CSV, and the main lines printed last: throughput against
# peak, pipe use, then scripts/ncu-sass-summary.py's stall reasons, hottest instructions,
# instruction mix and mbarrier retries.
#
#   bash scripts/profile-attention.sh        # on the GPU machine, after a build (BUILD=build-gpu)
# Environment: OUT (./out), BUILD (build-gpu), CASE ("14B-720P self"; any case name of the two
# benches), FP8_TILES ("128 224": the FP8 key tiles profiled, via OSP_HOPPER_FP8_KEY_TILE)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/out}
BUILD=${BUILD:-build-gpu}
CASE=${CASE:-14B-720P self}
FP8_TILES=${FP8_TILES:-128 224}
mkdir -p "$OUT"
command -v ncu > /dev/null || { echo "ncu is not on the PATH"; exit 1; }
ninja -C "$BUILD" bench_ops_gpu bench_fp8_attention_gpu > "$OUT/profile-build.log" 2>&1 ||
  { echo "build failed (profile-build.log)"; exit 1; }
# Kernel names demangle as hopper_attention_kernel<...Tiles<(bool)0, (int)176>, (bool)0>(...)
# ('.' below stands for the parentheses): element type FP8?, key tile, pingpong?
prof() {  # name, kernel regex, command...
  local name=$1 re=$2
  shift 2
  ncu --clock-control none --kernel-name-base demangled -k "regex:$re" -c 1 --set full \
      -f -o "$OUT/attn-$name" "$@" > "$OUT/profile-$name.log" 2>&1
}
reports="bf16"
prof bf16 'Tiles<.bool.0, .int.176>, .bool.0>' "$BUILD/bench_ops_gpu" --attention-only --case "$CASE"
for t in $FP8_TILES; do
  OSP_HOPPER_FP8_KEY_TILE=$t prof "fp8-$t" "Tiles<.bool.1, .int.$t>, .bool.0>" \
      "$BUILD/bench_fp8_attention_gpu" --case "$CASE"
  reports="$reports fp8-$t"
done
for r in $reports; do
  echo "== $r ($CASE)"
  [ -f "$OUT/attn-$r.ncu-rep" ] || { echo "no report (profile-$r.log):"; tail -5 "$OUT/profile-$r.log"; continue; }
  ncu --import "$OUT/attn-$r.ncu-rep" --page details --print-units base > "$OUT/attn-$r.txt" 2>&1
  ncu --import "$OUT/attn-$r.ncu-rep" --page source --print-source sass --csv > "$OUT/attn-$r-sass.csv" 2>&1
  grep -iE "SM Frequency|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|Registers Per|Issue Slots Busy|highest-utilized|Warp Cycles Per Issued" \
    "$OUT/attn-$r.txt" | sed "s/  */ /g" | cut -c1-200 | head -12
  python3 scripts/ncu-sass-summary.py "$OUT/attn-$r-sass.csv" --top 8
done
