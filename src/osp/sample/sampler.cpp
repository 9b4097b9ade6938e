#include "osp/sample/sampler.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "osp/ops/ops.h"

namespace osp::sample {

// ------------------------------------------------------------------ Sampler

double Sampler::timestep(int i) const {
  OSP_CHECK(i >= 0 && i < steps(), "sampler: step ", i, " out of range [0, ", steps(), ")");
  return sched_.timesteps[size_t(i)];
}

float Sampler::sigma(int i) const {
  OSP_CHECK(i >= 0 && i <= steps(), "sampler: sigma index ", i, " out of range [0, ", steps(), "]");
  return sched_.sigmas[size_t(i)];
}

void Sampler::check_step(int i, const Tensor& v, const Tensor& x, int expected) const {
  OSP_CHECK(i == expected, name(), ": step ", i, " called out of order (expected step ", expected,
            "); call reset() to start a new trajectory");
  OSP_CHECK(i < steps(), name(), ": step ", i, " past the last step ", steps() - 1);
  OSP_CHECK(x.defined() && v.defined(), name(), ": undefined latent or velocity tensor");
  check_dtype(x, DType::F32, "sampler latent x");
  check_dtype(v, DType::F32, "sampler velocity v");
  OSP_CHECK(x.shape() == v.shape(), name(), ": velocity shape ", shape_str(v.shape()),
            " differs from latent shape ", shape_str(x.shape()));
  check_same_device(x, v, "sampler latent/velocity");
  OSP_CHECK(x.is_contiguous(), name(), ": the latent must be contiguous");
}

// ------------------------------------------------------------------ UniPC

UniPCSampler::UniPCSampler(int steps, double shift) : Sampler(wan_unipc_schedule(steps, shift)) {}

void UniPCSampler::reset() {
  m_prev_ = m_last_ = x_last_ = Tensor();
  next_ = 0;
  order_prev_ = 0;
  lower_order_nums_ = 0;
}

float UniPCSampler::lambda(int i) const {
  const float s = sched_.sigmas[size_t(i)];
  const float a = 1.0f - s;
  return std::log(a) - std::log(s);  // fp32 like the reference's 0-d tensors; +inf at s = 0
}

namespace {
// Solves [[1, 1], [rk, 1]]·ρ = b in fp32 with partial pivoting (what LAPACK sgesv does).
std::pair<float, float> solve_2x2(float rk, float b1, float b2) {
  float a00 = 1.f, a01 = 1.f, a10 = rk, a11 = 1.f, r0 = b1, r1 = b2;
  if (std::fabs(a10) > std::fabs(a00)) {
    std::swap(a00, a10);
    std::swap(a01, a11);
    std::swap(r0, r1);
  }
  const float l = a10 / a00;
  const float u11 = a11 - l * a01;
  const float y1 = r1 - l * r0;
  const float x1 = y1 / u11;
  const float x0 = (r0 - a01 * x1) / a00;
  return {x0, x1};
}
}  // namespace

void UniPCSampler::step(int i, const Tensor& v, Tensor& x) {
  check_step(i, v, x, next_);
  const int S = steps();
  auto like = [&](Tensor& t) {
    if (!t.defined() || t.shape() != x.shape() || t.device() != x.device())
      t = Tensor::empty(x.shape(), DType::F32, x.device());
  };
  like(m_);
  like(tmp_);
  like(tmp2_);

  // x0 prediction from the (uncorrected) sample: m = x − σ_i·v.
  const float s_i = sched_.sigmas[size_t(i)];
  ops::axpby(1.0f, x, -s_i, v, m_);

  // UniC corrector for the step i−1 → i, using the new model output m (never re-evaluated).
  if (i > 0) {
    const float s0 = sched_.sigmas[size_t(i - 1)], s = s_i;
    const float alpha = 1.0f - s;
    const float h = lambda(i) - lambda(i - 1);
    const float hh = -h;
    const float phi1 = std::expm1(hh);
    const float B = std::expm1(hh);
    // base = (s/s0)·x_last − (α·φ1)·M[1]
    ops::axpby(s / s0, x_last_, -(alpha * phi1), m_last_, tmp_);
    if (order_prev_ == 1) {
      // x = base − α·B·(0.5·(m − M[1]))
      ops::axpby(0.5f, m_, -0.5f, m_last_, tmp2_);
      ops::axpby(1.0f, tmp_, -(alpha * B), tmp2_, x);
    } else {
      const float rk = (lambda(i - 2) - lambda(i - 1)) / h;
      float hk = phi1 / hh - 1.0f;
      const float b1 = hk * 1.0f / B;
      hk = hk / hh - 0.5f;
      const float b2 = hk * 2.0f / B;
      const auto [rho0, rho1] = solve_2x2(rk, b1, b2);
      // total = ρ0·(M[0] − M[1])/rk + ρ1·(m − M[1]);  x = base − α·B·total
      ops::axpby(1.0f, m_prev_, -1.0f, m_last_, tmp2_);  // M[0] − M[1]
      ops::axpby(1.0f, m_, -1.0f, m_last_, x);           // D1_t (x is free: not used by UniC)
      Tensor total = Tensor::empty(x.shape(), DType::F32, x.device());
      ops::axpby(rho0 / rk, tmp2_, rho1, x, total);
      ops::axpby(1.0f, tmp_, -(alpha * B), total, x);
    }
  }

  // Shift the history: M[0] ← M[1], M[1] ← m.
  std::swap(m_prev_, m_last_);  // m_prev_ = old M[1]
  std::swap(m_last_, m_);       // m_last_ = m; m_ = old M[0] (reused as workspace)

  const int order = std::min({2, S - i, lower_order_nums_ + 1});
  like(x_last_);
  x_last_.copy_from(x);

  // UniP predictor σ_i → σ_{i+1}.
  {
    const float s0 = sched_.sigmas[size_t(i)], s = sched_.sigmas[size_t(i + 1)];
    const float alpha = 1.0f - s;
    const float h = lambda(i + 1) - lambda(i);  // +inf at the last step (σ_S = 0)
    const float hh = -h;
    const float phi1 = std::expm1(hh);
    const float B = std::expm1(hh);
    if (order == 1) {
      ops::axpby(s / s0, x_last_, -(alpha * phi1), m_last_, x);
    } else {
      const float rk = (lambda(i - 1) - lambda(i)) / h;
      ops::axpby(s / s0, x_last_, -(alpha * phi1), m_last_, tmp_);
      ops::axpby(1.0f, m_prev_, -1.0f, m_last_, tmp2_);  // M[0] − M[1]
      // x = base − α·B·0.5·(M[0] − M[1])/rk   (ρ_p = 0.5 for order 2)
      ops::axpby(1.0f, tmp_, -(alpha * B) * (0.5f / rk), tmp2_, x);
    }
  }
  lower_order_nums_ = std::min(lower_order_nums_ + 1, 2);
  order_prev_ = order;
  ++next_;
}

// ------------------------------------------------------------------ Euler

EulerSampler::EulerSampler(int steps, double shift) : Sampler(euler_schedule(steps, shift)) {}

void EulerSampler::step(int i, const Tensor& v, Tensor& x) {
  check_step(i, v, x, next_);
  const float dt = sched_.sigmas[size_t(i + 1)] - sched_.sigmas[size_t(i)];
  Tensor out = Tensor::empty(x.shape(), DType::F32, x.device());
  ops::axpby(1.0f, x, dt, v, out);
  x.copy_from(out);
  ++next_;
}

// ------------------------------------------------------------------ factory, CFG

std::unique_ptr<Sampler> make_sampler(const std::string& name, int steps, double shift) {
  if (name == "unipc") return std::make_unique<UniPCSampler>(steps, shift);
  if (name == "euler") return std::make_unique<EulerSampler>(steps, shift);
  fail(str("unknown sampler '", name, "': choose unipc (Wan2.1 reference) or euler (OSP-Next)"));
}

void cfg_combine(const Tensor& v_cond, const Tensor& v_uncond, float guidance, Tensor& out) {
  OSP_CHECK(std::isfinite(guidance), "guidance scale must be finite, got ", guidance);
  OSP_CHECK(v_cond.shape() == v_uncond.shape(), "cfg: cond shape ", shape_str(v_cond.shape()),
            " differs from uncond shape ", shape_str(v_uncond.shape()));
  ops::axpby(guidance, v_cond, 1.0f - guidance, v_uncond, out);
}

}  // namespace osp::sample
