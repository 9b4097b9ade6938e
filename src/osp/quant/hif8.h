// HiFloat8 (HiF8): exact codec, quant-dequant ("fake quant"), per-tensor scaled fake quant as
// OSP-Next uses it, and the stochastic hybrid rounding for gradients.
// Spec: hif8-mixgrpo-vbench.md §1, osp-next-spec.md §5. Scalar bit-level code: hif8_scalar.h.
//
// Devices and dtypes: every tensor function runs on the CPU (F32/BF16 in) and on CUDA
// (F32/BF16 in); inputs may be strided, outputs must be contiguous, have the input's shape and
// live on the input's device. "In place allowed" means out may be the same tensor as x.
#pragma once
#include <cstdint>

#include "osp/core/tensor.h"

namespace osp::quant {

// The amax targets of OSP-Next's per-tensor scaling (§1.10): forward tensors (activations,
// weights, Q/K/V) map amax to 15 (top of the 3-bit-mantissa band, code 0x2F); gradients map
// amax to 224 (top of the 2-bit band, code 0x4F).
inline constexpr float kHiF8ForwardMax = 15.0f;
inline constexpr float kHiF8BackwardMax = 224.0f;
// Lower clamp of amax before s = max_target / amax (the reference's clamp).
inline constexpr float kHiF8AmaxFloor = 1e-8f;

// ------------------------------------------------------------------ scalar codec
// float → code with TA rounding (round to nearest, ties away from zero). |x| ≥ 40960 → ±Inf code
// (0x6F/0xEF), or ±32768 (0x6E/0xEE) when saturate; |x| < 2^-23 → 0x00 (no −0); NaN → 0x80.
uint8_t hif8_encode(float x, bool saturate = false);
// code → float through the 256-entry table (0x80 → NaN, 0x6F/0xEF → ±Inf).
float hif8_decode(uint8_t code);
// The value-level quant-dequant: hif8_decode(hif8_encode(x, saturate)).
float hif8_round(float x, bool saturate = false);
// Hybrid rounding of one value with an explicit 32-bit uniform random word (see hif8_scalar.h).
uint8_t hif8_encode_hybrid(float x, uint32_t random_word, bool saturate = false);
// The decode table (256 floats, index = code).
const float* hif8_decode_table();

// ------------------------------------------------------------------ tensor codec
// x F32/BF16 (CPU or CUDA) → codes. `out` U8 or HiF8 dtype, x's shape, contiguous, same device.
void hif8_encode(const Tensor& x, Tensor& out, bool saturate = false);
Tensor hif8_encode(const Tensor& x, bool saturate = false);  // → DType::HiF8
// codes (U8 or HiF8) → values. `out` F32 or BF16 (HiF8 values are exact in both).
void hif8_decode(const Tensor& codes, Tensor& out);
Tensor hif8_decode(const Tensor& codes, DType dtype = DType::F32);

// ------------------------------------------------------------------ fake quant
// Unscaled quant-dequant: out = HiF8_TA(x) elementwise. x/out F32 or BF16. In place allowed.
void hif8_round(const Tensor& x, Tensor& out, bool saturate = false);

// Stochastic hybrid rounding (for gradients): TA in the 3-bit band, unbiased stochastic
// rounding in the 2-bit, 1-bit and denormal bands. The random word of element i (row-major
// index) is word g mod 4 of Philox4x32-10 block g / 4, g = offset + i, under key seed
// (philox.h), so the result depends only on (x, seed, offset), never on threads or device.
// x/out F32 or BF16.
void hif8_round_stochastic(const Tensor& x, Tensor& out, uint64_t seed, uint64_t offset = 0,
                           bool saturate = false);

// max |x| over the whole tensor (NaN elements ignored), computed on x's device and returned to
// the host (a device sync on CUDA). x F32 or BF16.
float amax(const Tensor& x);

// OSP-Next's per-tensor scaled fake quant Q_s (spec §1.10, osp-next-spec §5.5):
//   amax = max|x| (NaN ignored), s = max_target / max(amax, 1e-8), out = HiF8(x·s) / s.
// F32: amax, s, x·s and the division in fp32. BF16 (the reference's bf16 training numerics):
// amax exact, s rounded to bf16, x·s rounded to bf16, HiF8 in fp32, out = bf16(v / s).
// amax = 0 → out = x. If amax is ±Inf the scaling is undefined: s = 1 is used (out = HiF8(x)).
// CUDA: the amax reduction and the scale stay on the device (no host sync).
// x/out F32 or BF16 on the CPU or CUDA (out's dtype may differ from x's only F32 → BF16 or
// BF16 → F32 with the numerics of x's dtype). In place allowed.
void hif8_fake_quant(const Tensor& x, Tensor& out, float max_target = kHiF8ForwardMax);
Tensor hif8_fake_quant(const Tensor& x, float max_target = kHiF8ForwardMax);

// The same per-tensor scaling with hybrid (stochastic) rounding instead of TA — for gradients
// (default target 224). Element i uses the Philox word of (seed, offset + i) as in
// hif8_round_stochastic. OSP-Next itself uses TA for gradients too (hif8_fake_quant(g, out, 224)).
void hif8_fake_quant_stochastic(const Tensor& x, Tensor& out, uint64_t seed, uint64_t offset = 0,
                                float max_target = kHiF8BackwardMax);

// The scale s = max_target / max(amax, 1e-8) that hif8_fake_quant uses for a given amax and
// dtype (bf16-rounded for BF16), with the amax = 0 / Inf rules above (s = 1 for Inf).
float hif8_scale_for(float amax, float max_target, DType dtype);

}  // namespace osp::quant
