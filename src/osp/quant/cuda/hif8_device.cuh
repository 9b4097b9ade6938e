// Device helpers shared by the quant CUDA kernels (hif8_kernels.cu, fp8_linear.cu).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "osp/quant/cuda/hif8_stream.cuh"
#include "osp/quant/hif8.h"
#include "osp/quant/hif8_scalar.h"

namespace osp::quant::cuda {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

// The scale rule of quant::hif8_scale_for, on the device (IEEE division, bitwise equal).
__device__ __forceinline__ float device_scale_for(float amax, float max_target, bool bf16) {
  if (!isfinite(amax)) return 1.0f;
  if (bf16) {
    float floor_v = __bfloat162float(__float2bfloat16_rn(kHiF8AmaxFloor));
    float a = fmaxf(amax, floor_v);
    return __bfloat162float(__float2bfloat16_rn(__fdiv_rn(max_target, a)));
  }
  return __fdiv_rn(max_target, fmaxf(amax, kHiF8AmaxFloor));
}

// max|x| over n elements into *d_amax (which must hold 0 before the launch). NaN ignored:
// fmaxf drops NaN operands. Non-negative floats order like their bit patterns, so the
// cross-block combine is one integer atomicMax per block. With `vec` (x 16-byte aligned) the
// grid walks 16-element tiles with 16-byte loads, ≈ 64 bytes in flight per thread
// (hif8_stream.cuh); blockDim.x must be a multiple of 32.
template <typename T>
__global__ void __launch_bounds__(kStreamThreads) amax_kernel(const T* __restrict__ x, int64_t n,
                                                              bool vec, float* d_amax) {
  float m = 0.0f;
  int64_t done = 0;
  if (vec)
    done = tile_stream<T>(x, n, [&](const Tile<T>& in, int64_t) {
#pragma unroll
      for (int k = 0; k < kTile; ++k) m = fmaxf(m, fabsf(tile_elem(in, k)));
    });
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = done + tid; i < n; i += stride) m = fmaxf(m, fabsf(to_f(x[i])));
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  __shared__ float warp_max[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_max[warp] = m;
  __syncthreads();
  if (warp == 0) {
    int nw = (blockDim.x + 31) >> 5;
    m = lane < nw ? warp_max[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) atomicMax(reinterpret_cast<unsigned int*>(d_amax), __float_as_uint(m));
  }
}

// HiF8 codes → f32 / bf16 values (hif8_decode; kBulk: bulk stores). One 256-entry value table
// per block; blockDim.x == kStreamThreads == 256.
template <typename TO, bool kBulk>
__global__ void __launch_bounds__(kStreamThreads)
    hif8_decode_kernel(const uint8_t* __restrict__ c, TO* __restrict__ out, int64_t n, bool vec) {
  __shared__ uint32_t val[256];
  stream_table_lookup<TO, kBulk>(c, out, n, vec, val, [&] {
    val[threadIdx.x] = __float_as_uint(detail::hif8_decode(uint8_t(threadIdx.x)));
  });
}

}  // namespace osp::quant::cuda
