// Hand-checkable values for the optimizer utilities: AdamW's first steps, the global grad norm,
// fixed and adaptive clipping, the weight EMA, the LR schedule, σ sampling and caption dropout.
#include <gtest/gtest.h>

#include <cmath>
#include <omp.h>

#include "osp/train/adamw.h"
#include "osp/train/ema.h"
#include "osp/train/grad_clip.h"
#include "osp/train/lr_schedule.h"
#include "osp/train/timesteps.h"

using namespace osp;
using namespace osp::train;

namespace {
struct Two {
  Tensor a = Tensor::from_vector({3.f, 0.f}, {2});
  Tensor b = Tensor::from_vector({0.f, 4.f, 0.f}, {3});
  Tensor ga = Tensor::from_vector({3.f, 0.f}, {2});
  Tensor gb = Tensor::from_vector({0.f, 4.f, 0.f}, {3});
  ParamTable table() { return {{"a", {2}, &a, &ga}, {"b", {3}, &b, &gb}}; }
};
}  // namespace

TEST(AdamW, FirstStepMovesBySignTimesLr) {
  // Step 1 with bias correction: m̂ = g, v̂ = g², update = lr·g/(|g| + eps) ≈ lr·sign(g).
  Tensor w = Tensor::from_vector({1.f, -2.f, 0.5f}, {3});
  Tensor g = Tensor::from_vector({0.5f, -4.f, 0.f}, {3});
  ParamTable t = {{"w", {3}, &w, &g}};
  AdamWConfig c;
  c.lr = 0.1;
  c.eps = 1e-8;
  c.weight_decay = 0.5;
  AdamW opt(t, c);
  opt.step(0.1);
  // decay factor 1 − 0.1·0.5 = 0.95
  EXPECT_NEAR(w.item({0}), 1.0 * 0.95 - 0.1, 1e-6);
  EXPECT_NEAR(w.item({1}), -2.0 * 0.95 + 0.1, 1e-6);
  EXPECT_NEAR(w.item({2}), 0.5 * 0.95, 1e-6);  // g = 0: only the decay
  EXPECT_NEAR(opt.slots()[0].m.item({1}), 0.1 * -4.0, 1e-6);
  EXPECT_NEAR(opt.slots()[0].v.item({1}), 0.001 * 16.0, 1e-6);
}

TEST(AdamW, RejectsBadTables) {
  Tensor w = Tensor::from_vector({1.f}, {1});
  Tensor g = Tensor::from_vector({1.f, 2.f}, {2});
  ParamTable t = {{"w", {1}, &w, &g}};
  try {
    AdamW opt(t, {});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
  }
  Tensor g1 = Tensor::from_vector({1.f}, {1});
  ParamTable dup = {{"w", {1}, &w, &g1}, {"w", {1}, &w, &g1}};
  EXPECT_THROW(AdamW(dup, {}), Error);
  AdamWConfig bad;
  bad.beta2 = 1.0;
  ParamTable ok = {{"w", {1}, &w, &g1}};
  EXPECT_THROW(AdamW(ok, bad), Error);
}

TEST(GradClip, GlobalNormAndFixedClipping) {
  Two s;
  auto t = s.table();
  EXPECT_DOUBLE_EQ(grad_norm(t), 5.0);  // sqrt(9 + 16)
  GradClipper fixed(GradClipConfig::parse("fixed:1"));
  const ClipResult r = fixed.clip(t);
  EXPECT_DOUBLE_EQ(r.norm, 5.0);
  EXPECT_TRUE(r.clipped);
  const double f = 1.0 / (5.0 + 1e-6);
  EXPECT_NEAR(s.ga.item({0}), 3.0 * f, 1e-7);
  EXPECT_NEAR(s.gb.item({1}), 4.0 * f, 1e-7);
  EXPECT_NEAR(grad_norm(t), 1.0, 1e-6);
  // Under the limit: untouched.
  GradClipper big(GradClipConfig::parse("fixed:10"));
  EXPECT_FALSE(big.clip(t).clipped);
  EXPECT_NEAR(grad_norm(t), 1.0, 1e-6);
}

TEST(GradClip, NormDoesNotDependOnThreadCount) {
  std::vector<float> v(300001);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(std::sin(double(i)) * 1e-3);
  Tensor w = Tensor::from_vector(v, {int64_t(v.size())});
  Tensor g = Tensor::from_vector(v, {int64_t(v.size())});
  ParamTable t = {{"w", w.shape(), &w, &g}};
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = grad_norm(t);
  omp_set_num_threads(3);
  const double three = grad_norm(t);
  omp_set_num_threads(threads);
  EXPECT_EQ(one, three);
}

TEST(GradClip, AdaptiveRule) {
  GradClipper c(GradClipConfig::parse("adaptive"));
  ClipResult r;
  // Step 1: mean = min(3·0.2, 1.0) = 0.6, var 0, no clipping.
  EXPECT_EQ(c.apply_rule(0.2, r), 1.0);
  EXPECT_DOUBLE_EQ(c.state().mean, 0.6);
  EXPECT_DOUBLE_EQ(c.state().var, 0.0);
  // Step 2: threshold 0.6; norm 0.5 ≤ 0.6 → mean = 0.99·0.6 + 0.01·0.5 = 0.599,
  // var = 0.01·(0.599 − 0.5)² = 0.01·0.009801.
  EXPECT_EQ(c.apply_rule(0.5, r), 1.0);
  EXPECT_DOUBLE_EQ(r.threshold, 0.6);
  EXPECT_NEAR(c.state().mean, 0.599, 1e-15);
  EXPECT_NEAR(c.state().var, 0.01 * 0.099 * 0.099, 1e-15);
  // Step 3: threshold = 0.599 + 3·sqrt(var) = 0.599 + 3·0.0099 = 0.6287; norm 2 is clipped to it,
  // the statistics stay.
  const auto before = c.state();
  const double f = c.apply_rule(2.0, r);
  EXPECT_NEAR(r.threshold, 0.6287, 1e-12);
  EXPECT_TRUE(r.clipped);
  EXPECT_NEAR(f, 0.6287 / (2.0 + 1e-6), 1e-12);
  EXPECT_EQ(c.state().mean, before.mean);
  EXPECT_EQ(c.state().var, before.var);
  // A large first norm starts the mean at 1.0.
  GradClipper c2(GradClipConfig::parse("adaptive"));
  c2.apply_rule(7.0, r);
  EXPECT_DOUBLE_EQ(c2.state().mean, 1.0);
  EXPECT_THROW(c2.apply_rule(std::nan(""), r), Error);
}

TEST(GradClip, ParseErrors) {
  EXPECT_THROW(GradClipConfig::parse("fixed:"), Error);
  EXPECT_THROW(GradClipConfig::parse("fixed:-1"), Error);
  EXPECT_THROW(GradClipConfig::parse("fixed:1x"), Error);
  EXPECT_THROW(GradClipConfig::parse("sometimes"), Error);
  EXPECT_EQ(GradClipConfig::parse("fixed:0.5").str(), "fixed:0.5");
}

TEST(Ema, Update) {
  Tensor w = Tensor::from_vector({1.f, 2.f}, {2});
  Ema e({w}, 0.9);
  Tensor w2 = Tensor::from_vector({2.f, 0.f}, {2});
  e.update({w2});
  EXPECT_NEAR(e.weights()[0].item({0}), 1.1, 1e-6);  // 1 + 0.1·(2 − 1)
  EXPECT_NEAR(e.weights()[0].item({1}), 1.8, 1e-6);  // 2 + 0.1·(0 − 2)
  e.update({w2});
  EXPECT_NEAR(e.weights()[0].item({0}), 1.19, 1e-6);
  EXPECT_THROW(Ema({w}, 1.0), Error);
}

TEST(LrSchedule, WarmupConstantCosine) {
  LrSchedule s;
  s.lr = 1.0;
  s.warmup = 4;
  s.total = 12;
  EXPECT_DOUBLE_EQ(s.at(0), 0.25);
  EXPECT_DOUBLE_EQ(s.at(3), 1.0);
  EXPECT_DOUBLE_EQ(s.at(100), 1.0);
  s.kind = LrSchedule::Kind::Cosine;
  EXPECT_DOUBLE_EQ(s.at(1), 0.5);
  EXPECT_DOUBLE_EQ(s.at(4), 1.0);
  EXPECT_NEAR(s.at(8), 0.5, 1e-15);  // halfway through the 8 decay steps
  EXPECT_NEAR(s.at(12), 0.0, 1e-15);
  EXPECT_NEAR(s.at(50), 0.0, 1e-15);
  EXPECT_THROW(LrSchedule::parse_kind("linear"), Error);
}

TEST(Timesteps, DynamicShiftValuesOfTheSpec) {
  EXPECT_NEAR(dynamic_shift(90, 160), 2.904, 1e-3);   // 720p
  EXPECT_NEAR(dynamic_shift(96, 160), 3.024, 1e-3);   // 768p
  EXPECT_NEAR(dynamic_shift(60, 104), 2.056, 1e-3);   // 480p
  EXPECT_NEAR(dynamic_shift(16, 64), std::exp(0.5), 1e-12);  // seq 256 → μ = 0.5
}

TEST(Timesteps, LogitNormalWithShift) {
  TimestepConfig c;
  TimestepSampler plain(7, c);
  c.shift = 3.0;
  TimestepSampler shifted(7, c);
  double mean = 0, mean_shifted = 0;
  const int n = 4000;
  for (int s = 0; s < n; ++s) {
    const double a = plain.sigma(s, 0, 8, 8), b = shifted.sigma(s, 0, 8, 8);
    ASSERT_GT(a, 0.0);
    ASSERT_LT(a, 1.0);
    EXPECT_NEAR(b, 3 * a / (1 + 2 * a), 1e-6);  // the same draw, shifted
    mean += a;
    mean_shifted += b;
  }
  EXPECT_NEAR(mean / n, 0.5, 0.02);  // sigmoid(N(0,1)) is symmetric about 1/2
  EXPECT_GT(mean_shifted / n, 0.6);
  // Pure function of (seed, step, sample): asking again gives the same value; other seeds differ.
  EXPECT_EQ(plain.sigma(11, 2, 8, 8), plain.sigma(11, 2, 8, 8));
  EXPECT_NE(plain.sigma(11, 2, 8, 8), TimestepSampler(8, {}).sigma(11, 2, 8, 8));
  EXPECT_NE(plain.sigma(11, 2, 8, 8), plain.sigma(11, 3, 8, 8));
  c.dynamic_shift = true;
  TimestepSampler dyn(7, c);
  const double sh = dynamic_shift(16, 64);
  const double a = plain.sigma(5, 0, 16, 64);
  EXPECT_NEAR(dyn.sigma(5, 0, 16, 64), sh * a / (1 + (sh - 1) * a), 1e-6);
}

TEST(Timesteps, CaptionDropoutRateAndNoise) {
  TimestepSampler s(3, {});
  int dropped = 0;
  for (int k = 0; k < 10000; ++k) dropped += s.drop_caption(k, 0, 0.1);
  EXPECT_NEAR(dropped / 10000.0, 0.1, 0.01);
  for (int k = 0; k < 100; ++k) EXPECT_FALSE(s.drop_caption(k, 0, 0.0));
  for (int k = 0; k < 100; ++k) EXPECT_TRUE(s.drop_caption(k, 0, 1.0));
  const Tensor a = s.noise({2, 3, 4}, 5, 1), b = s.noise({2, 3, 4}, 5, 1), c = s.noise({2, 3, 4}, 5, 0);
  EXPECT_EQ(max_abs_diff(a, b), 0.0);
  EXPECT_GT(max_abs_diff(a, c), 0.0);
}
