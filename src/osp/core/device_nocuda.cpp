// Stubs used when the build has no CUDA: each says so instead of failing silently.
#ifndef OSP_HAVE_CUDA
#include <cstring>

#include "osp/core/device.h"
#include "osp/core/error.h"

namespace osp {
namespace {
[[noreturn]] void no_cuda() {
  fail("this osp build has no CUDA support (reconfigure with CUDA available: -DOSP_CUDA=ON)");
}
}  // namespace
bool cuda_available() { return false; }
int cuda_device_count() { return 0; }
int cuda_sm_count(int) { return 0; }
void* cuda_alloc(size_t, int) { no_cuda(); }
void cuda_free(void*, int) { no_cuda(); }
size_t cuda_empty_cache() { return 0; }
size_t cuda_bytes_in_use() { return 0; }
size_t cuda_peak_bytes() { return 0; }
void cuda_reset_peak() {}
void cuda_synchronize() {}
void set_cuda_memory_limit(size_t) {}
size_t cuda_memory_limit() { return 0; }
size_t cuda_reserved_bytes() { return 0; }
size_t cuda_peak_reserved_bytes() { return 0; }
void* pinned_alloc(size_t bytes) { return cpu_alloc(bytes); }
void pinned_free(void* p) { cpu_free(p); }
void memcpy_any(void* dst, Device dd, const void* src, Device sd, size_t bytes) {
  if (!dd.is_cpu() || !sd.is_cpu()) no_cuda();
  if (bytes) std::memcpy(dst, src, bytes);
}
void memset_any(void* dst, Device d, int value, size_t bytes) {
  if (!d.is_cpu()) no_cuda();
  if (bytes) std::memset(dst, value, bytes);
}
}  // namespace osp
#endif
