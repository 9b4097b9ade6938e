// CudaGraph (core/cuda_graph.h): stream capture on a blocking stream of its own, the allocator's
// graph pool around it (core/device_cuda.cpp), replay with cudaGraphLaunch.
#include "osp/core/cuda_graph.h"

#include <exception>

#include "osp/core/error.h"
#include "osp/core/interrupt.h"

#ifdef OSP_HAVE_CUDA
#include <cuda_runtime.h>

#include "osp/core/cuda_check.h"

namespace osp {
namespace {
thread_local cudaStream_t t_stream = nullptr;  // null: the legacy default stream
}  // namespace

void* cuda_current_stream() { return t_stream; }

CudaGraph::~CudaGraph() {
  reset();
  if (stream_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

void CudaGraph::reset() {
  if (exec_ || pool_) cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));  // no replay in flight
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
  exec_ = graph_ = nullptr;
  if (pool_) detail::graph_pool_release(pool_);
  pool_ = 0;
}

std::string CudaGraph::capture(int device, const std::function<void()>& fn) {
  reset();
  OSP_CHECK(t_stream == nullptr, "CudaGraph::capture: this thread is capturing already");
  OSP_CUDA_CHECK(cudaSetDevice(device));
  if (!stream_) {
    cudaStream_t s = nullptr;
    OSP_CUDA_CHECK(cudaStreamCreate(&s));  // blocking: ordered with the legacy default stream
    stream_ = s;
  }
  const auto s = static_cast<cudaStream_t>(stream_);
  pool_ = detail::graph_pool_begin_capture();
  if (!pool_) return "the blocks allocator (OSP_CUDA_ALLOCATOR=blocks) has no graph pools";
  std::string why;
  std::exception_ptr interrupted;
  cudaGraph_t g = nullptr;
  // Relaxed: the allocator may cudaMalloc a block the capture needs (the stricter modes refuse that
  // call); touching the legacy stream or copying from the host still invalidates the capture.
  if (cudaError_t e = cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed); e != cudaSuccess) {
    why = str("cudaStreamBeginCapture: ", cudaGetErrorString(e));
  } else {
    t_stream = s;
    try {
      fn();
    } catch (const Interrupted& e) {  // Ctrl-C: no reason to give up on this graph; rethrown below
      interrupted = std::current_exception();
      why = e.what();
    } catch (const std::exception& e) {
      why = e.what();
    }
    t_stream = nullptr;
    const cudaError_t end = cudaStreamEndCapture(s, &g);
    if (why.empty() && end != cudaSuccess) why = str("cudaStreamEndCapture: ", cudaGetErrorString(end));
  }
  detail::graph_pool_end_capture(pool_);
  cudaGetLastError();  // capture errors are not sticky: clear the one fn may have left
  cudaGraphExec_t x = nullptr;
  if (why.empty()) {
    if (cudaError_t e = cudaGraphInstantiate(&x, g, 0); e != cudaSuccess) {
      why = str("cudaGraphInstantiate: ", cudaGetErrorString(e));
      cudaGetLastError();
    }
  }
  graph_ = g;
  exec_ = x;
  if (!why.empty()) reset();
  if (interrupted) std::rethrow_exception(interrupted);
  return why;
}

void CudaGraph::replay() {
  OSP_CHECK(exec_, "CudaGraph::replay: nothing captured");
  OSP_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), static_cast<cudaStream_t>(stream_)));
}

}  // namespace osp

#else  // no CUDA: nothing to capture

namespace osp {
void* cuda_current_stream() { return nullptr; }
CudaGraph::~CudaGraph() = default;
void CudaGraph::reset() {}
std::string CudaGraph::capture(int, const std::function<void()>&) { return "this osp build has no CUDA support"; }
void CudaGraph::replay() { fail("CudaGraph::replay: this osp build has no CUDA support"); }
namespace detail {
int graph_pool_begin_capture() { return 0; }
void graph_pool_end_capture(int) {}
void graph_pool_release(int) {}
size_t graph_pool_held_bytes() { return 0; }
}  // namespace detail
}  // namespace osp

#endif
