#!/usr/bin/env python3
"""Summary of one kernel's SASS-level Nsight Compute data (the CSV of
`ncu --import REPORT --page source --print-source sass --csv`): where the warps stalled (share of
the stall samples per reason, the instructions with the most samples), the executed instruction
mix by opcode, and how often mbarrier waits retried (TRYWAIT executions, which spend issue slots
when a wait spins). scripts/profile-attention.sh runs it on each report.

    python3 scripts/ncu-sass-summary.py attn-fp8-224-sass.csv [--top 15]
"""
import argparse
import collections
import csv
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    rows = list(csv.reader(open(a.csv)))
    hdr_at = next((i for i, r in enumerate(rows) if "Address" in r and "Source" in r), None)
    if hdr_at is None:
        sys.exit(f"{a.csv}: no SASS table (Address, Source columns) found")
    hdr = rows[hdr_at]
    ix = {h: i for i, h in enumerate(hdr)}
    data = [r for r in rows[hdr_at + 1:] if len(r) >= len(hdr)]

    def num(r, col):
        try:
            return int(float(r[ix[col]] or 0))
        except (KeyError, ValueError):
            return 0

    samples_col = "Warp Stall Sampling (All Samples)"
    stall_cols = [h for h in hdr if h.startswith("stall_") and "(Not Issued)" not in h]
    total_samples = sum(num(r, samples_col) for r in data) or 1
    total_exec = sum(num(r, "Instructions Executed") for r in data) or 1
    print(f"{a.csv}: {len(data)} instructions, {total_exec:.3e} warp instructions executed, "
          f"{total_samples} stall samples")
    print("stall reasons (share of samples):")
    by_reason = {h: sum(num(r, h) for r in data) for h in stall_cols}
    for h, v in sorted(by_reason.items(), key=lambda x: -x[1])[:10]:
        print(f"  {h[6:]:<22} {100 * v / total_samples:6.2f} %")
    print(f"top {a.top} instructions by samples:")
    for r in sorted(data, key=lambda r: -num(r, samples_col))[:a.top]:
        top = sorted(((h[6:], num(r, h)) for h in stall_cols), key=lambda x: -x[1])[:3]
        why = " ".join(f"{k}={v}" for k, v in top if v)
        print(f"  {100 * num(r, samples_col) / total_samples:5.2f} %  {r[ix['Source']].strip()[:64]:<64} {why}")
    mix = collections.Counter()
    for r in data:
        words = r[ix["Source"]].split()
        if not words:
            continue
        op = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
        mix[op.split(".")[0]] += num(r, "Instructions Executed")
    print("instruction mix (share of executed warp instructions):")
    print("  " + ", ".join(f"{op} {100 * n / total_exec:.1f} %" for op, n in mix.most_common(16)))
    spins = sum(num(r, "Instructions Executed") for r in data if "TRYWAIT" in r[ix["Source"]])
    print(f"mbarrier try-waits executed: {spins:.3e} ({100 * spins / total_exec:.1f} % of instructions; "
          "each retry also runs a branch)")


if __name__ == "__main__":
    main()
