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
__device__ __forceinline__ void from_f(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void from_f(__nv_bfloat16* p, int64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

// 4 consecutive elements starting at i (i % 4 == 0, pointer aligned to 4 elements).
__device__ __forceinline__ void load4(const float* p, int64_t i, float v[4]) {
  float4 q = *reinterpret_cast<const float4*>(p + i);
  v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
}
__device__ __forceinline__ void load4(const __nv_bfloat16* p, int64_t i, float v[4]) {
  uint2 q = *reinterpret_cast<const uint2*>(p + i);
  v[0] = __uint_as_float(q.x << 16);
  v[1] = __uint_as_float(q.x & 0xffff0000u);
  v[2] = __uint_as_float(q.y << 16);
  v[3] = __uint_as_float(q.y & 0xffff0000u);
}
__device__ __forceinline__ void store4(float* p, int64_t i, const float v[4]) {
  *reinterpret_cast<float4*>(p + i) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  return uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
         (uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16);
}
__device__ __forceinline__ void store4(__nv_bfloat16* p, int64_t i, const float v[4]) {
  uint2 q;
  q.x = pack_bf16x2(v[0], v[1]);
  q.y = pack_bf16x2(v[2], v[3]);
  *reinterpret_cast<uint2*>(p + i) = q;
}

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

// 8 consecutive elements starting at i (i % 8 == 0, pointer 16-byte aligned for bf16 /
// 32-byte for f32): one 16-byte access for bf16, two for f32.
__device__ __forceinline__ void load8(const float* p, int64_t i, float v[8]) {
  load4(p, i, v);
  load4(p, i + 4, v + 4);
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, int64_t i, float v[8]) {
  uint4 q = *reinterpret_cast<const uint4*>(p + i);
  const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    v[2 * k] = __uint_as_float(w[k] << 16);
    v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
  }
}
__device__ __forceinline__ void store8(float* p, int64_t i, const float v[8]) {
  store4(p, i, v);
  store4(p, i + 4, v + 4);
}
__device__ __forceinline__ void store8(__nv_bfloat16* p, int64_t i, const float v[8]) {
  uint4 q;
  q.x = pack_bf16x2(v[0], v[1]);
  q.y = pack_bf16x2(v[2], v[3]);
  q.z = pack_bf16x2(v[4], v[5]);
  q.w = pack_bf16x2(v[6], v[7]);
  *reinterpret_cast<uint4*>(p + i) = q;
}

// Grid size for grid-stride kernels: enough 256-thread blocks to cover `items` (one item per
// thread), at most 8 per SM. SM count cached per device (no sync). The HiF8 streaming kernels
// size their grids with stream_blocks (hif8_stream.cuh).
unsigned stream_grid(int64_t items, int threads);

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
