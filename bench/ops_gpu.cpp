// GPU op benchmarks: attention (cuDNN fused SDPA vs our own flash kernel and our own Hopper
// kernel — its default (176-key tiles, no pingpong) and 176 with pingpong, 128 without / with —
// each with its relative error against cuDNN's output) at DiT shapes, dense and Skiparse (P² = 4 padded sub-sequences),
// cross-attention (Lk = 512), and the DiT's GEMMs through cuBLASLt. Prints one JSON line per measurement.
//   bench_ops_gpu [--quick] [--attention-only] [--case "14B-720P self"]   (--case: that attention
//   case only, e.g. under ncu: scripts/profile-attention.sh)
#include <cstdio>
#include <cstring>
#include <string>

#include "osp/core/device.h"
#include "osp/ops/ops.h"
#ifdef OSP_HAVE_CUDA
#include "gpu_bench_util.h"
#include "osp/ops/cuda/attention_paths.h"
#endif

int main(int argc, char** argv) {
#ifndef OSP_HAVE_CUDA
  std::printf("{\"bench\":\"ops_gpu\",\"skipped\":\"built without CUDA\"}\n");
  return 0;
#else
  using namespace osp;
  if (!cuda_available()) {
    std::printf("{\"bench\":\"ops_gpu\",\"skipped\":\"no CUDA GPU\"}\n");
    return 0;
  }
  bool quick = false, attention_only = false;
  std::string only_case;  // --case NAME: only the attention case of that name (profiling)
  for (int i = 1; i < argc; ++i) {
    quick |= std::strcmp(argv[i], "--quick") == 0;
    attention_only |= std::strcmp(argv[i], "--attention-only") == 0;
    if (std::strcmp(argv[i], "--case") == 0 && i + 1 < argc) only_case = argv[++i];
  }
  const std::string card = bench::card_name();
  uint32_t seed = 7;

  // ---- attention
  struct AttnCfg {
    const char* name;
    int64_t B, Lq, Lk, H, D;
    int64_t real;  // real tokens per sub-sequence (kv_lens/q_lens) or 0 for none
  };
  std::vector<AttnCfg> attn = {
      {"1.3B-480P self", 1, 32760, 32760, 12, 128, 0},
      {"1.3B-480P skiparse", 4, 8736, 8736, 12, 128, 8190},
      {"14B-720P self", 1, 75600, 75600, 40, 128, 0},
      {"14B-720P skiparse", 4, 20160, 20160, 40, 128, 18900},
      {"14B-720P cross", 1, 75600, 512, 40, 128, 0},
      {"32k D64", 1, 32768, 32768, 16, 64, 0},
  };
  if (quick) attn.resize(2);
  for (const auto& c : attn) {
    if (!only_case.empty() && only_case != c.name) continue;
    Tensor q = bench::random_gpu({c.B, c.Lq, c.H, c.D}, DType::BF16, 1.f, seed++);
    Tensor k = bench::random_gpu({c.B, c.Lk, c.H, c.D}, DType::BF16, 1.f, seed++);
    Tensor v = bench::random_gpu({c.B, c.Lk, c.H, c.D}, DType::BF16, 1.f, seed++);
    Tensor o = Tensor::empty({c.B, c.Lq, c.H, c.D}, DType::BF16, Device::cuda(0));
    Tensor lens = Tensor::empty({c.B}, DType::I32);
    for (int64_t b = 0; b < c.B; ++b) lens.data<int32_t>()[b] = int32_t(c.real);
    ops::AttentionArgs a;
    if (c.real) {
      a.kv_lens = &lens;
      a.q_lens = &lens;
    }
    const double lq = c.real ? double(c.real) : double(c.Lq), lk = c.real ? double(c.real) : double(c.Lk);
    const double flop = 4.0 * c.B * lq * lk * c.H * c.D;
    const int reps = flop > 5e13 ? 3 : 10;
    Tensor ref;
    // hopper: the own kernel as cuda::attention runs it (176-key tiles, no pingpong); the
    // others name their key tile and pingpong
    for (const char* path : {"cudnn", "flash", "hopper", "hopper176_pp", "hopper128", "hopper128_pp"}) {
      const std::string pa = path;
      bool ok = true;
      if (pa.rfind("hopper", 0) == 0 && (c.D != 128 || !ops::cuda::hopper_attention_supported())) ok = false;
      auto run = [&] {
        if (!ok) return;
        if (pa == "flash") ops::cuda::attention_flash(q, k, v, o, a);
        else if (pa == "cudnn") ok = ops::cuda::attention_cudnn(q, k, v, o, a);
        else if (pa == "hopper") ops::cuda::attention_hopper(q, k, v, o, a);
        else ops::cuda::attention_hopper(q, k, v, o, a, pa.ends_with("_pp"), pa.rfind("hopper176", 0) == 0 ? 176 : 128);
      };
      run();
      // the output against cuDNN's (relative L2), -1 where not compared
      double rel = -1;
      if (ok && pa == "cudnn") ref = o.to(Device::cpu());
      else if (ok && ref.defined()) rel = relative_error(o.to(Device::cpu()), ref);
      if (!ok) {
        std::printf("{\"bench\":\"attention\",\"case\":\"%s\",\"path\":\"%s\",\"ran\":false,\"card\":\"%s\"}\n",
                    c.name, path, card.c_str());
        continue;
      }
      double ms = bench::time_ms(run, 1, reps);
      std::printf("{\"bench\":\"attention\",\"case\":\"%s\",\"path\":\"%s\",\"B\":%lld,\"Lq\":%lld,"
                  "\"Lk\":%lld,\"H\":%lld,\"D\":%lld,\"real\":%lld,\"ms\":%.3f,\"tflops\":%.1f,"
                  "\"rel_err_vs_cudnn\":%.3g,\"card\":\"%s\"}\n",
                  c.name, path, (long long)c.B, (long long)c.Lq, (long long)c.Lk, (long long)c.H,
                  (long long)c.D, (long long)c.real, ms, flop / ms * 1e-9, rel, card.c_str());
      std::fflush(stdout);
    }
  }

  if (attention_only) return 0;
  // ---- GEMMs (x [M,K] · w[N,K]ᵀ)
  struct GemmCfg {
    const char* name;
    int64_t M, K, N;
    ops::Act act;
    bool bias;
  };
  std::vector<GemmCfg> gemm = {
      {"1.3B-480P qkvo", 32760, 1536, 1536, ops::Act::None, true},
      {"1.3B-480P ffn1+gelu", 32760, 1536, 8960, ops::Act::GeluTanh, true},
      {"1.3B-480P ffn2", 32760, 8960, 1536, ops::Act::None, true},
      {"14B-720P qkvo", 75600, 5120, 5120, ops::Act::None, true},
      {"14B-720P ffn1+gelu", 75600, 5120, 13824, ops::Act::GeluTanh, true},
      {"14B-720P ffn2", 75600, 13824, 5120, ops::Act::None, true},
      {"8192^3", 8192, 8192, 8192, ops::Act::None, false},
  };
  if (quick) gemm.resize(1);
  for (const auto& g : gemm) {
    Tensor x = bench::random_gpu({g.M, g.K}, DType::BF16, 1.f, seed++);
    Tensor w = bench::random_gpu({g.N, g.K}, DType::BF16, 0.02f, seed++);
    Tensor b = bench::random_gpu({g.N}, DType::BF16, 0.1f, seed++);
    Tensor out = Tensor::empty({g.M, g.N}, DType::BF16, Device::cuda(0));
    auto run = [&] { ops::linear(x, w, g.bias ? &b : nullptr, out, g.act); };
    double ms = bench::time_ms(run, 2, 10);
    double flop = 2.0 * g.M * g.K * g.N;
    std::printf("{\"bench\":\"gemm\",\"case\":\"%s\",\"M\":%lld,\"K\":%lld,\"N\":%lld,\"ms\":%.3f,"
                "\"tflops\":%.1f,\"card\":\"%s\"}\n",
                g.name, (long long)g.M, (long long)g.K, (long long)g.N, ms, flop / ms * 1e-9,
                card.c_str());
    std::fflush(stdout);
  }
  return 0;
#endif
}
