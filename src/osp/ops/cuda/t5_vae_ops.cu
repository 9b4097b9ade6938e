// CUDA implementations of ops/t5_vae_ops.h.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "osp/ops/cuda/conv_blas.h"
#include "osp/ops/cuda/cuda_context.h"
#include "osp/ops/t5_vae_ops.h"

namespace osp::ops::cuda {
namespace {

#define OSP_GRID_STRIDE(i, n)                                                  \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

template <int OP>
__global__ void ew_f32(float* x, const float* y, int64_t n) {
  OSP_GRID_STRIDE(i, n) x[i] = OP == 0 ? x[i] + y[i] : x[i] * y[i];
}
template <int OP>
__global__ void ew_bf16(__nv_bfloat16* x, const __nv_bfloat16* y, int64_t n) {
  OSP_GRID_STRIDE(i, n) {
    const float a = __bfloat162float(x[i]), b = __bfloat162float(y[i]);
    x[i] = __float2bfloat16_rn(OP == 0 ? a + b : a * b);
  }
}

template <int OP>
void elementwise(Tensor& x, const Tensor& y) {
  const int64_t n = x.numel();
  if (n == 0) return;
  if (x.dtype() == DType::F32)
    ew_f32<OP><<<grid_for(n), 256, 0, stream()>>>(x.data<float>(), y.data<float>(), n);
  else
    ew_bf16<OP><<<grid_for(n), 256, 0, stream()>>>(x.data<__nv_bfloat16>(),
                                                   y.data<__nv_bfloat16>(), n);
  OSP_CUDA_LAUNCH_CHECK("elementwise");
}

__global__ void channel_rms_kernel(const float* __restrict__ x, const float* __restrict__ g,
                                   float* __restrict__ o, int64_t N, int64_t C, int64_t S,
                                   float scale, bool silu) {
  OSP_GRID_STRIDE(idx, N * S) {
    const int64_t n = idx / S, s = idx % S;
    const float* xn = x + n * C * S + s;
    float ss = 0.f;
    for (int64_t c = 0; c < C; ++c) ss += xn[c * S] * xn[c * S];
    const float inv = 1.f / fmaxf(sqrtf(ss), 1e-12f);
    float* on = o + n * C * S + s;
    for (int64_t c = 0; c < C; ++c) {
      float v = xn[c * S] * inv * scale * g[c];
      if (silu) v = v / (1.f + expf(-v));
      on[c * S] = v;
    }
  }
}

__global__ void upsample2x_kernel(const float* __restrict__ x, float* __restrict__ o, int64_t NC,
                                  int64_t H, int64_t W) {
  OSP_GRID_STRIDE(i, NC * 4 * H * W) {
    const int64_t ox = i % (2 * W), oy = (i / (2 * W)) % (2 * H), nc = i / (4 * H * W);
    o[i] = x[(nc * H + oy / 2) * W + ox / 2];
  }
}

// Row softmax in place over rows of length L (one block per row).
__global__ void softmax_rows_kernel(float* s, int64_t L) {
  float* r = s + blockIdx.x * L;
  __shared__ float red[32];
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) mx = fmaxf(mx, r[j]);
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  mx = red[0];
  __syncthreads();
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    const float e = expf(r[j] - mx);
    r[j] = e;
    sum += e;
  }
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  const float inv = 1.f / red[0];
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) r[j] *= inv;
}

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

// umT5 attention: one block per (b, h, i); scores in shared memory. q/k are f32 or bf16 (umT5
// has no 1/sqrt(d) scaling, so its logits are large and bf16 q/k cost ~2e-2 of accuracy).
template <typename TQK>
__global__ void biased_attention_kernel(const TQK* __restrict__ q,
                                        const TQK* __restrict__ k,
                                        const __nv_bfloat16* __restrict__ v,
                                        const float* __restrict__ bias,
                                        const int* __restrict__ kv_lens,
                                        __nv_bfloat16* __restrict__ out, int L, int H, int D) {
  extern __shared__ float sh[];  // [D] query + [L] scores + [32] reduction
  float* qs = sh;
  float* s = sh + D;
  float* red = s + L;
  const int i = blockIdx.x % L, h = (blockIdx.x / L) % H, b = blockIdx.x / (L * H);
  const int n = kv_lens[b];
  const int64_t row = (int64_t(b) * L + i) * H + h;
  for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = to_f(q[row * D + d]);
  __syncthreads();
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const TQK* kj = k + ((int64_t(b) * L + j) * H + h) * D;
    float acc = 0.f;
    for (int d = 0; d < D; ++d) acc += qs[d] * to_f(kj[d]);
    s[j] = acc + bias[(int64_t(h) * L + i) * L + j];
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // n ≤ 4096: a serial max/sum is cheap next to the dot products
    float mx = -INFINITY;
    for (int j = 0; j < n; ++j) mx = fmaxf(mx, s[j]);
    red[0] = mx;
  }
  __syncthreads();
  const float mx = red[0];
  for (int j = threadIdx.x; j < n; j += blockDim.x) s[j] = expf(s[j] - mx);
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.f;
    for (int j = 0; j < n; ++j) sum += s[j];
    red[1] = sum;
  }
  __syncthreads();
  const float inv = n > 0 ? 1.f / red[1] : 0.f;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < n; ++j) acc += s[j] * __bfloat162float(v[((int64_t(b) * L + j) * H + h) * D + d]);
    out[row * D + d] = __float2bfloat16_rn(acc * inv);
  }
}

__global__ void relative_bias_kernel(const float* __restrict__ t, const int32_t* __restrict__ b,
                                     float* __restrict__ o, int64_t NB, int64_t H, int64_t LL) {
  OSP_GRID_STRIDE(idx, H * LL) {
    const int64_t h = idx / LL, i = idx % LL;
    const int32_t k = b[i];
    o[idx] = (k >= 0 && k < NB) ? t[k * H + h] : 0.f;
  }
}

}  // namespace

void relative_bias(const Tensor& table, const Tensor& bucket, Tensor& out) {
  const int64_t NB = table.size(0), H = table.size(1), LL = bucket.numel();
  if (H * LL == 0) return;
  relative_bias_kernel<<<grid_for(H * LL), 256, 0, stream()>>>(
      table.data<float>(), bucket.data<int32_t>(), out.data<float>(), NB, H, LL);
  OSP_CUDA_LAUNCH_CHECK("relative_bias_kernel");
}

void add_(Tensor& x, const Tensor& y) { elementwise<0>(x, y); }
void mul_(Tensor& x, const Tensor& y) { elementwise<1>(x, y); }

void channel_rms_norm(const Tensor& x, const Tensor& gamma, bool silu, Tensor& out) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / std::max<int64_t>(1, N * C);
  if (N * S == 0) return;
  channel_rms_kernel<<<grid_for(N * S), 256, 0, stream()>>>(
      x.data<float>(), gamma.data<float>(), out.data<float>(), N, C, S, sqrtf(float(C)), silu);
  OSP_CUDA_LAUNCH_CHECK("channel_rms_kernel");
}

void upsample_nearest2x(const Tensor& x, Tensor& out) {
  const int64_t NC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  if (out.numel() == 0) return;
  upsample2x_kernel<<<grid_for(out.numel()), 256, 0, stream()>>>(x.data<float>(), out.data<float>(),
                                                                 NC, H, W);
  OSP_CUDA_LAUNCH_CHECK("upsample2x_kernel");
}

void spatial_attention(const Tensor& qkv, Tensor& out) {
  const int64_t N = qkv.size(0), C = qkv.size(1) / 3, L = qkv.size(2);
  const float scale = 1.f / std::sqrt(float(C));
  const int64_t qb = std::clamp<int64_t>((int64_t(64) << 20) / std::max<int64_t>(L, 1), 1, L);
  float* s = static_cast<float*>(scratch(size_t(qb * L) * 4));
  const float one = 1.f, zero = 0.f;
  cublasHandle_t h = conv_cublas();
  for (int64_t n = 0; n < N; ++n) {
    const float* q = qkv.data<float>() + n * 3 * C * L;
    const float* k = q + C * L;
    const float* v = k + C * L;
    float* o = out.data<float>() + n * C * L;
    for (int64_t i0 = 0; i0 < L; i0 += qb) {
      const int64_t m = std::min(qb, L - i0);
      // Column-major: S'[L, m] = Kc[L, C] · Qc[i0:i0+m, C]ᵀ  (row-major S [m, L]).
      OSP_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, int(L), int(m), int(C), &scale, k,
                                    CUDA_R_32F, int(L), q + i0, CUDA_R_32F, int(L), &zero, s,
                                    CUDA_R_32F, int(L), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      softmax_rows_kernel<<<unsigned(m), 256, 0, stream()>>>(s, L);
      OSP_CUDA_LAUNCH_CHECK("softmax_rows_kernel");
      // Column-major: Oc[i0:i0+m, C] = Pc[L, m]ᵀ · Vc[L, C].
      OSP_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(m), int(C), int(L), &one, s,
                                    CUDA_R_32F, int(L), v, CUDA_R_32F, int(L), &zero, o + i0,
                                    CUDA_R_32F, int(L), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
  }
}

void biased_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                      const std::vector<int32_t>& kv_lens, Tensor& out) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), D = q.size(3);
  if (B * L * H == 0) return;
  Tensor lens_host = Tensor::empty({B}, DType::I32);
  std::copy(kv_lens.begin(), kv_lens.end(), lens_host.data<int32_t>());
  Tensor lens = lens_host.to(q.device());
  const size_t shmem = size_t(D + L + 32) * sizeof(float);
  auto launch = [&](auto* kernel, const auto* qp, const auto* kp) {
    if (shmem > 48 * 1024)
      OSP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(shmem)));
    kernel<<<unsigned(B * H * L), 128, shmem, stream()>>>(
        qp, kp, v.data<__nv_bfloat16>(), bias.data<float>(), lens.data<int32_t>(),
        out.data<__nv_bfloat16>(), int(L), int(H), int(D));
  };
  if (q.dtype() == DType::F32)
    launch(biased_attention_kernel<float>, q.data<float>(), k.data<float>());
  else
    launch(biased_attention_kernel<__nv_bfloat16>, q.data<__nv_bfloat16>(),
           k.data<__nv_bfloat16>());
  OSP_CUDA_LAUNCH_CHECK("biased_attention_kernel");
}

}  // namespace osp::ops::cuda
