// Hybrid (stochastic) rounding: TA in the 3-bit band, unbiased stochastic rounding elsewhere,
// deterministic per (seed, offset), independent of the thread count, never rounds to Inf.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "osp/core/philox.h"
#include "osp/quant/hif8.h"
#include "osp/quant/philox.h"
#include "test_util.h"

using namespace osp;
using namespace osp::quant;

namespace {
uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float p2(int e) { return std::ldexp(1.0f, e); }

// Mean of n stochastic roundings of the constant value v (elements 0..n-1 of one stream).
double stochastic_mean(float v, uint64_t seed, int64_t n, float* lo, float* hi) {
  Tensor x = Tensor::empty({n}, DType::F32);
  for (int64_t i = 0; i < n; ++i) x.data<float>()[i] = v;
  Tensor y = Tensor::empty({n}, DType::F32);
  hif8_round_stochastic(x, y, seed);
  double s = 0;
  *lo = INFINITY, *hi = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    float f = y.data<float>()[i];
    s += f;
    *lo = std::min(*lo, f);
    *hi = std::max(*hi, f);
  }
  return s / double(n);
}
}  // namespace

TEST(HiF8Stochastic, UnbiasedInMean) {
  // 2-bit band (17 between 16 and 20), 1-bit band, DML, the [2^-23, 2^-22) band, negatives
  const float vals[] = {17.0f, -17.0f, 300.0f, 0.0031f, 3.1f * p2(-19), 0.7f * p2(-22),
                        1000.5f, -0.011f};
  const int64_t n = 200000;
  for (float v : vals) {
    float lo, hi;
    double mean = stochastic_mean(v, 1234, n, &lo, &hi);
    // the two neighbours bracket v; std of the mean ≤ (hi−lo)/2/sqrt(n); allow 5 sigma
    EXPECT_LE(double(lo), double(v));
    EXPECT_GE(double(hi), double(v));
    EXPECT_LT(lo, hi) << "both neighbours should occur for " << v;
    double tol = 5.0 * 0.5 * (double(hi) - double(lo)) / std::sqrt(double(n));
    EXPECT_NEAR(mean, double(v), tol) << "value " << v;
    // TA would be biased for these inputs by more than the tolerance
    EXPECT_GT(std::fabs(double(hif8_round(v)) - double(v)), tol) << v;
  }
}

TEST(HiF8Stochastic, OutputsAreNeighbouringHiF8Values) {
  Tensor x = randn({5000}, 5);
  std::vector<float> v = x.to_float_vector();
  for (size_t i = 0; i < v.size(); ++i) v[i] *= std::ldexp(1.0f, int(i % 40) - 25);
  x = Tensor::from_vector(v, {int64_t(v.size())});
  Tensor y = Tensor::empty(x.shape(), DType::F32);
  hif8_round_stochastic(x, y, 99);
  for (size_t i = 0; i < v.size(); ++i) {
    float r = y.data<float>()[i];
    EXPECT_EQ(hif8_round(r), r) << "not a HiF8 value";
    float a = std::fabs(v[i]);
    int E = std::ilogb(a);
    if (a >= p2(-3) && a < p2(4)) {
      EXPECT_EQ(bits(r), bits(hif8_round(v[i]))) << "3-bit band must use TA: " << v[i];
    } else if (a >= p2(-23) && a < 32768.f) {
      // r is one of the two neighbours of v, within one binade width 2^E of it
      EXPECT_LE(std::fabs(std::fabs(r) - a), std::ldexp(1.0f, std::max(E, -22))) << v[i];  // 0 ↔ 2^-22 below 2^-22
      if (r != 0) EXPECT_EQ(std::signbit(r), std::signbit(v[i]));
    }
  }
}

TEST(HiF8Stochastic, DeterministicPerSeedAndOffset) {
  Tensor x = randn({4096}, 8);
  std::vector<float> v = x.to_float_vector();
  for (auto& f : v) f *= 100.0f;  // mostly outside the TA band
  x = Tensor::from_vector(v, {4096});
  Tensor a = Tensor::empty({4096}, DType::F32), b = Tensor::empty({4096}, DType::F32),
         c = Tensor::empty({4096}, DType::F32);
  hif8_round_stochastic(x, a, 42);
  hif8_round_stochastic(x, b, 42);
  hif8_round_stochastic(x, c, 43);
  int diff = 0;
  for (int i = 0; i < 4096; ++i) {
    ASSERT_EQ(bits(a.data<float>()[i]), bits(b.data<float>()[i]));
    diff += bits(a.data<float>()[i]) != bits(c.data<float>()[i]);
  }
  EXPECT_GT(diff, 100) << "a different seed should change many roundings";
  // offset: rounding the tail [1000, 4096) with offset 1000 equals the tail of the full call
  Tensor tail = x.slice(0, 1000, 4096);
  Tensor t = Tensor::empty(tail.shape(), DType::F32);
  hif8_round_stochastic(tail, t, 42, 1000);
  for (int i = 0; i < 3096; ++i) ASSERT_EQ(bits(t.data<float>()[i]), bits(a.data<float>()[1000 + i]));
  // thread count does not matter
  int old = omp_get_max_threads();
  omp_set_num_threads(1);
  Tensor s1 = Tensor::empty({4096}, DType::F32);
  hif8_round_stochastic(x, s1, 42);
  omp_set_num_threads(old > 1 ? old : 3);
  for (int i = 0; i < 4096; ++i) ASSERT_EQ(bits(s1.data<float>()[i]), bits(a.data<float>()[i]));
  omp_set_num_threads(old);
}

TEST(HiF8Stochastic, RandomWordIsCorePhiloxStreamZero) {
  // quant's device-capable Philox equals core's osp::philox4x32_10; element g takes word g % 4
  // of the block with counter (g/4 lo, g/4 hi, 0, 0) under key (seed lo, seed hi)
  for (uint64_t seed : {0ull, 1ull, 0x123456789abcdefull})
    for (uint64_t idx : {0ull, 1ull, 2ull, 3ull, 5ull, 6ull, 7ull, (1ull << 35) + 3}) {
      PhiloxCounter r = philox4x32_10({uint32_t(idx >> 2), uint32_t(idx >> 34), 0, 0},
                                      {uint32_t(seed), uint32_t(seed >> 32)});
      EXPECT_EQ(quant::detail::philox_word(seed, idx), r[idx % 4]) << seed << " " << idx;
    }
}

TEST(HiF8Stochastic, OffsetNotMultipleOfFourContinuesTheStream) {
  // a call with offset o sees exactly the words of elements o.. of one long stream, also when
  // o is not a multiple of 4 (the GPU kernels take a different path then)
  Tensor x = randn({999}, 21);
  std::vector<float> v = x.to_float_vector();
  for (auto& f : v) f *= 300.0f;
  x = Tensor::from_vector(v, {999});
  Tensor full = Tensor::empty({999}, DType::F32);
  hif8_round_stochastic(x, full, 77, 40);
  for (int64_t start : {1, 2, 3, 6, 17}) {
    Tensor part = x.slice(0, start, 999);
    Tensor y = Tensor::empty(part.shape(), DType::F32);
    hif8_round_stochastic(part, y, 77, 40 + uint64_t(start));
    for (int64_t i = 0; i < 999 - start; ++i)
      ASSERT_EQ(bits(y.data<float>()[i]), bits(full.data<float>()[start + i])) << start << " " << i;
  }
}

TEST(HiF8Stochastic, ExactValuesStayAndNoInf) {
  // exact HiF8 values never move, whatever the random word
  for (int c = 0; c < 256; ++c) {
    float v = hif8_decode(uint8_t(c));
    if (!std::isfinite(v)) continue;
    for (uint32_t r : {0u, 1u, 0x7fffffffu, 0xffffffffu})
      EXPECT_EQ(hif8_encode_hybrid(v, r), hif8_encode(v)) << "code " << c << " r " << r;
  }
  // [2^15, 40960): TA (32768), never the Inf code (the HR hazard of spec §1.6)
  for (float v : {32768.f, 36000.f, 40959.f, -40000.f})
    for (uint32_t r : {0u, 0xffffffffu}) EXPECT_EQ(hif8_decode(hif8_encode_hybrid(v, r)), std::copysign(32768.f, v));
  EXPECT_EQ(hif8_encode_hybrid(40960.f, 0), 0x6F);
  EXPECT_EQ(hif8_encode_hybrid(40960.f, 0, true), 0x6E);
  EXPECT_EQ(hif8_encode_hybrid(NAN, 0), 0x80);
  EXPECT_EQ(hif8_encode_hybrid(1e-8f, 0), 0x00);  // below 2^-23 flushes like TA
  // extremes of the random word give the two neighbours
  EXPECT_EQ(hif8_decode(hif8_encode_hybrid(17.f, 0u)), 20.f);          // r = 0 < rem: up
  EXPECT_EQ(hif8_decode(hif8_encode_hybrid(17.f, 0xffffffffu)), 16.f);  // r max: down
}

TEST(HiF8Stochastic, ScaledFakeQuantStochastic) {
  Tensor x = randn({3000}, 12);
  std::vector<float> v = x.to_float_vector();
  float am = 0;
  for (float f : v) am = std::max(am, std::fabs(f));
  const float s = 224.0f / am;
  Tensor y = Tensor::empty({3000}, DType::F32);
  hif8_fake_quant_stochastic(x, y, 5, 100);  // default target 224
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t r = quant::detail::philox_word(5, 100 + i);
    float want = hif8_decode(hif8_encode_hybrid(v[i] * s, r)) / s;
    ASSERT_EQ(bits(y.data<float>()[i]), bits(want)) << i;
  }
  // unbiased: averaging many independent seeds approaches x (TA keeps a bias in the 2-bit band)
  Tensor one = Tensor::from_vector({17.0f / 224.0f * 3.0f, 3.0f}, {2});  // 17 after scaling
  double sum = 0;
  const int reps = 20000;
  Tensor o = Tensor::empty({2}, DType::F32);
  for (int k = 0; k < reps; ++k) {
    hif8_fake_quant_stochastic(one, o, uint64_t(k));
    sum += o.data<float>()[0];
  }
  const double target = double(17.0f / 224.0f * 3.0f);
  EXPECT_NEAR(sum / reps, target, 0.01 * target);
  Tensor ta = hif8_fake_quant(one, kHiF8BackwardMax);
  EXPECT_GT(std::fabs(double(ta.data<float>()[0]) - target), 0.03 * target);  // TA → 16
  EXPECT_THROW(hif8_fake_quant_stochastic(one, o, 1, 0, -1.0f), Error);
}
