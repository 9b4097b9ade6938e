// Scalar helpers shared by the CPU kernels (fp32 math, as the reference evaluates them).
#pragma once
#include <cmath>
#include <cstdint>

// Compiles a plain loop twice (AVX2/FMA and baseline x86-64) and picks one at load time, so
// the auto-vectoriser can use 256-bit FMA without -march flags.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OSP_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define OSP_CPU_CLONES
#endif

namespace osp::ops::cpu {

// Below this much work (elements touched) a loop runs on one thread: on a busy 2-core machine
// the fork/join of a tiny parallel region costs more than the loop.
inline constexpr int64_t kParallelMin = int64_t(1) << 18;

// GELU with the tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
inline float gelu_tanh_scalar(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.f + std::tanh(k * (x + 0.044715f * x * x * x)));
}
inline float silu_scalar(float x) { return x / (1.f + std::exp(-x)); }

// mean and 1/sqrt(var + eps) of one row (biased variance, two-pass, accumulated in double).
inline void row_stats(const float* x, int64_t C, float eps, float& mean, float& rstd) {
  double s = 0;
  for (int64_t c = 0; c < C; ++c) s += x[c];
  const double m = s / double(C);
  double v = 0;
  for (int64_t c = 0; c < C; ++c) {
    const double d = double(x[c]) - m;
    v += d * d;
  }
  v /= double(C);
  mean = float(m);
  rstd = float(1.0 / std::sqrt(v + double(eps)));
}

}  // namespace osp::ops::cpu
