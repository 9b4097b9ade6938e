#!/usr/bin/env python3
"""Markdown table of bench_hif8_gpu's codec rows (JSON lines on stdin or in the files given):
per op and launch shape, ms and fraction of HBM peak / of the same run's copy, single launch
and batched. Usage: bench_hif8_gpu --codec-only [--shapes] | bench/hif8_codec_table.py"""
import json
import sys


def rows(lines):
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("section") == "codec":
            yield r


def main():
    lines = []
    if len(sys.argv) > 1:
        for f in sys.argv[1:]:
            with open(f) as fh:
                lines += fh.readlines()
    else:
        lines = sys.stdin.readlines()
    rs = list(rows(lines))
    if not rs:
        print("no codec rows")
        return 1
    print(f"card: {rs[0]['card']}, n = {rs[0]['n']}, peak {rs[0]['peak_GBps']} GB/s, "
          f"batch {rs[0]['batch']}")
    print("| op | shape | ms | of peak | of copy | ms (batch) | of peak (batch) | of copy (batch) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rs:
        print(f"| {r['op']} | {r.get('shape', '')} | {r['ms']:.4f} | {r['frac_of_peak']:.3f} | "
              f"{r['frac_of_copy']:.3f} | {r['ms_batch']:.4f} | {r['frac_of_peak_batch']:.3f} | "
              f"{r['frac_of_copy_batch']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
