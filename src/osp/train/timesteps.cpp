#include "osp/train/timesteps.h"

#include <cmath>

#include "osp/core/error.h"
#include "osp/core/philox.h"

namespace osp::train {

void TimestepConfig::validate() const {
  OSP_CHECK(std::isfinite(shift) && shift > 0, "timestep shift must be > 0, got ", shift);
  OSP_CHECK(std::isfinite(logit_mean), "logit-normal mean must be finite, got ", logit_mean);
  OSP_CHECK(std::isfinite(logit_std) && logit_std > 0, "logit-normal std must be > 0, got ", logit_std);
}

double dynamic_shift(int64_t latent_h, int64_t latent_w) {
  const double k = (1.15 - 0.5) / (4096.0 - 256.0);
  const double b = 0.5 - 256.0 * k;
  const double seq = double(latent_h) * double(latent_w) / 4.0;
  return std::exp(k * seq + b);
}

uint64_t derive_seed(uint64_t seed, uint64_t a, uint32_t b, uint32_t tag) {
  const PhiloxCounter c = {uint32_t(a & 0xffffffffu), uint32_t(a >> 32), b, tag};
  const PhiloxKey k = {uint32_t(seed & 0xffffffffu), uint32_t(seed >> 32)};
  const PhiloxCounter r = philox4x32_10(c, k);
  return uint64_t(r[0]) | (uint64_t(r[1]) << 32);
}

TimestepSampler::TimestepSampler(uint64_t seed, const TimestepConfig& cfg) : seed_(seed), cfg_(cfg) {
  cfg_.validate();
}

double TimestepSampler::shift_for(int64_t latent_h, int64_t latent_w) const {
  return cfg_.dynamic_shift ? dynamic_shift(latent_h, latent_w) : cfg_.shift;
}

float TimestepSampler::sigma(int64_t step, int64_t i, int64_t latent_h, int64_t latent_w) const {
  OSP_CHECK(step >= 0 && i >= 0 && i < kMaxBatch, "timestep sampler: bad (step, sample) = (", step, ", ", i, ")");
  float n = 0.f;
  philox_normal(seed_, kSigmaStream, uint64_t(step) * kMaxBatch + uint64_t(i), &n, 1);
  const double z = cfg_.logit_mean + cfg_.logit_std * double(n);
  double s = 1.0 / (1.0 + std::exp(-z));
  const double shift = shift_for(latent_h, latent_w);
  s = shift * s / (1.0 + (shift - 1.0) * s);
  return float(s);
}

bool TimestepSampler::drop_caption(int64_t step, int64_t i, double rate) const {
  if (rate <= 0) return false;
  float u = 0.f;
  philox_uniform(seed_, kDropoutStream, uint64_t(step) * kMaxBatch + uint64_t(i), &u, 1);
  return double(u) < rate;
}

Tensor TimestepSampler::noise(const Shape& shape, int64_t step, int64_t i) const {
  return randn(shape, derive_seed(seed_, uint64_t(step), uint32_t(i), kNoiseStream), kNoiseStream);
}

}  // namespace osp::train
