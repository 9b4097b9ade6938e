// Random DiT weights for the model tests (dit_lora, dit_step_cache, dit_block_stream and their
// GPU twins): every tensor of DiT::expected_shapes(cfg) drawn from Philox N(0, 1) (seed, stream =
// the tensor's index in name order), matrices scaled by 1/sqrt(fan_in) so activations stay O(1),
// vectors (biases, norms, modulation) by 0.1. zero_blocks: every "blocks.*" tensor is 0, so each
// block adds nothing to its input (an identity block stack).
#pragma once
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "osp/core/philox.h"
#include "osp/core/tensor.h"
#include "osp/model/dit.h"

namespace osp::test {

inline std::map<std::string, Tensor> random_dit_weights(const model::DiTConfig& cfg, uint64_t seed,
                                                        bool zero_blocks = false) {
  std::map<std::string, Tensor> w;
  uint32_t s = 0;
  for (const auto& [n, sh] : model::DiT::expected_shapes(cfg)) {
    std::vector<float> v = randn(sh, seed, s++).to_float_vector();
    const int64_t fan_in = sh.size() >= 2 ? int64_t(v.size()) / sh[0] : 1;
    const float k = sh.size() >= 2 ? float(1.0 / std::sqrt(double(fan_in))) : 0.1f;
    const bool zero = zero_blocks && n.rfind("blocks.", 0) == 0;
    for (float& x : v) x = zero ? 0.0f : x * k;
    w[n] = Tensor::from_vector(v, sh);
  }
  return w;
}

}  // namespace osp::test
