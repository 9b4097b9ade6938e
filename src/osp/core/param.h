// A named trainable tensor, the contract between a model (which owns its weights) and the
// training code (optimizers, gradient clipping, EMA, checkpoints), which must not know the model.
#pragma once
#include <string>
#include <vector>

#include "osp/core/tensor.h"

namespace osp {

struct ParamRef {
  std::string name;   // checkpoint name (Wan naming for the DiT), e.g. "blocks.0.self_attn.q.weight"
  Shape ckpt_shape;   // the shape under which the checkpoint stores it (same numel as *value)
  Tensor* value = nullptr;  // the compute copy the forward reads (F32 on the CPU; BF16/F32 on
                            // CUDA), contiguous, on the model's device
  Tensor* grad = nullptr;   // dL/dvalue, F32, same numel and device as *value; backward
                            // ACCUMULATES into it (the trainer zeroes it between steps)
};
using ParamTable = std::vector<ParamRef>;

}  // namespace osp
