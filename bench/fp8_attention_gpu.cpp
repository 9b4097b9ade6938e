// FP8 attention benchmark (JSON lines on stdout): bf16 attention (ops::attention's auto choice)
// vs cuDNN's fused FP8 SDPA and the own Hopper FP8 kernel (quant::fp8_attention on
// pre-quantized E4M3 q/k/v; the own kernel also with each key tile, 128 and 224, with and without
// pingpong scheduling) at Wan2.1 shapes, D = 128, in TFLOP/s counted as 4·B·Σ_r L_r²·H·D (Σ over
// the packed sequences). Also the HiF8→E4M3 quantization of q, k, v timed alone, the whole
// hif8_attention_fp8 (quantize + attention), and the relative error of the FP8 output against
// bf16 attention on the same HiF8-rounded inputs (first 4M outputs).
// Cases: 14B-720P self 1×75600×40; 14B Skiparse packed (19320, 19320, 18480, 18480) × 40 heads;
// 1.3B-480P self 1×32760×12.
// Usage: bench_fp8_attention_gpu [--quick] [--case NAME]   (--quick: only the 1.3B case, fewer
// repeats; --case: only that case, e.g. under ncu: scripts/profile-attention.sh)
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "osp/core/device.h"
#include "osp/core/philox.h"
#include "osp/core/tensor.h"
#include "osp/ops/ops.h"
#include "osp/quant/fp8.h"
#include "osp/quant/hif8.h"

#ifdef OSP_HAVE_CUDA
#include "gpu_bench_util.h"
#include "osp/ops/cuda/attention_paths.h"
#endif

using namespace osp;

#ifndef OSP_HAVE_CUDA
int main() {
  std::printf("{\"bench\":\"fp8_attention_gpu\",\"skipped\":\"built without CUDA\"}\n");
  return 0;
}
#else

namespace {

std::string g_card;

// Random bf16 operands: one random tile of 2^20 + 37 values (not a multiple of a token row,
// so rows differ) repeated (bench::random_tiled_gpu).
Tensor random_device(const Shape& shape, uint64_t seed, float scale) {
  return bench::random_tiled_gpu(shape, DType::BF16, seed, scale, (int64_t(1) << 20) + 37);
}

struct Case {
  const char* name;
  int64_t B, L, H;
  std::vector<int> seq_lens;  // empty: one sequence
};

void run_case(const Case& c, int reps) {
  const int64_t D = 128;
  Tensor q = random_device({c.B, c.L, c.H, D}, 20, 2.5f);
  Tensor k = random_device({c.B, c.L, c.H, D}, 21, 1.0f);
  Tensor v = random_device({c.B, c.L, c.H, D}, 22, 1.0f);
  Tensor out = Tensor::empty(q.shape(), DType::BF16, Device::cuda());
  Tensor out8 = Tensor::empty(q.shape(), DType::BF16, Device::cuda());
  Tensor sl;
  ops::AttentionArgs args;
  double sum_sq = double(c.L) * double(c.L);
  std::string lens = "[" + std::to_string(c.L) + "]";
  if (!c.seq_lens.empty()) {
    sl = Tensor::empty({int64_t(c.seq_lens.size())}, DType::I32);
    sum_sq = 0;
    lens = "[";
    for (size_t i = 0; i < c.seq_lens.size(); ++i) {
      sl.data<int32_t>()[i] = c.seq_lens[i];
      sum_sq += double(c.seq_lens[i]) * double(c.seq_lens[i]);
      lens += (i ? "," : "") + std::to_string(c.seq_lens[i]);
    }
    lens += "]";
    args.seq_lens = &sl;
  }
  const double flop = 4.0 * double(c.B) * sum_sq * double(c.H) * double(D);
  auto emit = [&](const char* variant, double ms, double flops, const std::string& extra) {
    std::printf(
        "{\"bench\":\"fp8_attention_gpu\",\"case\":\"%s\",\"variant\":\"%s\",\"card\":\"%s\","
        "\"B\":%lld,\"L\":%lld,\"H\":%lld,\"D\":%lld,\"seq_lens\":%s,\"ms\":%.3f,"
        "\"tflops\":%.1f%s}\n",
        c.name, variant, g_card.c_str(), (long long)c.B, (long long)c.L, (long long)c.H,
        (long long)D, lens.c_str(), ms, flops > 0 ? flops / (ms * 1e-3) / 1e12 : 0.0,
        extra.c_str());
    std::fflush(stdout);
  };
  const double ms_bf16 = bench::time_ms([&] { ops::attention(q, k, v, out, args); }, 1, reps);
  emit("bf16", ms_bf16, flop, ",\"path\":\"" + std::string(ops::cuda::last_attention_path()) + "\"");
  quant::Fp8Tensor q8 = quant::hif8_quantize_e4m3(q), k8 = quant::hif8_quantize_e4m3(k),
                   v8 = quant::hif8_quantize_e4m3(v);
  const double ms_q = bench::time_ms(
      [&] {
        quant::hif8_quantize_e4m3(q, q8);
        quant::hif8_quantize_e4m3(k, k8);
        quant::hif8_quantize_e4m3(v, v8);
      },
      1, reps);
  emit("quantize_qkv_e4m3", ms_q, 0, "");
  auto note_json = [] {
    std::string note = quant::fp8_attention_cudnn_note();
    for (char& ch : note)
      if (ch == '"' || ch == '\\' || ch == '\n') ch = '\'';
    return note;
  };
  const double ms_fp8 = bench::time_ms(
      [&] { quant::fp8_attention(q8, k8, v8, out8, args, quant::Fp8AttentionKernel::Cudnn); }, 1, reps);
  emit("fp8_cudnn", ms_fp8, flop,
       ",\"path\":\"" + std::string(quant::fp8_attention_last_path()) + "\",\"plan\":\"" + note_json() + "\"");
  double ms_own = 0;
  if (ops::cuda::hopper_attention_supported()) {
    ms_own = bench::time_ms(
        [&] { quant::fp8_attention(q8, k8, v8, out8, args, quant::Fp8AttentionKernel::Hopper); }, 1, reps);
    emit("fp8_hopper", ms_own, flop, ",\"path\":\"" + std::string(quant::fp8_attention_last_path()) + "\"");
    if (c.seq_lens.empty()) {  // each key tile and scheduling, through the kernel's own entry point
      const ops::cuda::Fp8AttentionCall h = quant::fp8_attention_call(q8, k8, v8, out8);
      for (int tile : {128, 224})
        for (bool pp : {false, true}) {
          const double ms = bench::time_ms([&] { ops::cuda::attention_hopper_fp8(h, pp, tile); }, 1, reps);
          const std::string name = "fp8_hopper" + std::to_string(tile) + (pp ? "_pingpong" : "");
          emit(name.c_str(), ms, flop, "");
        }
    }
  }
  const double ms_all =
      bench::time_ms([&] { quant::hif8_attention_fp8(q, k, v, out8, args); }, 1, reps);
  const std::string auto_path = quant::fp8_attention_last_path();
  emit("hif8_attention_fp8_incl_quant", ms_all, flop, ",\"path\":\"" + auto_path + "\"");
  // FP8 vs bf16 attention on the same HiF8-rounded inputs
  Tensor qh = Tensor::empty(q.shape(), DType::BF16, Device::cuda());
  Tensor kh = Tensor::empty(q.shape(), DType::BF16, Device::cuda());
  Tensor vh = Tensor::empty(q.shape(), DType::BF16, Device::cuda());
  quant::fp8_dequantize(q8, qh);
  quant::fp8_dequantize(k8, kh);
  quant::fp8_dequantize(v8, vh);
  ops::attention(qh, kh, vh, out, args);
  const int64_t n = std::min<int64_t>(out.numel(), int64_t(1) << 22);
  auto rel_vs_bf16 = [&](quant::Fp8AttentionKernel kernel) {
    quant::fp8_attention(q8, k8, v8, out8, args, kernel);
    return relative_error(out8.view({-1}).slice(0, 0, n), out.view({-1}).slice(0, 0, n));
  };
  const double rel = rel_vs_bf16(quant::Fp8AttentionKernel::Cudnn);
  const double rel_own = ms_own > 0 ? rel_vs_bf16(quant::Fp8AttentionKernel::Hopper) : 0.0;
  std::printf(
      "{\"bench\":\"fp8_attention_gpu\",\"case\":\"%s\",\"variant\":\"summary\",\"card\":\"%s\","
      "\"speedup_fp8\":%.3f,\"speedup_fp8_hopper\":%.3f,\"speedup_fp8_incl_quant\":%.3f,\"quant_ms\":%.3f,"
      "\"rel_err_fp8_vs_bf16_first_4M\":%.4g,\"rel_err_fp8_hopper_vs_bf16_first_4M\":%.4g,"
      "\"auto_path\":\"%s\"}\n",
      c.name, g_card.c_str(), ms_bf16 / ms_fp8, ms_own > 0 ? ms_bf16 / ms_own : 0.0, ms_bf16 / ms_all, ms_q,
      rel, rel_own, auto_path.c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string only_case;  // --case NAME: only that case (profiling)
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::strcmp(argv[i], "--case") == 0 && i + 1 < argc) only_case = argv[++i];
    else  // gpu-test.sh passes one BENCH_ARGS to every bench: ignore what is not ours
      std::fprintf(stderr, "%s: ignoring unknown argument '%s' (usage: [--quick] [--case NAME])\n", argv[0],
                   argv[i]);
  }
  if (!cuda_available()) {
    std::printf("{\"bench\":\"fp8_attention_gpu\",\"skipped\":\"no CUDA GPU\"}\n");
    return 0;
  }
  try {
    g_card = bench::card_name();
    std::vector<Case> cases = {
        {"1.3B-480P self", 1, 32760, 12, {}},
        {"14B-720P self", 1, 75600, 40, {}},
        {"14B skiparse packed", 1, 75600, 40, {19320, 19320, 18480, 18480}},
    };
    if (quick) cases.resize(1);
    for (const Case& c : cases) {
      if (!only_case.empty() && only_case != c.name) continue;
      run_case(c, quick ? 3 : 5);
      cuda_empty_cache();
    }
  } catch (const std::exception& e) {
    std::string msg = e.what();
    for (char& c : msg)
      if (c == '"' || c == '\\' || c == '\n') c = '\'';
    std::printf("{\"bench\":\"fp8_attention_gpu\",\"error\":\"%s\"}\n", msg.c_str());
    return 1;
  }
  return 0;
}
#endif
