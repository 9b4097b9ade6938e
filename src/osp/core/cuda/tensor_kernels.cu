#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "osp/core/cuda_check.h"
#include "osp/core/tensor_kernels.h"

namespace osp::detail {
namespace {
__device__ float load_f(const void* p, int64_t i, int t) {
  switch (t) {
    case 0: return static_cast<const float*>(p)[i];
    case 1: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return __half2float(static_cast<const __half*>(p)[i]);
  }
}
__device__ void store_f(void* p, int64_t i, int t, float v) {
  switch (t) {
    case 0: static_cast<float*>(p)[i] = v; break;
    case 1: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
  }
}
__global__ void cast_kernel(const void* src, int st, void* dst, int dt, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    store_f(dst, i, dt, load_f(src, i, st));
}
int code(DType t) {
  if (t == DType::F32) return 0;
  if (t == DType::BF16) return 1;
  if (t == DType::F16) return 2;
  return -1;
}
struct Geo {
  int64_t shape[8];
  int64_t stride[8];
};
template <typename T>
__global__ void strided_kernel(const T* src, T* dst, int rank, Geo g, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rem = i, off = 0;
    for (int d = rank - 1; d >= 0; --d) {
      int64_t c = rem % g.shape[d];
      rem /= g.shape[d];
      off += c * g.stride[d];
    }
    dst[i] = src[off];
  }
}
unsigned blocks_for(int64_t n) {
  int64_t b = (n + 255) / 256;
  return unsigned(b > 65535 * 4 ? 65535 * 4 : (b < 1 ? 1 : b));
}
}  // namespace

void cuda_cast(const void* src, DType st, void* dst, DType dt, int64_t n) {
  if (n == 0) return;
  if (st == dt) {
    // Stream-ordered (the current stream, like every osp kernel): no host synchronisation in the
    // middle of a forward.
    OSP_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(n) * dtype_size(st), cudaMemcpyDeviceToDevice, current_stream()));
    return;
  }
  int a = code(st), b = code(dt);
  OSP_CHECK(a >= 0 && b >= 0, "CUDA dtype conversion ", dtype_name(st), " -> ", dtype_name(dt),
            " is not supported (float types f32/bf16/f16 only; use quant:: for 8-bit)");
  cast_kernel<<<blocks_for(n), 256, 0, current_stream()>>>(src, a, dst, b, n);
  OSP_CUDA_LAUNCH_CHECK("cast_kernel");
}

void cuda_strided_copy(const void* src, void* dst, size_t elem, int rank, const int64_t* shape,
                       const int64_t* src_strides, int64_t numel) {
  if (numel == 0) return;
  OSP_CHECK(rank <= 8, "strided copy supports rank <= 8, got ", rank);
  Geo g{};
  for (int d = 0; d < rank; ++d) {
    g.shape[d] = shape[d];
    g.stride[d] = src_strides[d];
  }
  // Vectorised path: when the innermost dim is contiguous and every byte offset involved is a
  // multiple of 16 (e.g. head-slice permutes of [B, n, H, D] bf16), copy 16-byte units: 16/elem
  // times less index arithmetic, full-width memory transactions.
  if (elem < 16 && rank >= 1 && src_strides[rank - 1] == 1 &&
      (size_t(shape[rank - 1]) * elem) % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
    const int64_t k = int64_t(16 / elem);
    bool ok = true;
    for (int d = 0; d + 1 < rank; ++d) ok &= (src_strides[d] * int64_t(elem)) % 16 == 0;
    if (ok) {
      Geo v = g;
      v.shape[rank - 1] = shape[rank - 1] / k;
      for (int d = 0; d + 1 < rank; ++d) v.stride[d] = src_strides[d] / k;
      const int64_t nv = numel / k;
      strided_kernel<<<blocks_for(nv), 256, 0, current_stream()>>>((const uint4*)src, (uint4*)dst, rank, v, nv);
      OSP_CUDA_LAUNCH_CHECK("strided_kernel (16-byte)");
      return;
    }
  }
  unsigned nb = blocks_for(numel);
  switch (elem) {
    case 1: strided_kernel<<<nb, 256, 0, current_stream()>>>((const uint8_t*)src, (uint8_t*)dst, rank, g, numel); break;
    case 2: strided_kernel<<<nb, 256, 0, current_stream()>>>((const uint16_t*)src, (uint16_t*)dst, rank, g, numel); break;
    case 4: strided_kernel<<<nb, 256, 0, current_stream()>>>((const uint32_t*)src, (uint32_t*)dst, rank, g, numel); break;
    case 8: strided_kernel<<<nb, 256, 0, current_stream()>>>((const uint64_t*)src, (uint64_t*)dst, rank, g, numel); break;
    default: OSP_CHECK(false, "strided copy: element size ", elem, " unsupported");
  }
  OSP_CUDA_LAUNCH_CHECK("strided_kernel");
}
}  // namespace osp::detail
