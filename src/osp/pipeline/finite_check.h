// NaN/Inf guards: a checkpoint whose weights hold NaN/Inf, or a latent that becomes non-finite
// during sampling, stops the run with an osp::Error naming the file/tensor or the step, instead
// of producing a black video.
#pragma once
#include <cstdint>
#include <string>

#include "osp/core/tensor.h"

namespace osp::pipeline {

// Index (row-major over the logical shape) of the first NaN/Inf of a float tensor (f32, bf16,
// f16; any device), or -1 when all are finite. Other dtypes (integers, 8-bit codes) give -1.
int64_t first_non_finite(const Tensor& t);

// Throws osp::Error "FILE: tensor NAME holds NaN/Inf ..." when `t` does.
void check_finite_weight(const Tensor& t, const std::string& name, const std::string& file);

// Throws osp::Error when the latent after `step` (1-based) of `steps` is not finite.
void check_finite_latent(const Tensor& x, int step, int steps);

}  // namespace osp::pipeline
