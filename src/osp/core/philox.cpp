#include "osp/core/philox.h"

#include "osp/core/philox_block.h"

#include <algorithm>
#include <cmath>

namespace osp {
namespace {

inline double to_unit(uint32_t r) { return (double(r) + 0.5) * 0x1p-32; }

// Four normals (Box–Muller on two pairs) for block `block`.
inline void normal_block(uint64_t seed, uint32_t stream, uint64_t block, double z[4]) {
  const PhiloxKey key{uint32_t(seed), uint32_t(seed >> 32)};
  const PhiloxCounter r =
      philox4x32_10({uint32_t(block), uint32_t(block >> 32), stream, 0u}, key);
  constexpr double two_pi = 6.283185307179586476925286766559;
  for (int p = 0; p < 2; ++p) {
    const double rad = std::sqrt(-2.0 * std::log(to_unit(r[2 * p])));
    const double ang = two_pi * to_unit(r[2 * p + 1]);
    z[2 * p] = rad * std::cos(ang);
    z[2 * p + 1] = rad * std::sin(ang);
  }
}

}  // namespace

PhiloxCounter philox4x32_10(PhiloxCounter c, PhiloxKey k) {
  const detail::Philox4 r = detail::philox4x32_10(detail::Philox4{{c[0], c[1], c[2], c[3]}}, k[0], k[1]);
  return {r.v[0], r.v[1], r.v[2], r.v[3]};
}

void philox_normal(uint64_t seed, uint32_t stream, uint64_t first, float* out, int64_t n) {
  OSP_CHECK(n >= 0, "philox_normal: negative count ", n);
  if (n == 0) return;
  OSP_CHECK(out != nullptr, "philox_normal: null output");
  const uint64_t b0 = first / 4, b1 = (first + uint64_t(n) + 3) / 4;
#pragma omp parallel for schedule(static)
  for (int64_t b = int64_t(b0); b < int64_t(b1); ++b) {
    double z[4];
    normal_block(seed, stream, uint64_t(b), z);
    for (int j = 0; j < 4; ++j) {
      const uint64_t e = uint64_t(b) * 4 + j;
      if (e >= first && e < first + uint64_t(n)) out[e - first] = float(z[j]);
    }
  }
}

void philox_uniform(uint64_t seed, uint32_t stream, uint64_t first, float* out, int64_t n) {
  OSP_CHECK(n >= 0, "philox_uniform: negative count ", n);
  if (n == 0) return;
  OSP_CHECK(out != nullptr, "philox_uniform: null output");
  const uint64_t b0 = first / 4, b1 = (first + uint64_t(n) + 3) / 4;
  const PhiloxKey key{uint32_t(seed), uint32_t(seed >> 32)};
#pragma omp parallel for schedule(static)
  for (int64_t b = int64_t(b0); b < int64_t(b1); ++b) {
    const PhiloxCounter r =
        philox4x32_10({uint32_t(b), uint32_t(uint64_t(b) >> 32), stream, 0u}, key);
    for (int j = 0; j < 4; ++j) {
      const uint64_t e = uint64_t(b) * 4 + j;
      if (e >= first && e < first + uint64_t(n))
        out[e - first] = std::min(float(to_unit(r[j])), 0x1.fffffep-1f);  // stay below 1
    }
  }
}

Tensor randn(const Shape& shape, uint64_t seed, uint32_t stream) {
  Tensor t = Tensor::empty(shape, DType::F32, Device::cpu());
  philox_normal(seed, stream, 0, t.data<float>(), t.numel());
  return t;
}

}  // namespace osp
