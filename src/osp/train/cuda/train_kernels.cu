// CUDA kernels of the training utilities (declared in train_kernels.h). Grid-stride loops,
// fp32 math, one fixed-size grid for the sum of squares so the reduction order (and therefore
// the result) depends only on n.
#include <cuda_bf16.h>

#include <vector>

#include "osp/core/cuda_check.h"
#include "osp/core/device.h"
#include "osp/train/cuda/train_kernels.h"

namespace osp::train::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kSumBlocks = 256;  // fixed: the reduction tree does not depend on the GPU

unsigned grid(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  if (b < 1) b = 1;
  if (b > 65535) b = 65535;
  return unsigned(b);
}

__global__ void adamw_kernel(float* __restrict__ master, float* __restrict__ m, float* __restrict__ v,
                             const float* __restrict__ g, void* value, bool value_bf16, int64_t n,
                             float decay_factor, float beta1, float beta2, float step_size,
                             float bc2_sqrt, float eps) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = g[i];
    float p = master[i] * decay_factor;
    const float mi = beta1 * m[i] + (1.f - beta1) * gi;
    const float vi = beta2 * v[i] + (1.f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    p = p - step_size * (mi / denom);
    master[i] = p;
    if (value) {
      if (value_bf16)
        static_cast<__nv_bfloat16*>(value)[i] = __float2bfloat16_rn(p);
      else
        static_cast<float*>(value)[i] = p;
    }
  }
}

__global__ void sum_squares_kernel(const float* __restrict__ g, int64_t n, double* __restrict__ partial) {
  __shared__ double s[kThreads];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const double x = g[i];
    acc += x * x;
  }
  s[threadIdx.x] = acc;
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) s[threadIdx.x] += s[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

__global__ void scale_kernel(float* __restrict__ g, int64_t n, float s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    g[i] *= s;
}

__global__ void ema_kernel(float* __restrict__ e, const float* __restrict__ src, int64_t n, float one_minus) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    e[i] += one_minus * (src[i] - e[i]);
}

}  // namespace

void adamw_step(float* master, float* m, float* v, const float* grad, void* value, bool value_bf16,
                int64_t n, float decay_factor, float beta1, float beta2, float step_size,
                float bc2_sqrt, float eps) {
  if (n == 0) return;
  adamw_kernel<<<grid(n), kThreads, 0, current_stream()>>>(master, m, v, grad, value, value_bf16, n, decay_factor, beta1,
                                      beta2, step_size, bc2_sqrt, eps);
  OSP_CUDA_LAUNCH_CHECK("adamw_kernel");
}

double sum_squares(const float* g, int64_t n) {
  if (n == 0) return 0.0;
  double* partial = nullptr;
  OSP_CUDA_CHECK(cudaMalloc(&partial, kSumBlocks * sizeof(double)));
  sum_squares_kernel<<<kSumBlocks, kThreads, 0, current_stream()>>>(g, n, partial);
  cudaError_t launch = cudaGetLastError();
  std::vector<double> host(kSumBlocks);
  cudaError_t copy = cudaMemcpy(host.data(), partial, kSumBlocks * sizeof(double), cudaMemcpyDeviceToHost);
  cudaFree(partial);
  OSP_CUDA_CHECK(launch);
  OSP_CUDA_CHECK(copy);
  double s = 0.0;
  for (double x : host) s += x;
  return s;
}

void scale(float* g, int64_t n, float s) {
  if (n == 0) return;
  scale_kernel<<<grid(n), kThreads, 0, current_stream()>>>(g, n, s);
  OSP_CUDA_LAUNCH_CHECK("scale_kernel");
}

void ema_update(float* ema, const float* src, int64_t n, float decay) {
  if (n == 0) return;
  ema_kernel<<<grid(n), kThreads, 0, current_stream()>>>(ema, src, n, 1.f - decay);
  OSP_CUDA_LAUNCH_CHECK("ema_kernel");
}

}  // namespace osp::train::cuda
