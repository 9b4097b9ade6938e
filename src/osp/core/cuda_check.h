// Return-code checks for CUDA runtime calls: the failing call is named in the error.
#pragma once
#ifdef OSP_HAVE_CUDA
#include <cuda_runtime.h>

#include "osp/core/cuda_graph.h"
#include "osp/core/error.h"

namespace osp {
// cuda_current_stream() as a cudaStream_t: where every osp kernel, copy and library call goes.
inline cudaStream_t current_stream() { return static_cast<cudaStream_t>(cuda_current_stream()); }
}  // namespace osp

#define OSP_CUDA_CHECK(call)                                                          \
  do {                                                                                \
    cudaError_t osp_e_ = (call);                                                      \
    if (osp_e_ != cudaSuccess)                                                        \
      ::osp::fail(::osp::str(#call, " failed: ", cudaGetErrorString(osp_e_), " at ", \
                             __FILE__, ":", __LINE__));                               \
  } while (0)

// After a kernel launch: reports launch-configuration errors immediately.
#define OSP_CUDA_LAUNCH_CHECK(name) OSP_CUDA_CHECK(cudaGetLastError())
#endif
