#include "osp/sample/sde_step.h"

#include <algorithm>
#include <cmath>

#include "osp/core/error.h"
#include "osp/ops/ops.h"
#include "osp/sample/schedule.h"

namespace osp::sample {

double SdeGrid::sigma(int i) const {
  OSP_CHECK(i >= 0 && i <= steps(), "SdeGrid: sigma index ", i, " outside [0, ", steps(), "]");
  return sigmas[size_t(i)];
}
double SdeGrid::timestep(int i) const { return 1000.0 * sigma(i); }
double SdeGrid::dt(int i) const {
  OSP_CHECK(i >= 0 && i < steps(), "SdeGrid: step index ", i, " outside [0, ", steps(), ")");
  return sigmas[size_t(i) + 1] - sigmas[size_t(i)];
}

SdeGrid sde_grid(int steps, double shift) {
  check_schedule_args(steps, shift);
  const std::vector<double> u = linspace(1.0, 0.0, steps + 1);
  SdeGrid g;
  g.sigmas.reserve(u.size());
  for (double s : u) g.sigmas.push_back(shift == 1.0 ? s : shift_sigma(s, shift));
  return g;
}

SdeWindow fixed_sde_window(int steps, int k) {
  OSP_CHECK(steps >= 1, "fixed_sde_window: steps must be >= 1, got ", steps);
  OSP_CHECK(k >= 0 && k <= steps, "sde_steps must be in [0, ", steps, "] (the rollout steps), got ",
            k);
  return {0, k};
}

SdeWindow mixgrpo_sde_window(int iteration, int steps, int size, int stride, int tau) {
  OSP_CHECK(steps >= 3, "mixgrpo_sde_window: steps must be >= 3, got ", steps);
  OSP_CHECK(size >= 1, "mixgrpo_sde_window: window size must be >= 1, got ", size);
  OSP_CHECK(stride >= 0, "mixgrpo_sde_window: stride must be >= 0, got ", stride);
  OSP_CHECK(tau >= 1, "mixgrpo_sde_window: tau (iterations per shift) must be >= 1, got ", tau);
  OSP_CHECK(iteration >= 0, "mixgrpo_sde_window: iteration must be >= 0, got ", iteration);
  const int last = steps - 2;  // exclusive end of trainable steps
  int begin = 0;
  if (stride > 0) {
    // l takes the values 0, s, 2s, ... while l < steps − 2 (a non-empty window), then rolls
    // back to 0.
    const int64_t positions = int64_t(last - 1) / stride + 1;
    begin = int((int64_t(iteration / tau) % positions) * stride);
  }
  return {begin, std::min(begin + size, last)};
}

SdeCoeffs sde_coeffs(const SdeGrid& grid, int i, NoiseLevel level, double eta) {
  OSP_CHECK(grid.steps() >= 1, "sde_coeffs: empty grid");
  OSP_CHECK(i >= 0 && i < grid.steps(), "sde_coeffs: step ", i, " outside [0, ", grid.steps(),
            ")");
  SdeCoeffs c;
  c.step = i;
  c.t = grid.sigmas[size_t(i)];
  c.dt = grid.sigmas[size_t(i) + 1] - c.t;
  OSP_CHECK(c.t > 0, "sde_coeffs: step ", i, " starts at σ = 0; the SDE needs σ_i > 0");
  OSP_CHECK(c.dt < 0, "sde_coeffs: step ", i, " has Δ = ", c.dt,
            " (the grid must decrease strictly)");
  switch (level) {
    case NoiseLevel::Linear:
      c.sigma_t = c.t;
      break;
    case NoiseLevel::FlowGrpo: {
      OSP_CHECK(std::isfinite(eta) && eta >= 0, "sde_coeffs: eta must be >= 0, got ", eta);
      const double den = 1.0 - (c.t == 1.0 ? grid.sigmas.at(1) : c.t);
      OSP_CHECK(den > 0, "sde_coeffs: Flow-GRPO noise level undefined at step ", i);
      c.sigma_t = eta * std::sqrt(c.t / den);
      break;
    }
  }
  const double s2 = c.sigma_t * c.sigma_t;
  c.cx = 1.0 + s2 / (2.0 * c.t) * c.dt;
  c.cv = (1.0 + s2 * (1.0 - c.t) / (2.0 * c.t)) * c.dt;
  c.std = c.sigma_t * std::sqrt(-c.dt);
  return c;
}

namespace {

void check_pair(const Tensor& x, const Tensor& y, const char* op) {
  OSP_CHECK(x.defined() && y.defined(), op, ": undefined tensor");
  OSP_CHECK(x.shape() == y.shape(), op, ": shape mismatch ", shape_str(x.shape()), " vs ",
            shape_str(y.shape()));
  OSP_CHECK(x.dtype() == y.dtype(), op, ": dtype mismatch ", x.desc(), " vs ", y.desc());
  OSP_CHECK(x.device() == y.device(), op, ": device mismatch ", x.desc(), " vs ", y.desc());
}

// Per-sample element count and sample count of a [B, ...] tensor.
void split_batch(const Tensor& t, int64_t& B, int64_t& n) {
  OSP_CHECK(t.numel() > 0, "empty latent tensor ", t.desc());
  B = t.dim() >= 2 ? t.size(0) : 1;
  n = t.numel() / B;
}

}  // namespace

void lincomb(double a, const Tensor& x, double b, const Tensor& y, Tensor& out) {
  check_pair(x, y, "sample::lincomb");
  check_pair(x, out, "sample::lincomb (out)");
  OSP_CHECK(out.is_contiguous(), "sample::lincomb: out must be contiguous, got ", out.desc());
  if (x.dtype() == DType::F32) {
    ops::axpby(float(a), x, float(b), y, out);
    return;
  }
  OSP_CHECK(x.dtype() == DType::F64 && x.device().is_cpu(),
            "sample::lincomb: tensors must be f32 (any device) or f64 on the CPU, got ", x.desc());
  const Tensor xc = x.contiguous(), yc = y.contiguous();
  const double* px = xc.data<double>();
  const double* py = yc.data<double>();
  double* po = out.data<double>();
  const int64_t n = out.numel();
  for (int64_t i = 0; i < n; ++i) po[i] = a * px[i] + b * py[i];
}

void sde_mean(const SdeCoeffs& c, const Tensor& x, const Tensor& v, Tensor& mu) {
  lincomb(c.cx, x, c.cv, v, mu);
}

void sde_sample(const SdeCoeffs& c, const Tensor& mu, const Tensor& xi, Tensor& x_next) {
  lincomb(1.0, mu, c.std, xi, x_next);
}

std::vector<double> sde_step(const SdeCoeffs& c, const Tensor& x, const Tensor& v,
                             const Tensor& xi, Tensor& mu, Tensor& x_next) {
  sde_mean(c, x, v, mu);
  sde_sample(c, mu, xi, x_next);
  // x_next − μ = std·ξ up to the rounding of x_next; use the stored x_next like training does.
  return sde_log_prob(c, x_next, mu);
}

void ode_step(const SdeGrid& grid, int i, const Tensor& v, Tensor& x) {
  lincomb(1.0, x, grid.dt(i), v, x);
}

std::vector<double> per_sample_sum_sq(const Tensor& t0) {
  int64_t B = 0, n = 0;
  split_batch(t0, B, n);
  std::vector<double> out(size_t(B), 0.0);
  if (t0.dtype() == DType::F64) {
    const Tensor t = t0.to(Device::cpu()).contiguous();
    const double* p = t.data<double>();
    for (int64_t b = 0; b < B; ++b) {
      double s = 0;
      for (int64_t i = 0; i < n; ++i) s += p[b * n + i] * p[b * n + i];
      out[size_t(b)] = s;
    }
    return out;
  }
  OSP_CHECK(t0.dtype() == DType::F32, "per_sample_sum_sq: f32 or f64 expected, got ", t0.desc());
  const Tensor t = t0.to(Device::cpu()).contiguous();
  const float* p = t.data<float>();
  for (int64_t b = 0; b < B; ++b) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += double(p[b * n + i]) * double(p[b * n + i]);
    out[size_t(b)] = s;
  }
  return out;
}

std::vector<double> sde_log_prob_from_residual(double std, const Tensor& residual) {
  OSP_CHECK(std > 0 && std::isfinite(std), "sde_log_prob: std must be positive, got ", std);
  int64_t B = 0, n = 0;
  split_batch(residual, B, n);
  const std::vector<double> ss = per_sample_sum_sq(residual);
  const double c0 = -std::log(std) - 0.5 * std::log(2.0 * M_PI);
  std::vector<double> out(ss.size());
  for (size_t b = 0; b < ss.size(); ++b) out[b] = -ss[b] / (2.0 * std * std * double(n)) + c0;
  return out;
}

std::vector<double> sde_log_prob(const SdeCoeffs& c, const Tensor& x_next, const Tensor& mu) {
  check_pair(x_next, mu, "sde_log_prob");
  Tensor r = Tensor::empty(mu.shape(), mu.dtype(), mu.device());
  lincomb(1.0, x_next, -1.0, mu, r);
  return sde_log_prob_from_residual(c.std, r);
}

}  // namespace osp::sample
