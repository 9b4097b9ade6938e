#!/usr/bin/env bash
# The paper's table at small scale (issue 16; docs/MODEL_CARD_TINY.md "The paper's table"):
# from one full-attention model (DIT_INIT, model (a)), the same data, steps and recipe for
#   a  full attention, training continued          (the baseline the claim is measured against)
#   b  hybrid Skiparse fine-tuning (OSP-Next: dual-end, P = 2)
#   c  hybrid + HiF8 quantization-aware training   (sampled with --quant hif8)
# each packaged and evaluated on the held-out prompts (scripts/train-tiny.sh's dit, package and eval
# stages).  Variants run one after another (a CPU run; on a GPU, scripts/gpu-tiny.sh PHASE=2 runs
# them side by side).  Needs RUN/cache (encode stage) and RUN/data-heldout (data stage).
#
#   OSP=build/osp DEVICE=cpu DIT_INIT=runs/init-a DIT_STEPS=2000 bash scripts/tiny-table.sh
# Settings: VARIANTS ("a b c"), DIT_STEPS, DIT_BATCH (16), DIT_LR (4e-4), DIT_EMA (0.998), EVAL_CLIPS
# (48), RUN (runs/tiny), TABLE_OUT (RUN/table): TABLE_OUT/<v>/{dit,model,eval} and TABLE_OUT/<v>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/tiny}
TABLE_OUT=${TABLE_OUT:-$RUN/table}
DEVICE=${DEVICE:-cpu}
: "${DIT_INIT:?DIT_INIT: the full-attention model folder the variants start from}"
mkdir -p "$TABLE_OUT"
for v in ${VARIANTS:-a b c}; do
  att=hybrid; q=none
  [ "$v" = a ] && att=full
  [ "$v" = c ] && q=hif8
  echo "[tiny-table $(date -u +%H:%M:%S)] variant $v: --attention $att --quant $q, $DIT_STEPS steps on $DEVICE"
  RUN=$RUN DEVICE=$DEVICE GEN_DEVICE=$DEVICE DIT_INIT=$DIT_INIT ENCODE_MODEL=${ENCODE_MODEL:-models/osp-next-tiny} \
    DIT_STEPS=$DIT_STEPS DIT_BATCH=${DIT_BATCH:-16} DIT_LR=${DIT_LR:-4e-4} DIT_EMA=${DIT_EMA:-0.998} DIT_WARMUP=50 \
    DIT_ATTENTION=$att DIT_QUANT=$q GEN_ATTENTION=$att GEN_QUANT=$q DIT_OUT="$TABLE_OUT/$v/dit" \
    MODEL_DIR="$TABLE_OUT/$v/model" EVAL_OUT="$TABLE_OUT/$v/eval" EVAL_CLIPS=${EVAL_CLIPS:-48} \
    STAGES="dit package eval" bash scripts/train-tiny.sh > "$TABLE_OUT/$v.log" 2>&1
  tail -12 "$TABLE_OUT/$v/eval/eval.txt"
done
