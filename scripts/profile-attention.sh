#!/usr/bin/env bash
# Nsight Compute profiles of the own Hopper attention kernels at the 14B 1280x720x81
# self-attention shape (75,600 tokens, 40 heads, D 128): the bf16 kernel with the default 176-key
# tiles and the FP8 kernel, one launch each, the full section set, GPU clocks left alone
# (--clock-control none, as docs of the GPU machines ask). Reports under $OUT (attn-bf16.ncu-rep,
# attn-fp8.ncu-rep, bring them back to open in Nsight Compute) and the main lines as text last:
# throughput against peak, tensor-pipe use, warp stall reasons.
#
#   bash scripts/profile-attention.sh        # on the GPU machine, after a build (BUILD=build-gpu)
# Environment: OUT (./out), BUILD (build-gpu), CASE ("14B-720P self"; any case name of the two benches)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/out}
BUILD=${BUILD:-build-gpu}
CASE=${CASE:-14B-720P self}
mkdir -p "$OUT"
command -v ncu > /dev/null || { echo "ncu is not on the PATH"; exit 1; }
ninja -C "$BUILD" bench_ops_gpu bench_fp8_attention_gpu > "$OUT/profile-build.log" 2>&1 ||
  { echo "build failed (profile-build.log)"; exit 1; }
# kernel names demangled: hopper_attention_kernel<Tiles<false, 176>, false> is the bf16 default
ncu --clock-control none --kernel-name-base demangled -k 'regex:Tiles<false, 176>, false>' -c 1 --set full \
    -f -o "$OUT/attn-bf16" "$BUILD/bench_ops_gpu" --attention-only --case "$CASE" > "$OUT/profile-bf16.log" 2>&1
ncu --clock-control none --kernel-name-base demangled -k 'regex:Tiles<true, 128>, false>' -c 1 --set full \
    -f -o "$OUT/attn-fp8" "$BUILD/bench_fp8_attention_gpu" --case "$CASE" > "$OUT/profile-fp8.log" 2>&1
for r in bf16 fp8; do
  echo "== $r ($CASE)"
  [ -f "$OUT/attn-$r.ncu-rep" ] || { echo "no report (profile-$r.log):"; tail -5 "$OUT/profile-$r.log"; continue; }
  ncu --import "$OUT/attn-$r.ncu-rep" --page details --print-units base > "$OUT/attn-$r.txt" 2>&1
  grep -iE "stalled|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|DRAM Throughput|Registers Per|Achieved Occupancy|Issue Slots Busy|Issued Ipc|Stall|Warp Cycles Per Issued|L1/TEX Hit|L2 Hit" \
    "$OUT/attn-$r.txt" | sed "s/  */ /g" | cut -c1-300 | head -40
done
