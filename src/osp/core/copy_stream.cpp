// CopyStream (core/copy_stream.h): CUDA stream + two events, or synchronous host copies.
#include "osp/core/copy_stream.h"

#include <cstring>

#include "osp/core/error.h"

#ifdef OSP_HAVE_CUDA
#include <cuda_runtime.h>

#include "osp/core/cuda_check.h"
#endif

namespace osp {

CopyStream::CopyStream(Device dev, int tags) : dev_(dev) {
  OSP_CHECK(tags >= 1, "CopyStream: tags must be >= 1, got ", tags);
  marks_.assign(size_t(tags), nullptr);
  if (dev_.is_cpu()) return;
#ifdef OSP_HAVE_CUDA
  OSP_CUDA_CHECK(cudaSetDevice(dev_.index));
  cudaStream_t s = nullptr;
  OSP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
  for (void*& m : marks_) {
    cudaEvent_t a = nullptr;
    OSP_CUDA_CHECK(cudaEventCreateWithFlags(&a, cudaEventDisableTiming));
    m = a;
  }
  cudaEvent_t b = nullptr;
  OSP_CUDA_CHECK(cudaEventCreateWithFlags(&b, cudaEventDisableTiming));
  to_compute_ = b;
#else
  fail(str("CopyStream on ", dev_.name(), ": this osp build has no CUDA support (reconfigure with -DOSP_CUDA=ON)"));
#endif
}

CopyStream::~CopyStream() {
#ifdef OSP_HAVE_CUDA
  if (!stream_) return;
  cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
  for (void* m : marks_) cudaEventDestroy(static_cast<cudaEvent_t>(m));
  cudaEventDestroy(static_cast<cudaEvent_t>(to_compute_));
  cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
#endif
}

// One queued copy; `to_device` picks the direction (the CPU: a memcpy either way).
static void queue_copy(const Device& dev, void* stream, void* dst, const void* src, size_t bytes, bool to_device) {
  if (!bytes) return;
  if (dev.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef OSP_HAVE_CUDA
  OSP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost,
                                 static_cast<cudaStream_t>(stream)));
#else
  (void)stream, (void)to_device;
#endif
}

void CopyStream::copy_to_device(void* dst, const void* src, size_t bytes) {
  queue_copy(dev_, stream_, dst, src, bytes, true);
}

void CopyStream::copy_to_host(void* dst, const void* src, size_t bytes) {
  queue_copy(dev_, stream_, dst, src, bytes, false);
}

void CopyStream::mark_compute(int tag) {
  OSP_CHECK(tag >= 0 && tag < int(marks_.size()), "CopyStream::mark_compute: no tag ", tag);
  if (dev_.is_cpu()) return;
#ifdef OSP_HAVE_CUDA
  OSP_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(marks_[size_t(tag)]), 0));
#endif
}

void CopyStream::wait_marked(int tag) {
  OSP_CHECK(tag >= 0 && tag < int(marks_.size()), "CopyStream::wait_marked: no tag ", tag);
  if (dev_.is_cpu()) return;
#ifdef OSP_HAVE_CUDA
  // (an event never recorded counts as complete: no wait)
  OSP_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream_), static_cast<cudaEvent_t>(marks_[size_t(tag)]), 0));
#endif
}

void CopyStream::compute_wait_copies() {
  if (dev_.is_cpu()) return;
#ifdef OSP_HAVE_CUDA
  OSP_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(to_compute_), static_cast<cudaStream_t>(stream_)));
  OSP_CUDA_CHECK(cudaStreamWaitEvent(0, static_cast<cudaEvent_t>(to_compute_), 0));
#endif
}

void CopyStream::synchronize() {
  if (dev_.is_cpu()) return;
#ifdef OSP_HAVE_CUDA
  OSP_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)));
#endif
}

}  // namespace osp
