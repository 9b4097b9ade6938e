// Devices and device memory. CUDA support is compiled in when OSP_HAVE_CUDA is defined;
// without it every CUDA request fails with a clear osp::Error.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace osp {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string name() const;  // "cpu", "cuda:0"
};

// Parses "cpu", "cuda", "cuda:1".
Device parse_device(const std::string& s);

// True when this build has CUDA and at least one GPU is visible.
bool cuda_available();
int cuda_device_count();
// Streaming multiprocessors of CUDA device `device` (queried once per device; 0 without CUDA).
int cuda_sm_count(int device);

// CPU memory, 64-byte aligned.
void* cpu_alloc(size_t bytes);
void cpu_free(void* p);

// Device memory through the caching allocator (no cudaMalloc in steady state).
void* cuda_alloc(size_t bytes, int device);
void cuda_free(void* p, int device);
// Frees cached blocks back to the driver; returns bytes released.
size_t cuda_empty_cache();
// Bytes the live allocations asked for (each rounded up to 512 bytes — PyTorch's
// memory_allocated / max_memory_allocated), and their peak since the last reset. The blocks that
// serve them may be larger (bucket reuse, segment splitting): that slack is in cuda_reserved_bytes.
size_t cuda_bytes_in_use();
size_t cuda_peak_bytes();
void cuda_reset_peak();
// A cap on the GPU memory osp's caching allocator holds (bytes obtained from cudaMalloc, cached
// blocks included), for `--max-vram` and to emulate a smaller card: a cudaMalloc that would pass
// it first returns the cache to the driver, then fails with an osp::Error naming the limit.
// 0 = no cap. Not counted: the CUDA context and library handles (cuBLAS/cuDNN) outside the
// allocator. Process-wide (every device).
void set_cuda_memory_limit(size_t bytes);
size_t cuda_memory_limit();
// Bytes obtained from cudaMalloc and not yet returned (in use + cached), and its peak since the
// last cuda_reset_peak().
size_t cuda_reserved_bytes();
size_t cuda_peak_reserved_bytes();

// Page-locked host memory (cudaHostAlloc) for asynchronous host→device copies; without CUDA
// (or no GPU) plain 64-byte-aligned host memory. Free with pinned_free.
void* pinned_alloc(size_t bytes);
void pinned_free(void* p);

// Copies between any two devices (blocking w.r.t. the host, uses the current stream).
void memcpy_any(void* dst, Device dd, const void* src, Device sd, size_t bytes);
void memset_any(void* dst, Device d, int value, size_t bytes);
void cuda_synchronize();

}  // namespace osp
