#!/usr/bin/env python3
"""PyTorch side of bench/dit_block_train_gpu.cpp (issue 13): one Wan2.1 DiT block's forward +
backward at the 14B shape and 1280x720x81 (75,600 tokens) or the 1.3B shape at 832x480x81, the
"PyTorch way" of bench/torch_train_step.py (its Block: fp32 parameters and residual stream,
torch.autocast(bfloat16), SDPA on cuDNN, no activation checkpointing inside the block), timed
as forward + backward of a random loss gradient into the block's parameter gradients.

Kinds: full (dense attention over every token) and sparse: the same block whose self-attention
runs within the 4 Skiparse-2D token-level sub-sequences (P = 2: token (t, i, j) belongs to
sub-sequence (i mod 2, j mod 2)); the rows are gathered into sub-sequence order before the block
and scattered back after it (what osp's sparse blocks do at a layout transition), RoPE uses each
token's own position, and the attention is one SDPA call per sub-sequence (their lengths differ
when the token grid is odd, as 45 rows are at 720P).
FLOPs: forward per the wan-spec section 7.1 block (sparse: the attention core over the
sub-sequences), forward + backward = 3 x forward. Median of --reps after one warm-up.

    python3 bench/torch_dit_block_train.py [--model 14b|1.3b] [--reps N] [--kinds full,sparse]
Prints one JSON line per kind.
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_train_step import Block, SelfAttention, attention, init_weights, pick_sdpa, rope_tables  # noqa: E402

SHAPES = {
    "14b": dict(dim=5120, ffn=13824, heads=40, text_dim=4096, text_len=512, eps=1e-6, grid=(21, 45, 80)),
    "1.3b": dict(dim=1536, ffn=8960, heads=12, text_dim=4096, text_len=512, eps=1e-6, grid=(21, 30, 52)),
}


class SubsequenceSelfAttention(SelfAttention):
    """Self-attention within consecutive row ranges of the given lengths (the sub-sequences)."""

    lengths = None

    def attend(self, q, k, v):
        """q, k, v [B, L, H, Dh] -> [B, L, H*Dh]: one SDPA call per sub-sequence of rows."""
        outs = [attention(qs.contiguous(), ks.contiguous(), vs.contiguous()) for qs, ks, vs in
                zip(q.split(self.lengths, 1), k.split(self.lengths, 1), v.split(self.lengths, 1))]
        return torch.cat(outs, dim=1)


def token_order(grid, P=2):
    """Row permutation into Skiparse token-level sub-sequence order, and the sub-sequence lengths."""
    T, Hh, W = grid
    t = torch.arange(T)[:, None, None].expand(T, Hh, W).reshape(-1)
    i = torch.arange(Hh)[None, :, None].expand(T, Hh, W).reshape(-1)
    j = torch.arange(W)[None, None, :].expand(T, Hh, W).reshape(-1)
    group = (i % P) * P + (j % P)
    key = group * (T * Hh * W) + torch.arange(T * Hh * W)  # stable: row order within a group
    perm = torch.argsort(key)
    lengths = [int((group == g).sum()) for g in range(P * P)]
    return perm, lengths


def block_flops(c, N, sub_lengths=None):
    d, Fd, Lt = float(c["dim"]), float(c["ffn"]), float(c["text_len"])
    core = 4 * N * N * d if sub_lengths is None else sum(4 * float(n) * n * d for n in sub_lengths)
    return 8 * N * d * d + core + 4 * N * d * d + 4 * Lt * d * d + 4 * N * Lt * d + 4 * N * d * Fd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="14b", choices=sorted(SHAPES))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kinds", default="full,sparse")
    ap.add_argument("--sdpa", default="cudnn", choices=["cudnn", "flash", "auto"])
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    dev = torch.device(a.device)
    c = SHAPES[a.model]
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    sdpa_ctx, sdpa_name = pick_sdpa(a.sdpa, dev)
    grid = c["grid"]
    N = grid[0] * grid[1] * grid[2]
    d = c["dim"]
    cos, sin = rope_tables(grid, d // c["heads"], dev)
    torch.manual_seed(0)
    x_in = torch.randn(1, N, d, device=dev)
    e0 = torch.randn(1, 6, d, device=dev) * 0.1
    ctx = torch.randn(1, c["text_len"], d, device=dev)  # the text embedding's output
    dy = torch.randn(1, N, d, device=dev) * 1e-3
    for kind in a.kinds.split(","):
        block = Block(c).to(dev)
        init_weights(block)
        lengths = None
        if kind == "sparse":
            perm, lengths = token_order(grid)
            perm = perm.to(dev)
            inv = torch.argsort(perm)
            sa = SubsequenceSelfAttention(d, c["heads"], c["eps"]).to(dev)
            sa.load_state_dict(block.self_attn.state_dict())
            sa.lengths = lengths
            block.self_attn = sa
            cos_k, sin_k = cos[perm], sin[perm]
        elif kind != "full":
            sys.exit("unknown kind " + kind)

        def run():
            x = x_in.clone().requires_grad_(True)
            with torch.autocast(dev.type, dtype=torch.bfloat16), sdpa_ctx():
                if lengths is None:
                    y = block(x, e0, ctx, cos, sin)
                else:
                    y = block(x[:, perm], e0, ctx, cos_k, sin_k)[:, inv]
            y.backward(dy)

        ms = []
        for r in range(a.reps + 1):
            block.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            run()
            torch.cuda.synchronize()
            if r > 0:
                ms.append(1e3 * (time.perf_counter() - t0))
        ms.sort()
        m = ms[len(ms) // 2]
        flops = 3 * block_flops(c, N, lengths)
        print(json.dumps({"bench": "torch_dit_block_train", "card": card, "model": a.model, "kind": kind,
                          "tokens": N, "block_fwd_bwd_ms": round(m, 2), "block_tflop": round(flops * 1e-12, 2),
                          "tflops": round(flops / (m * 1e-3) * 1e-12, 1), "sdpa": sdpa_name,
                          "torch": torch.__version__}), flush=True)
        del block
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
