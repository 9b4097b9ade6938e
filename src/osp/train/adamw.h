// AdamW over a ParamTable with fp32 master weights (torch.optim.AdamW semantics).
//
// State per parameter, on the parameter's device, all F32 and contiguous:
//   master  the fp32 copy the optimizer updates (initialised from *value at construction)
//   m, v    first and second moments (zeros)
// One step t = 1, 2, ... with learning rate lr (per step, from the LR schedule):
//   master ← master·(1 − lr·wd)                           decoupled weight decay
//   m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²
//   master ← master − (lr / (1−β1^t)) · m / (sqrt(v)/sqrt(1−β2^t) + eps)
//   value  ← master (F32), or round-to-nearest-even BF16 of master (a BF16 compute copy on CUDA)
// The bias corrections are computed in double and passed to the per-element loop (OpenMP on the
// CPU, train/cuda/train_kernels.cu on CUDA) as fp32 scalars; the element math is fp32, as
// torch's fp32 AdamW. Every element is independent, so the result does not depend on the thread
// count.
#pragma once
#include <cstdint>
#include <vector>

#include "osp/core/param.h"
#include "osp/core/tensor.h"

namespace osp::train {

struct AdamWConfig {
  double lr = 1e-4;  // the base learning rate (the schedule scales it; step() takes the value)
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  // Throws osp::Error naming the field when a value is out of range (lr ≥ 0, 0 ≤ β < 1, eps > 0,
  // weight_decay ≥ 0, all finite).
  void validate() const;
};

class AdamW {
 public:
  struct Slot {
    Tensor master, m, v;  // F32, contiguous, same numel and device as the parameter's value
  };

  // Checks the table (every value contiguous F32/BF16, every grad F32 with value's numel and
  // device, names unique) and copies the masters from the current values.
  AdamW(const ParamTable& params, const AdamWConfig& cfg);

  // One step with learning rate `lr` using every parameter's grad; then value ← master (a
  // released value — undefined, TrainOptions::transient_weights — is left undefined: its owner
  // makes it from the master when it needs it).
  void step(double lr);

  // Completed steps (the t of the last step).
  int64_t steps() const { return step_; }
  const AdamWConfig& config() const { return cfg_; }
  const ParamTable& params() const { return params_; }
  std::vector<Slot>& slots() { return slots_; }
  const std::vector<Slot>& slots() const { return slots_; }

  // Restores a saved state (checkpoints): `steps` completed steps; the slots must have been
  // filled by the caller. Then copies master into every value.
  void restore(int64_t steps);
  // value ← master for every parameter (cast to BF16 where the value is BF16; released values are
  // skipped). A slot's master may be replaced by the F32 value tensor itself (one buffer for both,
  // as ShardedAdamW does).
  void refresh_values();

 private:
  ParamTable params_;
  AdamWConfig cfg_;
  std::vector<Slot> slots_;
  int64_t step_ = 0;
};

// Validates a ParamTable for the training utilities (used by AdamW, EMA, clipping): values
// defined and contiguous F32/BF16, grads (when `need_grads`) defined F32 with the value's numel and
// device, names unique and non-empty. Throws osp::Error naming the parameter. need_values false
// accepts released (undefined) values (TrainOptions::transient_weights) and checks their gradients
// against the checkpoint shape.
void check_param_table(const ParamTable& params, bool need_grads, bool need_values = true);

}  // namespace osp::train
