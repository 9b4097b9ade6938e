// CPU (fp32 reference) implementations behind backward.h; arguments already validated by the
// dispatcher (src/osp/ops/backward.cpp): contiguous F32 tensors, outputs preallocated.
#pragma once
#include <cstdint>
#include <vector>

#include "osp/ops/backward.h"

namespace osp::ops::cpu {
void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor* dw,
                     Tensor* db);
void layer_norm_backward(const Tensor& x, const Tensor* w, float eps, const Tensor& dy,
                         Tensor& dx, Tensor* dw, Tensor* db);
void layer_norm_modulate_backward(const Tensor& x, const Tensor& scale, float eps,
                                  const Tensor& dy, Tensor& dx, Tensor* dshift, Tensor* dscale);
void rms_norm_backward(const Tensor& x, const Tensor& w, float eps, const Tensor& dy, Tensor& dx,
                       Tensor* dw);
void sum_rows(const Tensor& x, Tensor& out);
void gelu_tanh_backward(const Tensor& x, const Tensor& dy, Tensor& dx);
void silu_backward(const Tensor& x, const Tensor& dy, Tensor& dx);
void add_gated_backward(const Tensor& dx, const Tensor& y, const Tensor& gate, Tensor& dy,
                        Tensor* dgate);
void rope_backward(const Tensor& dy, const Tensor& cos_sin, Tensor& dx);
// args.seq_lens (host I32, validated: sums to Lq = Lk) is handled natively: every packed
// sequence is its own attention. args.bias / kv_lens / q_lens must be null.
void attention_forward_lse(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                           Tensor& lse, const AttentionArgs& args);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv,
                        const AttentionArgs& args);

// One attention problem inside a sample: query rows [q0, q0 + nq) attend keys [k0, k0 + nk).
struct AttnSeq {
  int64_t q0, nq, k0, nk;
};
// The non-empty packed sequences of seq_lens (host I32, null: one sequence of Lq queries over
// all Lk keys). Shared by the CPU attention forward (attention.cpp) and backward.
std::vector<AttnSeq> attention_sequences(const Tensor* seq_lens, int64_t Lq, int64_t Lk);

void scatter_add_rows(const Tensor& src, const Tensor& index, Tensor& out);
void patchify_backward(const Tensor& dpatches, int pt, int ph, int pw, Tensor& dz);
void unpatchify_backward(const Tensor& dout, int64_t T, int64_t h, int64_t w, int pt, int ph,
                         int pw, Tensor& dy);
}  // namespace osp::ops::cpu
