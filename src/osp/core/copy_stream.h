// A copy queue beside the compute stream, for host→device weight streaming (model/
// dit_block_stream.h) and the training's offloaded checkpoints (DiTOptions::offload_block_inputs,
// device→host in the forward, host→device in the backward). On CUDA it is a non-blocking stream of its own (so it never serializes
// with the legacy default stream every kernel of osp runs on) ordered against that compute
// stream by events; on the CPU the same calls run synchronously: a copy is a memcpy and the
// waits are no-ops, so the code path that uses it is the same on both.
//
//   q.mark_compute(tag);       // remember the compute stream's position now (tag: a buffer)
//   q.wait_marked(tag);        // later copies start after the compute work before that mark
//   q.copy_to_device(d, h, n); // async on the copy stream (h must be pinned: core/device.h)
//   q.copy_to_host(h, d, n);   // the other way (same queue: copies run in the order queued)
//   q.compute_wait_copies();   // the compute stream waits for the copies queued so far
// (Marks, not "the compute work queued so far": the host runs ahead of the GPU, so by the time
// a copy is issued the compute stream may already hold the work that still reads its buffer's
// previous contents and also the work that should overlap the copy.)
#pragma once
#include <cstddef>
#include <vector>

#include "osp/core/device.h"

namespace osp {

class CopyStream {
 public:
  // tags: how many compute marks (one per buffer a copy may overwrite).
  explicit CopyStream(Device dev, int tags = 2);
  ~CopyStream();
  CopyStream(const CopyStream&) = delete;
  CopyStream& operator=(const CopyStream&) = delete;

  const Device& device() const { return dev_; }
  // Host bytes → device bytes, queued on the copy stream.
  void copy_to_device(void* dst, const void* src, size_t bytes);
  // Device bytes → host bytes (pinned), queued on the copy stream.
  void copy_to_host(void* dst, const void* src, size_t bytes);
  // Records the compute stream's current position under `tag` (0 ≤ tag < tags).
  void mark_compute(int tag);
  // Later copies start after the compute work queued before the last mark_compute(tag) (no
  // wait if the tag was never marked).
  void wait_marked(int tag);
  // Compute work queued after this call starts after the copies queued before it.
  void compute_wait_copies();
  // Blocks the host until every queued copy finished.
  void synchronize();

 private:
  Device dev_;
  void* stream_ = nullptr;     // cudaStream_t (CUDA devices)
  std::vector<void*> marks_;   // cudaEvent_t per tag, recorded on the compute stream
  void* to_compute_ = nullptr; // cudaEvent_t recorded on the copy stream
};

}  // namespace osp
