// A caching allocator that splits and merges blocks inside large segments (best fit), for device
// memory: the CUDA backend's alternative to its size-bucketed free lists (device_cuda.cpp), which
// reuse a cached block only whole and only for requests of at least half its size — so a freed
// 200 MB activation cannot serve four 50 MB gradients, and a 100 MB request served by a cached
// 190 MB block holds all 190. Backend-agnostic (the segments come from Backend::alloc), so its
// bookkeeping is tested on the CPU with malloc (tests/core/block_allocator_test.cpp).
//
// Policy:
//   - requests are rounded up to 512 bytes;
//   - a free block is chosen best fit (smallest that fits, then lowest address); the rest of it
//     stays a free block when it is at least kMinSplit (small remainders stay with the block);
//   - without a fitting free block a new segment is taken from the backend: the request rounded
//     up to 2 MiB (at least 2 MiB); when the backend fails, every wholly free segment is
//     returned to it and the allocation is tried once more (then nullptr: the caller reports);
//   - a freed block merges with free neighbours of its segment; release_free_segments() returns
//     every wholly free segment (empty_cache, the --max-vram cap, out-of-memory retries).
// Counters: in_use = the rounded sizes of the live allocations (what the program holds, as the
// memory plans count it), reserved = the segments held from the backend.
// Not thread-safe: the caller locks.
#pragma once
#include <cstddef>
#include <functional>
#include <set>
#include <unordered_map>

namespace osp {

class BlockAllocator {
 public:
  struct Backend {
    std::function<void*(size_t)> alloc;  // nullptr when it cannot
    std::function<void(void*)> free;
  };
  static constexpr size_t kRound = 512;
  static constexpr size_t kSegment = size_t(2) << 20;  // segment granularity
  static constexpr size_t kMinSplit = 512;

  explicit BlockAllocator(Backend backend);
  ~BlockAllocator();  // returns every segment (live blocks included) to the backend
  BlockAllocator(const BlockAllocator&) = delete;
  BlockAllocator& operator=(const BlockAllocator&) = delete;

  void* allocate(size_t bytes);  // nullptr when the backend has no memory even after releasing
  void free(void* p);            // p from allocate (nullptr: no-op); throws for an unknown pointer
  size_t release_free_segments();  // bytes returned to the backend

  size_t in_use() const { return in_use_; }
  size_t reserved() const { return reserved_; }
  size_t peak_in_use() const { return peak_in_use_; }
  size_t peak_reserved() const { return peak_reserved_; }
  void reset_peaks() { peak_in_use_ = in_use_, peak_reserved_ = reserved_; }
  size_t segments() const { return segments_; }
  size_t free_blocks() const { return free_.size(); }
  size_t largest_free_block() const;

 private:
  struct Block {
    char* ptr = nullptr;
    size_t size = 0;       // bytes of the block
    size_t requested = 0;  // rounded request while live (counted in in_use)
    bool free = true;
    Block* prev = nullptr;  // neighbours in the same segment (address order)
    Block* next = nullptr;
  };
  struct BySize {
    bool operator()(const Block* a, const Block* b) const {
      return a->size != b->size ? a->size < b->size : a->ptr < b->ptr;
    }
  };
  Block* new_segment(size_t bytes);
  void take(Block* b, size_t n);  // b (free, ≥ n, not in free_) becomes live with n bytes
  static void absorb(Block* l, Block* r);  // r, l's right neighbour (neither in free_), joins l

  Backend backend_;
  std::set<Block*, BySize> free_;
  std::unordered_map<void*, Block*> live_;
  size_t in_use_ = 0, reserved_ = 0, peak_in_use_ = 0, peak_reserved_ = 0, segments_ = 0;
};

}  // namespace osp
