// The op list: free functions over Tensor that check shapes/dtypes/devices and dispatch to
// cpu:: (ops/cpu/, fp32 reference, the source of truth) or cuda:: (ops/cuda/, bf16 storage
// with fp32 math). Every CUDA op is tested against its CPU twin (tests/ops/*_gpu_test.cpp).
//
// Conventions
//  * Row-major, last dim contiguous. "rows" = product of all leading dims.
//  * CPU ops take and produce F32 (weights may be F32; callers convert bf16 checkpoints at
//    bind time). CUDA ops take BF16 activations/weights unless a line below says F32.
//  * Outputs are preallocated by the caller (workspace reuse in the sampling loop) and must be
//    contiguous; they may alias the input only where the op says "in place allowed".
//  * Batched layouts: where a per-row table (RoPE) has fewer rows than the data, data row r
//    uses table row r % table_rows.
#pragma once
#include <cstdint>
#include <vector>

#include "osp/core/tensor.h"

namespace osp::ops {

// ---------------------------------------------------------------- GEMM
enum class Act : uint8_t { None, GeluTanh, Silu };

// out[M,N] = act(x[M,K] · w[N,K]ᵀ + bias[N]).  x may have any leading dims (flattened to M);
// out has the same leading dims and N last. bias may be null.
// CPU: all F32 (OpenBLAS sgemm). CUDA: x,w BF16; bias BF16 or F32; out BF16 or F32;
// fp32 accumulation (cuBLASLt, bias/act fused into the epilogue). CUDA also takes all-F32
// operands when x has at most 256 rows (a weight-streaming kernel for small f32 layers such as
// the DiT's time embedding).
void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out, Act act = Act::None);

// ---------------------------------------------------------------- norms (fp32 math)
// out = (x - mean) / sqrt(var + eps) [* w + b], biased variance over the last dim.
// w, b: [C] F32 or both null.  CUDA: x F32 or BF16, out F32 or BF16.
void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& out);

// out = LN(x) * (1 + scale) + shift, LN without affine; shift/scale [C] F32.
// round_ln_to_bf16: round LN(x) to bf16 before modulating (the reference's block-0 quirk when
// the residual stream is still bf16; see wan-spec §2.6).
void layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps,
                         Tensor& out, bool round_ln_to_bf16 = false);

// out = x * rsqrt(mean(x², last dim) + eps) * w.  w [C] F32.
void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out);

// The DiT's q/k path in one op: out = rope(rms_norm(x)·w, cos_sin) with x, out [R, L, H, D]
// normalised over each row's H·D (one token), w [H·D] F32, cos_sin as rope's [Rt, L, D/2, 2].
// The values of rms_norm into an F32 tensor followed by rope (CUDA: one kernel, no F32
// intermediate in memory). CPU: F32. CUDA: x F32 or BF16, out F32 or BF16. out must not alias x.
void rms_norm_rope(const Tensor& x, const Tensor& w, float eps, const Tensor& cos_sin, Tensor& out);

// A residual update and the norm that reads it, in one pass (CUDA: one kernel):
//   x += y·gate (add_gated_: gate [C] F32 or null), then
//   out = layer_norm(x, w, b)                       (add_gated_layer_norm_; w, b both or neither)
//   out = layer_norm_modulate(x, shift, scale)      (add_gated_layer_norm_modulate_)
// The values of the two ops in sequence. x F32 contiguous, y F32 (CPU) or F32/BF16 (CUDA),
// out the shape of x, F32 (CPU) or F32/BF16 (CUDA); neither y nor out may alias x.
void add_gated_layer_norm_(Tensor& x, const Tensor& y, const Tensor* gate, const Tensor* w,
                           const Tensor* b, float eps, Tensor& out);
void add_gated_layer_norm_modulate_(Tensor& x, const Tensor& y, const Tensor* gate,
                                    const Tensor& shift, const Tensor& scale, float eps, Tensor& out);

// ---------------------------------------------------------------- elementwise
void gelu_tanh(const Tensor& x, Tensor& out);  // in place allowed
void silu(const Tensor& x, Tensor& out);       // in place allowed
// x[r, c] += y[r, c] * gate[c]  (gate [C] F32, or null for a plain add). x F32 (the residual
// stream); y F32 or BF16 on CUDA.
void add_gated_(Tensor& x, const Tensor& y, const Tensor* gate);
// out = a * x + b * y (same shapes, F32). Used by samplers and CFG.
void axpby(float a, const Tensor& x, float b, const Tensor& y, Tensor& out);

// ---------------------------------------------------------------- RoPE
// x [R, L, H, D] (D even), interleaved pairs (2p, 2p+1) rotated by the angle of
// table[r % Rt, l, p]: cos_sin [Rt, L, D/2, 2] F32 holding (cos θ, sin θ).
// CPU: F32. CUDA: x F32 or BF16, out BF16 or F32. In place allowed.
void rope(const Tensor& x, const Tensor& cos_sin, Tensor& out);

// ---------------------------------------------------------------- attention
struct AttentionArgs {
  float scale = 0;          // 0 means 1/sqrt(D)
  const Tensor* bias = nullptr;     // optional additive logits bias [H, Lq, Lk] F32 (umT5)
  const Tensor* kv_lens = nullptr;  // optional I32 [B] (CPU): keys >= kv_lens[b] are ignored
  const Tensor* q_lens = nullptr;   // optional I32 [B] (CPU): query rows >= q_lens[b] get 0
  // optional I32 [R] (CPU): each sample's Lq = Lk rows are R packed sequences of these lengths
  // (sum = Lq, each >= 0); attention never crosses a sequence boundary (Skiparse sub-sequences
  // stored without padding). Not combinable with kv_lens / q_lens / bias.
  const Tensor* seq_lens = nullptr;
};
// q [B, Lq, H, D], k/v [B, Lk, H, D] → out [B, Lq, H, D]; softmax(q·kᵀ·scale + bias)·v per
// (b, h) with fp32 softmax/accumulation (online softmax).  CPU: F32. CUDA: BF16 in, BF16 out.
// D ∈ {64, 128} on CUDA; any D on CPU.
void attention(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
               const AttentionArgs& args = {});

// ---------------------------------------------------------------- data movement
// out[i, :] = src[index[i], :] for index[i] >= 0, zeros where index[i] < 0.
// src [N, C] (any dtype), index I32 [M] on the same device as src, out [M, C].
// This one op implements every Skiparse permutation (pad, token, group, switch, crop).
void gather_rows(const Tensor& src, const Tensor& index, Tensor& out);

// Patch embedding as im2col: z [C, T, H, W] → out [T·(H/ph)·(W/pw), C·pt·ph·pw] with the
// K index ordered (c, q, r), c slowest (matches Conv3d weight [D, C, pt, ph, pw] flattened).
// pt must be 1. Then ops::linear with the flattened conv weight gives the patch embedding.
void patchify(const Tensor& z, int pt, int ph, int pw, Tensor& out);
// Head output y [T·h·w, pt·ph·pw·C] (c fastest) → out [C, T, h·ph, w·pw] (wan-spec §2.3).
void unpatchify(const Tensor& y, int64_t T, int64_t h, int64_t w, int pt, int ph, int pw,
                Tensor& out);

}  // namespace osp::ops
