#include "osp/core/philox.h"

#include <algorithm>
#include <cmath>

namespace osp {
namespace {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // multipliers
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // Weyl key increments

inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = uint64_t(a) * uint64_t(b);
  hi = uint32_t(p >> 32);
  lo = uint32_t(p);
}

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
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kM0, c[0], hi0, lo0);
    mulhilo(kM1, c[2], hi1, lo1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
    k[0] += kW0;
    k[1] += kW1;
  }
  return c;
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
