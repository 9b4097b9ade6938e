// Scalar helpers shared by the CPU kernels (fp32 math, as the reference evaluates them).
#pragma once
#include <cmath>

namespace osp::ops::cpu {

// GELU with the tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
inline float gelu_tanh_scalar(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.f + std::tanh(k * (x + 0.044715f * x * x * x)));
}
inline float silu_scalar(float x) { return x / (1.f + std::exp(-x)); }

}  // namespace osp::ops::cpu
