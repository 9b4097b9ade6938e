// CUDA implementations behind backward.h (compiled when OSP_HAVE_CUDA); arguments already
// validated by the dispatcher (src/osp/ops/backward.cpp). Same signatures as backward.h.
#pragma once
#ifdef OSP_HAVE_CUDA
#include <cstdint>

#include "osp/ops/backward.h"

namespace osp::ops::cuda {
void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor* dw,
                     Tensor* db);
void layer_norm_backward(const Tensor& x, const Tensor* w, float eps, const Tensor& dy,
                         Tensor& dx, Tensor* dw, Tensor* db);
void layer_norm_modulate_backward(const Tensor& x, const Tensor& scale, float eps,
                                  const Tensor& dy, Tensor& dx, Tensor* dshift, Tensor* dscale);
void rms_norm_backward(const Tensor& x, const Tensor& w, float eps, const Tensor& dy, Tensor& dx,
                       Tensor* dw);
void gelu_tanh_backward(const Tensor& x, const Tensor& dy, Tensor& dx);
void silu_backward(const Tensor& x, const Tensor& dy, Tensor& dx);
void add_gated_backward(const Tensor& dx, const Tensor& y, const Tensor& gate, Tensor& dy,
                        Tensor* dgate);
void rope_backward(const Tensor& dy, const Tensor& cos_sin, Tensor& dx);
void attention_forward_lse(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                           Tensor& lse, const AttentionArgs& args);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv,
                        const AttentionArgs& args);
void scatter_add_rows(const Tensor& src, const Tensor& index, Tensor& out);
void patchify_backward(const Tensor& dpatches, int pt, int ph, int pw, Tensor& dz);
void unpatchify_backward(const Tensor& dout, int64_t T, int64_t h, int64_t w, int pt, int ph,
                         int pw, Tensor& dy);
void sum_rows(const Tensor& x, Tensor& out);

// Which implementation attention_forward_lse / attention_backward run (tests, benchmarks):
// Auto = the forward on our own Hopper kernel where it runs faster (attention_paths.h: an sm_90a
// GPU and build, head dim 128, ≥ kHopperMinKeys keys per sequence), else cuDNN's fused SDPA
// graphs where cuDNN takes the shape, else our own kernels; the backward cuDNN's, else ours.
// Cudnn = cuDNN or fail; Own = our own kernels only (the mma.sync flash forward with statistics
// and the tensor-core backward, attention_paths.h: deterministic, any sm_80+ GPU, no cuDNN);
// Hopper = the forward on the own Hopper kernel for every head-dim-128 call (an error where it
// cannot run), the rest and the backward as Auto. OSP_ATTENTION=flash|cudnn|hopper sets the default.
enum class AttnPath { Auto, Cudnn, Own, Hopper };
void set_attention_train_path(AttnPath p);
// "hopper" (forward only), "cudnn" or "own": the path the latest attention_forward_lse /
// attention_backward call took.
const char* last_attention_forward_lse_path();
const char* last_attention_backward_path();
// The cuDNN backward of an unpacked call with few keys runs its queries as n chunks in one batch
// (keys repeated per chunk, the chunks' dK/dV summed) so that more SMs work: −1 = as
// OSP_ATTN_BWD_CHUNKS says (default auto), 0 = auto (where it fills the SMs: the cross-attention's
// 512 keys at video sizes), 1 = never, n = n chunks where n divides Lq.
void set_attention_backward_query_chunks(int n);
// The norm backward kernels (layer_norm / layer_norm_modulate / rms_norm): −1 = as
// OSP_NORM_BACKWARD says (default warp), 0 = one block per row, 1 = one warp per row.
void set_norm_backward_warp(int mode);
}  // namespace osp::ops::cuda
#endif
