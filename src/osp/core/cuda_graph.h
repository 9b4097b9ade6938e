// CUDA graphs: one stretch of device work (the DiT's inference forward, model/dit.cpp) captured
// once and replayed, so the GPU runs it without a kernel launch from the host each time.
//
// Contract of a captured function fn:
//  * everything it issues goes to cuda_current_stream() (core copies and memsets, every osp
//    kernel, cuBLASLt and cuDNN: the ops take ops::cuda::stream(), which is this);
//  * it does no host<->device copy, synchronisation, event timing or autotuning (run it once
//    eagerly first, so shapes are tuned and cached) — such a call fails the capture (an
//    osp::Error inside fn or an invalidated capture), and capture() reports why;
//  * whatever changes between replays lives in device buffers allocated before the capture and
//    refilled before each replay (the captured kernels keep their pointers and scalar arguments).
//
// Memory: the caching allocator (core/device_cuda.cpp) gives a capture its own pool. The blocks
// allocated while capturing, and every block alive when capture began, stay reserved for the
// graph until it is destroyed: freeing them returns them to the graph, not to the general cache,
// so a replay never writes memory that someone else got in between. Blocks freed and allocated
// again within one capture are reused (the graph's nodes run in capture order). Not with
// OSP_CUDA_ALLOCATOR=blocks (capture() refuses).
#pragma once
#include <functional>
#include <string>

namespace osp {

// The stream this thread issues CUDA work on, as a cudaStream_t: the legacy default stream
// (nullptr) except while a CudaGraph captures on this thread. Without CUDA: nullptr.
void* cuda_current_stream();

class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Runs fn on the host with this thread's CUDA work on `device` captured (not executed) into
  // this graph, replacing any previous one. Returns "" when the graph is ready; otherwise why
  // not (the graph stays empty, fn's device work did not run — its host effects did — and an
  // osp::Error thrown by fn is caught and reported here). osp::Interrupted (Ctrl-C at one of fn's
  // safe points) is rethrown once the capture is cleaned up: an interrupted capture is no reason
  // to call the work uncapturable, and the caller's Ctrl-C handling must see it.
  std::string capture(int device, const std::function<void()>& fn);
  bool ready() const { return exec_ != nullptr; }
  // Runs the captured work once, ordered after the work queued on the legacy default stream
  // before it and before what is queued there after it (asynchronous to the host).
  void replay();
  // Destroys the graph and gives its memory pool back to the general cache.
  void reset();

 private:
  void* graph_ = nullptr;   // cudaGraph_t
  void* exec_ = nullptr;    // cudaGraphExec_t
  void* stream_ = nullptr;  // cudaStream_t, a blocking stream (ordered with the legacy stream)
  int pool_ = 0;            // the allocator pool (0: none)
};

namespace detail {
// The allocator's side of a capture (core/device_cuda.cpp; bucket allocator only).
// Opens a pool on this thread: pins every live block and routes this thread's allocations into
// the pool until graph_pool_end_capture. Returns the pool id (> 0), or 0 with the blocks
// allocator, which has no pools.
int graph_pool_begin_capture();
void graph_pool_end_capture(int pool);
// Unpins the pool's blocks; those freed meanwhile return to the general cache.
void graph_pool_release(int pool);
// Blocks the graphs hold that their owners have freed (reserved, not reusable): for tests.
size_t graph_pool_held_bytes();
}  // namespace detail

}  // namespace osp
