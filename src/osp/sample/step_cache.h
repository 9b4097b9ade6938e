// Training-free step caching for the sampling loop (issue 19): TeaCache (Liu et al. 2024,
// "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model").
//
// The policy only: at every step it looks at the time modulation e0 [B, 6, dim] the DiT computes
// for the step (the shift/scale/gate of every block, a function of the timestep alone) and says
// whether the DiT must run its blocks or may reuse the residual of the block stack cached at the
// last step that ran them. The DiT side (skipping the blocks, keeping the residual) is
// model::DiT::BlockCache; pipeline/pipeline.cpp joins the two.
//
// Indicator, per batch row (cond and uncond keep their own accumulators and the DiT keeps each
// row's residual):
//   d_i = mean|e0_i − e0_{i−1}| / mean|e0_{i−1}|           (relative L1 change of the modulation)
//   r_i = max(0, p(d_i))   with the rescaling polynomial p (identity when none)
//   acc += r_i; the step reuses the cache while acc < threshold; otherwise it computes the
//   blocks, refreshes the cache and sets acc = 0.
// The first and the last step always compute; a batch reuses only when every row may (the rows of
// one CFG batch share the timestep, so they agree). Threshold 0 never reuses: acc ≥ 0 always.
// With CFG parallelism (pipeline.h, GenerateOptions::cfg_parallel) the cond and uncond rows live
// on different ranks, each with a TeaCache of one row; set_agreement gives them the batch's
// decision (run when any row must), so their accumulators reset together as one TeaCache of two
// rows would.
//
// The indicator is e0 rather than the modulated input of block 0 because e0 is identical on every
// rank of a sequence-parallel run (the per-token modulated input is split over ranks), so every
// rank takes the same decision with no communication. TeaCache's Wan2.1 setting ("use_ret_steps")
// uses e0 too; its published rescaling polynomials for Wan2.1 T2V (ali-vilab/TeaCache,
// TeaCache4Wan2.1, fitted by its authors on Wan2.1 T2V-1.3B and T2V-14B) are applied to models
// with those widths (dim 1536 and 5120; OSP-Next-14B is a Wan2.1-14B fine-tune); every other model
// uses the raw relative change (p = identity).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "osp/core/tensor.h"

namespace osp::sample {

struct StepCacheSpec {
  enum class Kind : uint8_t { None, TeaCache };
  Kind kind = Kind::None;
  double threshold = 0;  // TeaCache: finite, ≥ 0
  bool enabled() const { return kind != Kind::None; }
  std::string str() const;  // "none" or "teacache:THRESH"
};

// "none" (or "") → no caching; "teacache:THRESH" with THRESH a finite number ≥ 0. Anything else
// is an osp::Error that says what is accepted.
StepCacheSpec parse_step_cache(const std::string& spec);

// The rescaling polynomial for a DiT of width `dim` (coefficients, highest degree first; empty =
// identity) and its name for logs ("Wan2.1 T2V-1.3B (TeaCache)", "none").
std::vector<double> teacache_polynomial(int64_t dim, std::string* name = nullptr);

class TeaCache {
 public:
  // threshold ≥ 0; steps = the run's sampling steps; poly as teacache_polynomial.
  TeaCache(double threshold, int steps, std::vector<double> poly = {});

  // Step i (0, 1, ..., steps−1, in order) with its e0 [B, 6, dim] (any device, F32): true = run
  // the blocks (and refresh the cache), false = reuse the cached residual.
  bool compute(int step, const Tensor& e0);

  // Called by compute() at EVERY step (a collective may sit behind it) with this object's
  // decision; its result (true = run) is the decision taken. CFG parallelism passes the OR over
  // the ranks holding the other rows of the batch.
  void set_agreement(std::function<bool(bool run)> agree) { agree_ = std::move(agree); }

  int steps_reused() const { return reused_; }
  int steps_computed() const { return computed_; }
  // The rescaled indicator r_i of the last call for row 0 (0 on a forced step), for logs/tests.
  double last_indicator() const { return last_; }

 private:
  double threshold_;
  int steps_;
  std::vector<double> poly_;
  std::vector<std::vector<float>> prev_;  // per row: e0 of the previous step (host copy)
  std::vector<double> acc_;               // per row: accumulated indicator since the last compute
  std::function<bool(bool)> agree_;
  int next_ = 0, reused_ = 0, computed_ = 0;
  double last_ = 0;
};

}  // namespace osp::sample
