// Flow-matching ODE samplers: UniPC (the Wan2.1 reference solver) and Euler (OSP-Next), plus
// classifier-free guidance. All latent arithmetic goes through ops::axpby, so the samplers run
// wherever the latent lives (CPU f32 or CUDA f32).
//
// Usage (one video):
//   auto s = make_sampler("unipc", 50, 5.0);
//   for (int i = 0; i < s->steps(); ++i) {
//     v = cfg(DiT(x, s->timestep(i), ctx), DiT(x, s->timestep(i), ctx_null));
//     s->step(i, v, x);   // x ← x at σ_{i+1}
//   }
#pragma once
#include <memory>
#include <string>

#include "osp/core/tensor.h"
#include "osp/sample/schedule.h"

namespace osp::sample {

class Sampler {
 public:
  explicit Sampler(Schedule s) : sched_(std::move(s)) {}
  virtual ~Sampler() = default;
  virtual const char* name() const = 0;

  const Schedule& schedule() const { return sched_; }
  int steps() const { return sched_.steps(); }
  double timestep(int i) const;  // t_i fed to the model at step i
  float sigma(int i) const;      // σ_i, i in [0, S]

  // x: the latent at σ_i (F32, contiguous; updated in place to the latent at σ_{i+1}).
  // v: the (guided) velocity prediction of the model at (x, t_i), same shape/device.
  // Steps must be taken in order 0, 1, ..., S−1 (checked); reset() starts over.
  virtual void step(int i, const Tensor& v, Tensor& x) = 0;
  virtual void reset() = 0;

 protected:
  void check_step(int i, const Tensor& v, const Tensor& x, int expected) const;
  Schedule sched_;
};

// Wan2.1 FlowUniPCMultistepScheduler as configured by the reference (wan-spec §6.4): bh2,
// solver order 2, x0 (flow) prediction, UniC corrector on every step after the first,
// lower_order_final (order 1 at the last step), final sigma 0. Scalars in fp32 like the
// reference; the 2×2 corrector system solved in fp32 with partial pivoting.
class UniPCSampler final : public Sampler {
 public:
  UniPCSampler(int steps, double shift);
  const char* name() const override { return "unipc"; }
  void step(int i, const Tensor& v, Tensor& x) override;
  void reset() override;

 private:
  float lambda(int i) const;  // log(1 − σ_i) − log(σ_i) in fp32 (+inf at σ = 0)
  Tensor m_prev_, m_last_;    // x0 predictions of steps i−2 and i−1 (M[0], M[1])
  Tensor x_last_;             // sample before the last predictor
  Tensor m_, tmp_, tmp2_;     // workspaces
  int next_ = 0, order_prev_ = 0, lower_order_nums_ = 0;
};

// First-order Euler on dx/dσ = v: x ← x + (σ_{i+1} − σ_i)·v (fp32), grid of euler_schedule.
class EulerSampler final : public Sampler {
 public:
  EulerSampler(int steps, double shift);
  const char* name() const override { return "euler"; }
  void step(int i, const Tensor& v, Tensor& x) override;
  void reset() override { next_ = 0; }

 private:
  int next_ = 0;
};

// "unipc" or "euler" (error listing the choices otherwise).
std::unique_ptr<Sampler> make_sampler(const std::string& name, int steps, double shift);

// Classifier-free guidance: out = v_uncond + g·(v_cond − v_uncond), computed as
// ops::axpby(g, v_cond, 1 − g, v_uncond) (elementwise; out is a separate F32 tensor).
void cfg_combine(const Tensor& v_cond, const Tensor& v_uncond, float guidance, Tensor& out);

}  // namespace osp::sample
