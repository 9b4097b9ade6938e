#!/usr/bin/env python3
"""PyTorch baseline of one Wan2.1 DiT *training* step, "the PyTorch way" (issue 13), to compare
with `osp train` (scripts/bench-train.sh runs both in one GPU call).

Our own implementation of the Wan2.1 T2V DiT, written from /work/shared/spec/wan-spec.md §2 (not
copied from the official code; the block follows bench/torch_dit_block.py): Conv3d patch
embedding, fp32 time embedding / projection (sinusoid cos-first), text embedding MLP (GELU-tanh),
blocks with 6-way modulation, self-attention with q/k RMSNorm over the full width and 3-D RoPE
(interleaved pairs, 22/21/21 split; applied in fp32 with cos/sin tables, as diffusers does,
instead of the reference's fp64 complex product), cross-attention with q/k RMSNorm and the affine
norm3, FFN with GELU-tanh, modulated head, unpatchify.

Training setup: fp32 parameters (master weights), torch.autocast(bfloat16), attention through
F.scaled_dot_product_attention under sdpa_kernel (cuDNN, else flash), torch.utils.checkpoint per
block (use_reentrant=False), rectified-flow loss (sigma = sigmoid(n), n ~ N(0, 1);
x_sigma = sigma*eps + (1 - sigma)*x0; t = 1000*sigma; target eps - x0; MSE), gradient-norm
clipping to 1.0 (osp's step computes the norm and clips too), torch.optim.AdamW(fused=True)
(osp's defaults: lr 2e-5, betas 0.9/0.999, eps 1e-15, weight decay 0). Random weights, random
latent and context; warm-up steps, then timed steps (torch.cuda.synchronize around each).

FLOP convention (the SAME one scripts/bench-train.sh uses for osp): training FLOPs per step =
4 x the forward FLOPs = 3x (forward + backward, backward = 2x forward) + 1x (the forward recomputed
by per-block activation checkpointing). Forward FLOPs: the wan-spec §7.1 model (multiply-add = 2;
self-attn projections 8*L*d^2, self-attn core 4*L^2*d, cross-attn 4*L*d^2 + 4*Lt*d^2 + 4*L*Lt*d,
FFN 4*L*d*F per block, plus patch embedding, text embedding and head GEMMs) = model::dit_forward_flops.
MFU = achieved FLOP/s / the card's dense bf16 peak: 989 TFLOP/s (H100/H200 SXM, no sparsity;
--peak-tflops to change).

Prints one JSON line per config.
  python3 bench/torch_train_step.py [--steps N] [--warmup N] [--layers N] [--quick]
  python3 bench/torch_train_step.py --device cpu --tiny     # CPU smoke test (torch >= 1.13)
"""
import argparse
import contextlib
import json
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # older torch: no backend selection (and before 2.0 no SDPA at all)
    SDPBackend = sdpa_kernel = None

HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")

# name: dim, ffn_dim, heads, layers, text_dim, text_len, freq_dim, in/out dim, patch, eps;
# latent [C, F, H, W] of the benchmark size
CONFIGS = {
    "1.3B": dict(dim=1536, ffn=8960, heads=12, layers=30, text_dim=4096, text_len=512, freq_dim=256,
                 in_dim=16, out_dim=16, patch=(1, 2, 2), eps=1e-6,
                 latent=(16, 21, 60, 104), size="832x480x81"),
    "tiny": dict(dim=64, ffn=128, heads=2, layers=8, text_dim=32, text_len=16, freq_dim=32,
                 in_dim=16, out_dim=16, patch=(1, 2, 2), eps=1e-6,
                 latent=(16, 3, 8, 12), size="96x64x9"),
}


# ------------------------------------------------------------------------------------ model

def sinusoid(dim, t):
    """[B] timesteps -> [B, dim]: cos first, then sin, computed in float64 (wan-spec §2.4)."""
    half = dim // 2
    w = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    arg = t.double()[:, None] * w[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1).float()


def rope_tables(grid, head_dim, device):
    """cos/sin [L, 1, head_dim/2] (fp32) for the 3-D RoPE: pairs split t/h/w = c-2(c//3), c//3, c//3."""
    c = head_dim // 2
    ct, cs = c - 2 * (c // 3), c // 3
    T, H, W = grid

    def freqs(n_pairs, width):
        return torch.pow(10000.0, -2.0 * torch.arange(n_pairs, dtype=torch.float64) / width)

    ft, fs = freqs(ct, 2 * ct), freqs(cs, 2 * cs)
    f = torch.arange(T, dtype=torch.float64)[:, None, None].expand(T, H, W).reshape(-1)
    i = torch.arange(H, dtype=torch.float64)[None, :, None].expand(T, H, W).reshape(-1)
    j = torch.arange(W, dtype=torch.float64)[None, None, :].expand(T, H, W).reshape(-1)
    theta = torch.cat([f[:, None] * ft[None], i[:, None] * fs[None], j[:, None] * fs[None]], dim=1)
    return (theta.cos().float()[:, None, :].to(device), theta.sin().float()[:, None, :].to(device))


def apply_rope(x, cos, sin):
    """x [B, L, H, Dh] (any float) -> fp32, interleaved pairs (2p, 2p+1) rotated by theta_p."""
    B, L, H, Dh = x.shape
    x = x.float().view(B, L, H, Dh // 2, 2)
    x0, x1 = x[..., 0], x[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).view(B, L, H, Dh)


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) in fp32, rounded to the input dtype, times the fp32 weight."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def attention(q, k, v):
    """q [B, Lq, H, Dh], k/v [B, Lk, H, Dh] (bf16 under autocast) -> [B, Lq, H*Dh]."""
    B, Lq, H, Dh = q.shape
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if HAVE_SDPA:
        o = F.scaled_dot_product_attention(q, k, v)
    else:  # torch < 2.0 (the CPU smoke test on Debian's 1.13): plain softmax attention
        s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(Dh))
        o = torch.matmul(torch.softmax(s.float(), dim=-1).to(v.dtype), v)
    return o.transpose(1, 2).reshape(B, Lq, H * Dh)


class SelfAttention(nn.Module):
    def __init__(self, dim, heads, eps):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, h, cos, sin):
        B, L, d = h.shape
        H, Dh = self.heads, d // self.heads
        q = self.norm_q(self.q(h)).view(B, L, H, Dh)
        k = self.norm_k(self.k(h)).view(B, L, H, Dh)
        v = self.v(h).view(B, L, H, Dh)
        dt = v.dtype  # bf16 under autocast
        return self.o(self.attend(apply_rope(q, cos, sin).to(dt), apply_rope(k, cos, sin).to(dt), v))

    def attend(self, q, k, v):
        """The attention core over all L rows (bench/torch_dit_block_train.py overrides it)."""
        return attention(q, k, v)


class CrossAttention(nn.Module):
    def __init__(self, dim, heads, eps):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, h, ctx):
        B, L, d = h.shape
        Lc = ctx.shape[1]
        H, Dh = self.heads, d // self.heads
        v = self.v(ctx).view(B, Lc, H, Dh)
        dt = v.dtype
        q = self.norm_q(self.q(h)).to(dt).view(B, L, H, Dh)
        k = self.norm_k(self.k(ctx)).to(dt).view(B, Lc, H, Dh)
        return self.o(attention(q, k, v))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["dim"]
        self.eps = c["eps"]
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / math.sqrt(d))
        self.self_attn = SelfAttention(d, c["heads"], c["eps"])
        self.norm3 = nn.LayerNorm(d, eps=c["eps"], elementwise_affine=True)
        self.cross_attn = CrossAttention(d, c["heads"], c["eps"])
        self.ffn = nn.Sequential(nn.Linear(d, c["ffn"]), nn.GELU(approximate="tanh"), nn.Linear(c["ffn"], d))

    def forward(self, x, e0, ctx, cos, sin):
        # x [B, L, d] fp32 residual stream; e0 [B, 6, d] fp32; ctx [B, Lt, d]
        d = x.shape[-1]
        m = (self.modulation + e0).float()
        shift1, scale1, gate1, shift2, scale2, gate2 = (m[:, i:i + 1] for i in range(6))
        h = F.layer_norm(x.float(), (d,), eps=self.eps) * (1 + scale1) + shift1
        x = x + self.self_attn(h, cos, sin).float() * gate1
        x = x + self.cross_attn(self.norm3(x.float()), ctx).float()
        h = F.layer_norm(x.float(), (d,), eps=self.eps) * (1 + scale2) + shift2
        return x + self.ffn(h).float() * gate2


class WanDiT(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["dim"]
        self.c = c
        self.patch_embedding = nn.Conv3d(c["in_dim"], d, kernel_size=c["patch"], stride=c["patch"])
        self.text_embedding = nn.Sequential(nn.Linear(c["text_dim"], d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(c["freq_dim"], d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["layers"]))
        self.head_modulation = nn.Parameter(torch.randn(1, 2, d) / math.sqrt(d))
        pv = c["patch"][0] * c["patch"][1] * c["patch"][2]
        self.head = nn.Linear(d, c["out_dim"] * pv)
        self.checkpointing = True

    def forward(self, z, t, ctx, cos, sin):
        """z [B, C, T, H, W] fp32, t [B] (0..1000), ctx [B, Lt, text_dim] -> velocity like z (fp32)."""
        c = self.c
        B, _, T, Hh, Ww = z.shape
        pt, ph, pw = c["patch"]
        gt, gh, gw = T // pt, Hh // ph, Ww // pw
        x = self.patch_embedding(z).flatten(2).transpose(1, 2)  # [B, L, d]
        dev = z.device.type
        with torch.autocast(dev, enabled=False):  # the reference keeps the time path in fp32
            s = sinusoid(c["freq_dim"], t).to(self.time_embedding[0].weight.dtype)
            e = self.time_embedding(s)                                      # [B, d]
            e0 = self.time_projection(e).unflatten(1, (6, c["dim"]))       # [B, 6, d]
        cx = self.text_embedding(ctx)
        for blk in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, e0, cx, cos, sin, use_reentrant=False)
            else:
                x = blk(x, e0, cx, cos, sin)
        with torch.autocast(dev, enabled=False):  # head in fp32, as the reference
            m = self.head_modulation + e[:, None]
            shift, scale = m[:, 0:1], m[:, 1:2]
            h = F.layer_norm(x.float(), (c["dim"],), eps=c["eps"]) * (1 + scale) + shift
            y = self.head(h)                                                # [B, L, pv*C]
        # unpatchify (wan-spec §2.3): output channels ordered (p, q, r, c), c fastest
        y = y.view(B, gt, gh, gw, pt, ph, pw, c["out_dim"])
        y = torch.einsum("bfhwpqrc->bcfphqwr", y)
        return y.reshape(B, c["out_dim"], gt * pt, gh * ph, gw * pw)


def init_weights(model):
    """Matrices N(0, 1/fan_in) (osp train --from-scratch's rule), biases 0, norms 1."""
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, nn.Conv3d)):
            fan_in = mod.weight[0].numel()
            nn.init.normal_(mod.weight, std=1.0 / math.sqrt(fan_in))
            nn.init.zeros_(mod.bias)


def forward_flops(c, tokens, layers):
    """wan-spec §7.1 / model::dit_forward_flops for full attention, batch 1."""
    d, Fd, Lt, N = float(c["dim"]), float(c["ffn"]), float(c["text_len"]), float(tokens)
    per_block = (8 * N * d * d + 4 * N * N * d            # self-attention projections + core
                 + 4 * N * d * d + 4 * Lt * d * d + 4 * N * Lt * d  # cross-attention
                 + 4 * N * d * Fd)                        # FFN
    pv = c["patch"][0] * c["patch"][1] * c["patch"][2]
    K = float(c["in_dim"] * pv)
    rest = 2 * N * K * d + 2 * Lt * (c["text_dim"] * d + d * d) + 2 * N * d * c["out_dim"] * pv
    return layers * per_block + rest


# ------------------------------------------------------------------------------------ benchmark

def random_inputs(c, dev, seed):
    """The benchmark's inputs for config c: tokens, RoPE cos/sin, a random latent [1, C, T, H, W]
    and context [1, text_len, text_dim] (x 0.1), from a CPU generator seeded with seed + 1."""
    C, T, H, W = c["latent"]
    pt, ph, pw = c["patch"]
    grid = (T // pt, H // ph, W // pw)
    tokens = grid[0] * grid[1] * grid[2]
    cos, sin = rope_tables(grid, c["dim"] // c["heads"], dev)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    x0 = torch.randn(1, C, T, H, W, generator=g).to(dev)
    ctx = (torch.randn(1, c["text_len"], c["text_dim"], generator=g) * 0.1).to(dev)
    return tokens, cos, sin, x0, ctx


def pick_sdpa(want, device):
    """The SDPA backend context: cuDNN (probed with one forward+backward at a small shape), else flash."""
    if device.type != "cuda" or sdpa_kernel is None or not HAVE_SDPA:
        return contextlib.nullcontext, "math (no SDPA backend selection)" if not HAVE_SDPA else "default"
    if want == "auto":
        return contextlib.nullcontext, "auto (torch's choice)"
    order = {"cudnn": ["cudnn", "flash"], "flash": ["flash"]}[want]
    names = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
    why = []
    for name in order:
        try:
            q = torch.randn(1, 12, 1024, 128, device=device, dtype=torch.bfloat16, requires_grad=True)
            with sdpa_kernel(names[name]):
                F.scaled_dot_product_attention(q, q, q).float().sum().backward()
            torch.cuda.synchronize()
            return (lambda n=names[name]: sdpa_kernel(n)), name + ("" if not why else " (" + "; ".join(why) + ")")
        except RuntimeError as e:
            why.append("%s failed: %s" % (name, str(e).splitlines()[0][:80]))
    return contextlib.nullcontext, "default (" + "; ".join(why) + ")"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--layers", type=int, default=0, help="number of blocks (default: the model's)")
    ap.add_argument("--quick", action="store_true", help="2 layers (a smoke test on the GPU)")
    ap.add_argument("--tiny", action="store_true", help="a tiny config (dim 64, 8 layers, 16x3x8x12 latent; scripts/bench-train.sh TINY=1)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sdpa", default="cudnn", choices=["cudnn", "flash", "auto"],
                    help="cudnn (falls back to flash if it fails), flash, or torch's own choice")
    ap.add_argument("--no-checkpointing", action="store_true", help="keep every block's activations")
    ap.add_argument("--no-clip", action="store_true", help="skip clip_grad_norm_")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="dense bf16 peak of the card for MFU (H100/H200 SXM: 989)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-5, help="AdamW learning rate (osp train's default)")
    ap.add_argument("--fixed-batch", action="store_true",
                    help="the same sigma and noise every step (a smoke test that the loss goes down)")
    a = ap.parse_args()

    dev = torch.device(a.device)
    name = "tiny" if a.tiny else "1.3B"
    c = dict(CONFIGS[name])
    if a.quick:
        c["layers"] = 2
    if a.layers > 0:
        c["layers"] = a.layers
    torch.manual_seed(a.seed)
    cuda = dev.type == "cuda"
    card = torch.cuda.get_device_name(dev) if cuda else "cpu"

    # build on the device directly where torch can (torch.device as a context: torch >= 2.0);
    # initialising 1.4 B parameters on the CPU takes a while
    build_on = dev if (cuda and hasattr(torch.device, "__enter__")) else contextlib.nullcontext()
    with build_on:
        model = WanDiT(c)
        init_weights(model)
    model.checkpointing = not a.no_checkpointing
    model.to(dev)  # fp32 parameters = the master weights
    params = [p for p in model.parameters()]
    n_params = sum(p.numel() for p in params)
    opt_kw = dict(lr=a.lr, betas=(0.9, 0.999), eps=1e-15, weight_decay=0.0)
    fused = False
    if cuda:
        try:
            opt = torch.optim.AdamW(params, fused=True, **opt_kw)
            fused = True
        except (TypeError, RuntimeError):  # torch without fused AdamW
            opt = torch.optim.AdamW(params, **opt_kw)
    else:
        opt = torch.optim.AdamW(params, **opt_kw)
    sdpa_ctx, sdpa_name = pick_sdpa(a.sdpa, dev)

    tokens, cos, sin, x0, ctx = random_inputs(c, dev, a.seed)
    amp_dtype = torch.bfloat16

    def step():
        if a.fixed_batch:
            torch.manual_seed(a.seed + 2)
        sigma = torch.sigmoid(torch.randn(1, device=dev))            # logit-normal
        eps = torch.randn_like(x0)
        s = sigma.view(-1, 1, 1, 1, 1)
        xs = s * eps + (1 - s) * x0
        # the backend choice must hold in the backward too: checkpointing recomputes each
        # block's forward (and its SDPA call) there
        with sdpa_ctx():
            with torch.autocast(dev.type, dtype=amp_dtype):
                v = model(xs, sigma * 1000.0, ctx, cos, sin)
            loss = F.mse_loss(v.float(), eps - x0)
            loss.backward()
        if not a.no_clip:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    for i in range(a.warmup):
        try:
            step()
        except RuntimeError as e:  # cuDNN passed the small probe but fails at this shape: use flash
            if i > 0 or not sdpa_name.startswith("cudnn") or sdpa_kernel is None:
                raise
            opt.zero_grad(set_to_none=True)
            sdpa_ctx = lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)  # noqa: E731
            sdpa_name = "flash (cudnn failed in the first step: %s)" % str(e).splitlines()[0][:80]
            step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    loss = None
    for _ in range(a.steps):
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    loss = float(loss) if loss is not None else float("nan")
    if cuda:
        peak = torch.cuda.max_memory_allocated(dev)
        reserved = torch.cuda.max_memory_reserved(dev)
    else:  # process high-water mark (KiB on Linux)
        peak = reserved = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ms = 1000.0 * sum(times) / max(1, len(times))
    fwd = forward_flops(c, tokens, c["layers"])
    train_flops = 4.0 * fwd  # 3x fwd+bwd + 1x checkpoint recompute (see the docstring)
    tflops = train_flops / (ms * 1e-3) * 1e-12 if ms > 0 else 0.0
    print(json.dumps(dict(
        bench="torch_train_step", model=name if c["layers"] == CONFIGS[name]["layers"] else "%s-%dlayers" % (name, c["layers"]),
        size=c["size"], layers=c["layers"], tokens=tokens, text_len=c["text_len"], params=n_params,
        ms_per_step=round(ms, 1), step_ms=[round(1000 * t, 1) for t in times],
        peak_gb=round(peak / 1e9, 2), peak_gib=round(peak / 2**30, 2), reserved_gib=round(reserved / 2**30, 2),
        forward_tflop=round(fwd * 1e-12, 3), flops_per_step=train_flops,
        flop_convention="4x forward (fwd+bwd 3x, +1x checkpoint recompute), wan-spec 7.1",
        tflops=round(tflops, 3), mfu=round(tflops / a.peak_tflops, 4), peak_tflops=a.peak_tflops,
        steps=a.steps, warmup=a.warmup, loss=round(loss, 5), sdpa=sdpa_name, fused_adamw=fused,
        checkpointing=model.checkpointing, clip=not a.no_clip, autocast="bfloat16",
        torch=torch.__version__, card=card)), flush=True)


if __name__ == "__main__":
    main()
