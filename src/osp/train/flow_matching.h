// Rectified-flow training objective (osp-next-spec §6.1) and the generic "forward with tapes +
// backward from dL/dv" step on the DiT (model/dit.h), for `osp train` (flow loss) and Mix-GRPO
// (a loss on v given from outside).
//
//   x_σ  = σ·noise + (1 − σ)·x0      (fp32, per sample)
//   t    = 1000·σ                    (the model timestep)
//   loss = mean((v(x_σ, t, ctx) − (noise − x0))²)   over every element of the batch
//   dL/dv = 2·(v − (noise − x0)) / numel
//
// Both functions ACCUMULATE the DiT's parameter gradients (DiT::parameters(); the trainer zeroes
// them between steps) and need a model bound with DiTOptions::train. Training runs on one device
// (parallel::make_single_device); the distributed layouts report "not supported yet".
#pragma once
#include <functional>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit.h"

namespace osp::train {

// Optional extra outputs of a training step: dL/d(model input x_σ) (F32, x's shape) and
// dL/d(context) (F32, the unpadded context's shape).
struct FlowGrads {
  Tensor* dx_sigma = nullptr;
  Tensor* dcontext = nullptr;
};

// x0, noise [B, C, F, H, W] (or [C, F, H, W] for one sample), any float dtype/device; sigma one
// value per sample in [0, 1]; context [B, L, text_dim] (or [L, text_dim]), L ≤ text_len,
// zero-padded inside the model. Returns the loss (float64 sum of fp32 squares / numel);
// v_out, when given, receives v (F32, on the model's device, x0's shape).
double flow_matching_loss_backward(model::DiT& dit, parallel::SequenceParallel& sp, const Tensor& x0,
                                   const Tensor& noise, const std::vector<float>& sigma,
                                   const Tensor& context, const FlowGrads& extra = {},
                                   Tensor* v_out = nullptr);

// Generic training step: v = DiT(x, t, context) with tapes, then the backward of
// dloss_dv(v) (a tensor with v's shape, any float dtype) through the whole model. Returns v.
Tensor forward_backward(model::DiT& dit, parallel::SequenceParallel& sp, const Tensor& x,
                        const std::vector<float>& t, const Tensor& context,
                        const std::function<Tensor(const Tensor& v)>& dloss_dv,
                        const FlowGrads& extra = {});

}  // namespace osp::train
