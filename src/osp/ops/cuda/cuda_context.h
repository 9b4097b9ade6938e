// Shared state of the CUDA op backend: the stream every op runs on, library handles
// (cuBLASLt, cuDNN), a reusable device workspace, return-code checks that name the failing
// call, and "which path runs" logging (OSP_VERBOSE=1).
#pragma once
#ifdef OSP_HAVE_CUDA
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "osp/core/cuda_check.h"
#include "osp/core/error.h"
#include "osp/core/tensor.h"

#define OSP_CUBLAS_CHECK(call)                                                          \
  do {                                                                                  \
    cublasStatus_t osp_s_ = (call);                                                     \
    if (osp_s_ != CUBLAS_STATUS_SUCCESS)                                                \
      ::osp::fail(::osp::str(#call, " failed: cublas status ", int(osp_s_), " (",       \
                             ::osp::ops::cuda::cublas_status_name(osp_s_), ") at ",     \
                             __FILE__, ":", __LINE__));                                 \
  } while (0)

namespace osp::ops::cuda {

// All ops run on one stream, core's current stream (core/cuda_graph.h): the legacy default
// stream (0), like core's copies, except while a CUDA graph captures on this thread.
inline cudaStream_t stream() { return ::osp::current_stream(); }

const char* cublas_status_name(cublasStatus_t s);

// The process-wide cuBLASLt handle (created on first use).
cublasLtHandle_t cublaslt();

// A device scratch buffer of at least `bytes`, grown through the caching allocator and kept
// (never shrunk). Valid until the next call with a larger size; ops use it within one call.
void* scratch(size_t bytes);

// True when OSP_VERBOSE is set to a non-empty value other than "0".
bool verbose();
// Prints "[osp cuda] msg" to stderr once per distinct key when verbose() is on.
void log_once(const std::string& key, const std::string& msg);

// One-time autotuning: times run(i) for every candidate i in [0, n) on the ops' stream (one
// untimed call, then the best of `reps` timed with CUDA events) and returns the index of the
// fastest, or -1 when none ran. run returns false (or throws osp::Error) for a candidate that
// cannot run; it counts as infinitely slow. ms (optional) gets every candidate's time
// (infinity for one that did not run). Synchronises the host once per timed call.
int fastest_candidate(int n, const std::function<bool(int)>& run, std::vector<float>* ms = nullptr, int reps = 2);

// Grid size for a grid-stride elementwise loop.
unsigned grid_for(int64_t n, int threads = 256);

// Checks used by every op: CUDA device, contiguous, one of the allowed dtypes.
void require_cuda(const Tensor& t, const char* op, const char* what);
void require_contiguous(const Tensor& t, const char* op, const char* what);
void require_float(const Tensor& t, const char* op, const char* what);  // F32 or BF16
// The attention kernels' operands: a CUDA, contiguous, bf16 [B, L, H, D] tensor (require_bthd),
// starting at a 16-byte aligned address (require_aligned16: every kernel reads 16-byte vectors).
void require_bthd(const Tensor& t, const char* op, const char* what);
void require_aligned16(const Tensor& t, const char* op, const char* what);
}  // namespace osp::ops::cuda
#endif
