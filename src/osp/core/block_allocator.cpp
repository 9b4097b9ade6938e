// See block_allocator.h.
#include "osp/core/block_allocator.h"

#include <algorithm>
#include <vector>

#include "osp/core/error.h"

namespace osp {

BlockAllocator::BlockAllocator(Backend backend) : backend_(std::move(backend)) {
  OSP_CHECK(backend_.alloc && backend_.free, "BlockAllocator: the backend needs alloc and free");
}

BlockAllocator::~BlockAllocator() {
  // Every segment's first block has no prev: walk each segment once from there.
  std::vector<Block*> heads;
  for (Block* b : free_)
    if (!b->prev) heads.push_back(b);
  for (const auto& kv : live_)
    if (!kv.second->prev) heads.push_back(kv.second);
  for (Block* h : heads) {
    backend_.free(h->ptr);
    for (Block* b = h; b;) {
      Block* n = b->next;
      delete b;
      b = n;
    }
  }
}

BlockAllocator::Block* BlockAllocator::new_segment(size_t bytes) {
  const size_t seg = std::max(kSegment, (bytes + kSegment - 1) / kSegment * kSegment);
  void* p = backend_.alloc(seg);
  if (!p) {
    release_free_segments();
    p = backend_.alloc(seg);
    if (!p) return nullptr;
  }
  Block* b = new Block;
  b->ptr = static_cast<char*>(p);
  b->size = seg;
  reserved_ += seg;
  peak_reserved_ = std::max(peak_reserved_, reserved_);
  ++segments_;
  return b;
}

void BlockAllocator::take(Block* b, size_t n) {
  if (b->size - n >= kMinSplit) {  // the rest stays free, right after the taken part
    Block* r = new Block;
    r->ptr = b->ptr + n;
    r->size = b->size - n;
    r->prev = b;
    r->next = b->next;
    if (b->next) b->next->prev = r;
    b->next = r;
    b->size = n;
    free_.insert(r);
  }
  b->free = false;
  b->requested = n;
  live_[b->ptr] = b;
  in_use_ += n;
  peak_in_use_ = std::max(peak_in_use_, in_use_);
}

void BlockAllocator::absorb(Block* l, Block* r) {
  l->size += r->size;
  l->next = r->next;
  if (r->next) r->next->prev = l;
  delete r;
}

void* BlockAllocator::allocate(size_t bytes) {
  const size_t n = std::max(kRound, (bytes + kRound - 1) / kRound * kRound);
  Block key;
  key.size = n;
  key.ptr = nullptr;
  auto it = free_.lower_bound(&key);
  Block* b = nullptr;
  if (it != free_.end()) {
    b = *it;
    free_.erase(it);
  } else {
    b = new_segment(n);
    if (!b) return nullptr;
  }
  take(b, n);
  return b->ptr;
}

void BlockAllocator::free(void* p) {
  if (!p) return;
  auto it = live_.find(p);
  OSP_CHECK(it != live_.end(), "BlockAllocator::free: ", p, " was not allocated here (or freed twice)");
  Block* b = it->second;
  live_.erase(it);
  in_use_ -= b->requested;
  b->requested = 0;
  b->free = true;
  // merge with free neighbours of the same segment (each leaves free_ before its size changes)
  if (b->prev && b->prev->free) {
    Block* l = b->prev;
    free_.erase(l);
    absorb(l, b);
    b = l;
  }
  if (b->next && b->next->free) {
    free_.erase(b->next);
    absorb(b, b->next);
  }
  free_.insert(b);
}

size_t BlockAllocator::release_free_segments() {
  size_t freed = 0;
  for (auto it = free_.begin(); it != free_.end();) {
    Block* b = *it;
    if (!b->prev && !b->next) {  // the whole segment is this free block
      backend_.free(b->ptr);
      freed += b->size;
      reserved_ -= b->size;
      --segments_;
      delete b;
      it = free_.erase(it);
    } else {
      ++it;
    }
  }
  return freed;
}

size_t BlockAllocator::largest_free_block() const { return free_.empty() ? 0 : (*free_.rbegin())->size; }

}  // namespace osp
