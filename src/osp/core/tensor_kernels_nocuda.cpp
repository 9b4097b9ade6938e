// Without CUDA, the device-side Tensor helpers (core/cuda/tensor_kernels.cu) do not exist;
// these definitions keep CPU-only builds linking and say so if ever reached.
#ifndef OSP_HAVE_CUDA
#include "osp/core/error.h"
#include "osp/core/tensor_kernels.h"

namespace osp::detail {
void cuda_cast(const void*, DType, void*, DType, int64_t) {
  fail("this osp build has no CUDA support (reconfigure with CUDA available: -DOSP_CUDA=ON)");
}
void cuda_strided_copy(const void*, void*, size_t, int, const int64_t*, const int64_t*, int64_t) {
  fail("this osp build has no CUDA support (reconfigure with CUDA available: -DOSP_CUDA=ON)");
}
}  // namespace osp::detail
#endif
