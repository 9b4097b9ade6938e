// ops::exp2_poly (the SFU-free 2^x of the Hopper FP8 attention kernel) against std::exp2: the
// relative error over the range the kernel feeds it, exact powers of two near integers, the
// clamp below -125, monotonicity.
#include <gtest/gtest.h>

#include <cmath>

#include "osp/ops/exp2_poly.h"

using osp::ops::exp2_poly;

TEST(Exp2Poly, RelativeErrorBelow8e5) {
  double worst = 0;
  for (int i = 0; i <= 2000000; ++i) {
    const float x = -124.f + 134.f * float(i) / 2000000.f;  // [-124, 10]
    const double rel = std::fabs(double(exp2_poly(x)) / std::exp2(double(x)) - 1.0);
    worst = std::max(worst, rel);
  }
  std::printf("[exp2_poly] worst relative error on [-124, 10]: %.3g\n", worst);
  EXPECT_LT(worst, 8e-5);
}

TEST(Exp2Poly, IntegersAndTheClamp) {
  for (int n = -124; n <= 10; ++n)
    EXPECT_NEAR(exp2_poly(float(n)) / std::exp2(float(n)), 1.0, 8e-5) << n;
  const float floor_value = exp2_poly(-125.f);
  EXPECT_GT(floor_value, 0.f);
  EXPECT_EQ(exp2_poly(-200.f), floor_value);
  EXPECT_EQ(exp2_poly(-INFINITY), floor_value);  // masked scores
  EXPECT_LT(floor_value, 1e-37f);
}

TEST(Exp2Poly, Monotonic) {
  float prev = exp2_poly(-20.f);
  for (int i = 1; i <= 400000; ++i) {
    const float x = -20.f + 30.f * float(i) / 400000.f;
    const float y = exp2_poly(x);
    EXPECT_GE(y, prev) << x;
    if (y < prev) break;
    prev = y;
  }
}
