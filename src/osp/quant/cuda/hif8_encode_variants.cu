// bf16 → HiF8 encode through one 65,536-entry byte table indexed by the bf16 pattern itself
// (StreamShape::walk = Walk::kLut64k): no arithmetic per element, but 64 KB of shared memory
// per block (at most 3 blocks per SM) and 64 KB of L2 reads per block to fill it, so it is
// launched with the persistent grid or the balanced one, never one warp per span. Warp-
// interleaved walk (hif8_stream.cuh). Gives the reference codes bit for bit
// (tests/quant/hif8_gpu_test.cpp); bench_hif8_gpu times it beside the production 8192-entry
// prefix table. (An earlier third design, branch-free bit arithmetic with a 304-entry table,
// ran at 0.33 of HBM peak and was removed; it is in git before this file's rewrite.)
#include <cuda_bf16.h>

#include <mutex>

#include "osp/core/cuda_check.h"
#include "osp/quant/cuda/hif8_cuda.h"
#include "osp/quant/cuda/hif8_device.cuh"
#include "osp/quant/cuda/hif8_stream.cuh"
#include "osp/quant/hif8_scalar.h"

namespace osp::quant::cuda {
namespace {

constexpr int kLut64 = 65536;

__global__ void build_lut64k_kernel(uint8_t* __restrict__ lut, bool saturate) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < kLut64) lut[i] = detail::hif8_encode_ta(__uint_as_float(uint32_t(i) << 16), saturate);
}

__global__ void __launch_bounds__(kStreamThreads)
    encode_lut64k_kernel(const __nv_bfloat16* __restrict__ x, uint8_t* __restrict__ out,
                         int64_t n, bool vec, const uint8_t* __restrict__ g_lut) {
  extern __shared__ __align__(16) uint8_t lut[];
  {
    const uint4* src = reinterpret_cast<const uint4*>(g_lut);
    uint4* dst = reinterpret_cast<uint4*>(lut);
    for (int i = threadIdx.x; i < kLut64 / 16; i += blockDim.x) dst[i] = __ldg(src + i);
  }
  __syncthreads();
  int64_t done = 0;
  if (vec) {
    constexpr int G = WarpStream<__nv_bfloat16, uint8_t>::G;
    done = warp_stream<__nv_bfloat16, uint8_t>(x, out, n, [&](const auto& in, int64_t, auto& o) {
      uint32_t c[G];
#pragma unroll
      for (int j = 0; j < G; ++j) c[j] = lut[(in.w[j >> 1] >> (16 * (j & 1))) & 0xffffu];
      chunk_set<G>(o, c, uint8_t{});
    });
  }
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = done + tid; i < n; i += stride) out[i] = lut[__bfloat16_as_ushort(x[i])];
}

const uint8_t* lut64k_device(bool saturate) {
  static std::mutex mu;
  static uint8_t* luts[64][2] = {};
  int dev = 0;
  OSP_CUDA_CHECK(cudaGetDevice(&dev));
  OSP_CHECK(dev >= 0 && dev < 64, "hif8 64K-entry encode: device index ", dev, " out of range");
  std::lock_guard<std::mutex> lock(mu);
  uint8_t*& p = luts[dev][saturate ? 1 : 0];
  if (!p) {
    OSP_CUDA_CHECK(cudaMalloc(&p, kLut64));  // 64 KB for the life of the process
    build_lut64k_kernel<<<kLut64 / 256, 256>>>(p, saturate);
    OSP_CUDA_LAUNCH_CHECK("hif8 build_lut64k_kernel");
    OSP_CUDA_CHECK(cudaFuncSetAttribute(encode_lut64k_kernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, kLut64));
  }
  return p;
}

}  // namespace

void launch_encode_lut64k(const Tensor& x, uint8_t* out, bool saturate, Grid grid) {
  const int64_t n = x.numel();
  const auto* xp = static_cast<const __nv_bfloat16*>(x.raw());
  const bool vec = aligned16_host(xp) && aligned16_host(out);
  const uint8_t* lut = lut64k_device(saturate);
  if (grid == Grid::kFull || grid == Grid::kDefault) grid = Grid::kPersistent;
  const unsigned blocks =
      stream_blocks(reinterpret_cast<const void*>(encode_lut64k_kernel),
                    warp_stream_items<__nv_bfloat16, uint8_t>(n, vec), grid, kLut64);
  encode_lut64k_kernel<<<blocks, kStreamThreads, kLut64>>>(xp, out, n, vec, lut);
  OSP_CUDA_LAUNCH_CHECK("hif8 encode_lut64k_kernel");
}

}  // namespace osp::quant::cuda
