// f32 linear for a few rows (the DiT's time embedding: B ≤ a few rows against [N, K] f32
// weights, wan-spec §2.6 keeps it in f32). Memory-bound: one warp per output feature streams its
// weight row once with 16-byte loads and dots it with every input row (rows live in L1/L2).
#include <cuda_runtime.h>

#include "osp/ops/cuda/cuda_context.h"
#include "osp/ops/cuda/cuda_ops.h"

namespace osp::ops::cuda {
namespace {

constexpr int kMaxRows = 8;

template <int ACT>
__global__ void linear_f32_rows_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                       const float* __restrict__ bias, float* __restrict__ out,
                                       int M, int64_t N, int64_t K, bool vec4) {
  const int lane = threadIdx.x & 31;
  const int64_t n = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (n >= N) return;
  const float* wr = w + n * K;
  for (int m0 = 0; m0 < M; m0 += kMaxRows) {
    const int mr = M - m0 < kMaxRows ? M - m0 : kMaxRows;
    float acc[kMaxRows];
#pragma unroll
    for (int r = 0; r < kMaxRows; ++r) acc[r] = 0.f;
    if (vec4) {
      const float4* w4 = reinterpret_cast<const float4*>(wr);
      for (int64_t k = lane; k < K / 4; k += 32) {
        const float4 a = w4[k];
#pragma unroll
        for (int r = 0; r < kMaxRows; ++r) {
          if (r >= mr) break;
          const float4 b = reinterpret_cast<const float4*>(x + int64_t(m0 + r) * K)[k];
          acc[r] += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
        }
      }
    } else {
      for (int64_t k = lane; k < K; k += 32) {
        const float a = wr[k];
        for (int r = 0; r < mr; ++r) acc[r] += a * x[int64_t(m0 + r) * K + k];
      }
    }
#pragma unroll
    for (int r = 0; r < kMaxRows; ++r) {
      if (r >= mr) break;
      float v = acc[r];
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0) {
        if (bias) v += bias[n];
        if (ACT == 1) v = v / (1.f + __expf(-v));  // SiLU
        if (ACT == 2) {                              // GELU, tanh approximation
          const float c = 0.7978845608028654f;
          v = 0.5f * v * (1.f + tanhf(c * (v + 0.044715f * v * v * v)));
        }
        out[int64_t(m0 + r) * N + n] = v;
      }
    }
  }
}

}  // namespace

void linear_f32_rows(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out, Act act) {
  const int64_t N = w.size(0), K = w.size(1), M = x.numel() / K;
  if (M == 0 || N == 0) return;
  const bool vec4 = K % 4 == 0 && reinterpret_cast<uintptr_t>(x.raw()) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(w.raw()) % 16 == 0;
  const int threads = 256, warps = threads / 32;
  const unsigned blocks = unsigned((N + warps - 1) / warps);
  const float* b = bias ? bias->data<float>() : nullptr;
  switch (act) {
    case Act::None:
      linear_f32_rows_kernel<0><<<blocks, threads, 0, stream()>>>(
          x.data<float>(), w.data<float>(), b, out.data<float>(), int(M), N, K, vec4);
      break;
    case Act::Silu:
      linear_f32_rows_kernel<1><<<blocks, threads, 0, stream()>>>(
          x.data<float>(), w.data<float>(), b, out.data<float>(), int(M), N, K, vec4);
      break;
    case Act::GeluTanh:
      linear_f32_rows_kernel<2><<<blocks, threads, 0, stream()>>>(
          x.data<float>(), w.data<float>(), b, out.data<float>(), int(M), N, K, vec4);
      break;
  }
  OSP_CUDA_LAUNCH_CHECK("linear_f32_rows_kernel");
}

}  // namespace osp::ops::cuda
