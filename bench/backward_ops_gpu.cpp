// GPU backward-op benchmarks (training): attention forward (inference path), forward with
// log-sum-exp and backward at the 1.3B-480P shape (dense and as 4 packed Skiparse
// sub-sequences; cuDNN forced, then the auto choice, then our own kernels), linear_backward at
// the block's GEMM shape, and the LayerNorm-modulate backward. Prints one JSON line per
// measurement.
//   bench_backward_ops_gpu [--quick]
// After each attention backward's timing, two more calls on the same inputs are compared bit for
// bit ("elements_differing": 0 = repeatable; cuDNN's backward makes no promise, ours has no atomics).
// FLOPs: attention forward 4·B·H·Lq·Lk·D, backward 10·B·H·Lq·Lk·D (5 GEMMs of that size, Q·Kᵀ
// recomputed); linear_backward 4·M·N·K (dx and dw).
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "osp/core/device.h"
#include "osp/ops/backward.h"
#include "osp/ops/ops.h"
#ifdef OSP_HAVE_CUDA
#include "gpu_bench_util.h"
#include "osp/ops/cuda/cuda_backward.h"
#endif

int main(int argc, char** argv) {
#ifndef OSP_HAVE_CUDA
  std::printf("{\"bench\":\"backward_ops_gpu\",\"skipped\":\"built without CUDA\"}\n");
  return 0;
#else
  using namespace osp;
  if (!cuda_available()) {
    std::printf("{\"bench\":\"backward_ops_gpu\",\"skipped\":\"no CUDA GPU\"}\n");
    return 0;
  }
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const std::string card = bench::card_name();
  const Device gpu = Device::cuda(0);
  uint32_t seed = 11;
  auto emit = [&](const char* op, const std::string& cfg, double ms, double flops, const char* path) {
    std::printf("{\"bench\":\"backward_ops_gpu\",\"op\":\"%s\",\"config\":\"%s\",\"card\":\"%s\","
                "\"path\":\"%s\",\"ms\":%.4f,\"tflops\":%.1f}\n",
                op, cfg.c_str(), card.c_str(), path, ms, flops > 0 ? flops / (ms * 1e-3) / 1e12 : 0.0);
    std::fflush(stdout);
  };

  // ---- attention
  struct AttnCfg {
    const char* name;
    int64_t B, L, H, D;
    int packs;   // 0: dense; R: R equal packed sequences (seq_lens)
    int64_t Lk;  // keys (0: L, self-attention)
    ops::cuda::AttnPath path;
  };
  using P = ops::cuda::AttnPath;
  std::vector<AttnCfg> attn = {
      // cuDNN forced on the big shapes: where it cannot run, the line says why (our own
      // kernels would take minutes there).
      {"1.3B-480P self", 1, 32760, 12, 128, 0, 0, P::Cudnn},
      {"1.3B-480P skiparse 4x8190 packed", 1, 32760, 12, 128, 4, 0, P::Cudnn},
      // the auto choice beside it: the forward on the own Hopper kernel where it runs
      {"1.3B-480P self (auto)", 1, 32760, 12, 128, 0, 0, P::Auto},
      {"1.3B-480P skiparse 4x8190 packed (auto)", 1, 32760, 12, 128, 4, 0, P::Auto},
      {"1.3B-480P cross (32760 queries, 512 text keys)", 1, 32760, 12, 128, 0, 512, P::Cudnn},
      // the own kernels (mma.sync flash forward with statistics, the tensor-core backward) on the
      // same shapes: the fallback where cuDNN is absent or refuses, and the deterministic backward
      {"1.3B-480P self (own)", 1, 32760, 12, 128, 0, 0, P::Own},
      {"1.3B-480P skiparse 4x8190 packed (own)", 1, 32760, 12, 128, 4, 0, P::Own},
      {"1.3B-480P cross (own)", 1, 32760, 12, 128, 0, 512, P::Own},
  };
  if (quick) attn.resize(1);
  for (const auto& c : attn) {
    const int64_t Lk = c.Lk > 0 ? c.Lk : c.L;
    Tensor q = bench::random_gpu({c.B, c.L, c.H, c.D}, DType::BF16, 1.f, seed++);
    Tensor k = bench::random_gpu({c.B, Lk, c.H, c.D}, DType::BF16, 1.f, seed++);
    Tensor v = bench::random_gpu({c.B, Lk, c.H, c.D}, DType::BF16, 1.f, seed++);
    Tensor dout = bench::random_gpu({c.B, c.L, c.H, c.D}, DType::BF16, 1.f, seed++);
    Tensor o = Tensor::empty(q.shape(), DType::BF16, gpu), lse = Tensor::empty({c.B, c.H, c.L}, DType::F32, gpu);
    Tensor dq = Tensor::empty(q.shape(), DType::BF16, gpu), dk = Tensor::empty(k.shape(), DType::BF16, gpu);
    Tensor dv = Tensor::empty(k.shape(), DType::BF16, gpu);
    Tensor sl;
    ops::AttentionArgs a;
    int64_t keys = Lk;  // keys per query row
    if (c.packs > 0) {
      sl = Tensor::empty({c.packs}, DType::I32);
      for (int r = 0; r < c.packs; ++r) sl.data<int32_t>()[r] = int32_t(c.L / c.packs);
      a.seq_lens = &sl;
      keys = c.L / c.packs;
    }
    const double fwd_flops = 4.0 * c.B * c.H * double(c.L) * keys * c.D;
    ops::cuda::set_attention_train_path(c.path);
    const int warm = 2, reps = 7;
    if (c.path != P::Own) {
      double ms = bench::time_ms([&] { ops::attention(q, k, v, o, a); }, warm, reps);
      emit("attention (inference forward)", c.name, ms, fwd_flops, "auto");
    }
    try {
      double ms = bench::time_ms([&] { ops::attention_forward_lse(q, k, v, o, lse, a); }, warm, reps);
      emit("attention_forward_lse", c.name, ms, fwd_flops, ops::cuda::last_attention_forward_lse_path());
      ms = bench::time_ms([&] { ops::attention_backward(q, k, v, o, lse, dout, dq, dk, dv, a); }, warm,
                          reps);
      emit("attention_backward", c.name, ms, 2.5 * fwd_flops, ops::cuda::last_attention_backward_path());
      {  // repeatability: two more calls on the same inputs, their dQ/dK/dV compared bit for bit
        Tensor dq2 = Tensor::empty(q.shape(), DType::BF16, gpu), dk2 = Tensor::empty(k.shape(), DType::BF16, gpu);
        Tensor dv2 = Tensor::empty(k.shape(), DType::BF16, gpu);
        ops::attention_backward(q, k, v, o, lse, dout, dq, dk, dv, a);
        ops::attention_backward(q, k, v, o, lse, dout, dq2, dk2, dv2, a);
        int64_t differ = 0;
        for (auto [x, y] : {std::pair{&dq, &dq2}, {&dk, &dk2}, {&dv, &dv2}}) {
          const Tensor hx = x->to(Device::cpu()), hy = y->to(Device::cpu());
          const auto* px = static_cast<const uint16_t*>(hx.raw());
          const auto* py = static_cast<const uint16_t*>(hy.raw());
          for (int64_t i = 0; i < hx.numel(); ++i) differ += px[i] != py[i];
        }
        std::printf("{\"bench\":\"backward_ops_gpu\",\"op\":\"attention_backward repeatability\",\"config\":\"%s\","
                    "\"path\":\"%s\",\"elements_differing\":%lld}\n",
                    c.name, ops::cuda::last_attention_backward_path(), (long long)differ);
      }
      if (c.Lk > 0 && c.path != P::Own) {  // few keys: the automatic query chunking against the setting's (default: none)
        ops::cuda::set_attention_backward_query_chunks(0);
        ms = bench::time_ms([&] { ops::attention_backward(q, k, v, o, lse, dout, dq, dk, dv, a); }, warm, reps);
        ops::cuda::set_attention_backward_query_chunks(-1);
        emit("attention_backward (queries chunked: auto)", c.name, ms, 2.5 * fwd_flops, ops::cuda::last_attention_backward_path());
      }
    } catch (const Error& e) {
      std::string why = e.what();
      for (char& ch : why)
        if (ch == '"' || ch == '\\' || ch == '\n') ch = ' ';
      std::printf("{\"bench\":\"backward_ops_gpu\",\"config\":\"%s\",\"skipped\":\"%s\"}\n", c.name,
                  why.c_str());
    }
    ops::cuda::set_attention_train_path(P::Auto);
  }

  // ---- linear_backward: the DiT block's [L, 1536] x [1536, 1536] GEMMs
  {
    const int64_t M = 32760, K = 1536, N = 1536;
    Tensor x = bench::random_gpu({M, K}, DType::BF16, 1.f, seed++);
    Tensor w = bench::random_gpu({N, K}, DType::BF16, 0.03f, seed++);
    Tensor dy = bench::random_gpu({M, N}, DType::BF16, 1.f, seed++);
    Tensor y = Tensor::empty({M, N}, DType::BF16, gpu), dx = Tensor::empty({M, K}, DType::BF16, gpu);
    Tensor dw = Tensor::zeros({N, K}, DType::F32, gpu), db = Tensor::zeros({N}, DType::F32, gpu);
    const std::string cfg = "M=32760 K=1536 N=1536 bf16";
    const double gemm = 2.0 * M * N * K;
    double ms = bench::time_ms([&] { ops::linear(x, w, nullptr, y); }, 3, 10);
    emit("linear (forward)", cfg, ms, gemm, "cublaslt");
    ms = bench::time_ms([&] { ops::linear_backward(x, w, dy, &dx, &dw, &db); }, 3, 10);
    emit("linear_backward dx+dw+db", cfg, ms, 2 * gemm, "cublaslt");
    ms = bench::time_ms([&] { ops::linear_backward(x, w, dy, &dx, nullptr, nullptr); }, 3, 10);
    emit("linear_backward dx", cfg, ms, gemm, "cublaslt");
    ms = bench::time_ms([&] { ops::linear_backward(x, w, dy, nullptr, &dw, &db); }, 3, 10);
    emit("linear_backward dw+db (BGRADB)", cfg, ms, gemm, "cublaslt");
    ms = bench::time_ms([&] { ops::linear_backward(x, w, dy, nullptr, &dw, nullptr); }, 3, 10);
    emit("linear_backward dw", cfg, ms, gemm, "cublaslt");
  }

  // ---- the self-attention's q/k backward chain at [32760, 1536] as the DiT runs it: RoPE backward
  // (bf16 dy -> F32), RMSNorm backward (x bf16, dy F32, dx F32, dw); memory-bound: bytes in the config
  {
    const int64_t rows = 32760, C = 1536, H = 12, D = 128;
    Tensor x = bench::random_gpu({rows, C}, DType::BF16, 1.f, seed++);
    Tensor dyb = bench::random_gpu({rows, C}, DType::BF16, 1.f, seed++);
    Tensor w = bench::random_gpu({C}, DType::F32, 1.f, seed++);
    Tensor dy = Tensor::empty({rows, C}, DType::F32, gpu), dx = Tensor::empty({rows, C}, DType::F32, gpu);
    Tensor dw = Tensor::zeros({C}, DType::F32, gpu);
    Tensor tab = bench::random_gpu({1, rows, D / 2, 2}, DType::F32, 1.f, seed++);  // [Rt, L, D/2, 2] (values: any)
    Tensor dyv = dyb.view({1, rows, H, D}), dyf = dy.view({1, rows, H, D});
    double ms = bench::time_ms([&] { ops::rope_backward(dyv, tab, dyf); }, 3, 10);
    double gb = double(rows) * C * (2 + 4) / 1e9;
    emit("rope_backward", "rows=32760 C=1536 dy bf16 dx f32 (" + std::to_string(gb).substr(0, 5) +
         " GB min traffic)", ms, 0, "own");
    std::printf("{\"bench\":\"backward_ops_gpu\",\"op\":\"rope_backward\",\"GB_per_s\":%.0f}\n", gb / (ms * 1e-3));
    ms = bench::time_ms([&] { ops::rms_norm_backward(x, w, 1e-6f, dy, dx, &dw); }, 3, 10);
    gb = double(rows) * C * (2 + 4 + 4) / 1e9;
    emit("rms_norm_backward", "rows=32760 C=1536 x bf16 dy f32 dx f32 + dw (" + std::to_string(gb).substr(0, 5) +
         " GB min traffic)", ms, 0, "own");
    std::printf("{\"bench\":\"backward_ops_gpu\",\"op\":\"rms_norm_backward\",\"GB_per_s\":%.0f}\n", gb / (ms * 1e-3));
    Tensor db = Tensor::empty({rows, C}, DType::BF16, gpu);
    ms = bench::time_ms([&] { db.copy_from(dx); }, 3, 10);
    gb = double(rows) * C * (4 + 2) / 1e9;
    emit("f32 -> bf16 copy (Linear::backward's dy.to)", "rows=32760 C=1536", ms, 0, "own");
    std::printf("{\"bench\":\"backward_ops_gpu\",\"op\":\"to_bf16\",\"GB_per_s\":%.0f}\n", gb / (ms * 1e-3));
  }

  // ---- LayerNorm-modulate backward at [32760, 1536] (memory-bound: bytes in the config)
  {
    const int64_t rows = 32760, C = 1536;
    Tensor x = bench::random_gpu({rows, C}, DType::F32, 1.f, seed++);
    Tensor dy = bench::random_gpu({rows, C}, DType::BF16, 1.f, seed++);
    Tensor scale = bench::random_gpu({C}, DType::F32, 0.1f, seed++);
    Tensor dx = Tensor::empty({rows, C}, DType::F32, gpu);
    Tensor dsh = Tensor::zeros({C}, DType::F32, gpu), dsc = Tensor::zeros({C}, DType::F32, gpu);
    double ms = bench::time_ms(
        [&] { ops::layer_norm_modulate_backward(x, scale, 1e-6f, dy, dx, &dsh, &dsc); }, 3, 10);
    const double gb = double(rows) * C * (4 + 2 + 4) / 1e9;
    emit("layer_norm_modulate_backward", "rows=32760 C=1536 x f32 dy bf16 dx f32 (" +
         std::to_string(gb).substr(0, 5) + " GB min traffic)", ms, 0, "own");
    std::printf("{\"bench\":\"backward_ops_gpu\",\"op\":\"layer_norm_modulate_backward\",\"GB_per_s\":%.0f}\n",
                gb / (ms * 1e-3));
  }
  return 0;
#endif
}
