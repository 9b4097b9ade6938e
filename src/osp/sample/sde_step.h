// Mix-GRPO rollout steps (osp-next-spec §8.3, hif8-mixgrpo-vbench §2.2–2.3): the Euler grid,
// the marginal-preserving exploration SDE step with its Gaussian log-density, and the plain
// ODE (Euler) step used outside the SDE window.
//
// Convention (rectified flow, as in sample/schedule.h): x_σ = (1 − σ)·x0 + σ·ε, the model
// predicts v ≈ ε − x0, σ runs from 1 (noise) to 0 (data), Δ = σ_{i+1} − σ_i < 0.
//
// SDE step i, t = σ_i, noise level σ_t (NoiseLevel):
//   μ   = x·(1 + σ_t²/(2t)·Δ) + v·(1 + σ_t²·(1 − t)/(2t))·Δ  =  cx·x + cv·v
//   std = σ_t·sqrt(−Δ)
//   x'  = μ + std·ξ,  ξ ~ N(0, I)
//   log π(x' | x) = mean over the latent elements of −(x' − μ)²/(2·std²) − log std − ½·log 2π
// (the element MEAN, not the sum, exactly as Flow-GRPO / MixGRPO / OSP-Next compute it).
// With σ_t = t (OSP-Next): cx = 1 + t·Δ/2, cv = Δ·(1 + t(1 − t)/2), std = t·sqrt(−Δ).
// ODE step: x' = x + Δ·v.
//
// Precision and devices: the grid and every coefficient are double. Latent arithmetic is
// elementwise through ops::axpby, so F32 tensors work on any device (CPU or CUDA). F64 CPU
// tensors are also accepted (a double-precision reference for finite-difference checks).
// Log-densities reduce on the host in double (ops:: has no device reduction yet; the
// residual is copied back once per step, a few MB even at 720p).
#pragma once
#include <vector>

#include "osp/core/tensor.h"

namespace osp::sample {

// The Mix-GRPO / OSP-Next Euler grid in double precision: σ = linspace(1, 0, steps + 1) then
// σ ← shift·σ/(1 + (shift − 1)·σ) (identity for shift 1). σ_0 = 1, σ_steps = 0.
// (sample::euler_schedule holds the same grid rounded to f32; GRPO keeps double so std and the
// coefficients match the reference's float64 values.)
struct SdeGrid {
  std::vector<double> sigmas;  // steps + 1 values
  int steps() const { return int(sigmas.size()) - 1; }
  double sigma(int i) const;     // σ_i, i in [0, steps]
  double timestep(int i) const;  // 1000·σ_i (the model's t input)
  double dt(int i) const;        // Δ_i = σ_{i+1} − σ_i (< 0), i in [0, steps)
};
SdeGrid sde_grid(int steps, double shift);

// Noise level σ_t of the exploration SDE.
enum class NoiseLevel {
  Linear,    // σ_t = t (OSP-Next: σ_min + (σ_max − σ_min)·t with σ_max = 1, σ_min = 0)
  FlowGrpo,  // σ_t = η·sqrt(t/(1 − t)), t = 1 replaced by σ_1 in the denominator (Flow-GRPO)
};

// Which steps of a rollout are SDE steps (and trained): the half-open range [begin, end).
struct SdeWindow {
  int begin = 0, end = 0;
  bool contains(int i) const { return i >= begin && i < end; }
  int size() const { return end - begin; }
};
// OSP-Next: the first k steps of every rollout (k = sde_steps, 10 of 25), k ≤ steps.
SdeWindow fixed_sde_window(int steps, int k);
// MixGRPO's progressive sliding window (hif8-mixgrpo-vbench §2.5): the start l begins at 0 and
// advances by `stride` every `tau` iterations; when it reaches steps − 2 (the window would be
// empty) it rolls back to 0 (MixGRPO's --roll_back).
// Trained steps are [l, min(l + size, steps − 2)) (the last two steps are never SDE steps).
// steps ≥ 3, size ≥ 1, stride ≥ 0, tau ≥ 1, iteration ≥ 0.
SdeWindow mixgrpo_sde_window(int iteration, int steps, int size, int stride, int tau);

// The scalars of SDE step i: μ = cx·x + cv·v, std = σ_t·sqrt(−Δ).
struct SdeCoeffs {
  int step = 0;
  double t = 0;        // σ_i
  double dt = 0;       // Δ = σ_{i+1} − σ_i (< 0)
  double sigma_t = 0;  // the noise level
  double cx = 0, cv = 0;
  double std = 0;      // σ_t·sqrt(−Δ)
};
// eta is used by NoiseLevel::FlowGrpo only. Throws for i outside [0, steps) or a step whose
// t is 0 (the SDE is undefined there).
SdeCoeffs sde_coeffs(const SdeGrid& grid, int i, NoiseLevel level = NoiseLevel::Linear,
                     double eta = 0.7);

// out = a·x + b·y elementwise: ops::axpby for F32 (any device); a host loop for F64 CPU
// tensors. Same shapes, same dtype and device; out contiguous (may alias x or y).
void lincomb(double a, const Tensor& x, double b, const Tensor& y, Tensor& out);

// μ = cx·x + cv·v (x, v, mu: same shape, F32 any device or F64 CPU; mu may alias x).
void sde_mean(const SdeCoeffs& c, const Tensor& x, const Tensor& v, Tensor& mu);
// x' = μ + std·ξ (x_next may alias mu).
void sde_sample(const SdeCoeffs& c, const Tensor& mu, const Tensor& xi, Tensor& x_next);
// One full rollout SDE step: mu ← μ, x_next ← μ + std·ξ; returns log π(x_next | x) per sample.
std::vector<double> sde_step(const SdeCoeffs& c, const Tensor& x, const Tensor& v,
                             const Tensor& xi, Tensor& mu, Tensor& x_next);
// ODE (Euler) step in place: x ← x + Δ_i·v.
void ode_step(const SdeGrid& grid, int i, const Tensor& v, Tensor& x);

// The Gaussian log-density per sample: tensors are [B, ...] (dim ≥ 2; a 1-D tensor is one
// sample); element b is the mean over sample b's elements of
// −(x_next − μ)²/(2·std²) − log std − ½·log 2π, accumulated in double.
std::vector<double> sde_log_prob(const SdeCoeffs& c, const Tensor& x_next, const Tensor& mu);
// The same from the residual r = x_next − μ directly (when the caller formed it more
// accurately, e.g. as (x_next − x) − (μ − x)).
std::vector<double> sde_log_prob_from_residual(double std, const Tensor& residual);

// Σ of squares of each sample's elements (tensor [B, ...] as above), in double on the host.
std::vector<double> per_sample_sum_sq(const Tensor& t);

}  // namespace osp::sample
