// Device-side helpers behind Tensor::contiguous/to/copy_from on CUDA (core/cuda/*.cu).
#pragma once
#include <cstdint>

#include "osp/core/dtype.h"

namespace osp::detail {
// dst[i] = convert(src[i]) for n contiguous elements; float-like dtypes and same-dtype copies.
void cuda_cast(const void* src, DType st, void* dst, DType dt, int64_t n);
// Strided gather into a contiguous destination of the same dtype (rank ≤ 8).
void cuda_strided_copy(const void* src, void* dst, size_t elem, int rank, const int64_t* shape,
                       const int64_t* src_strides, int64_t numel);
}  // namespace osp::detail
