// f32 ↔ the element types of the CUDA kernels (f32, bf16 rounded to nearest even), shared by
// the elementwise kernels (elementwise.cu) and their backward (backward.cu). Internal linkage,
// as each kernel file had them.
#pragma once
#include <cuda_bf16.h>

namespace osp::ops::cuda {
namespace {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(bf16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float v) { return __float2bfloat16_rn(v); }

}  // namespace
}  // namespace osp::ops::cuda
