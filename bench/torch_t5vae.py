#!/usr/bin/env python3
"""PyTorch baseline for bench_t5vae_gpu (our own compact re-implementation, random weights).

  1. umT5-XXL encoder shape (24 layers, dim 4096, 64 heads x 64, ffn 10240, bf16, per-layer
     relative bias, no attention scaling) on one prompt of 512 and of 120 tokens.
  2. Wan-VAE decoder (dim 96, fp32 weights, PyTorch's default TF32 convolutions) decoding a
     16x21x90x160 latent one latent frame at a time with the 2-frame causal cache, as the
     reference does; reports seconds and torch.cuda.max_memory_allocated.

Prints JSON lines like the C++ benchmark.  Usage: python3 bench/torch_t5vae.py [--quick] [--vae-only]
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

QUICK = "--quick" in sys.argv
VAE_ONLY = "--vae-only" in sys.argv  # as bench_t5vae_gpu --vae-only
dev = torch.device("cuda")
card = torch.cuda.get_device_name(0)


def emit(**kw):
    print(json.dumps({"bench": "torch_t5vae", "card": card, **kw}), flush=True)


def timed(fn, warm=1, reps=5):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


# ------------------------------------------------------------------ umT5-XXL
def bucket_table(L):
    r = torch.arange(L)[None, :] - torch.arange(L)[:, None]
    a = r.abs()
    large = 8 + (torch.log(a.float().clamp(min=1) / 8) / math.log(128 / 8) * 8).long()
    f = torch.where(a < 8, a, large.clamp(max=15))
    return (r > 0).long() * 16 + f


def t5_bench():
    d, da, ff, H, layers = 4096, 4096, 10240, 64, 24
    g = torch.Generator(device=dev).manual_seed(0)
    def rnd(*s, scale=1.0):
        return (torch.randn(*s, generator=g, device=dev) * scale).to(torch.bfloat16)
    W = dict(q=rnd(da, d, scale=d ** -0.5), k=rnd(da, d, scale=d ** -0.5), v=rnd(da, d, scale=d ** -0.5),
             o=rnd(d, da, scale=da ** -0.5), gate=rnd(ff, d, scale=d ** -0.5),
             fc1=rnd(ff, d, scale=d ** -0.5), fc2=rnd(d, ff, scale=ff ** -0.5), pos=rnd(32, H))
    emb = rnd(32000, d)

    def norm(x):
        return (x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)

    def forward(ids):
        L = ids.shape[0]
        x = emb[ids]
        bias = W["pos"][bucket_table(L).to(dev)].permute(2, 0, 1)  # [H, L, L]
        for _ in range(layers):
            h = norm(x)
            q = (h @ W["q"].T).view(L, H, -1).transpose(0, 1)
            k = (h @ W["k"].T).view(L, H, -1).transpose(0, 1)
            v = (h @ W["v"].T).view(L, H, -1).transpose(0, 1)
            s = q @ k.transpose(1, 2) + bias
            p = F.softmax(s.float(), dim=-1).to(torch.bfloat16)
            x = x + (p @ v).transpose(0, 1).reshape(L, -1) @ W["o"].T
            h = norm(x)
            x = x + ((h @ W["fc1"].T) * F.gelu(h @ W["gate"].T, approximate="tanh")) @ W["fc2"].T
        return norm(x)

    with torch.no_grad():
        for L in (512, 120):
            ids = torch.arange(L, device=dev) * 7919 % 32000
            ms = timed(lambda: forward(ids))
            tflop = layers * (2 * L * (4 * d * da + 3 * d * ff) + 4 * L * L * da) / 1e12
            emit(op="umt5_xxl_encode", tokens=L, layers=layers, ms=round(ms, 3), tflop=round(tflop, 3),
                 tflops=round(tflop / (ms * 1e-3), 1))


# ------------------------------------------------------------------ Wan-VAE decoder
class Dec:
    """Decoder3d with random weights; chunked causal decoding with a 2-frame cache."""

    def __init__(self, dim=96, z=16):
        self.g = torch.Generator(device=dev).manual_seed(1)
        dims = [dim * 4, dim * 4, dim * 4, dim * 2, dim]
        self.conv2 = self.conv(z, z, (1, 1, 1))
        self.conv1 = self.conv(z, dims[0], (3, 3, 3))
        self.blocks = [("res", self.res(dims[0], dims[0])), ("attn", self.attn(dims[0])),
                       ("res", self.res(dims[0], dims[0]))]
        tup = [True, True, False]
        for i in range(4):
            cin, cout = dims[i], dims[i + 1]
            if i in (1, 2, 3):
                cin //= 2
            for _ in range(3):
                self.blocks.append(("res", self.res(cin, cout)))
                cin = cout
            if i != 3:
                m = "up3d" if tup[i] else "up2d"
                b = dict(sp=self.conv(cout, cout // 2, (1, 3, 3)))
                if m == "up3d":
                    b["tc"] = self.conv(cout, cout * 2, (3, 1, 1))
                self.blocks.append((m, b))
        self.head = self.conv(dim, 3, (3, 3, 3))

    def conv(self, cin, cout, k):
        fan = cin * k[0] * k[1] * k[2]
        return (torch.randn(cout, cin, *k, generator=self.g, device=dev) * fan ** -0.5,
                torch.zeros(cout, device=dev))

    def res(self, cin, cout):
        b = dict(c0=self.conv(cin, cout, (3, 3, 3)), c1=self.conv(cout, cout, (3, 3, 3)))
        if cin != cout:
            b["sc"] = self.conv(cin, cout, (1, 1, 1))
        return b

    def attn(self, c):
        return dict(qkv=self.conv(c, 3 * c, (1, 1, 1)), proj=self.conv(c, c, (1, 1, 1)))

    @staticmethod
    def norm(x, silu=True):
        y = F.normalize(x, dim=1) * math.sqrt(x.shape[1])
        return F.silu(y) if silu else y

    def cconv(self, x, wb, key):
        w, b = wb
        if w.shape[2] == 1:
            return F.conv3d(x, w, b, padding=(0, w.shape[3] // 2, w.shape[4] // 2))
        prev = self.cache.get(key)
        inp = x if prev is None else torch.cat([prev, x], 2)
        pad = 2 - (0 if prev is None else prev.shape[2])
        self.cache[key] = inp[:, :, -2:].clone()
        inp = F.pad(inp, (w.shape[4] // 2,) * 2 + (w.shape[3] // 2,) * 2 + (pad, 0))
        return F.conv3d(inp, w, b)

    def chunk(self, x):
        x = self.cconv(x, self.conv1, "in")
        for i, (kind, b) in enumerate(self.blocks):
            if kind == "res":
                h = F.conv3d(x, *b["sc"]) if "sc" in b else x
                r = self.cconv(self.norm(x), b["c0"], (i, 0))
                x = self.cconv(self.norm(r), b["c1"], (i, 1)) + h
            elif kind == "attn":
                B, C, T, H, W = x.shape
                y = self.norm(x, silu=False).transpose(1, 2).reshape(T, C, H, W)
                qkv = F.conv2d(y, b["qkv"][0][:, :, 0], b["qkv"][1]).reshape(T, 3 * C, H * W)
                q, k, v = qkv.transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)
                a = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(T, C, H, W)
                a = F.conv2d(a, b["proj"][0][:, :, 0], b["proj"][1])
                x = x + a.reshape(B, T, C, H, W).transpose(1, 2)
            else:
                if kind == "up3d":
                    st = self.cache.get((i, "rep"))
                    if st is None:
                        self.cache[(i, "rep")] = 1
                    else:
                        if st == 1:
                            self.cache[(i, "tc")] = torch.zeros_like(x[:, :, :1]).repeat(1, 1, 2, 1, 1)
                            self.cache[(i, "rep")] = 2
                        y = self.cconv(x, b["tc"], (i, "tc"))
                        B, C2, T, H, W = y.shape
                        x = y.reshape(B, 2, C2 // 2, T, H, W).permute(0, 2, 3, 1, 4, 5).reshape(B, C2 // 2, 2 * T, H, W)
                B, C, T, H, W = x.shape
                y = F.interpolate(x.transpose(1, 2).reshape(B * T, C, H, W), scale_factor=2.0, mode="nearest-exact")
                y = F.conv2d(y, b["sp"][0][:, :, 0], b["sp"][1], padding=1)
                x = y.reshape(B, T, C // 2, 2 * H, 2 * W).transpose(1, 2)
        return self.cconv(self.norm(x), self.head, "head")

    def decode(self, z):
        self.cache = {}
        x = F.conv3d(z, *self.conv2)
        return torch.cat([self.chunk(x[:, :, i:i + 1]) for i in range(z.shape[2])], 2).clamp(-1, 1)


def vae_bench():
    T, h, w = (5, 60, 104) if QUICK else (21, 90, 160)
    dec = Dec()
    with torch.no_grad():
        dec.decode(torch.randn(1, 16, 2, 8, 8, device=dev))
        z = torch.randn(1, 16, T, h, w, device=dev)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.time()
        out = dec.decode(z)
        torch.cuda.synchronize()
        s = time.time() - t0
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
    tflop = 639.0 * T / 21 * (h * w) / (90 * 160)
    emit(op="vae_decode", mode="untiled", latent=[16, T, h, w], video=list(out.shape[1:]), s=round(s, 3),
         tflop_est=round(tflop, 1), tflops=round(tflop / s, 1), peak_gib_activations=round(peak, 2),
         tf32=torch.backends.cudnn.allow_tf32)


if __name__ == "__main__":
    if not VAE_ONLY:
        t5_bench()
    vae_bench()
