// Helpers shared by the GPU benchmarks (bench/ops_gpu.cpp, bench/dit_gpu.cpp): random device
// tensors, CUDA-event timing (median of repeats after warm-up), the card's name, JSON output.
#pragma once
#ifdef OSP_HAVE_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "osp/core/cuda_check.h"
#include "osp/core/philox.h"
#include "osp/core/tensor.h"

namespace osp::bench {

// Wall-clock seconds (steady clock), for host-timed benchmark sections.
inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline std::string card_name() {
  cudaDeviceProp p{};
  OSP_CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
  return p.name;
}

// Random normal values (seeded), made on the host in f32, converted and moved to the GPU.
inline Tensor random_gpu(const Shape& s, DType dt, float scale, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> n(0.f, scale);
  std::vector<float> v(size_t(shape_numel(s)));
  // Fill in chunks with a cheap generator: big tensors (GBs) would take too long with normal().
  const size_t period = 1 << 20;
  for (size_t i = 0; i < v.size() && i < period; ++i) v[i] = n(g);
  for (size_t i = period; i < v.size(); ++i) v[i] = v[(i * 2654435761u + (i >> 20)) % period];
  return Tensor::from_vector(v, s).to(dt).to(Device::cuda(0));
}

// A device tensor filled with one random tile (Philox normal · scale, `tile` values, converted
// to dt) repeated end to end: fast init of GB-sized operands. A tile length that is not a
// multiple of a row keeps rows different.
inline Tensor random_tiled_gpu(const Shape& shape, DType dt, uint64_t seed, float scale,
                               int64_t tile) {
  Tensor t = Tensor::empty(shape, dt, Device::cuda());
  const int64_t n = t.numel();
  tile = std::min(n, tile);
  Tensor h = randn({tile}, seed);
  if (scale != 1.0f)
    for (int64_t i = 0; i < tile; ++i) h.data<float>()[i] *= scale;
  Tensor hd = h.to(dt).to(Device::cuda());
  const size_t es = dtype_size(dt);
  for (int64_t off = 0; off < n; off += tile) {
    const int64_t cnt = std::min(tile, n - off);
    OSP_CUDA_CHECK(cudaMemcpy(static_cast<char*>(t.raw()) + off * es, hd.raw(), size_t(cnt) * es,
                              cudaMemcpyDeviceToDevice));
  }
  return t;
}

// Median milliseconds of `reps` timed runs of f after `warm` untimed ones (CUDA events).
inline double time_ms(const std::function<void()>& f, int warm, int reps) {
  for (int i = 0; i < warm; ++i) f();
  cudaEvent_t a, b;
  OSP_CUDA_CHECK(cudaEventCreate(&a));
  OSP_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    OSP_CUDA_CHECK(cudaEventRecord(a, 0));
    f();
    OSP_CUDA_CHECK(cudaEventRecord(b, 0));
    OSP_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    OSP_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace osp::bench
#endif
