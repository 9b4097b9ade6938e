#!/usr/bin/env python3
"""PyTorch eager bf16 baseline of one Wan2.1 DiT block (our own, written for comparison with
bench/dit_gpu.cpp): same shapes, same op sequence, fp32 residual stream, bf16 linears, fp32
norms/modulation, RoPE in fp32, attention through torch SDPA with the cuDNN backend.
Forward = layers x block + embed/head (the same estimate bench_dit_gpu prints).
Prints one JSON line per measurement.  Usage: python3 bench/torch_dit_block.py [--quick]"""
import json
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

MODELS = [  # name, d, ffn, heads, layers, token grid (T, h, w)
    ("1.3B-832x480x81", 1536, 8960, 12, 30, (21, 30, 52)),
    ("14B-1280x720x81", 5120, 13824, 40, 40, (21, 45, 80)),
    ("14B-1280x768x81", 5120, 13824, 40, 40, (21, 48, 80)),
]


def weights(d, ffn, heads, dev, g):
    def bf(*s, scale):
        return (torch.randn(*s, generator=g, device=dev) * scale).bfloat16()

    def f32(*s, scale=1.0):
        return torch.randn(*s, generator=g, device=dev) * scale

    s = 1.0 / math.sqrt(d)
    dh = d // heads
    return dict(
        wq=bf(d, d, scale=s), wk=bf(d, d, scale=s), wv=bf(d, d, scale=s), wo=bf(d, d, scale=s),
        bq=bf(d, scale=0.02), bk=bf(d, scale=0.02), bv=bf(d, scale=0.02), bo=bf(d, scale=0.02),
        gq=f32(d), gk=f32(d),
        cq=bf(d, d, scale=s), co=bf(d, d, scale=s), cbq=bf(d, scale=0.02), cbo=bf(d, scale=0.02),
        cgq=f32(d),
        kctx=bf(1, heads, 512, dh, scale=1.0), vctx=bf(1, heads, 512, dh, scale=1.0),
        g3=f32(d), b3=f32(d, scale=0.1),
        w1=bf(ffn, d, scale=s), b1=bf(ffn, scale=0.02),
        w2=bf(d, ffn, scale=1.0 / math.sqrt(ffn)), b2=bf(d, scale=0.02),
        mod=f32(6, d, scale=0.1),
    )


def rms(x, g):  # fp32 RMS over the full width, rounded to bf16, times the fp32 weight
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16().float() * g


def rope(x, cos, sin):  # x [L, H, Dh] fp32, interleaved pairs; cos/sin [L, 1, Dh/2]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def block(X, w, cos, sin, heads):
    L, d = X.shape
    dh = d // heads
    m = w["mod"]
    h = (F.layer_norm(X, (d,), eps=1e-6) * (1 + m[1]) + m[0]).bfloat16()
    q = rms(F.linear(h, w["wq"], w["bq"]), w["gq"]).view(L, heads, dh)
    k = rms(F.linear(h, w["wk"], w["bk"]), w["gk"]).view(L, heads, dh)
    v = F.linear(h, w["wv"], w["bv"]).view(L, heads, dh)
    q = rope(q, cos, sin).bfloat16()
    k = rope(k, cos, sin).bfloat16()
    o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                       v.transpose(0, 1)[None])
    o = o[0].transpose(0, 1).reshape(L, d)
    X = X + F.linear(o, w["wo"], w["bo"]).float() * m[2]
    h = F.layer_norm(X, (d,), w["g3"], w["b3"], eps=1e-6).bfloat16()
    q = rms(F.linear(h, w["cq"], w["cbq"]), w["cgq"]).bfloat16().view(L, heads, dh)
    o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], w["kctx"], w["vctx"])
    o = o[0].transpose(0, 1).reshape(L, d)
    X = X + F.linear(o, w["co"], w["cbo"]).float()
    h = (F.layer_norm(X, (d,), eps=1e-6) * (1 + m[4]) + m[3]).bfloat16()
    f = F.gelu(F.linear(h, w["w1"], w["b1"]), approximate="tanh")
    X = X + F.linear(f, w["w2"], w["b2"]).float() * m[5]
    return X


def time_ms(fn, warm, reps):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def main():
    quick = "--quick" in sys.argv
    reps = 3
    dev = torch.device("cuda")
    card = torch.cuda.get_device_name(0)
    g = torch.Generator(device=dev)
    g.manual_seed(0)
    models = MODELS[:1] if quick else MODELS
    for name, d, ffn, heads, layers, (T, hh, ww) in models:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        L = T * hh * ww
        w = weights(d, ffn, heads, dev, g)
        X = torch.randn(L, d, generator=g, device=dev)
        th = torch.rand(L, 1, d // heads // 2, generator=g, device=dev) * 6.28
        cos, sin = th.cos(), th.sin()
        backend = "cudnn"
        try:
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION), torch.no_grad():
                block(X, w, cos, sin, heads)
        except RuntimeError as e:  # no cuDNN SDPA here: say so and use flash
            backend = "flash (cudnn failed: %s)" % str(e).splitlines()[0][:80]
        kern = SDPBackend.CUDNN_ATTENTION if backend == "cudnn" else SDPBackend.FLASH_ATTENTION
        with sdpa_kernel(kern), torch.no_grad():
            ms = time_ms(lambda: block(X, w, cos, sin, heads), 1, reps)
            patches = torch.randn(L, 64, generator=g, device=dev).bfloat16()
            wpe = (torch.randn(d, 64, generator=g, device=dev) * 0.1).bfloat16()
            whead = (torch.randn(64, d, generator=g, device=dev) * 0.01).bfloat16()
            eh = time_ms(lambda: F.linear(F.linear(patches, wpe), whead).float(), 1, reps)
            qs = torch.randn(1, heads, L, d // heads, generator=g, device=dev).bfloat16()
            attn_ms = time_ms(lambda: F.scaled_dot_product_attention(qs, qs, qs), 1, reps)
        attn_flop = 4.0 * L * L * d
        print(json.dumps(dict(bench="torch_dit_block", model=name, kind="full", tokens=L,
                              ms=round(ms, 3), sdpa=backend, attn_ms=round(attn_ms, 3),
                              attn_tflops=round(attn_flop / attn_ms * 1e-9, 1),
                              peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                              torch=torch.__version__, card=card)), flush=True)
        print(json.dumps(dict(bench="torch_dit_forward", model=name, layers=layers,
                              full_ms=round(layers * ms + eh, 1), embed_head_ms=round(eh, 3),
                              method="layers x measured block + measured embed/head",
                              card=card)), flush=True)
        del w, X


if __name__ == "__main__":
    main()
