// Gradient norm and clipping over a ParamTable.
//
// grad_norm: the global L2 norm sqrt(Σ_params Σ_i g_i²). On the CPU the sum runs over fixed
// chunks of 65536 elements (in parallel) whose partial sums (double) are added in chunk order,
// so the value does not depend on the thread count; on CUDA a fixed grid reduces in double.
//
// Modes (GradClipConfig, `--clip none|fixed:X|adaptive`):
//  * none      norm measured and reported, gradients untouched.
//  * fixed:X   torch.nn.utils.clip_grad_norm_(max_norm = X): when norm > X every gradient is
//              multiplied by X / (norm + 1e-6).
//  * adaptive  OSP-Next's adaptive clipper (osp-next-spec §7), exactly as implemented here:
//      state: mean μ, variance s² (both EMA with decay d = 0.99), `initialised` flag.
//      step 1:  μ ← min(3·norm, init_max_norm = 1.0), s² ← 0; gradients are NOT clipped.
//      step k>1: threshold T = μ + 3·sqrt(s²).
//        norm ≤ T:  μ ← d·μ + (1−d)·norm;  s² ← d·s² + (1−d)·(μ − norm)²  (μ the NEW mean);
//                   gradients untouched.
//        norm > T:  gradients multiplied by T / (norm + 1e-6) (as clip_grad_norm_ with max T);
//                   μ and s² are NOT updated (an outlier does not move the statistics).
//    A non-finite norm is an error (the reference clipper raises on it too); the trainer stops
//    on NaN/Inf before clipping anyway.
#pragma once
#include <string>

#include "osp/core/param.h"

namespace osp::train {

// Global L2 norm of every parameter's grad (double).
double grad_norm(const ParamTable& params);
// g ← s·g for every parameter's grad.
void scale_grads(const ParamTable& params, float s);

struct GradClipConfig {
  enum class Mode { None, Fixed, Adaptive };
  Mode mode = Mode::None;
  double max_norm = 1.0;       // fixed: the clip norm
  double ema_decay = 0.99;     // adaptive
  double num_std = 3.0;        // adaptive: threshold = mean + num_std·std
  double init_max_norm = 1.0;  // adaptive: first mean = min(3·first_norm, init_max_norm)
  // Parses "none", "fixed:X" (X > 0) or "adaptive"; throws osp::Error with the accepted forms.
  static GradClipConfig parse(const std::string& s);
  std::string str() const;  // the same spelling parse accepts
};

struct GradClipState {
  bool initialised = false;
  double mean = 0.0, var = 0.0;
};

struct ClipResult {
  double norm = 0.0;       // before clipping
  double threshold = 0.0;  // the max norm in force this step (0 for none / first adaptive step)
  bool clipped = false;
  double norm_after = 0.0;
};

class GradClipper {
 public:
  explicit GradClipper(const GradClipConfig& cfg = {}) : cfg_(cfg) {}
  // Measures the norm, clips as the mode says, updates the adaptive statistics.
  ClipResult clip(const ParamTable& params);
  // The rule alone on a given norm (what clip() does besides measuring and scaling): returns the
  // factor the gradients are multiplied by (1 = untouched).
  double apply_rule(double norm, ClipResult& r);

  const GradClipConfig& config() const { return cfg_; }
  const GradClipState& state() const { return st_; }
  void set_state(const GradClipState& s) { st_ = s; }

 private:
  GradClipConfig cfg_;
  GradClipState st_;
};

}  // namespace osp::train
