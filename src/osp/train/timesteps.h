// Training-time randomness of the flow-matching objective (osp-next-spec §6.1, §7): the σ of
// every sample (logit-normal, then the time shift, static or dynamic), the noise ε, and caption
// dropout. Everything is a pure function of (seed, optimizer step, sample index in the batch),
// drawn from the repository's Philox4x32-10 (core/philox.h), so a resumed run draws exactly
// what the uninterrupted run drew, whatever the thread count.
//
// Streams (the `stream` word of the Philox counter) used with the run seed:
//   σ:        n = philox_normal(seed, kSigmaStream,   first = step·kMaxBatch + i)
//   dropout:  u = philox_uniform(seed, kDropoutStream, first = step·kMaxBatch + i)
//   noise:    randn(shape, sample_seed(seed, step, i), kNoiseStream)
//             where sample_seed = the first two words of Philox4x32-10((step lo, step hi, i,
//             kNoiseStream), key(seed)) as a 64-bit seed (a fresh key per sample).
// The time shift:  σ = sigmoid(mean + std·n);  σ ← shift·σ / (1 + (shift − 1)·σ)
// Dynamic shift (use_dynamic_shifting):  seq = H_lat·W_lat / 4 (tokens per latent frame after the
// 2×2 patch), μ = k·seq + b with k = (1.15 − 0.5)/(4096 − 256), b = 0.5 − 256·k, shift = exp(μ).
#pragma once
#include <cstdint>

#include "osp/core/tensor.h"

namespace osp::train {

constexpr uint32_t kSigmaStream = 0x7331;
constexpr uint32_t kDropoutStream = 0x7332;
constexpr uint32_t kNoiseStream = 0x7333;
constexpr int64_t kMaxBatch = 1 << 16;  // sample indices per step in the counter layout

struct TimestepConfig {
  double shift = 1.0;          // static time shift (> 0)
  bool dynamic_shift = false;  // shift from the latent size (overrides `shift`)
  double logit_mean = 0.0, logit_std = 1.0;
  void validate() const;
};

// exp(μ(seq)) with seq = latent_h·latent_w/4 (the §6.1 rule; 720p latent 90×160 → ≈ 2.904).
double dynamic_shift(int64_t latent_h, int64_t latent_w);

class TimestepSampler {
 public:
  TimestepSampler(uint64_t seed, const TimestepConfig& cfg);
  // σ in (0, 1) of sample i of optimizer step `step` for a latent of latent_h × latent_w.
  float sigma(int64_t step, int64_t i, int64_t latent_h, int64_t latent_w) const;
  // The shift in force for that latent size.
  double shift_for(int64_t latent_h, int64_t latent_w) const;
  // True when sample i of `step` trains on the empty prompt (probability `rate`).
  bool drop_caption(int64_t step, int64_t i, double rate) const;
  // ε ~ N(0, I) of the given shape for sample i of `step` (CPU F32).
  Tensor noise(const Shape& shape, int64_t step, int64_t i) const;
  uint64_t seed() const { return seed_; }

 private:
  uint64_t seed_;
  TimestepConfig cfg_;
};

// A 64-bit seed derived from (seed, a, b, tag) with one Philox block (decorrelated streams).
uint64_t derive_seed(uint64_t seed, uint64_t a, uint32_t b, uint32_t tag);

}  // namespace osp::train
