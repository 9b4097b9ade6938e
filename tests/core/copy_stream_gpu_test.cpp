// CopyStream on a GPU, both directions, ordered against the compute stream by events only (the
// contract the training's offloaded checkpoints rely on, model/dit.cpp): a copy out that waits for
// a mark sees the compute work queued before the mark, and compute work queued after
// compute_wait_copies sees a copy in. Buffers of 64 MiB so that an unordered copy would race.
#include <gtest/gtest.h>

#include <vector>

#include "osp/core/copy_stream.h"
#include "osp/core/device.h"
#include "osp/core/tensor.h"

namespace osp {
namespace {

TEST(CopyStreamGpu, OutAndBackAreOrderedByTheMarks) {
  if (!cuda_available()) GTEST_SKIP() << "no GPU";
  const Device dev = Device::cuda(0);
  CopyStream q(dev, 2);
  const int64_t n = int64_t(1) << 24;
  std::vector<float> v(static_cast<size_t>(n));
  float* host = static_cast<float*>(pinned_alloc(size_t(n) * sizeof(float)));
  for (int round = 0; round < 3; ++round) {
    for (int64_t i = 0; i < n; ++i) v[size_t(i)] = float(round * 7 + i % 1013);
    const Tensor x = Tensor::from_vector(v, {n}).to(dev);
    Tensor y = Tensor::empty({n}, DType::F32, dev);
    y.copy_from(x);  // compute stream
    q.mark_compute(round % 2);
    q.wait_marked(round % 2);
    q.copy_to_host(host, y.raw(), size_t(n) * sizeof(float));  // out, after the copy into y
    q.synchronize();
    for (int64_t i = 0; i < n; i += 4099) ASSERT_EQ(host[i], v[size_t(i)]) << "out, round " << round << ", i " << i;
    for (int64_t i = 0; i < n; ++i) host[i] = -float(round + i % 997);
    Tensor z = Tensor::empty({n}, DType::F32, dev), w = Tensor::empty({n}, DType::F32, dev);
    q.copy_to_device(z.raw(), host, size_t(n) * sizeof(float));  // in
    q.compute_wait_copies();
    w.copy_from(z);  // compute stream, after the copy in
    const std::vector<float> back = w.to(Device::cpu()).to_float_vector();
    for (int64_t i = 0; i < n; i += 4099) ASSERT_EQ(back[size_t(i)], host[i]) << "in, round " << round << ", i " << i;
  }
  pinned_free(host);
}

}  // namespace
}  // namespace osp
