#!/usr/bin/env python3
"""PyTorch baseline of one Wan2.1 DiT *inference forward*, eager and under torch.compile (issue 19:
"osp's full-attention forward <= 0.8x compiled PyTorch at 1.3B 832x480x81 and 14B 1280x720x81").
The osp side is `bench_dit_multi_gpu --models 1.3b,14b --modes full` (model::DiT::forward, random
bf16 weights, B = 1, 512 text rows) in the same device call.

The model is bench/torch_train_step.py's WanDiT (our own implementation from wan-spec §2, not the
official code, which the device machine cannot fetch), set up as the reference's inference runs it:
bf16 autocast, SDPA attention (cuDNN backend, else flash), no gradients (torch.inference_mode).
The 30/40 blocks hold bf16 weights (as osp's do: the reference's fp32 blocks would be cast per op
by autocast); the embeddings, time path and head keep fp32 weights. Random weights
(init_weights), random latent and context, t = 500.

Per model: the eager forward (median of --reps after --warmup), then torch.compile(model,
mode=--compile-mode) — the first call's time is reported as compile_s — and the compiled forward
(median of --reps after one more warm-up). FLOPs: the wan-spec §7.1 forward model
(forward_flops, = model::dit_forward_flops for full attention). One JSON line per model and mode.
  python3 bench/torch_dit_forward.py [--models 1.3B,14B] [--reps 3] [--no-compile]
  python3 bench/torch_dit_forward.py --models tiny --device cpu --no-compile    # smoke test
"""
import argparse
import contextlib
import gc
import json
import statistics
import time

import torch

from torch_train_step import CONFIGS, WanDiT, forward_flops, init_weights, pick_sdpa, random_inputs

MODELS = dict(CONFIGS)
MODELS["14B"] = dict(CONFIGS["1.3B"], dim=5120, ffn=13824, heads=40, layers=40,
                     latent=(16, 21, 90, 160), size="1280x720x81")


def run(name, a, dev):
    c = dict(MODELS[name])
    cuda = dev.type == "cuda"
    torch.manual_seed(a.seed)
    build_on = dev if (cuda and hasattr(torch.device, "__enter__")) else contextlib.nullcontext()
    with build_on:
        model = WanDiT(c)
        init_weights(model)
    model.checkpointing = False
    model.to(dev).eval().requires_grad_(False)
    if cuda:
        for blk in model.blocks:
            blk.to(torch.bfloat16)
    sdpa_ctx, sdpa_name = pick_sdpa(a.sdpa, dev)
    tokens, cos, sin, z, ctx = random_inputs(c, dev, a.seed)
    t = torch.full((1,), 500.0, device=dev)
    amp = torch.bfloat16
    flops = forward_flops(c, tokens, c["layers"])
    card = torch.cuda.get_device_name(dev) if cuda else "cpu"

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def timed(fn, warmup, reps):
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), times

    def emit(mode, s, times, **extra):
        print(json.dumps(dict(
            bench="torch_dit_forward", model=name, size=c["size"], tokens=tokens, mode=mode,
            ms=round(1000 * s, 1), runs_ms=[round(1000 * x, 1) for x in times],
            tflop=round(flops * 1e-12, 3), tflops=round(flops / s * 1e-12, 1),
            peak_gib=round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if cuda else None,
            sdpa=sdpa_name, torch=torch.__version__, card=card, **extra)), flush=True)

    def forward(m):
        def f():
            with torch.inference_mode(), sdpa_ctx(), torch.autocast(dev.type, dtype=amp):
                return m(z, t, ctx, cos, sin)
        return f

    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    s, times = timed(forward(model), a.warmup, a.reps)
    emit("eager", s, times)
    if a.no_compile:
        return
    try:
        compiled = torch.compile(model, mode=a.compile_mode)
        f = forward(compiled)
        sync()
        t0 = time.perf_counter()
        f()  # traces and compiles
        sync()
        compile_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        s, times = timed(f, 1, a.reps)
        emit("compiled", s, times, compile_mode=a.compile_mode, compile_s=round(compile_s, 1))
    except Exception as e:  # noqa: BLE001 — report and go on with the next model
        print(json.dumps(dict(bench="torch_dit_forward", model=name, mode="compiled",
                              error=str(e).splitlines()[0][:300] if str(e) else type(e).__name__)), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="1.3B,14B", help="comma list of %s" % ", ".join(sorted(MODELS)))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sdpa", default="cudnn", choices=["cudnn", "flash", "auto"])
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode: default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs")
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    dev = torch.device(a.device)
    for name in a.models.split(","):
        if name not in MODELS:
            raise SystemExit("torch_dit_forward.py: unknown model '%s' (%s)" % (name, ", ".join(sorted(MODELS))))
        run(name, a, dev)
        gc.collect()  # the model and its compiled graph go before the next model is built
        if dev.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
