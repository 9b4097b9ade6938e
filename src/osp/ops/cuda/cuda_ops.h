// CUDA implementations behind ops.h (compiled when OSP_HAVE_CUDA); arguments already validated.
#pragma once
#include "osp/ops/ops.h"

namespace osp::ops::cuda {
void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out, Act act);
// All-f32 linear for x with few rows (validated by ops::linear; contiguous operands).
void linear_f32_rows(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out, Act act);
void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& out);
void layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps,
                         Tensor& out, bool round_ln_to_bf16);
void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out);
void gelu_tanh(const Tensor& x, Tensor& out);
void silu(const Tensor& x, Tensor& out);
void add_gated_(Tensor& x, const Tensor& y, const Tensor* gate);
void axpby(float a, const Tensor& x, float b, const Tensor& y, Tensor& out);
void rope(const Tensor& x, const Tensor& cos_sin, Tensor& out);
void rms_norm_rope(const Tensor& x, const Tensor& w, float eps, const Tensor& cos_sin, Tensor& out);
void add_gated_layer_norm_(Tensor& x, const Tensor& y, const Tensor* gate, const Tensor* w,
                           const Tensor* b, float eps, Tensor& out);
void add_gated_layer_norm_modulate_(Tensor& x, const Tensor& y, const Tensor* gate,
                                    const Tensor& shift, const Tensor& scale, float eps, Tensor& out);
void attention(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
               const AttentionArgs& args);
void gather_rows(const Tensor& src, const Tensor& index, Tensor& out);
void patchify(const Tensor& z, int pt, int ph, int pw, Tensor& out);
void unpatchify(const Tensor& y, int64_t T, int64_t h, int64_t w, int pt, int ph, int pw,
                Tensor& out);
}  // namespace osp::ops::cuda
