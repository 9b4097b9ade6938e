// Exponential moving average of the weights (osp-next-spec §7: decay 0.9999 by default, updated
// after every optimizer step; the EMA weights are what evaluation loads).
//
//   ema ← ema + (1 − decay)·(w − ema)        (fp32, every element independent)
//
// The EMA follows the fp32 master weights of AdamW (not the bf16 compute copy), one F32 tensor per
// parameter on the parameter's device; it starts as a copy of the masters.
#pragma once
#include <vector>

#include "osp/core/tensor.h"

namespace osp::train {

class Ema {
 public:
  Ema() = default;
  // Copies `weights` (any float dtype) into F32 tensors on the same devices. decay in [0, 1).
  Ema(const std::vector<Tensor>& weights, double decay);
  void update(const std::vector<Tensor>& weights);
  double decay() const { return decay_; }
  std::vector<Tensor>& weights() { return ema_; }
  const std::vector<Tensor>& weights() const { return ema_; }
  bool enabled() const { return !ema_.empty(); }

 private:
  double decay_ = 0.9999;
  std::vector<Tensor> ema_;
};

}  // namespace osp::train
