// ops::exp2_poly (ops/exp2_poly.h): the FMA-pipe exponential the own Hopper attention kernels'
// softmax variant 2 uses for a quarter of its exponentials. The same header compiles into the
// kernel, so its accuracy and edge cases are checked here on the CPU.
#include "osp/ops/exp2_poly.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace {

using osp::ops::exp2_poly;

TEST(Exp2Poly, RelativeErrorBelowBf16Rounding) {
  double worst = 0, worst_x = 0;
  const int n = 2'000'000;
  for (int i = 0; i <= n; ++i) {
    const float x = float(-126.0 + 253.0 * double(i) / n);  // [-126, 127]
    const double ref = std::exp2(double(x));
    const double rel = std::abs(double(exp2_poly(x)) - ref) / ref;
    if (rel > worst) worst = rel, worst_x = x;
  }
  std::printf("[ info ] exp2_poly max relative error %.3g at x = %.6g\n", worst, worst_x);
  EXPECT_LT(worst, 1.1e-4);  // the fit's 1.01e-4 plus fp32 rounding of the coefficients
  EXPECT_GT(worst, 1e-6);    // it is an approximation: ex2's exactness would mean this ran something else
}

TEST(Exp2Poly, IntegersAreExact) {
  for (int k = -126; k <= 127; ++k) EXPECT_EQ(exp2_poly(float(k)), std::ldexp(1.f, k)) << k;
}

TEST(Exp2Poly, FarBelowRangeIsExactlyZero) {
  // masked scores arrive as -inf; the clamp at -127 gives +0, so they add nothing to a row's sum
  for (float x : {-126.6f, -127.f, -127.5f, -200.f, -1e30f, -std::numeric_limits<float>::infinity()}) {
    const float y = exp2_poly(x);
    EXPECT_EQ(y, 0.f) << x;
    EXPECT_FALSE(std::signbit(y)) << x;
  }
}

TEST(Exp2Poly, NanStaysNan) {
  // a NaN score (from a non-finite real key) must reach the output as the SFU's ex2 passes it on
  EXPECT_TRUE(std::isnan(exp2_poly(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isnan(exp2_poly(-std::numeric_limits<float>::quiet_NaN())));
}

TEST(Exp2Poly, SoftmaxRangeAsTheKernelsUseIt) {
  // the kernels' arguments: (s - max)·scale·log2(e) + p_log2, i.e. <= 0 (bf16) or <= log2(448)
  // (FP8); the largest value, at the row max, must come out as 2^p_log2 exactly
  EXPECT_EQ(exp2_poly(0.f), 1.f);
  const float p_log2 = 8.807354922057604f;
  EXPECT_NEAR(exp2_poly(p_log2), 448.f, 448.f * 1.1e-4);
  float prev = exp2_poly(-30.f);
  for (float x = -30.f; x <= p_log2; x += 0.001f) {  // smooth: no jump between binades
    const float y = exp2_poly(x);
    EXPECT_LT(std::abs(y - prev), prev * 2.5e-3f) << x;
    prev = y;
  }
}

}  // namespace
