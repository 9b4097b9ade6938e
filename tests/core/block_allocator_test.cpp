// core/block_allocator.h on a malloc backend: splitting and best-fit reuse (a freed large block
// serves several smaller requests without a new segment), merging of freed neighbours, segments
// returned whole, the counters (in_use = rounded requests, reserved = segments), a failing
// backend (free segments released and the allocation retried; then nullptr), and a random
// sequence whose live blocks never overlap (each filled with its own byte pattern, checked when
// freed).
#include "osp/core/block_allocator.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "osp/core/error.h"

using osp::BlockAllocator;

namespace {

constexpr size_t MiB = size_t(1) << 20;

struct MallocBackend {
  size_t held = 0, limit = SIZE_MAX, calls = 0;
  std::map<void*, size_t> sizes;
  BlockAllocator::Backend backend() {
    return {[this](size_t n) -> void* {
              ++calls;
              if (held + n > limit) return nullptr;
              void* p = std::malloc(n);
              sizes[p] = n;
              held += n;
              return p;
            },
            [this](void* p) {
              held -= sizes.at(p);
              sizes.erase(p);
              std::free(p);
            }};
  }
};

}  // namespace

TEST(BlockAllocator, FreedLargeBlockServesSmallerRequestsWithoutNewSegments) {
  MallocBackend m;
  BlockAllocator a(m.backend());
  void* big = a.allocate(200 * MiB);
  ASSERT_NE(big, nullptr);
  EXPECT_EQ(a.segments(), 1u);
  EXPECT_EQ(a.reserved(), 200 * MiB);
  EXPECT_EQ(a.in_use(), 200 * MiB);
  a.free(big);
  EXPECT_EQ(a.in_use(), 0u);
  std::vector<void*> g;
  for (int i = 0; i < 3; ++i) g.push_back(a.allocate(55 * MiB));  // 165 of the 200 MiB
  for (void* p : g) ASSERT_NE(p, nullptr);
  EXPECT_EQ(a.segments(), 1u) << "the cached 200 MiB segment must be split, not a new one taken";
  EXPECT_EQ(m.calls, 1u);
  EXPECT_EQ(a.in_use(), 165 * MiB);  // what is held, not the whole cached block
  EXPECT_EQ(static_cast<char*>(g[1]) - static_cast<char*>(g[0]), std::ptrdiff_t(55 * MiB));
  // the three merge back into one free block covering the segment, which is returned whole
  a.free(g[1]);
  a.free(g[0]);
  a.free(g[2]);
  EXPECT_EQ(a.free_blocks(), 1u);
  EXPECT_EQ(a.largest_free_block(), 200 * MiB);
  EXPECT_EQ(a.release_free_segments(), 200 * MiB);
  EXPECT_EQ(a.reserved(), 0u);
  EXPECT_EQ(m.held, 0u);
  EXPECT_EQ(a.peak_in_use(), 200 * MiB);
  EXPECT_EQ(a.peak_reserved(), 200 * MiB);
}

TEST(BlockAllocator, RoundingBestFitAndPartlyUsedSegmentsStay) {
  MallocBackend m;
  BlockAllocator a(m.backend());
  void* x = a.allocate(1);  // 512 bytes of a 2 MiB segment
  EXPECT_EQ(a.in_use(), 512u);
  EXPECT_EQ(a.reserved(), 2 * MiB);
  void* y = a.allocate(1000);  // 1024, right after x in the same segment
  EXPECT_EQ(static_cast<char*>(y) - static_cast<char*>(x), 512);
  EXPECT_EQ(a.segments(), 1u);
  void* big = a.allocate(3 * MiB + 1);  // its own 4 MiB segment
  EXPECT_EQ(a.segments(), 2u);
  EXPECT_EQ(a.reserved(), 6 * MiB);
  // best fit: of the two free blocks that fit a 1000-byte request — the 2 MiB segment's rest
  // (2 MiB − 1.5 KiB) and the 4 MiB segment's rest (1 MiB − 512) — the smaller is taken
  void* z = a.allocate(1000);
  EXPECT_EQ(static_cast<char*>(z), static_cast<char*>(big) + (3 * MiB + 512));
  // a segment with a live block is not released
  a.free(big);
  EXPECT_EQ(a.release_free_segments(), 0u);
  a.free(z);
  EXPECT_EQ(a.release_free_segments(), 4 * MiB);
  a.free(x);
  a.free(y);
  EXPECT_EQ(a.release_free_segments(), 2 * MiB);
  EXPECT_EQ(m.held, 0u);
}

TEST(BlockAllocator, FailingBackendReleasesFreeSegmentsThenGivesNull) {
  MallocBackend m;
  m.limit = 64 * MiB;
  BlockAllocator a(m.backend());
  void* p = a.allocate(40 * MiB);
  a.free(p);  // cached: 40 MiB reserved, nothing in use
  void* q = a.allocate(50 * MiB);  // 40 + 50 > 64: the cached segment is returned, then it fits
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(a.reserved(), 50 * MiB);
  EXPECT_EQ(a.allocate(30 * MiB), nullptr);  // nothing free to return: no memory
  EXPECT_EQ(a.in_use(), 50 * MiB);
  a.free(q);
  EXPECT_THROW(a.free(q), osp::Error);  // freed twice
  int local = 0;
  EXPECT_THROW(a.free(&local), osp::Error);
}

TEST(BlockAllocator, RandomSequenceKeepsLiveBlocksApart) {
  MallocBackend m;
  std::mt19937 rng(7);
  {
    BlockAllocator a(m.backend());
    struct Live {
      void* p;
      size_t n;
      uint8_t tag;
    };
    std::vector<Live> live;
    size_t want_in_use = 0;
    for (int step = 0; step < 4000; ++step) {
      const bool alloc = live.empty() || (rng() % 100) < 55;
      if (alloc) {
        // sizes from bytes to several MiB, so blocks split, merge and span segments
        const size_t n = size_t(1) << (rng() % 23);
        const size_t bytes = n + rng() % n;
        void* p = a.allocate(bytes);
        ASSERT_NE(p, nullptr);
        const uint8_t tag = uint8_t(rng());
        std::memset(p, tag, bytes);
        live.push_back({p, bytes, tag});
        want_in_use += (bytes + 511) / 512 * 512;
      } else {
        const size_t i = rng() % live.size();
        const Live l = live[i];
        const auto* c = static_cast<const uint8_t*>(l.p);
        for (size_t k = 0; k < l.n; k += 97) ASSERT_EQ(c[k], l.tag) << "block overwritten at step " << step;
        ASSERT_EQ(c[l.n - 1], l.tag);
        a.free(l.p);
        want_in_use -= (l.n + 511) / 512 * 512;
        live.erase(live.begin() + std::ptrdiff_t(i));
      }
      ASSERT_EQ(a.in_use(), want_in_use);
      ASSERT_LE(a.in_use(), a.reserved());
      ASSERT_EQ(a.reserved(), m.held);
      if (step % 500 == 499) a.release_free_segments();
    }
    for (const Live& l : live) a.free(l.p);
    EXPECT_EQ(a.in_use(), 0u);
    // every segment is one free block again
    EXPECT_EQ(a.free_blocks(), a.segments());
    a.release_free_segments();
    EXPECT_EQ(a.reserved(), 0u);
    // a live block left at destruction is returned with its segment
    (void)a.allocate(5 * MiB);
  }
  EXPECT_EQ(m.held, 0u);
}
