#!/usr/bin/env bash
# Issue 13's training benchmark in ONE GPU call: a Wan2.1 1.3B training step (forward, backward,
# AdamW; per-block activation checkpointing) at 832x480x81 (latent 16x21x60x104 = 32,760 tokens,
# text 512 tokens), batch 1:
#   osp train --from-scratch --attention full     |
#   osp train --from-scratch --attention hybrid   |  s/step, peak memory, TFLOP/s, MFU
#   python3 bench/torch_train_step.py             |  (the PyTorch way: fp32 masters, bf16 autocast,
#                                                 |   SDPA, torch.utils.checkpoint, fused AdamW)
# Steps: build osp and bench_make_train_cache (Release, CUDA sm_90a); write a one-sample random
# latent cache (train::LatentCacheWriter) and the 1.3B DiT config; run osp train OSP_STEPS steps
# per attention mode, stopped (SIGKILL of the process started here) once the log has them all, so
# that the ~19 GB final checkpoint is not written; then the torch script; print a table last.
#
#   bash scripts/bench-train.sh                     # on the GPU machine (OUT=$OUT from the device tool)
#   TINY=1 bash scripts/bench-train.sh              # CPU smoke test of the whole flow (tiny shapes)
#
# s/step: osp = the mean of the "seconds" of the last OSP_STEPS - OSP_WARMUP log lines (each is
# one whole optimizer step: data, loss+backward, clipping, AdamW); torch = the mean of its timed
# steps after --warmup 2. Peak memory, the same two measures for both, in GiB: "peak" = what live
# tensors asked for (osp's peak_mem_mb, torch's max_memory_allocated) and "reserved" = what the
# caching allocator held from the driver (osp's peak_reserved_mb, torch's max_memory_reserved). FLOPs, the same convention for both: 4 x the forward FLOPs
# of the wan-spec §7.1 model (3x forward + backward, +1x the checkpoint recompute); osp's from
# model::dit_forward_flops (printed by bench_make_train_cache; the hybrid's sparse blocks count
# their Skiparse sub-sequences), torch's from the same formula (full attention). MFU = TFLOP/s /
# PEAK_TFLOPS (989, dense bf16 H100/H200 SXM).
#
# Environment: OUT (logs, at most 8 files), BUILD (build-gpu), WORK (cache + runs, /tmp/osp-bench-train),
# OSP_STEPS (8), OSP_WARMUP (2), TORCH_STEPS (6), TORCH_WARMUP (2), LAYERS (0 = the model's 30),
# ATTENTIONS ("full hybrid"; MODE+sharded adds --shard-optimizer on, MODE+zero3 also --shard-weights,
# MODE+keepgrads --keep-gradients, MODE+keepattn --keep-attention, MODE+transient --transient-weights,
# MODE+lean both of the last two, MODE+blocks runs with OSP_CUDA_ALLOCATOR=blocks, MODE+det --deterministic), SKIP_BUILD (0), SKIP_TORCH (0), OSP / MAKE_CACHE (binaries),
# PYTHON (python3), DEVICE (cuda), RUN_TIMEOUT_S (240 per run), PEAK_TFLOPS (989),
# TINY=1 (CPU preset: tiny config, DEVICE=cpu, build-benchtrain binaries, no build).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

OUT=${OUT:-$PWD/out}
TINY=${TINY:-0}
if [ "$TINY" = 1 ]; then
  BUILD=${BUILD:-build-benchtrain}
  DEVICE=${DEVICE:-cpu}
  SKIP_BUILD=${SKIP_BUILD:-1}
  LATENT=${LATENT:-16,3,8,12}
  CONTEXT=${CONTEXT:-16,32}
  TORCH_ARGS=${TORCH_ARGS:-"--device cpu --tiny"}
  MODEL_JSON='{"_class_name": "WanModel", "model_type": "t2v", "dim": 64, "ffn_dim": 128, "num_heads": 2,
 "num_layers": 8, "text_dim": 32, "text_len": 16, "freq_dim": 32, "in_dim": 16, "out_dim": 16, "eps": 1e-06,
 "patch_size": [1, 2, 2], "qk_norm": true, "cross_attn_norm": true}'
else
  BUILD=${BUILD:-build-gpu}
  DEVICE=${DEVICE:-cuda}
  SKIP_BUILD=${SKIP_BUILD:-0}
  LATENT=${LATENT:-16,21,60,104}
  CONTEXT=${CONTEXT:-512,4096}
  TORCH_ARGS=${TORCH_ARGS:-}
  # Wan2.1-T2V-1.3B (wan-spec §2.1): scripts/configs/wan2.1-t2v-1.3b.json
  MODEL_JSON=$(cat scripts/configs/wan2.1-t2v-1.3b.json)
fi
WORK=${WORK:-/tmp/osp-bench-train}
OSP=${OSP:-$BUILD/osp}
MAKE_CACHE=${MAKE_CACHE:-$BUILD/bench_make_train_cache}
PYTHON=${PYTHON:-python3}
OSP_STEPS=${OSP_STEPS:-8}
OSP_WARMUP=${OSP_WARMUP:-2}
TORCH_STEPS=${TORCH_STEPS:-6}
TORCH_WARMUP=${TORCH_WARMUP:-2}
LAYERS=${LAYERS:-0}
ATTENTIONS=${ATTENTIONS:-"full hybrid"}
SKIP_TORCH=${SKIP_TORCH:-0}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-240}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
export NCCL_NVLS_ENABLE=0
mkdir -p "$OUT" "$WORK"
t_start=$(date +%s)
say() { echo "[bench-train $(date -u +%H:%M:%S) +$(( $(date +%s) - t_start ))s] $*"; }

# ---- card + build
{
  date -u
  git log -1 --format='commit %h %s' 2>/dev/null | cut -c1-120
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
} > "$OUT/summary.txt" 2>&1
if [ "$SKIP_BUILD" != 1 ]; then
  say "configure + build osp and bench_make_train_cache in $BUILD"
  t0=$(date +%s)
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOSP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
        -DOSP_FFMPEG=OFF -DOSP_TESTS=OFF -DOSP_BENCH=ON > "$OUT/build.log" 2>&1 ||
    { echo "configure failed"; tail -20 "$OUT/build.log"; exit 1; }
  ninja -C "$BUILD" -j "$(nproc)" osp bench_make_train_cache >> "$OUT/build.log" 2>&1 ||
    { echo "build failed"; grep -E "error|FAILED" "$OUT/build.log" | head -20; exit 1; }
  say "build: $(( $(date +%s) - t0 )) s"
fi
for b in "$OSP" "$MAKE_CACHE"; do [ -x "$b" ] || { echo "missing executable $b"; exit 1; }; done

# ---- config + synthetic cache (one sample)
CFG="$WORK/dit_config.json"
if [ "$LAYERS" -gt 0 ]; then
  MODEL_JSON=$(printf '%s' "$MODEL_JSON" | sed -E "s/\"num_layers\": [0-9]+/\"num_layers\": $LAYERS/")
  TORCH_ARGS="$TORCH_ARGS --layers $LAYERS"
fi
printf '%s\n' "$MODEL_JSON" > "$CFG"
rm -rf "$WORK/cache"
say "cache: latent [$LATENT], context [$CONTEXT]"
"$MAKE_CACHE" --out "$WORK/cache" --latent "$LATENT" --context "$CONTEXT" --config "$CFG" > "$OUT/cache.json" ||
  { echo "bench_make_train_cache failed"; cat "$OUT/cache.json"; exit 1; }
cat "$OUT/cache.json"

# ---- osp train, one run per attention mode
# An entry "MODE+sharded" runs MODE through the distributed trainer at one rank (sharded AdamW
# state, its buckets and collectives: --shard-optimizer on), for issue 14's one-rank overhead;
# "MODE+zero3" adds --shard-weights (a block's compute copy and gradients exist only around its
# forward/backward: 16 bytes per parameter instead of 18, issue 13's memory); "MODE+keepgrads"
# keeps every block's gradient between steps (--keep-gradients: the peak before released gradients);
# "MODE+keepattn" keeps the self-attention outputs so the recompute skips the attention core;
# "MODE+transient" makes the blocks' compute copies per use; "MODE+lean" both; "+blocks" runs with
# the splitting allocator; "+profile" also times every stage of the step (osp train --profile);
# "+lora" is LoRA fine-tuning (--lora-rank 32); "+ffnchunks" runs --ffn-chunks 4; "+offload" runs
# --offload-checkpoints (the block inputs in host memory); "+oldkernels" runs the backward kernels before
# session 10 (OSP_NORM_BACKWARD=block OSP_ATTN_BWD_CHUNKS=1: block-per-row norm backward, unchunked
# cross-attention backward; the defaults since session 11) for a same-run A/B against the variant
# without the tag.
# Tags combine: "hybrid+lean+blocks+profile".
for att in $ATTENTIONS; do
  run="$WORK/run-$att"
  rm -rf "$run"
  mode=${att%%+*}
  extra=()
  alloc=buckets
  kenv=()
  IFS=+ read -r -a tags <<< "$att"
  for tag in "${tags[@]:1}"; do  # the tags after MODE, combinable: hybrid+lean+blocks
    case "$tag" in
      sharded) extra+=(--shard-optimizer on) ;;
      zero3) extra+=(--shard-optimizer on --shard-weights) ;;  # + per-block weights and gradients
      keepgrads) extra+=(--keep-gradients) ;;  # every block gradient kept between steps (before session 8)
      keepattn) extra+=(--keep-attention) ;;   # the checkpoint recompute skips the attention core
      transient) extra+=(--transient-weights) ;;  # block compute copies made from the masters per use
      lean) extra+=(--transient-weights --keep-attention) ;;
      blocks) alloc=blocks ;;  # OSP_CUDA_ALLOCATOR=blocks (core/block_allocator.h)
      profile) extra+=(--profile) ;;  # the per-step stage table -> OUT/profile-<variant>.txt
      lora) extra+=(--lora-rank 32) ;;  # LoRA fine-tuning (frozen base, rank-32 adapters on the attention)
      ffnchunks) extra+=(--ffn-chunks 4) ;;  # the FFN's tape in 4 row chunks (fc1 recomputed in the backward)
      offload) extra+=(--offload-checkpoints) ;;  # the block inputs in pinned host memory
      oldkernels) kenv=(OSP_NORM_BACKWARD=block OSP_ATTN_BWD_CHUNKS=1) ;;
      det) extra+=(--deterministic) ;;  # the attention backward on osp's own kernel (no atomics)
      *) echo "bench-train.sh: unknown variant '$tag' in '$att'" >&2; exit 2 ;;
    esac
  done
  say "osp train --attention $mode ${extra[*]}: $OSP_STEPS steps"
  env "${kenv[@]}" OSP_CUDA_ALLOCATOR=$alloc "$OSP" train --from-scratch --config-model "$CFG" --data "$WORK/cache" --attention "$mode" "${extra[@]}" --device "$DEVICE" \
      --steps "$OSP_STEPS" --caption-dropout 0 --seed 0 --out "$run" > "$OUT/osp-$att.log" 2>&1 &
  pid=$!
  t0=$(date +%s)
  # wait until the log holds every step (then the final checkpoint save starts: not measured,
  # so the process is killed), the process ends, or the time is up
  while kill -0 "$pid" 2> /dev/null; do
    n=$(grep -c '"step"' "$run/train_log.jsonl" 2> /dev/null); n=${n:-0}
    # (--profile writes profile.txt right after the last step: wait for it)
    [ "$n" -ge "$OSP_STEPS" ] && { [[ " ${extra[*]} " != *" --profile "* ]] || [ -s "$run/profile.txt" ]; } && break
    [ $(( $(date +%s) - t0 )) -ge "$RUN_TIMEOUT_S" ] && { echo "osp train --attention $att: timed out after $RUN_TIMEOUT_S s" | tee -a "$OUT/osp-$att.log"; break; }
    sleep 1
  done
  if kill -0 "$pid" 2> /dev/null; then kill -KILL "$pid" 2> /dev/null; fi
  wait "$pid" 2> /dev/null
  cp "$run/train_log.jsonl" "$OUT/osp-$att.jsonl" 2> /dev/null || echo "osp train --attention $att wrote no log" | tee -a "$OUT/osp-$att.log"
  [ -s "$run/profile.txt" ] && cp "$run/profile.txt" "$OUT/profile-$att.txt"
  grep -E "error|from scratch|full blocks" "$OUT/osp-$att.log" | head -5
  rm -rf "$run"
  n=$(grep -c '"step"' "$OUT/osp-$att.jsonl" 2> /dev/null); say "osp $att done: ${n:-0} steps logged"
done

# ---- PyTorch
if [ "$SKIP_TORCH" != 1 ]; then
  say "torch: $PYTHON bench/torch_train_step.py --steps $TORCH_STEPS --warmup $TORCH_WARMUP $TORCH_ARGS"
  # shellcheck disable=SC2086
  timeout "$RUN_TIMEOUT_S" "$PYTHON" bench/torch_train_step.py --steps "$TORCH_STEPS" --warmup "$TORCH_WARMUP" \
      --peak-tflops "$PEAK_TFLOPS" $TORCH_ARGS > "$OUT/torch.jsonl" 2>&1 || echo "torch run failed (rc $?)"
  tail -3 "$OUT/torch.jsonl"
fi
rm -rf "$WORK/cache"

# ---- table
"$PYTHON" - "$OUT" "$OSP_WARMUP" "$PEAK_TFLOPS" "$ATTENTIONS" "$(( $(date +%s) - t_start ))" <<'EOF' | tee -a "$OUT/summary.txt"
import json, os, sys
out, warm, peak_tf, atts, total_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split(), sys.argv[5]

def jlines(path):
    rows = []
    if os.path.exists(path):
        for line in open(path, errors="replace"):
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    return rows

cache = (jlines(os.path.join(out, "cache.json")) or [{}])[-1]
rows = []  # name, s/step, peak GiB, reserved GiB, flops/step, steps averaged, note
for att in atts:
    log = jlines(os.path.join(out, "osp-%s.jsonl" % att))
    timed = log[warm:] if len(log) > warm else log
    if not timed:
        rows.append(("osp " + att, None, None, None, None, 0, "no steps logged (see osp-%s.log)" % att))
        continue
    s = sum(r["seconds"] for r in timed) / len(timed)
    fwd = cache.get("forward_flops_" + att.split("+")[0])
    note = "steps %d-%d of %d, loss %.4f" % (len(log) - len(timed) + 1, len(log), len(log), timed[-1]["loss"])
    reserved = max(r.get("peak_reserved_mb", 0) for r in log) / 1024.0
    rows.append(("osp " + att, s, max(r["peak_mem_mb"] for r in log) / 1024.0, reserved or None, 4 * fwd if fwd else None,
                 len(timed), note))
tj = [r for r in jlines(os.path.join(out, "torch.jsonl")) if r.get("bench") == "torch_train_step"]
torch_s = None
if tj:
    t = tj[-1]
    torch_s = t["ms_per_step"] / 1000.0
    rows.append(("torch (PyTorch way)", torch_s, t["peak_gib"], t.get("reserved_gib"), t["flops_per_step"], t["steps"],
                 "sdpa %s, torch %s, loss %.4f" % (t["sdpa"], t["torch"], t["loss"])))
    if cache.get("forward_flops_full") and abs(4 * cache["forward_flops_full"] / t["flops_per_step"] - 1) > 1e-4:
        print("WARNING: osp full and torch FLOP counts differ: %.6g vs %.6g" % (4 * cache["forward_flops_full"], t["flops_per_step"]))
else:
    rows.append(("torch (PyTorch way)", None, None, None, None, 0, "no result (see torch.jsonl)"))

print()
print("Wan2.1 %s training step, latent %s, context %s, tokens %s, batch 1, activation checkpointing (total %s s)" % (
    "1.3B" if cache.get("latent", [0, 0])[1:] == [21, 60, 104] else "config", cache.get("latent"), cache.get("context"),
    cache.get("tokens"), total_s))
print("FLOPs/step = 4 x forward (3x fwd+bwd, +1x checkpoint recompute; wan-spec 7.1); MFU vs %.0f TFLOP/s dense bf16" % peak_tf)
print("hybrid: its own FLOPs (sparse blocks count their Skiparse sub-sequences), so its MFU is of the work it does")
print("| run | s/step | speed-up vs torch | peak GiB | reserved GiB | TFLOP/step | TFLOP/s | MFU | notes |")
print("|---|---|---|---|---|---|---|---|---|")
for name, s, mem, res, fl, n, note in rows:
    f = lambda v, fmt: (fmt % v) if v is not None else "-"
    sp = torch_s / s if (s and torch_s) else None
    tf = fl / s * 1e-12 if (fl and s) else None
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (name, f(s, "%.3f"), f(sp, "%.2fx"), f(mem, "%.1f"), f(res, "%.1f"),
          f(fl * 1e-12 if fl else None, "%.1f"), f(tf, "%.0f"), f(tf / peak_tf if tf else None, "%.3f"), note))
by_name = {name: s for name, s, *_ in rows}
for name, s, *_ in rows:
    # against the variant without its last tag where that ran, else the plain mode
    bname = name.rsplit("+", 1)[0] if name.rsplit("+", 1)[0] in by_name else name.split("+")[0]
    base = by_name.get(bname)
    if "+" in name and s and base:
        why = {"sharded": "the distributed path at one rank; issue 14's target <= 1.05x",
               "zero3": "sharded optimizer, gradients and weights at one rank",
               "keepgrads": "every block gradient kept between steps vs released",
               "oldkernels": "the backward kernels before session 10 vs the default ones",
               "ffnchunks": "the FFN's tape in 4 row chunks vs whole",
               "offload": "the block inputs in host memory vs on the device",
               "blocks": "the splitting block allocator (OSP_CUDA_ALLOCATOR=blocks) vs the bucket lists",
               "det": "--deterministic: the attention backward on osp's own kernel vs cuDNN's"}.get(name.rsplit("+", 1)[1], "")
        print("%s vs %s: %.3fx the step time (%s)" % (name, bname, s / base, why))
EOF
say "done"
