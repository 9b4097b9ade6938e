// Philox4x32-10 known-answer vectors (Random123 kat_vectors, from the SC'11 paper's reference
// code) and the properties of the noise stream the pipeline relies on.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "osp/core/philox.h"

using osp::PhiloxCounter;

TEST(Philox, KnownAnswerZero) {
  const PhiloxCounter r = osp::philox4x32_10({0, 0, 0, 0}, {0, 0});
  EXPECT_EQ(r, (PhiloxCounter{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}));
}

TEST(Philox, KnownAnswerAllOnes) {
  const PhiloxCounter r = osp::philox4x32_10({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                                             {0xffffffffu, 0xffffffffu});
  EXPECT_EQ(r, (PhiloxCounter{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}));
}

TEST(Philox, KnownAnswerPi) {
  const PhiloxCounter r = osp::philox4x32_10({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                                             {0xa4093822u, 0x299f31d0u});
  EXPECT_EQ(r, (PhiloxCounter{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}));
}

TEST(Philox, NormalsFollowTheDocumentedLayout) {
  // Element 4b+j comes from block b through Box–Muller as documented in philox.h.
  const uint64_t seed = 0x123456789abcdefull;
  std::vector<float> z(12);
  osp::philox_normal(seed, 3, 0, z.data(), 12);
  for (uint64_t b = 0; b < 3; ++b) {
    const PhiloxCounter r = osp::philox4x32_10({uint32_t(b), 0, 3, 0},
                                               {uint32_t(seed), uint32_t(seed >> 32)});
    for (int p = 0; p < 2; ++p) {
      const double u0 = (double(r[2 * p]) + 0.5) / 4294967296.0;
      const double u1 = (double(r[2 * p + 1]) + 0.5) / 4294967296.0;
      const double rad = std::sqrt(-2 * std::log(u0));
      EXPECT_EQ(z[4 * b + 2 * p], float(rad * std::cos(2 * M_PI * u1)));
      EXPECT_EQ(z[4 * b + 2 * p + 1], float(rad * std::sin(2 * M_PI * u1)));
    }
  }
}

TEST(Philox, IndependentOfThreadCountAndSlicing) {
  const int64_t n = 10007;
  std::vector<float> a(n), b(n), c(n);
  omp_set_num_threads(1);
  osp::philox_normal(42, 0, 0, a.data(), n);
  omp_set_num_threads(2);
  osp::philox_normal(42, 0, 0, b.data(), n);
  // Generate the same stream in uneven slices (what a rank would do for its part).
  osp::philox_normal(42, 0, 0, c.data(), 5);
  osp::philox_normal(42, 0, 5, c.data() + 5, 3001);
  osp::philox_normal(42, 0, 3006, c.data() + 3006, n - 3006);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
}

TEST(Philox, SeedsAndStreamsDiffer) {
  std::vector<float> a(64), b(64), c(64);
  osp::philox_normal(1, 0, 0, a.data(), 64);
  osp::philox_normal(2, 0, 0, b.data(), 64);
  osp::philox_normal(1, 1, 0, c.data(), 64);
  EXPECT_NE(a, b);
  EXPECT_NE(a, c);
}

TEST(Philox, NormalMoments) {
  const int64_t n = 1 << 18;
  osp::Tensor t = osp::randn({n}, 7);
  const float* p = t.data<float>();
  double s = 0, s2 = 0;
  for (int64_t i = 0; i < n; ++i) {
    s += p[i];
    s2 += double(p[i]) * p[i];
  }
  const double mean = s / n, var = s2 / n - mean * mean;
  // 5-sigma bounds for the sample mean and variance of n standard normals.
  EXPECT_LT(std::fabs(mean), 5.0 / std::sqrt(double(n)));
  EXPECT_LT(std::fabs(var - 1.0), 5.0 * std::sqrt(2.0 / n));
}

TEST(Philox, UniformsInOpenUnitInterval) {
  std::vector<float> u(4096);
  osp::philox_uniform(9, 0, 0, u.data(), 4096);
  double s = 0;
  for (float x : u) {
    EXPECT_GT(x, 0.0f);
    EXPECT_LT(x, 1.0f);
    s += x;
  }
  EXPECT_NEAR(s / 4096, 0.5, 5 * std::sqrt(1.0 / 12 / 4096));
}

TEST(Philox, BadArguments) {
  float x;
  EXPECT_THROW(osp::philox_normal(1, 0, 0, &x, -1), osp::Error);
  EXPECT_THROW(osp::philox_normal(1, 0, 0, nullptr, 4), osp::Error);
}
