#!/usr/bin/env python3
"""Are two training runs the same, step by step? Reads two `train_log.jsonl` files (osp train's log,
or the copies scripts/bench-train.sh keeps as OUT/osp-VARIANT.jsonl) and prints, for every step both
hold, the loss and the gradient norm of each (at full double precision) and whether both are the
same bits; the last line says how many steps were identical.

  python3 scripts/compare-train-logs.py RUN1/train_log.jsonl RUN2/train_log.jsonl

Exit status 0 when every compared step is identical, 1 otherwise (2 on unreadable input).
"""
import json
import sys


def steps(path):
    try:
        rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    except (OSError, ValueError) as e:
        sys.exit(f"{path}: {e}")
    return {r["step"]: r for r in rows if "step" in r}


if len(sys.argv) != 3:
    sys.exit(__doc__)
a, b = steps(sys.argv[1]), steps(sys.argv[2])
common = sorted(set(a) & set(b))
same = 0
for s in common:
    eq = a[s]["loss"] == b[s]["loss"] and a[s]["grad_norm"] == b[s]["grad_norm"]
    same += eq
    print("step %d: loss %r / %r, grad_norm %r / %r: %s" % (s, a[s]["loss"], b[s]["loss"], a[s]["grad_norm"],
                                                          b[s]["grad_norm"], "same bits" if eq else "DIFFER"))
print("%d of %d compared steps identical" % (same, len(common)))
sys.exit(0 if common and same == len(common) else 1)
