#!/usr/bin/env python3
"""Paired comparison of two `osp eval --json` reports over the same clips (same prompts, same seeds):
per attribute, the accuracy of each, the clips gained and lost (background, count: per clip;
colour, shape, motion: per object, net change), a two-sided exact sign test on the per-clip
attributes, and the mean per-clip adherence ((background + count + colour/n + shape/n + motion/n)/5,
the `builtin:adherence` reward) with the standard error of the paired difference.

  python3 scripts/compare-evals.py BASE.json OTHER.json
"""
import json
import math
import sys


def clips(path):
    report = json.load(open(path))
    rows = report.get("clips") or report.get("rows") or report.get("per_clip")
    if rows is None:
        sys.exit(f"{path}: no per-clip rows (keys: {sorted(report)})")
    return {r["id"]: r["correct"] for r in rows}


def sign_test(gained, lost):
    n = gained + lost
    if n == 0:
        return 1.0
    k = min(gained, lost)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def adherence(c):
    n = max(1, c["objects"])
    return (c["background"] + c["count"] + c["color"] / n + c["shape"] / n + c["motion"] / n) / 5


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = clips(sys.argv[1]), clips(sys.argv[2])
    ids = sorted(set(a) & set(b))
    if not ids:
        sys.exit("the two reports share no clip")
    print(f"{len(ids)} clips in both reports")
    for att in ("background", "count"):
        ga = sum(1 for i in ids if not a[i][att] and b[i][att])
        lo = sum(1 for i in ids if a[i][att] and not b[i][att])
        acc_a = sum(bool(a[i][att]) for i in ids) / len(ids)
        acc_b = sum(bool(b[i][att]) for i in ids) / len(ids)
        print(f"{att:10s} {100 * acc_a:5.1f} % -> {100 * acc_b:5.1f} %  gained {ga}, lost {lo}, sign test p = {sign_test(ga, lo):.3f}")
    objects = sum(a[i]["objects"] for i in ids)
    for att in ("color", "shape", "motion"):
        na, nb = sum(a[i][att] for i in ids), sum(b[i][att] for i in ids)
        print(f"{att:10s} {100 * na / objects:5.1f} % -> {100 * nb / objects:5.1f} %  net {nb - na:+d} of {objects} objects")
    d = [adherence(b[i]) - adherence(a[i]) for i in ids]
    m = sum(d) / len(d)
    se = (sum((x - m) ** 2 for x in d) / (len(d) - 1)) ** 0.5 / len(d) ** 0.5 if len(d) > 1 else float("nan")
    ma = sum(adherence(a[i]) for i in ids) / len(ids)
    print(f"adherence  {ma:.3f} -> {ma + m:.3f}  (paired difference {m:+.3f} +- {se:.3f})")


if __name__ == "__main__":
    main()
