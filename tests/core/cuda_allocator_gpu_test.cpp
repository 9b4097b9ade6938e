// The CUDA caching allocator's counters (core/device.h): "in use" is what the live allocations
// asked for (512-byte rounded, PyTorch's memory_allocated), "reserved" what the cache holds from
// the driver — in both allocator modes, so training peaks compare with PyTorch's like for like.
#include <gtest/gtest.h>

#include "osp/core/device.h"

namespace osp {
namespace {

constexpr size_t kMiB = size_t(1) << 20;

TEST(CudaAllocator, InUseCountsRequestsNotTheBlocksThatServeThem) {
  if (!cuda_available()) GTEST_SKIP() << "no GPU";
  cuda_empty_cache();
  const size_t base_use = cuda_bytes_in_use(), base_res = cuda_reserved_bytes();
  cuda_reset_peak();
  void* a = cuda_alloc(48 * kMiB, 0);
  EXPECT_EQ(cuda_bytes_in_use() - base_use, 48 * kMiB);
  cuda_free(a, 0);
  EXPECT_EQ(cuda_bytes_in_use(), base_use);
  // A smaller request may be served by the cached 48 MiB block (bucket mode: whole, if at most twice
  // the request; blocks mode: a split of its segment): in use grows by the request only.
  void* b = cuda_alloc(30 * kMiB + 100, 0);
  EXPECT_EQ(cuda_bytes_in_use() - base_use, 30 * kMiB + 512);
  EXPECT_GE(cuda_reserved_bytes() - base_res, 48 * kMiB);  // the block that served it is still held
  EXPECT_EQ(cuda_peak_bytes() - base_use, 48 * kMiB);
  EXPECT_GE(cuda_peak_reserved_bytes(), cuda_reserved_bytes());
  void* c = cuda_alloc(700, 0);
  EXPECT_EQ(cuda_bytes_in_use() - base_use, 30 * kMiB + 512 + 1024);
  cuda_free(b, 0);
  cuda_free(c, 0);
  EXPECT_EQ(cuda_bytes_in_use(), base_use);
  EXPECT_GE(cuda_empty_cache(), size_t(0));
}

}  // namespace
}  // namespace osp
