// CUDA device memory: a simple caching allocator (size-bucketed free lists per device),
// so the sampling loop does not call cudaMalloc/cudaFree in steady state. "In use" counts what the
// live allocations asked for (rounded up to 512 bytes: PyTorch's memory_allocated), not the cached
// blocks that serve them (a bucket may hand out a block up to twice the request): that slack
// shows in "reserved". OSP_CUDA_ALLOCATOR=blocks
// selects core/block_allocator.h instead (segments split best fit and merged on free; session 8,
// unit-tested on the CPU, not yet run on a GPU: opt-in until measured). Read once, at the first
// allocation.
#ifdef OSP_HAVE_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "osp/core/settings.h"
#include "osp/core/block_allocator.h"
#include "osp/core/cuda_check.h"
#include "osp/core/cuda_graph.h"
#include "osp/core/device.h"
#include "osp/core/error.h"

namespace osp {
namespace {
// A CUDA graph's share of the bucket allocator (core/cuda_graph.h): the blocks it pins, those it
// allocated while capturing (`own`) and, during the capture, the own blocks freed again (reused
// by the capture's later allocations).
struct GraphPool {
  std::vector<void*> pinned;
  std::unordered_set<void*> own;
  std::multimap<size_t, void*> free;
};
struct Cache {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks[16];  // per device: size -> ptr
  std::map<void*, size_t> sizes;      // bucket mode: every block obtained from cudaMalloc -> its size
  std::map<void*, size_t> requested;  // bucket mode: live allocations -> their 512-byte-rounded request
  size_t in_use = 0, peak = 0, cached = 0;  // in_use: sum of `requested` (blocks mode: the allocator's)
  size_t reserved = 0, peak_reserved = 0;  // from cudaMalloc, not yet freed (in use + cached)
  size_t limit = 0;                        // set_cuda_memory_limit (0: none)
  int mode = -1;                           // 0 buckets, 1 blocks (OSP_CUDA_ALLOCATOR), set on first use
  std::unique_ptr<BlockAllocator> blocks[16];
  // Graph pools (bucket mode): pins[p] = how many pools pin block p; a pinned block freed by its
  // owner waits in `held` (with its device) until no pool pins it, then joins its free list.
  std::map<int, GraphPool> pools;
  int next_pool = 1;
  std::unordered_map<void*, int> pins;
  std::unordered_map<void*, int> held;
  size_t held_bytes = 0;
};
// The pool this thread's allocations go to while it captures a graph (0: none).
thread_local int t_capture_pool = 0;
Cache& cache() {
  static Cache* c = new Cache();  // leaked on purpose: outlives static tensors
  return *c;
}
size_t round_size(size_t b) {
  if (b < 512) return 512;
  if (b < (1u << 20)) return (b + 511) / 512 * 512;
  return (b + (1u << 20) - 1) / (1u << 20) * (1u << 20);  // 1 MiB granularity
}
// Returns the cached (free) blocks of one device's list to the driver; the caller holds c.mu.
// Returns the bytes freed.
size_t release_free_blocks(Cache& c, std::multimap<size_t, void*>& fl) {
  size_t freed = 0;
  for (auto& kv : fl) {
    cudaFree(kv.second);
    c.sizes.erase(kv.second);
    freed += kv.first;
  }
  fl.clear();
  c.reserved -= freed;
  c.cached -= freed;
  return freed;
}
// The --max-vram cap refused `bytes` (osp's GPU memory would become `would_be`); `held` says
// what is in use (and, for the block allocator, its largest free block).
[[noreturn]] void fail_over_limit(const Cache& c, int device, size_t bytes, size_t would_be, const std::string& held) {
  fail(str("GPU memory limit reached on cuda:", device, ": allocating ", (bytes + (1u << 20) - 1) >> 20,
           " MiB would bring osp's GPU memory to ", would_be >> 20, " MiB, over the --max-vram limit of ",
           c.limit >> 20, " MiB (", held, "). The memory plan underestimated this run: try a smaller size or fewer "
           "frames, --dit-offload blocks, or a larger --max-vram"));
}
// The driver had no memory for `what` even after the cache was returned.
[[noreturn]] void fail_out_of_memory(int device, const std::string& what, const std::string& held) {
  size_t fr = 0, tot = 0;
  cudaMemGetInfo(&fr, &tot);
  fail(str("out of GPU memory on cuda:", device, ": ", what, " (", fr >> 20, " MiB free of ", tot >> 20, " MiB; ", held,
           "). Try --offload, a smaller size or fewer frames."));
}

bool use_blocks(Cache& c) {
  if (c.mode < 0) {
    c.mode = engine_settings().cuda_allocator == "blocks" ? 1 : 0;  // OSP_CUDA_ALLOCATOR
  }
  return c.mode == 1;
}
size_t blocks_reserved(const Cache& c) {
  size_t r = 0;
  for (const auto& b : c.blocks)
    if (b) r += b->reserved();
  return r;
}
// Blocks mode: c's counters follow the block allocators' (after every allocate / free / release).
void sync_counters(Cache& c) {
  size_t in_use = 0;
  for (const auto& b : c.blocks)
    if (b) in_use += b->in_use();
  c.in_use = in_use;
  c.reserved = blocks_reserved(c);
  c.cached = c.reserved - c.in_use;
  c.peak = std::max(c.peak, c.in_use);
  c.peak_reserved = std::max(c.peak_reserved, c.reserved);
}
// Device `device`'s block allocator; its segments come from cudaMalloc within the --max-vram cap
// (the caller holds c.mu).
BlockAllocator& blocks_of(Cache& c, int device) {
  auto& b = c.blocks[device];
  if (!b)
    b = std::make_unique<BlockAllocator>(BlockAllocator::Backend{
        [&c, device](size_t n) -> void* {
          if (c.limit && blocks_reserved(c) + n > c.limit) return nullptr;
          OSP_CUDA_CHECK(cudaSetDevice(device));
          void* p = nullptr;
          if (cudaMalloc(&p, n) != cudaSuccess) {
            cudaGetLastError();
            return nullptr;
          }
          return p;
        },
        [](void* p) { cudaFree(p); }});
  return *b;
}
}  // namespace

bool cuda_available() { return cuda_device_count() > 0; }
int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

int cuda_sm_count(int device) {
  static std::atomic<int> sms[16] = {};
  OSP_CHECK(device >= 0 && device < 16, "cuda_sm_count: bad device index ", device);
  int n = sms[device].load(std::memory_order_relaxed);
  if (n <= 0) {
    OSP_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    if (n <= 0) n = 1;
    sms[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

void* cuda_alloc(size_t bytes, int device) {
  OSP_CHECK(device >= 0 && device < 16, "cuda_alloc: bad device index ", device);
  size_t n = round_size(bytes);
  Cache& c = cache();
  std::lock_guard<std::mutex> lk(c.mu);
  if (use_blocks(c)) {
    BlockAllocator& b = blocks_of(c, device);
    void* p = b.allocate(bytes);
    if (!p) {
      sync_counters(c);
      const size_t want = std::max(BlockAllocator::kSegment, (bytes + BlockAllocator::kSegment - 1) /
                                                                 BlockAllocator::kSegment * BlockAllocator::kSegment);
      if (c.limit && c.reserved + want > c.limit)
        fail_over_limit(c, device, bytes, c.reserved + want,
                        str(c.in_use >> 20, " MiB in use; largest free block ", b.largest_free_block() >> 20, " MiB"));
      fail_out_of_memory(device, str(bytes, " bytes could not be allocated"),
                         str(c.in_use >> 20, " MiB held by osp, ", c.reserved >> 20, " MiB reserved"));
    }
    sync_counters(c);
    return p;
  }
  auto& fl = c.free_blocks[device];
  GraphPool* pool = t_capture_pool ? &c.pools.at(t_capture_pool) : nullptr;
  void* p = nullptr;
  if (pool) {  // capturing: the capture's own freed blocks first
    auto pit = pool->free.lower_bound(n);
    if (pit != pool->free.end() && pit->first <= n * 2) {
      p = pit->second;
      n = pit->first;
      pool->free.erase(pit);
      c.cached -= n;
    }
  }
  auto it = p ? fl.end() : fl.lower_bound(n);
  if (p) {
    // (from the capture's pool)
  } else if (it != fl.end() && it->first <= n * 2) {
    p = it->second;
    n = it->first;
    fl.erase(it);
    c.cached -= n;
  } else {
    OSP_CUDA_CHECK(cudaSetDevice(device));
    if (c.limit && c.reserved + n > c.limit) {
      release_free_blocks(c, fl);  // cached blocks count against the cap: give them back first
      if (c.reserved + n > c.limit)
        fail_over_limit(c, device, n, c.reserved + n,
                        str(double(c.limit) / double(size_t(1) << 30), " GiB; ", c.in_use >> 20, " MiB in use"));
    }
    cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
      cudaGetLastError();
      // free the cache and try once more
      release_free_blocks(c, fl);
      e = cudaMalloc(&p, n);
      if (e != cudaSuccess) {
        cudaGetLastError();
        fail_out_of_memory(device, str("cudaMalloc(", n, " bytes) failed"), str(c.in_use >> 20, " MiB held by osp"));
      }
    }
    c.sizes[p] = n;
    c.reserved += n;
    if (c.reserved > c.peak_reserved) c.peak_reserved = c.reserved;
  }
  if (pool && pool->own.insert(p).second) {  // the graph will write it on every replay
    ++c.pins[p];
    pool->pinned.push_back(p);
  }
  const size_t asked = (bytes + 511) / 512 * 512;
  c.requested[p] = asked;
  c.in_use += asked;
  if (c.in_use > c.peak) c.peak = c.in_use;
  return p;
}

void cuda_free(void* p, int device) {
  if (!p) return;
  Cache& c = cache();
  std::lock_guard<std::mutex> lk(c.mu);
  if (use_blocks(c)) {
    try {
      blocks_of(c, device).free(p);
    } catch (const Error&) {  // not from this allocator: ignored, as the bucket lists do
    }
    sync_counters(c);
    return;
  }
  auto it = c.sizes.find(p);
  if (it == c.sizes.end()) return;
  auto r = c.requested.find(p);
  if (r != c.requested.end()) {
    c.in_use -= r->second;
    c.requested.erase(r);
  }
  c.cached += it->second;
  if (c.pins.count(p)) {  // a graph may use it: back to the capture that allocated it, else held
    GraphPool* pool = t_capture_pool ? &c.pools.at(t_capture_pool) : nullptr;
    if (pool && pool->own.count(p)) {
      pool->free.emplace(it->second, p);
    } else {
      c.held.emplace(p, device);
      c.held_bytes += it->second;
    }
    return;
  }
  c.free_blocks[device].emplace(it->second, p);
}

namespace {
// The end of a capture: the blocks it freed again stay with the graph (the replays use them).
void park_capture_free(Cache& c, GraphPool& pool) {
  int device = 0;
  cudaGetDevice(&device);
  for (const auto& kv : pool.free) {
    c.held.emplace(kv.second, device);
    c.held_bytes += kv.first;
  }
  pool.free.clear();
}
}  // namespace

namespace detail {
int graph_pool_begin_capture() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lk(c.mu);
  if (use_blocks(c)) return 0;
  OSP_CHECK(t_capture_pool == 0, "CUDA graph capture: this thread is capturing already");
  const int id = c.next_pool++;
  GraphPool& pool = c.pools[id];
  pool.pinned.reserve(c.requested.size());
  for (const auto& kv : c.requested) {  // every live block: the captured work may read or write it
    ++c.pins[kv.first];
    pool.pinned.push_back(kv.first);
  }
  t_capture_pool = id;
  return id;
}

void graph_pool_end_capture(int id) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lk(c.mu);
  t_capture_pool = 0;
  auto pit = c.pools.find(id);
  if (pit != c.pools.end()) park_capture_free(c, pit->second);
}

void graph_pool_release(int id) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lk(c.mu);
  if (t_capture_pool == id) t_capture_pool = 0;
  auto pit = c.pools.find(id);
  if (pit == c.pools.end()) return;
  park_capture_free(c, pit->second);  // (a capture abandoned without its end)
  for (void* p : pit->second.pinned) {
    auto pin = c.pins.find(p);
    if (pin == c.pins.end() || --pin->second > 0) continue;
    c.pins.erase(pin);
    auto h = c.held.find(p);
    if (h == c.held.end()) continue;  // still alive: its owner frees it to the general cache
    const size_t n = c.sizes.at(p);
    c.held_bytes -= std::min(c.held_bytes, n);
    c.free_blocks[h->second].emplace(n, p);
    c.held.erase(h);
  }
  c.pools.erase(pit);
}

size_t graph_pool_held_bytes() { return cache().held_bytes; }
}  // namespace detail

size_t cuda_empty_cache() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lk(c.mu);
  cudaDeviceSynchronize();
  size_t freed = 0;
  if (use_blocks(c)) {
    for (auto& b : c.blocks)
      if (b) freed += b->release_free_segments();
    sync_counters(c);
    return freed;
  }
  for (auto& fl : c.free_blocks) freed += release_free_blocks(c, fl);
  return freed;
}
size_t cuda_bytes_in_use() { return cache().in_use; }
size_t cuda_peak_bytes() { return cache().peak; }
void cuda_reset_peak() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lk(c.mu);
  c.peak = c.in_use;
  c.peak_reserved = c.reserved;
}
void set_cuda_memory_limit(size_t bytes) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lk(c.mu);
  c.limit = bytes;
}
size_t cuda_memory_limit() { return cache().limit; }
size_t cuda_reserved_bytes() { return cache().reserved; }
size_t cuda_peak_reserved_bytes() { return cache().peak_reserved; }
void* pinned_alloc(size_t bytes) {
  if (!cuda_available()) return cpu_alloc(bytes);
  void* p = nullptr;
  const cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable);
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail(str("cudaHostAlloc(", bytes >> 20, " MiB) of page-locked host memory failed: ", cudaGetErrorString(e),
             " (DiT block streaming keeps the block weights in pinned host memory; free host memory or "
             "raise the locked-memory limit, ulimit -l)"));
  }
  return p;
}
void pinned_free(void* p) {
  if (!p) return;
  if (!cuda_available()) return cpu_free(p);
  cudaFreeHost(p);
}
void cuda_synchronize() { OSP_CUDA_CHECK(cudaDeviceSynchronize()); }

void memcpy_any(void* dst, Device dd, const void* src, Device sd, size_t bytes) {
  if (!bytes) return;
  cudaMemcpyKind k = cudaMemcpyDefault;
  if (dd.is_cpu() && sd.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
  if (dd.is_cuda() && sd.is_cuda()) {  // device to device: stream-ordered, no host sync
    OSP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, current_stream()));
    return;
  }
  OSP_CUDA_CHECK(cudaMemcpy(dst, src, bytes, k));
}
void memset_any(void* dst, Device d, int value, size_t bytes) {
  if (!bytes) return;
  if (d.is_cpu()) {
    std::memset(dst, value, bytes);
    return;
  }
  OSP_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, current_stream()));
}

}  // namespace osp
#endif
