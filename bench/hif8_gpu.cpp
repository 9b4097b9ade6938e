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
// Usage: bench_hif8_gpu [--quick] [--codec-only] [--shapes] [--log2n N] [--batch B]
//   (--quick: 2^26 codec elements, GEMM M = 8192 only, fewer iterations; --codec-only: part 1;
//   --shapes: every launch shape of the codec kernels, not only production's; --log2n: codec
//   elements 2^N, default 28; --batch: launches per batched sample, default 20)
#include <algorithm>
#include <chrono>
#include <functional>
#include <cmath>
#include <cstdio>
#include <cstdlib>
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
#include "osp/quant/cuda/fp8_cuda.h"
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

// Random operands: one 2^20-value random tile repeated (bench::random_tiled_gpu).
Tensor random_device(const Shape& shape, DType dt, uint64_t seed, float scale = 1.0f) {
  return bench::random_tiled_gpu(shape, dt, seed, scale, int64_t(1) << 20);
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


// Every codec kernel on 2^log2n elements (default 2^28; 2^26 with --quick): GB/s of the
// fewest bytes the operation must move (each input read once per pass, each output written
// once; the scaled ops read x twice: the amax pass and the quantize pass), as a fraction of
// the card's HBM peak and of a device-to-device copy measured in the same run (the practical
// ceiling). Two timings per row, both the median of `reps` samples between CUDA events:
//   single  one launch per sample (includes the launch's ramp-up and drain)
//   batch   `batch` back-to-back launches per sample, time / batch: the rate when the op runs
//           in a stream of work, as inside the model (launch gaps hidden; what is left is the
//           kernel's own start and tail)
// The production launch shape of each op (quant/cuda/hif8_cuda.h: StreamShape{}) is printed
// under the op's name; `--shapes` adds every other shape (grid sizing × walk), each bitwise
// tested in quant_hif8_gpu_test.
double g_copy_single = 0, g_copy_batch = 0;

void codec(double peak_gbps, bool quick, int log2n, int batch, bool all_shapes) {
  const int64_t n = int64_t(1) << (quick ? 26 : log2n);
  const int reps = quick ? 5 : 15;
  Tensor xf = random_device({n}, DType::F32, 1);
  Tensor xb = random_device({n}, DType::BF16, 2);
  Tensor codes = Tensor::empty({n}, DType::U8, Device::cuda());
  quant::hif8_encode(xb, codes);  // real codes for the decode ops
  Tensor outb = Tensor::empty({n}, DType::BF16, Device::cuda());
  Tensor outf = Tensor::empty({n}, DType::F32, Device::cuda());
  quant::Fp8Tensor q8 = quant::hif8_quantize_e4m3(xb);
  namespace qc = quant::cuda;
  using Shape_ = qc::StreamShape;
  using Run = std::function<void(const Shape_&)>;
  struct Op {
    const char* name;
    double bytes_per_elem;
    Run run;
    int shapes;  // 0: production only, 1: grid × {interleaved, bulk}, 2: grid × {tile,
                 // interleaved}, 3: grid × all three walks
  };
  std::vector<Op> ops = {
      // the ceilings: cudaMemcpy device to device of the bf16 tensor (read 2 + write 2), and
      // cudaMemset of the f32 tensor (write only)
      {"copy_bf16", 4,
       [&](const Shape_&) {
         OSP_CUDA_CHECK(cudaMemcpyAsync(outb.raw(), xb.raw(), size_t(n) * 2,
                                        cudaMemcpyDeviceToDevice, 0));
       },
       0},
      {"memset_f32", 4,
       [&](const Shape_&) { OSP_CUDA_CHECK(cudaMemsetAsync(outf.raw(), 0, size_t(n) * 4, 0)); },
       0},
      // the codec kernels' walks with no per-element work (f32 → f32 identity)
      {"copy_walk_f32", 8, [&](const Shape_& s) { qc::stream_copy(xf, outf, s); }, 3},
      {"encode_f32", 5, [&](const Shape_& s) { qc::hif8_encode(xf, codes, false, s); }, 2},
      {"encode_bf16", 3, [&](const Shape_& s) { qc::hif8_encode(xb, codes, false, s); }, 2},
      {"decode_f32", 5, [&](const Shape_& s) { qc::hif8_decode(codes, outf, s); }, 1},
      {"decode_bf16", 3, [&](const Shape_& s) { qc::hif8_decode(codes, outb, s); }, 1},
      {"round_f32", 8, [&](const Shape_& s) { qc::hif8_round(xf, outf, false, s); }, 1},
      {"round_bf16", 4, [&](const Shape_& s) { qc::hif8_round(xb, outb, false, s); }, 1},
      {"stochastic_round_f32", 8, [&](const Shape_&) { quant::hif8_round_stochastic(xf, outf, 7); }, 0},
      {"stochastic_round_bf16", 4, [&](const Shape_&) { quant::hif8_round_stochastic(xb, outb, 7); }, 0},
      // amax alone (read once; a memset of the result and one kernel)
      {"amax_f32", 4, [&](const Shape_&) { (void)quant::amax(xf); }, 0},
      {"amax_bf16", 2, [&](const Shape_&) { (void)quant::amax(xb); }, 0},
      // scaled fake quant: amax pass + quantize pass (read x twice, write once)
      {"fake_quant_f32", 12,
       [&](const Shape_& s) { qc::hif8_fake_quant(xf, outf, quant::kHiF8ForwardMax, nullptr, s); }, 1},
      {"fake_quant_bf16", 6,
       [&](const Shape_& s) { qc::hif8_fake_quant(xb, outb, quant::kHiF8ForwardMax, nullptr, s); }, 1},
      {"fake_quant_stochastic_bf16", 6,
       [&](const Shape_&) { quant::hif8_fake_quant_stochastic(xb, outb, 9); }, 0},
      // HiF8 → E4M3 operand quantization: amax pass + quantize pass (read x twice, write codes)
      {"quantize_e4m3_f32", 9,
       [&](const Shape_& s) {
         qc::hif8_quantize_e4m3(xf, q8.codes, q8.scale_inv, quant::kHiF8ForwardMax, s);
       },
       2},
      {"quantize_e4m3_bf16", 5,
       [&](const Shape_& s) {
         qc::hif8_quantize_e4m3(xb, q8.codes, q8.scale_inv, quant::kHiF8ForwardMax, s);
       },
       2},
      {"dequantize_e4m3_bf16", 3,
       [&](const Shape_& s) { qc::fp8_dequantize(q8.codes, q8.scale_inv, outb, s); }, 1},
  };
  const char* grid_names[] = {"default", "persistent", "full"};
  const char* walk_names[] = {"default", "tile", "interleaved", "bulk_store"};
  for (auto& op : ops) {
    std::vector<std::pair<std::string, Shape_>> shapes = {{"production", Shape_{}}};
    if (all_shapes && op.shapes > 0) {
      // shapes 1: the wide-output ops (interleaved or bulk stores), 2: the encode ops (tile
      // or interleaved)
      std::vector<qc::Walk> walks = {qc::Walk::kInterleaved, qc::Walk::kBulkStore};
      if (op.shapes == 2) walks = {qc::Walk::kTile, qc::Walk::kInterleaved};
      if (op.shapes == 3) walks = {qc::Walk::kTile, qc::Walk::kInterleaved, qc::Walk::kBulkStore};
      for (auto w : walks)
        for (auto g : {qc::Grid::kPersistent, qc::Grid::kFull})
          shapes.push_back({std::string("grid=") + grid_names[int(g)] + ",walk=" + walk_names[int(w)],
                            Shape_{g, w}});
    }
    for (auto& [shape_name, shape] : shapes) {
      auto once = [&] { op.run(shape); };
      const double ms = bench::time_ms(once, 2, reps);
      const double ms_b = bench::time_ms(
          [&] {
            for (int i = 0; i < batch; ++i) once();
          },
          1, reps) / batch;
      const double bytes = op.bytes_per_elem * double(n);
      const double gbps = bytes / (ms * 1e-3) / 1e9, gbps_b = bytes / (ms_b * 1e-3) / 1e9;
      if (std::strcmp(op.name, "copy_bf16") == 0) g_copy_single = gbps, g_copy_batch = gbps_b;
      std::printf(
          "{\"bench\":\"hif8_gpu\",\"section\":\"codec\",\"op\":\"%s\",\"shape\":\"%s\","
          "\"card\":\"%s\",\"n\":%lld,\"bytes\":%.0f,\"peak_GBps\":%.1f,"
          "\"ms\":%.4f,\"GBps\":%.1f,\"frac_of_peak\":%.3f,\"frac_of_copy\":%.3f,"
          "\"batch\":%d,\"ms_batch\":%.4f,\"GBps_batch\":%.1f,\"frac_of_peak_batch\":%.3f,"
          "\"frac_of_copy_batch\":%.3f}\n",
          op.name, shape_name.c_str(), g_card.c_str(), (long long)n, bytes, peak_gbps, ms, gbps,
          gbps / peak_gbps, g_copy_single > 0 ? gbps / g_copy_single : 0.0, batch, ms_b, gbps_b,
          gbps_b / peak_gbps, g_copy_batch > 0 ? gbps_b / g_copy_batch : 0.0);
      std::fflush(stdout);
    }
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
  bool quick = false, codec_only = false, all_shapes = false;
  int log2n = 28, batch = 20;
  const char* usage = "[--quick] [--codec-only] [--shapes] [--log2n N (20..31)] [--batch B]";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::strcmp(argv[i], "--codec-only") == 0) codec_only = true;
    else if (std::strcmp(argv[i], "--shapes") == 0) all_shapes = true;
    else if (std::strcmp(argv[i], "--log2n") == 0 && i + 1 < argc) log2n = std::atoi(argv[++i]);
    else if (std::strcmp(argv[i], "--batch") == 0 && i + 1 < argc) batch = std::atoi(argv[++i]);
    else  // gpu-test.sh passes one BENCH_ARGS to every bench: ignore what is not ours
      std::fprintf(stderr, "%s: ignoring unknown argument '%s' (usage: %s)\n", argv[0], argv[i],
                   usage);
  }
  if (log2n < 20 || log2n > 31 || batch < 1 || batch > 1000) {
    std::fprintf(stderr, "%s: --log2n must be in 20..31 and --batch in 1..1000 (usage: %s)\n",
                 argv[0], usage);
    return 2;
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
    codec(peak_gbps, quick, log2n, batch, all_shapes);
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
