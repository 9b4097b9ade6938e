// HiF8 / FP8 GPU benchmark (JSON lines on stdout).
//   1. HiF8 codec throughput: every codec kernel (encode f32/bf16 → u8, decode u8 → f32/bf16,
//      TA and stochastic round, amax, scaled fake quant (amax pass + quantize pass, TA and
//      stochastic), HiF8→E4M3 operand quantization (amax pass + quantize pass), E4M3
//      dequantization) in GB/s of bytes moved, as a fraction of the card's peak HBM bandwidth
//      (2 · memory clock · bus width, from the device attributes) and of a device-to-device
//      copy timed in the same run.
//   2. GEMM at Wan2.1-14B shapes (tokens M = 75600 (720p, 81 frames) and 32760; K×N = 5120×5120,
//      5120×13824, 13824×5120): cuBLASLt bf16 (ops::linear) vs the FP8 E4M3 path
//      (quant::fp8_linear on pre-quantized operands, fast accumulation off and on), in TFLOP/s,
//      plus the cost of quantizing the activation (hif8_quantize_e4m3).
// Usage: bench_hif8_gpu [--quick] [--codec-only]
//   (--quick: 2^26 codec elements, GEMM M = 8192 only, fewer iterations; --codec-only: part 1)
#include <algorithm>
#include <chrono>
#include <functional>
#include <cmath>
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
#include <cuda_runtime.h>

#include "osp/core/cuda_check.h"
#include "osp/quant/cuda/hif8_cuda.h"
#include "gpu_bench_util.h"
#endif

using namespace osp;

#ifndef OSP_HAVE_CUDA
int main() {
  std::printf("{\"bench\":\"hif8_gpu\",\"skipped\":\"built without CUDA\"}\n");
  return 0;
}
#else

namespace {

std::string g_card;

// Fills a device tensor with a repeated random tile (fast init of multi-GB operands).
Tensor random_device(const Shape& shape, DType dt, uint64_t seed, float scale = 1.0f) {
  Tensor t = Tensor::empty(shape, dt, Device::cuda());
  const int64_t n = t.numel();
  const int64_t tile = std::min<int64_t>(n, int64_t(1) << 20);
  Tensor h = randn({tile}, seed);
  if (scale != 1.0f)
    for (int64_t i = 0; i < tile; ++i) h.data<float>()[i] *= scale;
  Tensor hd = h.to(dt).to(Device::cuda());
  const size_t es = dtype_size(dt);
  for (int64_t off = 0; off < n; off += tile) {
    int64_t cnt = std::min(tile, n - off);
    OSP_CUDA_CHECK(cudaMemcpy(static_cast<char*>(t.raw()) + off * es, hd.raw(), size_t(cnt) * es,
                              cudaMemcpyDeviceToDevice));
  }
  return t;
}

template <typename F>
double time_ms(F&& f, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) f();
  cudaEvent_t a, b;
  OSP_CUDA_CHECK(cudaEventCreate(&a));
  OSP_CUDA_CHECK(cudaEventCreate(&b));
  OSP_CUDA_CHECK(cudaEventRecord(a, 0));
  for (int i = 0; i < iters; ++i) f();
  OSP_CUDA_CHECK(cudaEventRecord(b, 0));
  OSP_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  OSP_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return double(ms) / iters;
}


// Every codec kernel on 2^28 elements (2^26 with --quick): GB/s of the fewest bytes the
// operation must move (each input read once per pass, each output written once; the scaled
// ops read x twice: the amax pass and the quantize pass), as a fraction of the card's HBM peak
// and of a device-to-device copy measured in the same run (the practical ceiling).
void codec(double peak_gbps, bool quick) {
  const int64_t n = quick ? (int64_t(1) << 26) : (int64_t(1) << 28);  // 64M / 256M elements
  const int reps = quick ? 5 : 15;
  Tensor xf = random_device({n}, DType::F32, 1);
  Tensor xb = random_device({n}, DType::BF16, 2);
  Tensor codes = Tensor::empty({n}, DType::U8, Device::cuda());
  quant::hif8_encode(xb, codes);  // real codes for the decode ops
  Tensor outb = Tensor::empty({n}, DType::BF16, Device::cuda());
  Tensor outf = Tensor::empty({n}, DType::F32, Device::cuda());
  quant::Fp8Tensor q8 = quant::hif8_quantize_e4m3(xb);
  struct Op {
    const char* name;
    double bytes_per_elem;
    std::function<void()> run;
  };
  using DV = quant::cuda::DecodeVariant;
  std::vector<Op> ops = {
      // the ceiling: cudaMemcpy device to device of the bf16 tensor (read 2 + write 2)
      {"copy_bf16", 4,
       [&] {
         OSP_CUDA_CHECK(cudaMemcpyAsync(outb.raw(), xb.raw(), size_t(n) * 2,
                                        cudaMemcpyDeviceToDevice, 0));
       }},
      {"encode_f32", 5, [&] { quant::hif8_encode(xf, codes); }},
      {"encode_bf16", 3, [&] { quant::hif8_encode(xb, codes); }},
      // the walk hif8_encode does not take for that dtype (f32: tile, bf16: interleaved)
      {"encode_f32_variant_interleaved", 5,
       [&] { quant::cuda::hif8_encode_walk(xf, codes, false, quant::cuda::EncodeWalk::kInterleaved); }},
      {"encode_bf16_variant_tile_walk", 3,
       [&] { quant::cuda::hif8_encode_walk(xb, codes, false, quant::cuda::EncodeWalk::kTile); }},
      // the two designs the bf16 encode was chosen over (quant/cuda/hif8_encode_variants.cu)
      {"encode_bf16_variant_lut64k", 3,
       [&] {
         quant::cuda::hif8_encode_bf16_variant(xb, codes, false, quant::cuda::EncodeVariant::kLut64k);
       }},
      {"encode_bf16_variant_bits", 3,
       [&] {
         quant::cuda::hif8_encode_bf16_variant(xb, codes, false, quant::cuda::EncodeVariant::kBits);
       }},
      {"decode_f32", 5, [&] { quant::hif8_decode(codes, outf); }},
      {"decode_bf16", 3, [&] { quant::hif8_decode(codes, outb); }},
      // the same decode with other access patterns (quant/cuda/hif8_encode_variants.cu): the
      // per-thread tile walk, the warp-interleaved walk with 16 codes per lane instead of
      // the production's 64 (persistent grid), and the production kernel in the persistent
      // grid instead of one warp per span
      {"decode_f32_variant_tile_plain_stores", 5,
       [&] { quant::cuda::hif8_decode_variant(codes, outf, DV::kTilePlainStores); }},
      {"decode_f32_variant_interleaved_evict_first", 5,
       [&] { quant::cuda::hif8_decode_variant(codes, outf, DV::kInterleavedEvictFirst); }},
      {"decode_f32_variant_interleaved_plain_stores", 5,
       [&] { quant::cuda::hif8_decode_variant(codes, outf, DV::kInterleavedPlainStores); }},
      {"decode_f32_variant_persistent_grid", 5,
       [&] { quant::cuda::hif8_decode_variant(codes, outf, DV::kInterleavedPersistent); }},
      {"decode_bf16_variant_tile_plain_stores", 3,
       [&] { quant::cuda::hif8_decode_variant(codes, outb, DV::kTilePlainStores); }},
      {"decode_bf16_variant_interleaved_evict_first", 3,
       [&] { quant::cuda::hif8_decode_variant(codes, outb, DV::kInterleavedEvictFirst); }},
      {"decode_bf16_variant_interleaved_plain_stores", 3,
       [&] { quant::cuda::hif8_decode_variant(codes, outb, DV::kInterleavedPlainStores); }},
      {"decode_bf16_variant_persistent_grid", 3,
       [&] { quant::cuda::hif8_decode_variant(codes, outb, DV::kInterleavedPersistent); }},
      {"round_f32", 8, [&] { quant::hif8_round(xf, outf); }},
      {"round_bf16", 4, [&] { quant::hif8_round(xb, outb); }},
      // the same kernel with one warp per span instead of the persistent grid (as hif8_decode)
      {"round_f32_variant_full_grid", 8,
       [&] { quant::cuda::hif8_round_grid(xf, outf, false, true); }},
      {"round_bf16_variant_full_grid", 4,
       [&] { quant::cuda::hif8_round_grid(xb, outb, false, true); }},
      {"stochastic_round_f32", 8, [&] { quant::hif8_round_stochastic(xf, outf, 7); }},
      {"stochastic_round_bf16", 4, [&] { quant::hif8_round_stochastic(xb, outb, 7); }},
      // amax alone (read once)
      {"amax_f32", 4, [&] { (void)quant::amax(xf); }},
      {"amax_bf16", 2, [&] { (void)quant::amax(xb); }},
      // scaled fake quant: amax pass + quantize pass (read x twice, write once)
      {"fake_quant_f32", 12, [&] { quant::hif8_fake_quant(xf, outf); }},
      {"fake_quant_bf16", 6, [&] { quant::hif8_fake_quant(xb, outb); }},
      {"fake_quant_stochastic_bf16", 6,
       [&] { quant::hif8_fake_quant_stochastic(xb, outb, 9); }},
      // HiF8 → E4M3 operand quantization: amax pass + quantize pass (read x twice, write codes)
      {"quantize_e4m3_f32", 9, [&] { quant::hif8_quantize_e4m3(xf, q8); }},
      {"quantize_e4m3_bf16", 5, [&] { quant::hif8_quantize_e4m3(xb, q8); }},
      {"dequantize_e4m3_bf16", 3, [&] { quant::fp8_dequantize(q8, outb); }},
  };
  double copy_gbps = 0;
  for (auto& op : ops) {
    double ms = bench::time_ms(op.run, 2, reps);
    double gbps = op.bytes_per_elem * double(n) / (ms * 1e-3) / 1e9;
    if (std::strcmp(op.name, "copy_bf16") == 0) copy_gbps = gbps;
    std::printf(
        "{\"bench\":\"hif8_gpu\",\"section\":\"codec\",\"op\":\"%s\",\"card\":\"%s\",\"n\":%lld,"
        "\"ms\":%.4f,\"bytes\":%.0f,\"GBps\":%.1f,\"peak_GBps\":%.1f,\"frac_of_peak\":%.3f,"
        "\"frac_of_copy\":%.3f}\n",
        op.name, g_card.c_str(), (long long)n, ms, op.bytes_per_elem * double(n), gbps, peak_gbps,
        gbps / peak_gbps, copy_gbps > 0 ? gbps / copy_gbps : 0.0);
    std::fflush(stdout);
  }
}

void gemms(bool quick) {
  std::vector<int64_t> Ms = quick ? std::vector<int64_t>{8192} : std::vector<int64_t>{75600, 32760};
  const int64_t KN[3][2] = {{5120, 5120}, {5120, 13824}, {13824, 5120}};
  const int iters = quick ? 3 : 10;
  for (int64_t M : Ms)
    for (auto& kn : KN) {
      const int64_t K = kn[0], N = kn[1];
      const double flop = 2.0 * double(M) * double(N) * double(K);
      Tensor x = random_device({M, K}, DType::BF16, 10);
      Tensor w = random_device({N, K}, DType::BF16, 11, 0.02f);
      Tensor out = Tensor::empty({M, N}, DType::BF16, Device::cuda());
      auto emit = [&](const char* variant, double ms, double flops) {
        std::printf(
            "{\"bench\":\"hif8_gpu\",\"section\":\"gemm\",\"variant\":\"%s\",\"card\":\"%s\","
            "\"M\":%lld,\"N\":%lld,\"K\":%lld,\"ms\":%.4f,\"tflops\":%.1f}\n",
            variant, g_card.c_str(), (long long)M, (long long)N, (long long)K, ms,
            flops > 0 ? flops / (ms * 1e-3) / 1e12 : 0.0);
        std::fflush(stdout);
      };
      double ms_bf16 = time_ms([&] { ops::linear(x, w, nullptr, out); }, 2, iters);
      emit("bf16", ms_bf16, flop);
      quant::Fp8Tensor xq = quant::hif8_quantize_e4m3(x), wq = quant::hif8_quantize_e4m3(w);
      double ms_q = time_ms([&] { quant::hif8_quantize_e4m3(x, xq); }, 2, iters);
      emit("quantize_x_e4m3", ms_q, 0);
      double ms_fp8 = time_ms([&] { quant::fp8_linear(xq, wq, nullptr, out); }, 2, iters);
      emit("fp8_e4m3", ms_fp8, flop);
      quant::Fp8LinearOptions fast{true};
      double ms_fast = time_ms([&] { quant::fp8_linear(xq, wq, nullptr, out, fast); }, 2, iters);
      emit("fp8_e4m3_fast_accum", ms_fast, flop);
      std::printf(
          "{\"bench\":\"hif8_gpu\",\"section\":\"gemm_summary\",\"card\":\"%s\",\"M\":%lld,"
          "\"N\":%lld,\"K\":%lld,\"speedup_fp8\":%.3f,\"speedup_fp8_fast\":%.3f,"
          "\"speedup_fp8_incl_x_quant\":%.3f}\n",
          g_card.c_str(), (long long)M, (long long)N, (long long)K, ms_bf16 / ms_fp8,
          ms_bf16 / ms_fast, ms_bf16 / (ms_fp8 + ms_q));
      std::fflush(stdout);
      x = w = out = Tensor();
      xq = wq = quant::Fp8Tensor();
      cuda_empty_cache();  // shapes differ: give the blocks back before the next one
    }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, codec_only = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::strcmp(argv[i], "--codec-only") == 0) codec_only = true;
    else  // gpu-test.sh passes one BENCH_ARGS to every bench: ignore what is not ours
      std::fprintf(stderr, "%s: ignoring unknown argument '%s' (usage: [--quick] [--codec-only])\n",
                   argv[0], argv[i]);
  }
  if (!cuda_available()) {
    std::printf("{\"bench\":\"hif8_gpu\",\"skipped\":\"no CUDA GPU\"}\n");
    return 0;
  }
  try {
    cudaDeviceProp prop{};
    OSP_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    int mem_khz = 0, bus_bits = 0;
    OSP_CUDA_CHECK(cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, 0));
    OSP_CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0));
    // DDR: two transfers per clock
    const double peak_gbps = 2.0 * double(mem_khz) * 1e3 * double(bus_bits / 8) / 1e9;
    g_card = prop.name;
    std::printf(
        "{\"bench\":\"hif8_gpu\",\"section\":\"device\",\"card\":\"%s\",\"sm\":\"%d.%d\","
        "\"mem_clock_khz\":%d,\"bus_bits\":%d,\"peak_GBps\":%.1f}\n",
        g_card.c_str(), prop.major, prop.minor, mem_khz, bus_bits, peak_gbps);
    codec(peak_gbps, quick);
    cuda_empty_cache();
    if (!codec_only) gemms(quick);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    for (char& c : msg)
      if (c == '"' || c == '\\' || c == '\n') c = '\'';
    std::printf("{\"bench\":\"hif8_gpu\",\"error\":\"%s\"}\n", msg.c_str());
    return 1;
  }
  return 0;
}
#endif
