// Euler trajectory against a hand-derived double-precision reference, CFG combine, sampler
// misuse errors. (UniPC is checked against the reference scheduler in
// unipc_golden_test.cpp.)
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "osp/core/error.h"
#include "osp/core/philox.h"
#include "osp/sample/sampler.h"

using namespace osp;
using namespace osp::sample;

namespace {
// Stand-in model v = tanh(x·A + b·t/1000) on [4, 8].
struct Toy {
  std::vector<double> A, b;
  Toy() : A(64), b(8) {
    std::vector<float> r(72);
    philox_normal(11, 0, 0, r.data(), 72);
    for (int i = 0; i < 64; ++i) A[i] = 0.4 * r[i];
    for (int i = 0; i < 8; ++i) b[i] = r[64 + i];
  }
  std::vector<double> v(const std::vector<double>& x, double t) const {
    std::vector<double> out(32);
    for (int r = 0; r < 4; ++r)
      for (int c = 0; c < 8; ++c) {
        double s = b[c] * t / 1000.0;
        for (int k = 0; k < 8; ++k) s += x[r * 8 + k] * A[k * 8 + c];
        out[r * 8 + c] = std::tanh(s);
      }
    return out;
  }
};
}  // namespace

TEST(Euler, TrajectoryMatchesHandDerivedReference) {
  const Toy toy;
  const int S = 20;
  const double shift = 7.0;
  Tensor x = randn({4, 8}, 5);
  std::vector<double> xr(x.data<float>(), x.data<float>() + 32);
  EulerSampler s(S, shift);
  for (int i = 0; i < S; ++i) {
    // Reference: σ_i = shift·u/(1+(shift−1)u), u = 1 − i/S; x += (σ_{i+1} − σ_i)·v(x, 1000σ_i).
    const double u0 = 1.0 - double(i) / S, u1 = 1.0 - double(i + 1) / S;
    const double s0 = shift * u0 / (1 + (shift - 1) * u0), s1 = shift * u1 / (1 + (shift - 1) * u1);
    const auto vr = toy.v(xr, 1000.0 * s0);
    for (int e = 0; e < 32; ++e) xr[e] += (s1 - s0) * vr[e];

    std::vector<double> xd(x.data<float>(), x.data<float>() + 32);
    const auto vd = toy.v(xd, s.timestep(i));
    std::vector<float> vf(vd.begin(), vd.end());
    Tensor v = Tensor::from_vector(vf, {4, 8});
    s.step(i, v, x);
    double num = 0, den = 0;
    for (int e = 0; e < 32; ++e) {
      num += std::pow(x.data<float>()[e] - xr[e], 2);
      den += xr[e] * xr[e];
    }
    EXPECT_LT(std::sqrt(num / den), 1e-5) << "step " << i;
  }
}

TEST(Euler, SingleStepIsExactFormula) {
  EulerSampler s(1, 3.0);
  Tensor x = Tensor::from_vector({1.f, -2.f}, {2});
  Tensor v = Tensor::from_vector({0.5f, 0.25f}, {2});
  s.step(0, v, x);  // σ: 1 → 0, x − v
  EXPECT_FLOAT_EQ(x.data<float>()[0], 0.5f);
  EXPECT_FLOAT_EQ(x.data<float>()[1], -2.25f);
}

TEST(Sampler, FinalStepOfUniPCReturnsX0Prediction) {
  // σ_S = 0: the last predictor returns the x0 prediction x − σ_{S−1}·v exactly (order 1).
  UniPCSampler s(1, 5.0);
  Tensor x = Tensor::from_vector({1.f, 2.f, 3.f}, {3});
  Tensor v = Tensor::from_vector({0.5f, -1.f, 2.f}, {3});
  const float sg = s.sigma(0);
  s.step(0, v, x);
  EXPECT_FLOAT_EQ(x.data<float>()[0], 1.f - sg * 0.5f);
  EXPECT_FLOAT_EQ(x.data<float>()[1], 2.f + sg);
  EXPECT_FLOAT_EQ(x.data<float>()[2], 3.f - sg * 2.f);
}

TEST(Sampler, CfgCombine) {
  Tensor c = Tensor::from_vector({1.f, 2.f}, {2});
  Tensor u = Tensor::from_vector({0.f, 4.f}, {2});
  Tensor out = Tensor::empty({2}, DType::F32);
  cfg_combine(c, u, 5.f, out);  // u + 5(c − u)
  EXPECT_FLOAT_EQ(out.data<float>()[0], 5.f);
  EXPECT_FLOAT_EQ(out.data<float>()[1], -6.f);
  cfg_combine(c, u, 1.f, out);  // guidance 1 = conditional only
  EXPECT_FLOAT_EQ(out.data<float>()[1], 2.f);
  Tensor bad = Tensor::empty({3}, DType::F32);
  EXPECT_THROW(cfg_combine(c, bad, 5.f, out), Error);
}

TEST(Sampler, MisuseGivesClearErrors) {
  auto s = make_sampler("unipc", 4, 5.0);
  Tensor x = Tensor::zeros({4}, DType::F32), v = Tensor::zeros({4}, DType::F32);
  EXPECT_THROW(s->step(1, v, x), Error);  // out of order
  Tensor v3 = Tensor::zeros({3}, DType::F32);
  EXPECT_THROW(s->step(0, v3, x), Error);  // shape mismatch
  Tensor vi = Tensor::zeros({4}, DType::I32);
  EXPECT_THROW(s->step(0, vi, x), Error);  // dtype
  try {
    make_sampler("ddim", 10, 5.0);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unipc"), std::string::npos);
  }
  s->step(0, v, x);
  s->reset();
  EXPECT_NO_THROW(s->step(0, v, x));
}
