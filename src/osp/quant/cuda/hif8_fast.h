// Branch-free HiF8 TA encoder for the bandwidth-bound CUDA kernels (host + device, so the CPU
// can check it against the reference hif8_encode_ta of hif8_scalar.h bit for bit).
//
// The TA rounding is done on the fp32 bit pattern: adding half an ulp of the HiF8 binade and
// masking the discarded bits gives the rounded magnitude (a carry moves into the next binade by
// itself). The rounded magnitude 2^E·(1 + m/8), E ∈ [−22, 15], is then named by the index
// (E + 22)·8 + m ∈ [0, 304), and a 304-entry table (built from the reference encoder, usually
// in shared memory) gives its code. Specials (NaN, overflow, |x| < 2^-23, the 2^-23 band) are
// selects, not branches.
#pragma once
#include <cstdint>

#include "osp/quant/hif8_scalar.h"

namespace osp::quant::detail {

constexpr int kHiF8IdxCount = 304;  // 38 binades (2^-22 .. 2^15) × 8 mantissa patterns

// The magnitude named by index idx (for binades with fewer than 3 mantissa bits only the
// indices whose low bits are zero are ever produced).
OSP_HD float hif8_idx_value(int idx) {
  return bits_f32((uint32_t((idx >> 3) + 105) << 23) | (uint32_t(idx & 7) << 20));
}

// code_lut[idx] = hif8_encode_ta(hif8_idx_value(idx), false) for idx in [0, kHiF8IdxCount).
OSP_HD uint8_t hif8_encode_ta_fast(float x, bool saturate, const uint8_t* code_lut) {
  const uint32_t u = f32_bits(x);
  const uint8_t sgn = uint8_t((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7fffffffu;
  const int be = int(a >> 23);
  const int E = be - 127;
  const int ae = E < 0 ? -E : E;
  const int mb = (ae <= 15) + (ae <= 7) + (ae <= 3);
  const int shift = 23 - mb;  // 20..23
  const uint32_t rb = (a + (1u << (shift - 1))) & ~((1u << shift) - 1u);
  int idx = int(rb >> 20) - (105 << 3);
  idx = E == -23 ? 0 : idx;  // [2^-23, 2^-22) → 2^-22
  idx = idx < 0 ? 0 : (idx > kHiF8IdxCount - 1 ? kHiF8IdxCount - 1 : idx);
  uint8_t c = uint8_t(sgn | code_lut[idx]);
  c = be < 127 - 23 ? uint8_t(0x00) : c;
  c = a >= kF32Overflow ? uint8_t(sgn | (saturate ? kHiF8MaxFinite : kHiF8Inf)) : c;
  c = a > kF32Inf ? kHiF8NaN : c;
  return c;
}

}  // namespace osp::quant::detail
