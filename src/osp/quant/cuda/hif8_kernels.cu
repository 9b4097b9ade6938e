// CUDA HiF8 kernels: encode, decode, TA/stochastic quant-dequant, amax, scaled fake quant.
// The scalar bit logic is the same code as the CPU path (hif8_scalar.h), so results are
// bitwise equal. All kernels run on the legacy default stream, like the rest of osp.
#include <cuda_bf16.h>

#include <atomic>

#include "osp/core/cuda_check.h"
#include "osp/quant/cuda/hif8_cuda.h"
#include "osp/quant/cuda/hif8_device.cuh"
#include "osp/quant/cuda/hif8_fast.h"
#include "osp/quant/hif8.h"
#include "osp/quant/hif8_scalar.h"
#include "osp/quant/philox.h"

namespace osp::quant::cuda {
namespace {

using detail::hif8_decode;
using detail::hif8_encode_hybrid;
using detail::hif8_encode_ta;

constexpr int kThreads = 256;

unsigned grid_for(int64_t work_items) {
  int64_t b = (work_items + kThreads - 1) / kThreads;
  if (b < 1) b = 1;
  if (b > 65535LL * 8) b = 65535LL * 8;
  return unsigned(b);
}

// ---- encode: 4 elements per thread-iteration (vector load when aligned) ----
template <typename T>
__global__ void encode_kernel(const T* __restrict__ x, uint8_t* __restrict__ out, int64_t n,
                              bool saturate) {
  int64_t n4 = n / 4;
  int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n4; i += stride) {
    float v[4];
    load4(x, i * 4, v);
    uchar4 c;
    c.x = hif8_encode_ta(v[0], saturate);
    c.y = hif8_encode_ta(v[1], saturate);
    c.z = hif8_encode_ta(v[2], saturate);
    c.w = hif8_encode_ta(v[3], saturate);
    reinterpret_cast<uchar4*>(out)[i] = c;
  }
  for (int64_t i = n4 * 4 + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride)
    out[i] = hif8_encode_ta(to_f(x[i]), saturate);
}

template <typename T>
__global__ void encode_scalar_kernel(const T* __restrict__ x, uint8_t* __restrict__ out,
                                     int64_t n, bool saturate) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = hif8_encode_ta(to_f(x[i]), saturate);
}

// ---- decode ----
template <typename T>
__global__ void decode_kernel(const uint8_t* __restrict__ c, T* __restrict__ out, int64_t n) {
  int64_t n4 = n / 4;
  int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n4; i += stride) {
    uchar4 q = reinterpret_cast<const uchar4*>(c)[i];
    float v[4] = {hif8_decode(q.x), hif8_decode(q.y), hif8_decode(q.z), hif8_decode(q.w)};
    store4(out, i * 4, v);
  }
  for (int64_t i = n4 * 4 + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride)
    from_f(out, i, hif8_decode(c[i]));
}

template <typename T>
__global__ void decode_scalar_kernel(const uint8_t* __restrict__ c, T* __restrict__ out,
                                     int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    from_f(out, i, hif8_decode(c[i]));
}

// Grid-stride elementwise loop: out[i] = op(x[i], i). With `vec` (x and out aligned to 4
// elements) 4 consecutive elements move per load/store (16-byte f32, 8-byte bf16 accesses).
template <typename TI, typename TO, typename Op>
__device__ __forceinline__ void elementwise(const TI* __restrict__ x, TO* __restrict__ out,
                                            int64_t n, bool vec, Op op) {
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t start = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t j = tid; j < n4; j += stride) {
      float v[4];
      load4(x, 4 * j, v);
#pragma unroll
      for (int k = 0; k < 4; ++k) v[k] = op(v[k], 4 * j + k);
      store4(out, 4 * j, v);
    }
    start = n4 * 4;
  }
  for (int64_t i = start + tid; i < n; i += stride) from_f(out, i, op(to_f(x[i]), i));
}

// ---- quant-dequant (TA or stochastic) ----
template <typename TI, typename TO>
__global__ void round_kernel(const TI* __restrict__ x, TO* __restrict__ out, int64_t n, bool vec,
                             bool saturate, bool stochastic, uint64_t seed, uint64_t offset) {
  elementwise(x, out, n, vec, [&](float v, int64_t i) {
    uint8_t c = stochastic
                    ? hif8_encode_hybrid(v, saturate, detail::philox_word(seed, offset + uint64_t(i)))
                    : hif8_encode_ta(v, saturate);
    return hif8_decode(c);
  });
}

// ---- scaled fake quant: s from the device amax, same formula as hif8_scale_for ----
template <typename TI, typename TO>
__global__ void fake_quant_kernel(const TI* __restrict__ x, TO* __restrict__ out, int64_t n,
                                  bool vec, const float* __restrict__ d_amax, float max_target,
                                  float* __restrict__ d_scale_out, bool stochastic, uint64_t seed,
                                  uint64_t offset) {
  constexpr bool kBF16 = sizeof(TI) == 2;
  const float s = device_scale_for(*d_amax, max_target, kBF16);
  if (d_scale_out && blockIdx.x == 0 && threadIdx.x == 0) *d_scale_out = s;
  elementwise(x, out, n, vec, [&](float xv, int64_t i) {
    float xs = xv * s;
    if (kBF16) xs = __bfloat162float(__float2bfloat16_rn(xs));
    uint8_t c = stochastic ? hif8_encode_hybrid(xs, false,
                                                detail::philox_word(seed, offset + uint64_t(i)))
                           : hif8_encode_ta(xs, false);
    float v = hif8_decode(c) / s;
    if (kBF16) v = __bfloat162float(__float2bfloat16_rn(v));
    return v;
  });
}

// ---- scaled fake quant, TA (the hot path): bandwidth-bound version ----
// Per block, two small shared tables replace the branchy scalar codec: code_lut (the HiF8 code
// of each rounded magnitude, see hif8_fast.h) and val_lut (the output value of each code,
// computed with the very expression of fake_quant_kernel: decode(c) / s, bf16-rounded for bf16
// input). Per element: x·s, the branch-free TA index, two shared-memory lookups. With `vec`
// (x and out 16-byte aligned, 32 for f32) 8 elements per thread-iteration, 16-byte accesses.
template <typename TI, typename TO>
__global__ void __launch_bounds__(kThreads)
    fake_quant_ta_kernel(const TI* __restrict__ x, TO* __restrict__ out, int64_t n, bool vec,
                         const float* __restrict__ d_amax, float max_target,
                         float* __restrict__ d_scale_out) {
  constexpr bool kBF16 = sizeof(TI) == 2;
  __shared__ uint8_t code_lut[detail::kHiF8IdxCount];
  __shared__ float val_lut[256];
  const float s = device_scale_for(*d_amax, max_target, kBF16);
  if (d_scale_out && blockIdx.x == 0 && threadIdx.x == 0) *d_scale_out = s;
  for (int i = threadIdx.x; i < detail::kHiF8IdxCount; i += blockDim.x)
    code_lut[i] = hif8_encode_ta(detail::hif8_idx_value(i), false);
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    float v = hif8_decode(uint8_t(i)) / s;
    if (kBF16) v = __bfloat162float(__float2bfloat16_rn(v));
    val_lut[i] = v;
  }
  __syncthreads();
  auto q = [&](float xv) {
    float xs = xv * s;
    if (kBF16) xs = __bfloat162float(__float2bfloat16_rn(xs));
    return val_lut[detail::hif8_encode_ta_fast(xs, false, code_lut)];
  };
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t start = 0;
  if (vec) {
    const int64_t n8 = n / 8;
    for (int64_t j = tid; j < n8; j += stride) {
      float v[8];
      load8(x, 8 * j, v);
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = q(v[k]);
      store8(out, 8 * j, v);
    }
    start = n8 * 8;
  }
  for (int64_t i = start + tid; i < n; i += stride) from_f(out, i, q(to_f(x[i])));
}

bool aligned(const void* p, size_t a) { return (reinterpret_cast<uintptr_t>(p) % a) == 0; }

template <typename F>
void with_in_out(DType ti, DType to, F&& f) {
  if (ti == DType::F32 && to == DType::F32) f(float{}, float{});
  else if (ti == DType::F32) f(float{}, __nv_bfloat16{});
  else if (to == DType::F32) f(__nv_bfloat16{}, float{});
  else f(__nv_bfloat16{}, __nv_bfloat16{});
}

}  // namespace

unsigned stream_grid(int64_t items, int threads) {
  static std::atomic<int> sms[64] = {};
  int dev = 0;
  OSP_CUDA_CHECK(cudaGetDevice(&dev));
  int nsm = dev < 64 ? sms[dev].load(std::memory_order_relaxed) : 0;
  if (nsm <= 0) {
    OSP_CUDA_CHECK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));
    if (nsm <= 0) nsm = 1;
    if (dev < 64) sms[dev].store(nsm, std::memory_order_relaxed);
  }
  int64_t b = (items + threads - 1) / threads;
  const int64_t cap = int64_t(nsm) * 8;
  if (b > cap) b = cap;
  if (b < 1) b = 1;
  return unsigned(b);
}

void hif8_encode(const Tensor& x, Tensor& out, bool saturate) {
  int64_t n = x.numel();
  if (n == 0) return;
  uint8_t* o = out.data<uint8_t>();
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* p = static_cast<const T*>(x.raw());
    if (aligned(p, 4 * sizeof(T)) && aligned(o, 4))
      encode_kernel<T><<<grid_for(n / 4 + 1), kThreads>>>(p, o, n, saturate);
    else
      encode_scalar_kernel<T><<<grid_for(n), kThreads>>>(p, o, n, saturate);
  };
  if (x.dtype() == DType::F32) run(float{});
  else run(__nv_bfloat16{});
  OSP_CUDA_LAUNCH_CHECK("hif8 encode_kernel");
}

void hif8_decode(const Tensor& codes, Tensor& out) {
  int64_t n = codes.numel();
  if (n == 0) return;
  const uint8_t* c = codes.data<uint8_t>();
  auto run = [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out.raw());
    if (aligned(c, 4) && aligned(o, 4 * sizeof(T)))
      decode_kernel<T><<<grid_for(n / 4 + 1), kThreads>>>(c, o, n);
    else
      decode_scalar_kernel<T><<<grid_for(n), kThreads>>>(c, o, n);
  };
  if (out.dtype() == DType::F32) run(float{});
  else run(__nv_bfloat16{});
  OSP_CUDA_LAUNCH_CHECK("hif8 decode_kernel");
}

void hif8_round(const Tensor& x, Tensor& out, bool saturate) {
  int64_t n = x.numel();
  if (n == 0) return;
  with_in_out(x.dtype(), out.dtype(), [&](auto ti, auto to) {
    using TI = decltype(ti);
    using TO = decltype(to);
    const bool vec = aligned(x.raw(), 4 * sizeof(TI)) && aligned(out.raw(), 4 * sizeof(TO));
    round_kernel<TI, TO><<<grid_for(vec ? n / 4 + 1 : n), kThreads>>>(
        static_cast<const TI*>(x.raw()), static_cast<TO*>(out.raw()), n, vec, saturate, false, 0, 0);
  });
  OSP_CUDA_LAUNCH_CHECK("hif8 round_kernel");
}

void hif8_round_stochastic(const Tensor& x, Tensor& out, uint64_t seed, uint64_t offset,
                           bool saturate) {
  int64_t n = x.numel();
  if (n == 0) return;
  with_in_out(x.dtype(), out.dtype(), [&](auto ti, auto to) {
    using TI = decltype(ti);
    using TO = decltype(to);
    const bool vec = aligned(x.raw(), 4 * sizeof(TI)) && aligned(out.raw(), 4 * sizeof(TO));
    round_kernel<TI, TO><<<grid_for(vec ? n / 4 + 1 : n), kThreads>>>(
        static_cast<const TI*>(x.raw()), static_cast<TO*>(out.raw()), n, vec, saturate, true, seed,
        offset);
  });
  OSP_CUDA_LAUNCH_CHECK("hif8 round_kernel (stochastic)");
}

void amax_to_device(const Tensor& x, float* d_amax) {
  int64_t n = x.numel();
  OSP_CUDA_CHECK(cudaMemsetAsync(d_amax, 0, sizeof(float), 0));
  if (n == 0) return;
  const bool vec = aligned(x.raw(), 8 * dtype_size(x.dtype()));
  const unsigned g = stream_grid(vec ? n / 8 + 1 : n, kThreads);
  if (x.dtype() == DType::F32)
    amax_kernel<float><<<g, kThreads>>>(static_cast<const float*>(x.raw()), n, vec, d_amax);
  else
    amax_kernel<__nv_bfloat16><<<g, kThreads>>>(static_cast<const __nv_bfloat16*>(x.raw()), n, vec,
                                                d_amax);
  OSP_CUDA_LAUNCH_CHECK("hif8 amax_kernel");
}

float amax(const Tensor& x) {
  Tensor d = Tensor::empty({1}, DType::F32, x.device());
  amax_to_device(x, d.data<float>());
  float h = 0;
  OSP_CUDA_CHECK(cudaMemcpy(&h, d.raw(), sizeof(float), cudaMemcpyDeviceToHost));
  return h;
}

namespace {
void fake_quant_launch(const Tensor& x, Tensor& out, float max_target, float* d_scale_out,
                       bool stochastic, uint64_t seed, uint64_t offset) {
  int64_t n = x.numel();
  Tensor d = Tensor::empty({1}, DType::F32, x.device());
  amax_to_device(x, d.data<float>());
  with_in_out(x.dtype(), out.dtype(), [&](auto ti, auto to) {
    using TI = decltype(ti);
    using TO = decltype(to);
    if (!stochastic) {
      const bool vec8 = aligned(x.raw(), 8 * sizeof(TI)) && aligned(out.raw(), 8 * sizeof(TO));
      fake_quant_ta_kernel<TI, TO><<<stream_grid(vec8 ? n / 8 + 1 : n, kThreads), kThreads>>>(
          static_cast<const TI*>(x.raw()), static_cast<TO*>(out.raw()), n, vec8, d.data<float>(),
          max_target, d_scale_out);
      return;
    }
    const bool vec = aligned(x.raw(), 4 * sizeof(TI)) && aligned(out.raw(), 4 * sizeof(TO));
    fake_quant_kernel<TI, TO><<<grid_for(vec ? n / 4 + 1 : n), kThreads>>>(
        static_cast<const TI*>(x.raw()), static_cast<TO*>(out.raw()), n, vec, d.data<float>(),
        max_target, d_scale_out, stochastic, seed, offset);
  });
  OSP_CUDA_LAUNCH_CHECK("hif8 fake_quant_kernel");
}
}  // namespace

void hif8_fake_quant(const Tensor& x, Tensor& out, float max_target, float* d_scale_out) {
  fake_quant_launch(x, out, max_target, d_scale_out, false, 0, 0);
}

void hif8_fake_quant_stochastic(const Tensor& x, Tensor& out, float max_target, uint64_t seed,
                                uint64_t offset) {
  fake_quant_launch(x, out, max_target, nullptr, true, seed, offset);
}

}  // namespace osp::quant::cuda
