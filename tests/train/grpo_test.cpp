// Mix-GRPO unit tests: SDE/ODE step formulas, the advantage rules (groups, global z-score,
// drop / re-add of §8.5) and the validation of bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "osp/core/philox.h"
#include "osp/sample/sde_step.h"
#include "osp/train/grpo.h"

using namespace osp;

namespace {

void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an osp::Error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message '" << e.what() << "' does not mention '" << needle << "'";
  }
}

}  // namespace

// ---------------------------------------------------------------- SDE / ODE steps

TEST(SdeStep, GridShiftAndCoefficients) {
  const sample::SdeGrid g1 = sample::sde_grid(4, 1.0);
  EXPECT_EQ(g1.sigmas, (std::vector<double>{1.0, 0.75, 0.5, 0.25, 0.0}));
  const sample::SdeGrid g = sample::sde_grid(25, 7.5);
  EXPECT_EQ(g.steps(), 25);
  EXPECT_DOUBLE_EQ(g.sigma(1), 7.5 * 0.96 / (1 + 6.5 * 0.96));
  EXPECT_DOUBLE_EQ(g.timestep(1), 1000 * g.sigma(1));
  // σ_t = t: μ = x + Δ·[v + (t/2)(x + (1 − t)v)] (osp-next-spec §8.3's second form).
  const sample::SdeCoeffs c = sample::sde_coeffs(g, 4);
  const double t = g.sigma(4), d = g.sigma(5) - g.sigma(4);
  const double x = 0.37, v = -1.21;
  EXPECT_NEAR(c.cx * x + c.cv * v, x + d * (v + 0.5 * t * (x + (1 - t) * v)), 1e-15);
  EXPECT_DOUBLE_EQ(c.std, t * std::sqrt(-d));
  // Flow-GRPO noise level: η·sqrt(t/(1 − t)), with σ_1 in the denominator at t = 1.
  const sample::SdeCoeffs f0 = sample::sde_coeffs(g, 0, sample::NoiseLevel::FlowGrpo, 0.7);
  EXPECT_DOUBLE_EQ(f0.sigma_t, 0.7 * std::sqrt(1.0 / (1.0 - g.sigma(1))));
  const sample::SdeCoeffs f3 = sample::sde_coeffs(g, 3, sample::NoiseLevel::FlowGrpo, 0.7);
  EXPECT_DOUBLE_EQ(f3.sigma_t, 0.7 * std::sqrt(g.sigma(3) / (1.0 - g.sigma(3))));
  expect_error([&] { sample::sde_coeffs(g, 25); }, "outside");
  expect_error([&] { sample::sde_coeffs(g, -1); }, "outside");
  expect_error([&] { sample::sde_grid(0, 5.0); }, "steps");
}

TEST(SdeStep, StepsAndLogProb) {
  const sample::SdeGrid g = sample::sde_grid(10, 3.0);
  const sample::SdeCoeffs c = sample::sde_coeffs(g, 1);
  const Shape shape = {2, 3, 5};
  const Tensor x = randn(shape, 3, 0), v = randn(shape, 3, 1), xi = randn(shape, 3, 2);
  Tensor mu = Tensor::empty(shape, DType::F32), xn = Tensor::empty(shape, DType::F32);
  const std::vector<double> lp = sample::sde_step(c, x, v, xi, mu, xn);
  ASSERT_EQ(lp.size(), 2u);
  const std::vector<float> X = x.to_float_vector(), V = v.to_float_vector(),
                           Z = xi.to_float_vector(), M = mu.to_float_vector(),
                           N = xn.to_float_vector();
  for (int b = 0; b < 2; ++b) {
    double acc = 0;
    for (int i = b * 15; i < (b + 1) * 15; ++i) {
      EXPECT_NEAR(M[i], c.cx * X[i] + c.cv * V[i], 1e-6);
      EXPECT_NEAR(N[i], M[i] + c.std * Z[i], 1e-6);
      const double r = double(N[i]) - double(M[i]);
      acc += -r * r / (2 * c.std * c.std) - std::log(c.std) - 0.5 * std::log(2 * M_PI);
    }
    EXPECT_NEAR(lp[b], acc / 15, 1e-7);  // the residual is formed in f32
  }
  // The density peaks at the mean.
  const std::vector<double> at_mean = sample::sde_log_prob(c, mu, mu);
  EXPECT_DOUBLE_EQ(at_mean[0], -std::log(c.std) - 0.5 * std::log(2 * M_PI));
  // ODE step in place.
  Tensor y = x.clone();
  sample::ode_step(g, 1, v, y);
  const std::vector<float> Y = y.to_float_vector();
  for (size_t i = 0; i < Y.size(); ++i) EXPECT_NEAR(Y[i], X[i] + g.dt(1) * V[i], 1e-6);
  // Mismatched shapes.
  expect_error([&] { sample::sde_log_prob(c, xn, Tensor::zeros({2, 3, 4}, DType::F32)); },
               "shape");
}

// ---------------------------------------------------------------- advantages

TEST(GrpoAdvantages, GroupsAndGlobalZScore) {
  // Two interleaved groups (group ids need not be contiguous).
  const std::vector<double> r = {1, 10, 3, 20, 2, 30};
  const std::vector<int64_t> gid = {0, 1, 0, 1, 0, 1};
  const std::vector<double> a = train::grpo_advantages(r, gid);
  EXPECT_NEAR(a[0], (1 - 2) / (1.0 + 1e-4), 1e-12);  // group 0: mean 2, unbiased std 1
  EXPECT_NEAR(a[2], (3 - 2) / (1.0 + 1e-4), 1e-12);
  EXPECT_EQ(a[4], 0.0);
  EXPECT_NEAR(a[3], 0.0, 1e-15);
  EXPECT_NEAR(a[5], 10 / (10.0 + 1e-4), 1e-12);
  // Every group has one sample: global z-score.
  const std::vector<double> g = train::grpo_advantages({1, 2, 3}, 1);
  EXPECT_NEAR(g[0], -1 / (1.0 + 1e-4), 1e-12);
  EXPECT_NEAR(g[2], 1 / (1.0 + 1e-4), 1e-12);
  // A lone sample: nothing to compare with.
  EXPECT_EQ(train::grpo_advantages({5.0}, 1)[0], 0.0);
  // A one-sample group among larger ones gets 0.
  const std::vector<double> m = train::grpo_advantages({1, 3, 7}, {0, 0, 1});
  EXPECT_EQ(m[2], 0.0);
  // Equal rewards: A == 0 exactly.
  for (double x : train::grpo_advantages({0.5, 0.5, 0.5, 0.5}, 4)) EXPECT_EQ(x, 0.0);
  // Biased std option.
  train::AdvantageOptions o;
  o.unbiased_std = false;
  o.eps = 0;
  EXPECT_NEAR(train::grpo_advantages({1, 3}, 2, o)[1], 1.0, 1e-15);
}

TEST(GrpoAdvantages, BadInputs) {
  expect_error([] { train::grpo_advantages({1, 2, 3, 4, 5}, 4); }, "does not divide");
  expect_error([] { train::grpo_advantages({1, 2, 3}, std::vector<int64_t>{0, 0}); },
               "group ids");
  expect_error([] { train::grpo_advantages({}, 1); }, "does not divide");
  expect_error([] { train::grpo_advantages({1, NAN}, 2); }, "not finite");
  expect_error([] { train::grpo_advantages({1, 2}, 0); }, "group size");
}

TEST(GrpoAdvantages, DropAndReAdd) {
  // 4 kept, num_batches 4: nothing re-added.
  const std::vector<double> a = {0, 1, -1, 0, 0, 2, -2, 0};
  train::SampleSelection s = train::select_training_samples(a, 4, 1);
  EXPECT_EQ(s.keep, (std::vector<int64_t>{1, 2, 5, 6}));
  EXPECT_EQ(s.dropped, 4);
  // 3 kept, num_batches 2: one random dropped sample comes back; same seed, same pick.
  const std::vector<double> b = {0, 1, -1, 0, 0, 2, 0, 0};
  s = train::select_training_samples(b, 2, 7);
  ASSERT_EQ(s.keep.size(), 4u);
  EXPECT_EQ(s.dropped, 4);
  EXPECT_EQ(s.keep, train::select_training_samples(b, 2, 7).keep);
  int readded = 0;
  for (int64_t i : s.keep) readded += b[size_t(i)] == 0.0;
  EXPECT_EQ(readded, 1);
  bool differs = false;  // the pick depends on the seed
  for (uint64_t seed = 0; seed < 20 && !differs; ++seed)
    differs = train::select_training_samples(b, 2, seed).keep != s.keep;
  EXPECT_TRUE(differs);
  // Not enough dropped samples to reach a multiple: unchanged.
  s = train::select_training_samples({1, 2, 3, 0}, 8, 1);
  EXPECT_EQ(s.keep.size(), 3u);
  // Nothing kept: A += 1e-6, all kept.
  s = train::select_training_samples({0, 0, 0, 0}, 2, 1);
  EXPECT_EQ(s.keep.size(), 4u);
  for (double x : s.advantages) EXPECT_EQ(x, 1e-6);
  expect_error([] { train::select_training_samples({1}, 0, 1); }, "num_batches");
}

// ---------------------------------------------------------------- policy loss validation

namespace {

train::GrpoStepInputs small_inputs() {
  const sample::SdeGrid g = sample::sde_grid(10, 5.0);
  train::GrpoStepInputs in;
  in.coeffs = sample::sde_coeffs(g, 0);
  const Shape shape = {2, 4, 3};
  in.x = randn(shape, 11, 0);
  in.x_next = randn(shape, 11, 1);
  in.v_cond = randn(shape, 11, 2);
  in.v_uncond = randn(shape, 11, 3);
  in.v_ref = randn(shape, 11, 4);
  in.logp_old = {0.1, 0.2};
  in.advantages = {1.0, -1.0};
  return in;
}

}  // namespace

TEST(GrpoPolicyLoss, BadInputs) {
  const train::GrpoLossConfig cfg;
  EXPECT_NO_THROW(train::grpo_policy_loss(small_inputs(), cfg));
  {
    auto in = small_inputs();
    in.v_cond = randn({2, 4, 4}, 1);
    expect_error([&] { train::grpo_policy_loss(in, cfg); }, "v_cond has shape [2, 4, 4]");
  }
  {
    auto in = small_inputs();
    in.x_next = in.x_next.to(DType::F64);
    expect_error([&] { train::grpo_policy_loss(in, cfg); }, "x_next");
  }
  {
    auto in = small_inputs();
    in.logp_old = {0.1, 0.2, 0.3};
    expect_error([&] { train::grpo_policy_loss(in, cfg); }, "3 logp_old values for a batch of 2");
  }
  {
    auto in = small_inputs();
    in.advantages = {1.0};
    expect_error([&] { train::grpo_policy_loss(in, cfg); }, "advantages");
  }
  {
    auto in = small_inputs();
    in.v_ref = Tensor();
    expect_error([&] { train::grpo_policy_loss(in, cfg); }, "v_ref");
    train::GrpoLossConfig no_kl = cfg;
    no_kl.kl_beta = 0;  // v_ref not needed then
    const train::GrpoStepResult r = train::grpo_policy_loss(in, no_kl);
    EXPECT_EQ(r.loss_kl, 0.0);
  }
  {
    auto in = small_inputs();
    in.coeffs = sample::SdeCoeffs{};
    expect_error([&] { train::grpo_policy_loss(in, cfg); }, "sde_coeffs");
  }
  {
    train::GrpoLossConfig bad = cfg;
    bad.num_sde_steps = 0;
    expect_error([&] { train::grpo_policy_loss(small_inputs(), bad); }, "num_sde_steps");
  }
}

TEST(GrpoPolicyLoss, AdvantageClampAndGuidanceOne) {
  // With g = 1 the gradient is independent of v_uncond; a clamped advantage acts as ±5.
  train::GrpoStepInputs in = small_inputs();
  train::GrpoLossConfig cfg;
  cfg.guidance = 1.0;
  cfg.kl_beta = 0;
  in.advantages = {9.0, -1.0};
  in.logp_old = train::grpo_policy_loss(in, cfg, false).logp;  // ratio = 1
  const train::GrpoStepResult a = train::grpo_policy_loss(in, cfg);
  in.advantages = {5.0, -1.0};
  in.v_uncond = randn(in.x.shape(), 99);
  const train::GrpoStepResult b = train::grpo_policy_loss(in, cfg);
  EXPECT_DOUBLE_EQ(a.loss, b.loss);
  EXPECT_EQ(a.grad_v_cond.to_float_vector(), b.grad_v_cond.to_float_vector());
  EXPECT_DOUBLE_EQ(a.ratio[0], 1.0);
  EXPECT_NEAR(a.loss_pg, (-5.0 + 1.0) / 2, 1e-12);
}

TEST(SdeStep, Windows) {
  const sample::SdeWindow f = sample::fixed_sde_window(25, 10);
  EXPECT_EQ(f.begin, 0);
  EXPECT_EQ(f.end, 10);
  EXPECT_TRUE(f.contains(9));
  EXPECT_FALSE(f.contains(10));
  expect_error([] { sample::fixed_sde_window(25, 26); }, "sde_steps");
  // MixGRPO FLUX settings: T 25, w 4, s 1, τ 25.
  auto w = sample::mixgrpo_sde_window(0, 25, 4, 1, 25);
  EXPECT_EQ(w.begin, 0);
  EXPECT_EQ(w.end, 4);
  w = sample::mixgrpo_sde_window(24, 25, 4, 1, 25);
  EXPECT_EQ(w.begin, 0);
  w = sample::mixgrpo_sde_window(25 * 11, 25, 4, 1, 25);
  EXPECT_EQ(w.begin, 11);
  EXPECT_EQ(w.end, 15);
  w = sample::mixgrpo_sde_window(25 * 21, 25, 4, 1, 25);  // clipped at T − 2 = 23
  EXPECT_EQ(w.begin, 21);
  EXPECT_EQ(w.end, 23);
  w = sample::mixgrpo_sde_window(25 * 22, 25, 4, 1, 25);  // the last non-empty window
  EXPECT_EQ(w.begin, 22);
  EXPECT_EQ(w.end, 23);
  EXPECT_EQ(sample::mixgrpo_sde_window(25 * 23, 25, 4, 1, 25).begin, 0);  // rolled back
  EXPECT_EQ(sample::mixgrpo_sde_window(25 * 24, 25, 4, 1, 25).begin, 1);
  EXPECT_EQ(sample::mixgrpo_sde_window(3 * 7, 25, 4, 3, 3).begin, 21);  // stride 3: 0, 3, .., 21
  EXPECT_EQ(sample::mixgrpo_sde_window(3 * 8, 25, 4, 3, 3).begin, 0);
  // Stride 0 freezes the window (MixGRPO-Flash*).
  EXPECT_EQ(sample::mixgrpo_sde_window(1000, 25, 4, 0, 20).begin, 0);
  expect_error([] { sample::mixgrpo_sde_window(0, 25, 0, 1, 1); }, "window size");
}

// The diagnostics: v_ms = mean(v²) of the CFG velocity and ref_ms = mean((v − v_ref)²) per
// sample, computed here by hand from the inputs; ref_ms is 0 without the KL term.
TEST(GrpoPolicyLoss, VelocityDiagnostics) {
  train::GrpoLossConfig cfg;
  cfg.kl_beta = 0.1;
  cfg.guidance = 4.0;
  const auto in = small_inputs();
  const auto r = train::grpo_policy_loss(in, cfg, false);
  const auto c = in.v_cond.to_float_vector(), u = in.v_uncond.to_float_vector(), ref = in.v_ref.to_float_vector();
  const size_t n = c.size() / 2;
  ASSERT_EQ(r.v_ms.size(), 2u);
  ASSERT_EQ(r.ref_ms.size(), 2u);
  for (size_t b = 0; b < 2; ++b) {
    double vv = 0, dd = 0;
    for (size_t i = b * n; i < (b + 1) * n; ++i) {
      const double v = double(u[i]) + 4.0 * (double(c[i]) - double(u[i]));
      vv += v * v;
      dd += (v - ref[i]) * (v - ref[i]);
    }
    EXPECT_NEAR(r.v_ms[b], vv / double(n), 1e-5 * vv / double(n));
    EXPECT_NEAR(r.ref_ms[b], dd / double(n), 1e-4 * dd / double(n));
  }
  cfg.kl_beta = 0;
  const auto r0 = train::grpo_policy_loss(in, cfg, false);
  EXPECT_EQ(r0.ref_ms[0], 0.0);
  EXPECT_EQ(r0.v_ms[0], r.v_ms[0]);
}
