// Mix-GRPO against golden_train.safetensors `grpo.*` (one OSP-Next policy step: Euler grid 25
// steps shift 5, step 3, σ_t = t, group of 4, CFG 5, ε 5e-3, β 0.004, 10 SDE steps), plus a
// float64 finite-difference check of dL/dv_cond and the input validation.
//
// About the tolerances: the generator worked in float64 and stored its inputs (x, v, ξ,
// rewards) as f32 casts, so recomputing from the file carries ~1e-8 relative input error.
// Every quantity is compared at ≤ 1e-6 relative, except two that are differences of nearly
// equal numbers: A_0 (≈ 4e-17, its group's mean reward) is compared absolutely, and the PPO
// term L_pg = mean_b max(−A·r, …) (≈ −1.4e-5 out of terms ≈ 1, since ΣA = 0) is compared
// (a) end to end relative to the size of its terms mean_b|A·r|, and (b) at ≤ 1e-6 relative
// from the golden advantages and ratios.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "osp/core/philox.h"
#include "osp/io/safetensors.h"
#include "osp/sample/sde_step.h"
#include "osp/train/grpo.h"
#include "test_util.h"

using namespace osp;

namespace {

struct Golden {
  io::SafetensorsFile file;
  nlohmann::json meta;
  Tensor t(const std::string& name) const { return file.get("grpo." + name).clone(); }
  std::vector<double> vec(const std::string& name) const {
    Tensor x = file.get("grpo." + name);
    std::vector<double> v(size_t(x.numel()));
    for (int64_t i = 0; i < x.numel(); ++i) v[size_t(i)] = x.reshape({-1}).item({i});
    return v;
  }
};

const Golden& golden() {
  static Golden* g = [] {
    auto* r = new Golden;
    r->file = io::SafetensorsFile::open(test::golden("golden_train.safetensors"));
    r->meta = nlohmann::json::parse(r->file.metadata().at("grpo"));
    return r;
  }();
  return *g;
}

double rel(double a, double b) { return std::fabs(a - b) / std::fabs(b); }

Tensor to_f64(const Tensor& t) {
  Tensor c = t.to(Device::cpu()).contiguous();
  Tensor o = Tensor::empty(c.shape(), DType::F64);
  const std::vector<float> v = c.to_float_vector();
  for (size_t i = 0; i < v.size(); ++i) o.data<double>()[i] = v[i];
  return o;
}

// Relative L2 error of a (F32 or F64) against a golden F32 tensor, in double.
double rel_l2(const Tensor& a, const Tensor& ref) {
  Tensor x = a.dtype() == DType::F64 ? a : to_f64(a);
  Tensor y = to_f64(ref);
  double num = 0, den = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    const double d = x.data<double>()[i] - y.data<double>()[i];
    num += d * d;
    den += y.data<double>()[i] * y.data<double>()[i];
  }
  return std::sqrt(num / den);
}

struct GrpoCase {
  sample::SdeGrid grid;
  sample::SdeCoeffs c;
  train::GrpoLossConfig cfg;
  int group = 4;
};

GrpoCase grpo_case() {
  const auto& m = golden().meta;
  GrpoCase s;
  s.grid = sample::sde_grid(m.at("steps").get<int>(), m.at("shift").get<double>());
  s.c = sample::sde_coeffs(s.grid, m.at("step_index").get<int>(), sample::NoiseLevel::Linear);
  s.cfg.guidance = m.at("guidance").get<double>();
  s.cfg.clip_range = m.at("clip").get<double>();
  s.cfg.adv_clip = m.at("adv_clip").get<double>();
  s.cfg.kl_beta = m.at("beta_kl").get<double>();
  s.cfg.num_sde_steps = 10;  // metadata `loss`: "(PPO-clip + beta*KL)/10 (10 SDE steps)"
  s.group = m.at("group").get<int>();
  return s;
}

train::GrpoStepInputs golden_inputs(const GrpoCase& s, bool f64) {
  const Golden& g = golden();
  auto T = [&](const char* n) { return f64 ? to_f64(g.t(n)) : g.t(n); };
  train::GrpoStepInputs in;
  in.coeffs = s.c;
  in.x = T("x");
  in.x_next = T("x_next");
  in.v_cond = T("v_cond");
  in.v_uncond = T("v_uncond");
  in.v_ref = T("v_ref");
  in.logp_old = g.vec("logp_old");
  in.advantages = g.vec("advantages");
  return in;
}

}  // namespace

TEST(GrpoGolden, EulerGridAndStd) {
  const GrpoCase s = grpo_case();
  const Tensor sig = golden().file.get("grpo.sigmas");
  ASSERT_EQ(sig.numel(), s.grid.steps() + 1);
  for (int i = 0; i <= s.grid.steps(); ++i)
    EXPECT_EQ(float(s.grid.sigma(i)), sig.data<float>()[i]) << "sigma " << i;
  EXPECT_EQ(s.grid.sigma(0), 1.0);
  EXPECT_EQ(s.grid.sigma(s.grid.steps()), 0.0);
  // std = σ_t·sqrt(−Δ) with σ_t = t, from the double grid.
  EXPECT_LE(rel(s.c.std, golden().vec("std")[0]), 1e-12);
  EXPECT_DOUBLE_EQ(s.c.sigma_t, s.c.t);
}

TEST(GrpoGolden, RolloutSdeStep) {
  const GrpoCase s = grpo_case();
  const Golden& g = golden();
  for (bool f64 : {false, true}) {
    SCOPED_TRACE(f64 ? "f64" : "f32");
    auto T = [&](const char* n) { return f64 ? to_f64(g.t(n)) : g.t(n); };
    const Tensor x = T("x"), vc = T("v_cond"), vu = T("v_uncond"), xi = T("xi");
    Tensor v = Tensor::empty(x.shape(), x.dtype());
    sample::lincomb(s.cfg.guidance, vc, 1.0 - s.cfg.guidance, vu, v);
    Tensor mu = Tensor::empty(x.shape(), x.dtype()), xn = Tensor::empty(x.shape(), x.dtype());
    const std::vector<double> logp = sample::sde_step(s.c, x, v, xi, mu, xn);
    EXPECT_LE(rel_l2(mu, g.t("mu_old")), 1e-6);
    EXPECT_LE(rel_l2(xn, g.t("x_next")), 1e-6);
    // logp_old = exact rollout log-prob − 4e-3·b (metadata `logp_old`).
    const std::vector<double> old = g.vec("logp_old");
    ASSERT_EQ(logp.size(), old.size());
    for (size_t b = 0; b < logp.size(); ++b)
      EXPECT_LE(rel(logp[b], old[b] + 4e-3 * double(b)), 1e-6) << "sample " << b;
  }
}

TEST(GrpoGolden, AdvantagesUseUnbiasedStd) {
  const GrpoCase s = grpo_case();
  const std::vector<double> r = golden().vec("rewards");
  const std::vector<double> want = golden().vec("advantages");
  train::AdvantageOptions opt;
  opt.eps = golden().meta.at("adv_eps").get<double>();
  const std::vector<double> a = train::grpo_advantages(r, s.group, opt);
  ASSERT_EQ(a.size(), want.size());
  // Rewards are stored as f32 casts of the generator's float64 values: ~1e-8 input error.
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], want[i], 1e-6) << "sample " << i;
  for (size_t i = 1; i < a.size(); ++i) EXPECT_LE(rel(a[i], want[i]), 1e-6) << "sample " << i;
  // The biased (numpy) std gives clearly different values: the golden uses n − 1.
  opt.unbiased_std = false;
  const std::vector<double> biased = train::grpo_advantages(r, s.group, opt);
  EXPECT_GT(std::fabs(biased[1] - want[1]), 0.1);
}

TEST(GrpoGolden, PolicyLossAndGradient) {
  const GrpoCase s = grpo_case();
  const Golden& g = golden();
  const std::vector<double> logp = g.vec("logp"), ratio = g.vec("ratio"), A = g.vec("advantages");
  const double pg = g.vec("loss_pg")[0], kl = g.vec("loss_kl")[0], loss = g.vec("loss")[0];
  // The size of the PPO terms, for the end-to-end comparison of the cancelling sum.
  double scale = 0;
  for (size_t b = 0; b < A.size(); ++b) scale += std::fabs(A[b] * ratio[b]) / double(A.size());
  for (bool f64 : {false, true}) {
    SCOPED_TRACE(f64 ? "f64" : "f32");
    const train::GrpoStepInputs in = golden_inputs(s, f64);
    const train::GrpoStepResult r = train::grpo_policy_loss(in, s.cfg);
    for (size_t b = 0; b < logp.size(); ++b) {
      EXPECT_LE(rel(r.logp[b], logp[b]), 1e-6) << "logp " << b;
      EXPECT_LE(rel(r.ratio[b], ratio[b]), 1e-6) << "ratio " << b;
    }
    EXPECT_LE(rel(r.loss_kl, kl), 1e-6);
    EXPECT_LE(std::fabs(r.loss_pg - pg), 1e-6 * scale);
    EXPECT_LE(std::fabs(r.loss - loss), 1e-6 * scale / 10);
    const double gerr = rel_l2(r.grad_v_cond, g.t("grad.v_cond"));
    std::printf("[%s] loss_pg %.10g (golden %.10g), loss_kl rel %.2e, grad.v_cond rel %.2e\n",
                f64 ? "f64" : "f32", r.loss_pg, pg, rel(r.loss_kl, kl), gerr);
    EXPECT_LE(gerr, 1e-6);
    // Two of the four ratios (1.008, 1.012) lie outside 1 ± 5e-3.
    EXPECT_DOUBLE_EQ(r.clip_fraction, 0.5);

    // From the golden ratios (logp_old chosen so that exp(logp − logp_old) is the golden
    // ratio): the PPO-clip and total loss at ≤ 1e-6 relative.
    train::GrpoStepInputs in2 = in;
    for (size_t b = 0; b < logp.size(); ++b) in2.logp_old[b] = r.logp[b] - std::log(ratio[b]);
    const train::GrpoStepResult r2 = train::grpo_policy_loss(in2, s.cfg);
    EXPECT_LE(rel(r2.loss_pg, pg), 1e-6);
    EXPECT_LE(rel(r2.loss, loss), 1e-6);
    EXPECT_LE(rel_l2(r2.grad_v_cond, g.t("grad.v_cond")), 1e-6);
  }
}

// ---------------------------------------------------------------- finite differences (f64)

namespace {

Tensor rand64(const Shape& shape, uint64_t seed, uint32_t stream, double scale, double shift = 0) {
  Tensor f = randn(shape, seed, stream);
  Tensor o = Tensor::empty(shape, DType::F64);
  for (int64_t i = 0; i < f.numel(); ++i) o.data<double>()[i] = shift + scale * f.data<float>()[i];
  return o;
}

}  // namespace

TEST(GrpoGradient, FiniteDifferencesFloat64) {
  const sample::SdeGrid grid = sample::sde_grid(12, 3.0);
  const sample::SdeCoeffs c = sample::sde_coeffs(grid, 2);
  const Shape shape = {4, 2, 3, 4};
  train::GrpoStepInputs in;
  in.coeffs = c;
  in.x = rand64(shape, 7, 0, 1.0);
  in.v_cond = rand64(shape, 7, 1, 1.0);
  in.v_uncond = rand64(shape, 7, 2, 1.0);
  in.v_ref = rand64(shape, 7, 3, 1.0);
  // x_next from the policy's own mean plus noise, then logp_old offsets that put the ratios
  // inside the clip range (samples 0, 1) and beyond it on either side (2, 3).
  train::GrpoLossConfig cfg;
  cfg.guidance = 4.0;
  cfg.kl_beta = 0.3;  // large enough that the KL gradient matters
  cfg.num_sde_steps = 3;
  Tensor v = Tensor::empty(shape, DType::F64), mu = Tensor::empty(shape, DType::F64);
  sample::lincomb(cfg.guidance, in.v_cond, 1 - cfg.guidance, in.v_uncond, v);
  sample::sde_mean(c, in.x, v, mu);
  in.x_next = Tensor::empty(shape, DType::F64);
  sample::sde_sample(c, mu, rand64(shape, 7, 4, 1.0), in.x_next);
  const std::vector<double> lp = sample::sde_log_prob(c, in.x_next, mu);
  const double off[4] = {0.002, -0.003, 0.02, -0.02};
  in.advantages = {0.7, -1.3, 1.1, -6.0};  // the last one is clamped to −5
  for (int b = 0; b < 4; ++b) in.logp_old.push_back(lp[size_t(b)] - off[b]);

  const train::GrpoStepResult r = train::grpo_policy_loss(in, cfg);
  ASSERT_EQ(r.grad_v_cond.dtype(), DType::F64);
  EXPECT_DOUBLE_EQ(r.clip_fraction, 0.5);
  const double h = 1e-5;
  double num = 0, den = 0, maxd = 0;
  for (int64_t k = 0; k < in.v_cond.numel(); ++k) {
    train::GrpoStepInputs p = in;
    p.v_cond = in.v_cond.clone();
    double* e = p.v_cond.data<double>() + k;
    const double e0 = *e;
    *e = e0 + h;
    const double lp1 = train::grpo_policy_loss(p, cfg, false).loss;
    *e = e0 - h;
    const double lm1 = train::grpo_policy_loss(p, cfg, false).loss;
    const double fd = (lp1 - lm1) / (2 * h);
    const double an = r.grad_v_cond.data<double>()[k];
    num += (fd - an) * (fd - an);
    den += an * an;
    maxd = std::max(maxd, std::fabs(fd - an));
  }
  EXPECT_GT(den, 0);
  std::printf("finite differences: rel L2 %.2e, max abs diff %.2e (grad max %.2e)\n",
              std::sqrt(num / den), maxd, std::sqrt(den / double(in.v_cond.numel())));
  EXPECT_LE(std::sqrt(num / den), 1e-6) << "max abs diff " << maxd;

  // The f32 path agrees with the f64 reference.
  auto f32 = [](const Tensor& t) { return t.to(DType::F32); };
  train::GrpoStepInputs in32 = in;
  in32.x = f32(in.x);
  in32.x_next = f32(in.x_next);
  in32.v_cond = f32(in.v_cond);
  in32.v_uncond = f32(in.v_uncond);
  in32.v_ref = f32(in.v_ref);
  const train::GrpoStepResult r32 = train::grpo_policy_loss(in32, cfg);
  EXPECT_LE(rel_l2(r.grad_v_cond, r32.grad_v_cond), 1e-4);
  EXPECT_NEAR(r32.loss, r.loss, 1e-6 * std::fabs(r.loss) + 1e-9);
}
