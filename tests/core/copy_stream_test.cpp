// CopyStream (core/copy_stream.h) on the CPU: both copy directions are plain synchronous memcpys,
// the marks and waits are no-ops that still check their tags, and a bad tag count is refused.
#include <gtest/gtest.h>

#include <vector>

#include "osp/core/copy_stream.h"
#include "osp/core/error.h"

namespace osp {
namespace {

TEST(CopyStream, CpuCopiesAreSynchronousBothWays) {
  CopyStream q(Device::cpu(), 2);
  const std::vector<float> a{1.f, -2.f, 3.5f, 7.f};
  std::vector<float> b(4, 0.f), c(4, 0.f);
  q.copy_to_host(b.data(), a.data(), a.size() * sizeof(float));
  EXPECT_EQ(b, a);  // done on return, no synchronize needed
  q.copy_to_device(c.data(), b.data(), 2 * sizeof(float));
  EXPECT_EQ(c, (std::vector<float>{1.f, -2.f, 0.f, 0.f}));
  q.copy_to_host(c.data(), a.data(), 0);  // nothing to copy: fine
  q.mark_compute(1);
  q.wait_marked(1);
  q.compute_wait_copies();
  q.synchronize();
  EXPECT_THROW(q.mark_compute(2), Error);
  EXPECT_THROW(q.wait_marked(-1), Error);
  EXPECT_THROW(CopyStream(Device::cpu(), 0), Error);
}

}  // namespace
}  // namespace osp
