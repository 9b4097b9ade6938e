// The FP8 E4M3 tensor-core path for HiF8-trained models on Hopper.
//
// Why it works: after OSP-Next's per-tensor scaling (amax → 15, or 224 for gradients) every
// HiF8 value v with |v| ≥ 2^-8 is exactly an E4M3 value (E4M3 has 3 mantissa bits on all
// normal binades 2^-6..2^8 and subnormals m·2^-9; HiF8 has ≤ 3 mantissa bits). The HiF8 values
// that are NOT representable in E4M3 are exactly those with 0 < |v| < 2^-8 except ±2^-9:
//   ±1.5·2^-9 (→ ±2^-8), the 1-bit band 2^-10 .. 1.5·2^-15 and the denormals 2^-16 .. 2^-22
//   (→ 0 or ±2^-9 by round-to-nearest-even), i.e. relative to amax = 15 below 2^-8/15 ≈ 2^-11.9.
// Above the scaled range nothing differs either (HiF8 values ≤ 448 are all E4M3 values).
// This is verified exhaustively in tests/quant/fp8_test.cpp (all 253 finite HiF8 values).
//
// So fp8_linear computes, per tensor, E4M3(HiF8(x·s_x)) and E4M3(HiF8(w·s_w)) and runs the
// E4M3×E4M3 GEMM with fp32 accumulation and the dequantization scales 1/s_x, 1/s_w:
//   out = (1/s_x)(1/s_w) · Xq · Wqᵀ + bias
// which equals the HiF8 fake-quant linear (hif8_linear.h) up to the tiny values above and
// fp32 summation order.
#pragma once
#include <cstdint>
#include <string>

#include "osp/core/tensor.h"
#include "osp/ops/cuda/attention_paths.h"
#include "osp/ops/ops.h"
#include "osp/quant/hif8.h"

namespace osp::quant {

// ------------------------------------------------------------------ E4M3 scalars
// float → E4M3 code, round to nearest even, saturating to ±448, NaN → 0x7F (sign kept).
uint8_t e4m3_encode(float x);
float e4m3_decode(uint8_t code);
// True when the HiF8 value v (any finite float, in practice a HiF8 value) is exactly
// representable in E4M3 (|v| ≤ 448 and e4m3 round trip exact).
bool is_e4m3_exact(float v);

// ------------------------------------------------------------------ quantized operands
// codes: F8E4M3 tensor (x's shape), E4M3(HiF8(x·s)); scale_inv: F32 [1], 1/s; both on x's
// device. s follows hif8_scale_for (bf16 rules for BF16 input). On CUDA s never leaves
// the device.
struct Fp8Tensor {
  Tensor codes;
  Tensor scale_inv;
};
// x F32/BF16 on CPU or CUDA. out.codes / out.scale_inv are (re)allocated if undefined or of
// the wrong shape/device.
void hif8_quantize_e4m3(const Tensor& x, Fp8Tensor& out, float max_target = kHiF8ForwardMax);
Fp8Tensor hif8_quantize_e4m3(const Tensor& x, float max_target = kHiF8ForwardMax);
// Back to values: out = e4m3(codes) · scale_inv, F32 or BF16 (CPU or CUDA).
void fp8_dequantize(const Fp8Tensor& q, Tensor& out);
// From stored HiF8 weight bytes (model/hif8_checkpoint.h: codes of HiF8(w·s), scale s) to the
// FP8 operand without going through floats: codes mapped through a 256-entry HiF8→E4M3 table,
// scale_inv = 1/s. CPU (move the result with .to(Device::cuda())). The codes' values must fit
// E4M3 (|v| ≤ 448, true for checkpoints converted with max_target ≤ 448).
Fp8Tensor fp8_from_hif8_codes(const Tensor& codes, float scale);

// ------------------------------------------------------------------ GEMM
struct Fp8LinearOptions {
  // cuBLASLt CUBLASLT_MATMUL_DESC_FAST_ACCUM: faster, but partial sums are not periodically
  // promoted to full fp32. Even without it Hopper's FP8 MMA accumulates with fewer bits than
  // fp32 between promotions: 1.28e-4 relative error vs the fp32 CPU reference at K = 256,
  // f32 out (H200, scripts/gpu-test.sh run of 2026-11-26 03:37 UTC).
  bool fast_accum = false;
};
// out[M,N] = scale_x·scale_w · Xq[M,K] · Wq[N,K]ᵀ + bias[N].
// x.codes may have leading dims (flattened to M); out has them with N last.
// CUDA (cuBLASLt, sm_89+): K % 16 == 0 and N % 8 == 0; out BF16 or F32; bias F32/BF16 or null
// (applied in bf16 by the cuBLASLt epilogue). CPU (the reference): out F32, float GEMM of the
// dequantized E4M3 operands (OpenBLAS), bias added in f32.
// act: as ops::linear (GELU-tanh fused into the cuBLASLt epilogue when available, else and for
// SiLU a separate ops:: kernel on out).
void fp8_linear(const Fp8Tensor& x, const Fp8Tensor& w, const Tensor* bias, Tensor& out,
                const Fp8LinearOptions& opt = {}, ops::Act act = ops::Act::None);
// Convenience: quantizes x and w (max 15) and runs the GEMM above.
void fp8_linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out,
                const Fp8LinearOptions& opt = {}, ops::Act act = ops::Act::None);

// ------------------------------------------------------------------ attention
// FP8 attention (quant/fp8_attention.cpp; CUDA: quant/cuda/fp8_attention_cudnn.cpp, cuDNN's
// fused FP8 SDPA forward through the backend graph API).
//
// Arithmetic, per (b, h, query row i), with q, k, v the E4M3 codes (values ≤ 15 in magnitude
// after HiF8 scaling) and dq, dk, dv their scale_inv:
//   s_j  = (q_i · k_j) · scale · dq · dk                  f32 (scale = args.scale or 1/sqrt(D))
//   P_j  = exp(s_j − m) with m the running row max         f32 (online softmax over blocks
//                                                           of 256 keys)
//   P8_j = E4M3(P_j · kFp8AttentionScaleP)                  round to nearest even, ≤ 448
//   l    = Σ_j P_j (f32, unrounded),  acc = Σ_j P8_j · v_j  (f32)
//   O'   = acc / l · (1 / kFp8AttentionScaleP) · dv        f32
//   out  = bf16(O'), or where cuDNN cannot write BF16 O: bf16(F16(O'/dv)·dv), or
//          bf16(E4M3(O'·s8)/s8) with s8 = 448/(15·dv) (see Fp8AttentionOut)
// i.e. softmax(q kᵀ · scale) v on the HiF8 values with the probabilities rounded to E4M3 at
// scale 448 (the largest E4M3 normal: P ≤ 1 maps to ≤ 448 exactly).
inline constexpr float kFp8AttentionScaleP = 448.0f;
// How the cuDNN plan stores O before it becomes our BF16 output: BF16 directly, F16 in v's
// code units (O'/dv), or E4M3 spanning the range (O'·448/(15·dv), |O'| ≤ 15·dv) — the last adds
// the E4M3 rounding of O (≤ 2^-4 relative per element).
enum class Fp8AttentionOut : uint8_t { BF16, F16, E4M3 };

// Which CUDA kernel runs FP8 attention. Auto: osp's own Hopper FP8 kernel
// (ops/cuda/attention_paths.h: attention_hopper_fp8; P rounded with the running max of each
// K/V tile, 224 keys by default, O stored in bf16) where the GPU and build allow it, D = 128
// and each sequence has at least kHopperMinKeys keys, else cuDNN's;
// OSP_ATTENTION=cudnn / =hopper force one (as for bf16 attention, core/settings.h; =flash,
// there being no own flash FP8 kernel, means cuDNN's). Cudnn / Hopper: that kernel (Hopper
// throws where it cannot run; Cudnn falls back to bf16 attention as below).
enum class Fp8AttentionKernel : uint8_t { Auto, Cudnn, Hopper };

// q [B, Lq, H, D], k/v [B, Lk, H, D] quantized operands (codes contiguous, one scale_inv each);
// out [B, Lq, H, D] contiguous. args: scale (0 → 1/sqrt(D)) and seq_lens (packed sequences,
// host i32 [R] summing to Lq = Lk; attention stays inside each sequence, zero lengths allowed);
// bias, q_lens and kv_lens are rejected with an osp::Error.
// CUDA: out BF16; cuDNN's fused FP8 SDPA (sm_90+, one call per packed sequence; with cuDNN
// 9.14 O is stored in E4M3, see Fp8AttentionOut: 3.0 % relative to bf16 attention on the same
// HiF8 inputs instead of ~1.3 % for the P rounding alone, docs/PERF.md); where cuDNN has no
// engine for the shape the codes are dequantized to bf16 and ops::attention runs (logged under
// OSP_VERBOSE=1; fp8_attention_last_path() says which ran). No host sync. On a Hopper GPU the
// own FP8 kernel (see Fp8AttentionKernel) runs instead where it applies: the arithmetic above
// with blocks of its key tile (224 keys by default) and O in bf16.
// CPU: out F32 or BF16; fp8_attention_emulate with the default options (O not rounded).
void fp8_attention(const Fp8Tensor& q, const Fp8Tensor& k, const Fp8Tensor& v, Tensor& out,
                   const ops::AttentionArgs& args = {},
                   Fp8AttentionKernel kernel = Fp8AttentionKernel::Auto);
// q/k/v F32/BF16 (CPU or CUDA, any values, may be strided): each HiF8-quantized per tensor at
// scale 15/amax (hif8_quantize_e4m3, exactly the HiF8 mode's fake quant), then fp8_attention.
void hif8_attention_fp8(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                        const ops::AttentionArgs& args = {},
                        Fp8AttentionKernel kernel = Fp8AttentionKernel::Auto);
// "hopper_fp8", "cudnn_fp8", "bf16_fallback" or "cpu_emulation": the path the last
// fp8_attention call took (process-wide, for tests and benchmarks; "hopper_fp8" when every
// sequence ran on the own kernel).
const char* fp8_attention_last_path();
// The cuDNN graph variant that built the last FP8 SDPA plan (e.g. "O bf16, stats virtual"),
// or the reasons every variant failed; empty before the first CUDA call. OSP_FP8_SDPA_PROBE=1
// makes the plan builder try every variant and list each outcome here.
std::string fp8_attention_cudnn_note();
// The O storage of the last cuDNN FP8 SDPA call (BF16 before any).
Fp8AttentionOut fp8_attention_cudnn_o_storage();

// The FP8 kernels' call (ops/cuda/attention_paths.h) for the whole of q, k, v (codes [B, Lq|Lk,
// H, D], contiguous) into out ([B, Lq, H, D], bf16), scale 0 → 1/sqrt(D): what fp8_attention
// builds and narrows to each packed sequence; tests and benchmarks call the kernels with it.
ops::cuda::Fp8AttentionCall fp8_attention_call(const Fp8Tensor& q, const Fp8Tensor& k, const Fp8Tensor& v,
                                               Tensor& out, float scale = 0.f);

// The CPU emulation of the arithmetic above (the tests' reference). Knobs model how a fused
// kernel may differ from the plain definition:
struct Fp8AttentionEmulation {
  // Keys per online-softmax block: P of a block is rounded with that block's running max m
  // (flash attention); 0 = one block per row (the final row max). 256 matches cuDNN 9.14's
  // Hopper FP8 kernel best of 0/64/128/256 (H200, fp8_attention_gpu_test, 2026-11-26).
  int64_t kv_block = 256;
  // Row sum l over the E4M3-rounded P (P8 / 448) instead of the f32 P.
  bool rowsum_of_rounded_p = false;
  // false: skip the E4M3 rounding of P (then the result is plain attention on HiF8 values).
  bool round_p = true;
  // The rounding of O' before the output (BF16: none beyond out's own dtype).
  Fp8AttentionOut o_storage = Fp8AttentionOut::BF16;
};
// CPU only; out F32 or BF16 [B, Lq, H, D]; same argument rules as fp8_attention.
void fp8_attention_emulate(const Fp8Tensor& q, const Fp8Tensor& k, const Fp8Tensor& v,
                           Tensor& out, const ops::AttentionArgs& args = {},
                           const Fp8AttentionEmulation& emu = {});

}  // namespace osp::quant
