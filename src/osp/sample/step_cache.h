// Training-free step caching for the sampling loop (issue 19): TeaCache (Liu et al. 2024,
// "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model") and MagCache (Ma et
// al. 2025, "MagCache: Fast Video Generation with Magnitude-Aware Cache"; below, at its class).
//
// The policies only: at every step a policy says whether the DiT must run its blocks or may reuse
// the residual of the block stack cached at the last step that ran them. The DiT side (skipping
// the blocks, keeping the residual) is model::DiT::BlockCache; pipeline/pipeline.cpp joins the two.
//
// TeaCache looks at the time modulation e0 [B, 6, dim] the DiT computes for the step (the
// shift/scale/gate of every block, a function of the timestep alone). Indicator, per batch row (cond and uncond keep their own accumulators and the DiT keeps each
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
  enum class Kind : uint8_t { None, TeaCache, MagCache };
  Kind kind = Kind::None;
  double threshold = 0;  // finite, ≥ 0
  int max_skips = 2;     // MagCache: K, the most consecutive steps one cached residual serves
  bool enabled() const { return kind != Kind::None; }
  std::string str() const;  // "none", "teacache:THRESH" or "magcache:THRESH:K"
};

// "none" (or "") → no caching; "teacache:THRESH" or "magcache:THRESH[:K]" with THRESH a finite
// number ≥ 0 and K an integer ≥ 1 (default 2). Anything else is an osp::Error that says what is
// accepted.
StepCacheSpec parse_step_cache(const std::string& spec);

// What the sampling loop asks a policy at every step (TeaCache, MagCache).
class StepCachePolicy {
 public:
  virtual ~StepCachePolicy() = default;
  // Step i (0, 1, ..., steps−1, in order) with its e0 [B, 6, dim] (any device, F32; MagCache does
  // not read it): true = run the blocks (and refresh the cache), false = reuse the cached residual.
  virtual bool compute(int step, const Tensor& e0) = 0;
  // Called by compute() at EVERY step (a collective may sit behind it) with this object's
  // decision; its result (true = run) is the decision taken. CFG parallelism passes the OR over
  // the ranks holding the other rows of the batch.
  void set_agreement(std::function<bool(bool run)> agree) { agree_ = std::move(agree); }
  int steps_reused() const { return reused_; }
  int steps_computed() const { return computed_; }

 protected:
  // The agreement applied to `run` and the counters kept; returns the decision.
  bool decide(bool run);

 private:
  std::function<bool(bool)> agree_;
  int reused_ = 0, computed_ = 0;
};

// The rescaling polynomial for a DiT of width `dim` (coefficients, highest degree first; empty =
// identity) and its name for logs ("Wan2.1 T2V-1.3B (TeaCache)", "none").
std::vector<double> teacache_polynomial(int64_t dim, std::string* name = nullptr);

class TeaCache : public StepCachePolicy {
 public:
  // threshold ≥ 0; steps = the run's sampling steps; poly as teacache_polynomial.
  TeaCache(double threshold, int steps, std::vector<double> poly = {});

  bool compute(int step, const Tensor& e0) override;

  // The rescaled indicator r_i of the last call for row 0 (0 on a forced step), for logs/tests.
  double last_indicator() const { return last_; }

 private:
  double threshold_;
  int steps_;
  std::vector<double> poly_;
  std::vector<std::vector<float>> prev_;  // per row: e0 of the previous step (host copy)
  std::vector<double> acc_;               // per row: accumulated indicator since the last compute
  int next_ = 0;
  double last_ = 0;
};

// MagCache: the magnitude of the block stack's residual r_i changes from step to step by a ratio
// γ_i = mean over tokens of ‖r_i‖ / ‖r_{i−1}‖ that is nearly the same for every prompt and seed
// of a model and schedule, so one calibration run measures it (MagCacheRatios, `osp generate
// --cache-calibrate FILE`). The first ⌊retention·steps⌋ steps always run; after them the policy
// keeps R (the product of the γ since the cached step), n (steps since it) and E (the summed
// error): R ← R·γ_i, n ← n + 1, E ← E + |1 − R|; the step reuses the residual while E < threshold
// and n ≤ K, else it runs and R, n, E start again at 1, 0, 0. One decision per batch, from the
// conditional row's ratios (on the tiny model the unconditional row's measure within ~1 % of them).
class MagCache : public StepCachePolicy {
 public:
  // threshold ≥ 0, max_skips (K) ≥ 1, steps ≥ 1, gamma: one ratio per step (gamma[0] unused),
  // retention in [0, 1].
  MagCache(double threshold, int max_skips, int steps, std::vector<double> gamma, double retention = 0.2);
  bool compute(int step, const Tensor& e0) override;

 private:
  double threshold_, retention_;
  int max_skips_, steps_;
  std::vector<double> gamma_;
  double ratio_ = 1, err_ = 0;
  int since_ = 0, next_ = 0;
};

// A MagCache calibration: the residual magnitude ratios of one uncached run, per batch row (row 0
// conditional, row 1 unconditional), one per step (ratios[r][0] = 1: no previous step). Stored as
// JSON {"format": "osp-magcache-1", "steps": S, "ratios": [[...], ...], "note": "..."}; a model
// folder's `magcache.json` is what `--cache magcache:...` reads.
struct MagCacheRatios {
  int steps = 0;
  std::vector<std::vector<double>> ratios;
  std::string note;  // how it was made (model, sampler, size, seed)
  // Throws osp::Error naming the file and what is wrong (missing, not JSON, wrong shape, a ratio
  // that is not finite and > 0).
  static MagCacheRatios load(const std::string& path);
  void save(const std::string& path) const;  // atomically; overwrites
  // Row r's ratios (the last row's past them) resampled to `steps` steps by the nearest calibrated
  // step, index round(i·(S−1)/(steps−1)) with halves rounded up (MagCache's own resampling takes
  // the nearest too).
  std::vector<double> resampled(size_t r, int steps) const;
};

// One step's γ per batch row: mean over the tokens of ‖r[b, i, :]‖₂ / ‖prev[b, i, :]‖₂, tokens whose
// previous residual is 0 (padding) left out. r, prev: [B, n, dim] F32 on any device (copied to the
// host), the same shape.
std::vector<double> residual_magnitude_ratios(const Tensor& r, const Tensor& prev);

}  // namespace osp::sample
