// Backward (vector-Jacobian products) of the ops in ops.h that the DiT uses, for training.
// Same conventions as ops.h: free functions that validate shapes/dtypes/devices, dispatch to
// cpu:: (fp32 reference, the source of truth, checked by float64 finite differences in
// tests/ops/backward_test.cpp) or cuda:: (checked against the CPU in the backend parity test).
//
// Gradient conventions
//  * `d<name>` is dL/d<name> for the forward argument <name>; dy / dout is dL/d(output).
//  * Outputs marked "(+=)" ACCUMULATE into a preallocated tensor (parameter gradients: a weight
//    used by several samples or micro-batches sums its gradients); all other outputs are
//    overwritten. A null pointer means "not wanted" (skipped, not computed).
//  * CPU: everything F32. CUDA: activations/gradients dx, dy F32 or BF16 (math in fp32);
//    parameter gradients (dw, db, dgamma, dshift, dscale, dgate) always F32.
//  * Shapes are the forward op's shapes (ops.h); "rows" = product of the leading dims.
#pragma once
#include <cstdint>

#include "osp/core/tensor.h"
#include "osp/ops/ops.h"

namespace osp::ops {

// ---------------------------------------------------------------- GEMM
// Forward y[M,N] = x[M,K]·w[N,K]ᵀ + b (no activation; an activation's backward is its own op).
//   dx[M,K] = dy·w            (overwritten)
//   dw[N,K] += dyᵀ·x          (+=, F32)
//   db[N]   += Σ_rows dy      (+=, F32)
// x and dy may have any leading dims (flattened to M). CUDA: x, w, dy BF16 (or all F32); dx
// BF16 or F32.
void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor* dw,
                     Tensor* db);

// ---------------------------------------------------------------- norms (fp32 math)
// Forward y = (x - mean)/sqrt(var + eps) [* w + b] over the last dim C (biased variance).
//   dx (overwritten), dw[C] (+=), db[C] (+=); w null means no affine (then dw/db must be null).
void layer_norm_backward(const Tensor& x, const Tensor* w, float eps, const Tensor& dy,
                         Tensor& dx, Tensor* dw, Tensor* db);

// Forward y = LN(x) * (1 + scale) + shift (LN without affine), shift/scale [C] F32 (one sample:
// x is [rows, C]).  dx (overwritten), dshift[C] (+=), dscale[C] (+=).
// The forward's round_ln_to_bf16 rounding is treated as identity (straight-through).
void layer_norm_modulate_backward(const Tensor& x, const Tensor& scale, float eps,
                                  const Tensor& dy, Tensor& dx, Tensor* dshift, Tensor* dscale);

// Forward y = x * rsqrt(mean(x², last dim) + eps) * w, w [C] F32.
//   dx (overwritten), dw[C] (+=).
void rms_norm_backward(const Tensor& x, const Tensor& w, float eps, const Tensor& dy, Tensor& dx,
                       Tensor* dw);

// ---------------------------------------------------------------- elementwise
// Forward y = gelu_tanh(x): dx = dy · gelu_tanh'(x) (x is the pre-activation).
void gelu_tanh_backward(const Tensor& x, const Tensor& dy, Tensor& dx);
// Forward y = silu(x): dx = dy · silu'(x).
void silu_backward(const Tensor& x, const Tensor& dy, Tensor& dx);

// Forward x_out[r, c] = x_in[r, c] + y[r, c] * gate[c] (ops::add_gated_, one sample: [rows, C]).
// Given dx = dL/dx_out (dL/dx_in is dx itself):
//   dy[r, c] = dx[r, c] * gate[c]          (overwritten; dy may be BF16 on CUDA)
//   dgate[c] += Σ_r dx[r, c] * y[r, c]      (+=, F32; null to skip)
// dx is F32 (the residual stream); y F32 or BF16 on CUDA.
void add_gated_backward(const Tensor& dx, const Tensor& y, const Tensor& gate, Tensor& dy,
                        Tensor* dgate);

// ---------------------------------------------------------------- RoPE
// Forward ops::rope(x, cos_sin, y): dx = the inverse rotation of dy (same table, angle −θ).
// Shapes and dtypes as ops::rope. In place allowed.
void rope_backward(const Tensor& dy, const Tensor& cos_sin, Tensor& dx);

// ---------------------------------------------------------------- attention
// The training forward: ops::attention plus the log-sum-exp of every query row,
//   lse[b, h, i] = log Σ_j exp(scale · q[b,i,h,:]·k[b,j,h,:])   (natural log, F32 [B, H, Lq])
// over the keys the row attends (its own packed sequence when args.seq_lens is set).
// Supported args: scale and seq_lens (the DiT's full and Skiparse self-attention and its
// cross-attention); bias / kv_lens / q_lens are rejected.
void attention_forward_lse(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                           Tensor& lse, const AttentionArgs& args = {});
// Backward of attention_forward_lse given out and lse from it: dq, dk, dv (overwritten) with
// the shapes of q, k, v. CUDA: BF16 q/k/v/out/dout, dq/dk/dv BF16 (fp32 accumulation).
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv,
                        const AttentionArgs& args = {});
// Deterministic training (osp train / osp rl --deterministic switch it on for their run;
// OSP_DETERMINISTIC=1 for the process): on CUDA,
// attention_backward runs osp's own kernel (no atomics: the same bits on every run of the same
// inputs) instead of cuDNN's, whose gradients differ slightly run to run; the forward keeps its choice (no
// forward kernel accumulates with atomics). The CPU kernels are deterministic either way. The
// default comes from OSP_DETERMINISTIC; process-wide.
void set_deterministic_backward(bool on);
bool deterministic_backward();
// set_deterministic_backward for one scope: switched on when `on` (else left as it is), and the
// setting before it put back when the scope ends (a training run's --deterministic).
class DeterministicBackwardScope {
 public:
  explicit DeterministicBackwardScope(bool on) : was_(deterministic_backward()) {
    if (on) set_deterministic_backward(true);
  }
  ~DeterministicBackwardScope() { set_deterministic_backward(was_); }
  DeterministicBackwardScope(const DeterministicBackwardScope&) = delete;
  DeterministicBackwardScope& operator=(const DeterministicBackwardScope&) = delete;

 private:
  bool was_;
};

// ---------------------------------------------------------------- data movement
// Adjoint of gather_rows: out[index[i], :] += src[i, :] for index[i] >= 0 (+=; out [N, C]).
// Used where a gather is not a permutation (an index may repeat). src [M, C], index I32 [M] on
// src's device; out F32 (it accumulates); src F32, or BF16 on CUDA.
void scatter_add_rows(const Tensor& src, const Tensor& index, Tensor& out);

// Adjoint of patchify: dpatches [T·(H/ph)·(W/pw), C·pt·ph·pw] → dz [C, T, H, W] (overwritten;
// patches do not overlap, so this is a permutation).
void patchify_backward(const Tensor& dpatches, int pt, int ph, int pw, Tensor& dz);
// Adjoint of unpatchify: dout [C, T, h·ph, w·pw] → dy [T·h·w, pt·ph·pw·C] (overwritten).
void unpatchify_backward(const Tensor& dout, int64_t T, int64_t h, int64_t w, int pt, int ph,
                         int pw, Tensor& dy);

// ---------------------------------------------------------------- reductions
// out[C] (+=) Σ over rows of x[rows, C] (F32 out). Parameter gradients of broadcast vectors
// (modulation tables, biases outside a linear).
void sum_rows(const Tensor& x, Tensor& out);

}  // namespace osp::ops
