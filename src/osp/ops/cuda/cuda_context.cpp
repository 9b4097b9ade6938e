#ifdef OSP_HAVE_CUDA
#include "osp/core/log.h"
#include "osp/ops/cuda/cuda_context.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <set>

#include "osp/core/device.h"

namespace osp::ops::cuda {

const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "alloc failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "arch mismatch";
    case CUBLAS_STATUS_MAPPING_ERROR: return "mapping error";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "unknown";
  }
}

cublasLtHandle_t cublaslt() {
  static cublasLtHandle_t h = [] {
    cublasLtHandle_t x = nullptr;
    OSP_CUBLAS_CHECK(cublasLtCreate(&x));
    return x;
  }();
  return h;
}

namespace {
struct Scratch {
  std::mutex mu;
  void* p = nullptr;
  size_t bytes = 0;
  int device = 0;
};
Scratch& scratch_state() {
  static Scratch* s = new Scratch();  // leaked on purpose (outlives static tensors)
  return *s;
}
}  // namespace

void* scratch(size_t bytes) {
  Scratch& s = scratch_state();
  std::lock_guard<std::mutex> lk(s.mu);
  if (bytes <= s.bytes && s.p) return s.p;
  int dev = 0;
  OSP_CUDA_CHECK(cudaGetDevice(&dev));
  if (s.p) {
    // The old buffer may still be read by queued work; the caching allocator only hands it
    // out again to later (stream-ordered) work on the same stream, so this is safe.
    cuda_free(s.p, s.device);
  }
  size_t want = bytes < (size_t(32) << 20) ? (size_t(32) << 20) : bytes;
  s.p = cuda_alloc(want, dev);
  s.bytes = want;
  s.device = dev;
  return s.p;
}

bool verbose() { return log_level() >= LogLevel::Verbose; }  // --verbose or OSP_VERBOSE=1

void log_once(const std::string& key, const std::string& msg) {
  if (!verbose()) return;
  static std::mutex mu;
  static std::set<std::string> seen;
  std::lock_guard<std::mutex> lk(mu);
  if (!seen.insert(key).second) return;
  std::fprintf(stderr, "[osp cuda] %s\n", msg.c_str());
}

int fastest_candidate(int n, const std::function<bool(int)>& run, std::vector<float>* ms, int reps) {
  const float inf = std::numeric_limits<float>::infinity();
  if (ms) ms->assign(size_t(std::max(n, 0)), inf);
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  OSP_CUDA_CHECK(cudaEventCreate(&e0));
  OSP_CUDA_CHECK(cudaEventCreate(&e1));
  auto ok = [&](int i) {
    try {
      return run(i);
    } catch (const Error&) {
      return false;
    }
  };
  int best = -1;
  float best_ms = inf;
  for (int i = 0; i < n; ++i) {
    if (!ok(i)) continue;
    float t = inf;
    for (int r = 0; r < reps; ++r) {
      OSP_CUDA_CHECK(cudaEventRecord(e0, stream()));
      if (!ok(i)) break;
      OSP_CUDA_CHECK(cudaEventRecord(e1, stream()));
      OSP_CUDA_CHECK(cudaEventSynchronize(e1));
      float x = 0;
      OSP_CUDA_CHECK(cudaEventElapsedTime(&x, e0, e1));
      t = std::min(t, x);
    }
    if (ms) (*ms)[size_t(i)] = t;
    if (t < best_ms) best_ms = t, best = i;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaGetLastError();  // a rejected candidate leaves no sticky error; clear the last one
  return best;
}

unsigned grid_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 132 * 32) b = 132 * 32;  // grid-stride loops beyond this
  return unsigned(b);
}

void require_cuda(const Tensor& t, const char* op, const char* what) {
  OSP_CHECK(t.defined(), "cuda::", op, ": ", what, " is undefined");
  OSP_CHECK(t.device().is_cuda(), "cuda::", op, ": ", what, " must be on a CUDA device, got ",
            t.desc());
}
void require_contiguous(const Tensor& t, const char* op, const char* what) {
  OSP_CHECK(t.is_contiguous(), "cuda::", op, ": ", what, " must be contiguous, got ", t.desc(),
            " (call .contiguous() first)");
}
void require_float(const Tensor& t, const char* op, const char* what) {
  OSP_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16, "cuda::", op, ": ", what,
            " must be f32 or bf16, got ", t.desc());
}
void require_bthd(const Tensor& t, const char* op, const char* what) {
  require_cuda(t, op, what);
  require_contiguous(t, op, what);
  OSP_CHECK(t.dtype() == DType::BF16 && t.dim() == 4, "cuda::", op, ": ", what, " must be bf16 [B, L, H, D], got ",
            t.desc());
}
void require_aligned16(const Tensor& t, const char* op, const char* what) {
  OSP_CHECK(reinterpret_cast<uintptr_t>(t.raw()) % 16 == 0, "cuda::", op, ": ", what,
            " must start at a 16-byte aligned address, got a view at ", t.raw());
}
}  // namespace osp::ops::cuda
#endif
