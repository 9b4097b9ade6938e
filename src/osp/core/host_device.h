// Functions shared by host and device code: OSP_HD marks them (__host__ __device__ inline under
// nvcc, inline elsewhere), and the fp32 <-> bits casts they build on.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define OSP_HD __host__ __device__ __forceinline__
#else
#define OSP_HD inline
#endif

namespace osp::detail {

OSP_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return __builtin_bit_cast(uint32_t, f);
#endif
}
OSP_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return __builtin_bit_cast(float, u);
#endif
}

}  // namespace osp::detail
