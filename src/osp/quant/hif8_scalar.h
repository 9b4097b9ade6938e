// HiFloat8 scalar codec shared by the CPU and CUDA code (host + device inline functions).
//
// Format (spec hif8-mixgrpo-vbench.md §1.2–1.8, osp-next-spec §5.1):
//   bit 7 sign, then a prefix "dot" code selecting the exponent width D:
//     11 → D4 (|E| 8..15, 1 mantissa bit)   10  → D3 (|E| 4..7, 2 bits)
//     01 → D2 (|E| 2..3, 3 bits)            001 → D1 (|E| = 1, 3 bits)
//     0001 → D0 (E = 0, 3 bits)             0000 → DML denormal 2^(k−23), k = 1..7
//   Exponent: sign-magnitude, implicit leading magnitude bit.
//   Specials: 0x00 = 0 (no −0), 0x80 = NaN, 0x6F/0xEF = ±Inf. Max finite 32768 (0x6E).
//
// Encoding rounds the magnitude to nearest, ties away from zero ("TA"), with
//   |x| ≥ 40960 → ±Inf (or ±32768 when saturating), |x| < 2^-23 → 0, [2^-23, 2^-22) → 2^-22,
//   NaN → 0x80. It works on the fp32 bit pattern with integer arithmetic only, so it is exact
//   and identical on host and device.
#pragma once
#include <cstdint>

#include "osp/core/host_device.h"  // OSP_HD, f32_bits, bits_f32

namespace osp::quant::detail {

using osp::detail::bits_f32;
using osp::detail::f32_bits;

constexpr uint32_t kF32Inf = 0x7f800000u;
constexpr uint32_t kF32Overflow = 0x47200000u;  // 40960.0f = 1.25 · 2^15
constexpr uint8_t kHiF8NaN = 0x80;
constexpr uint8_t kHiF8Inf = 0x6F;
constexpr uint8_t kHiF8MaxFinite = 0x6E;

// Mantissa bits of the HiF8 binade with unbiased exponent E (−22 ≤ E ≤ 15):
// 3 for |E| ≤ 3, 2 for |E| ≤ 7, 1 for |E| ≤ 15, 0 for the denormal band −22..−16.
OSP_HD int hif8_mant_bits(int E) {
  int a = E < 0 ? -E : E;
  return (a <= 15) + (a <= 7) + (a <= 3);
}

// Assembles the 7 magnitude bits from exponent E and mantissa M (already in range).
OSP_HD uint8_t hif8_assemble(int E, uint32_t M) {
  if (E <= -16) return uint8_t(E + 23);  // DML: k = E + 23 in 1..7
  if (E == 0) return uint8_t(0x08 | M);
  int a = E < 0 ? -E : E;
  uint32_t es = E < 0 ? 1u : 0u;
  if (a == 1) return uint8_t(0x10 | (es << 3) | M);
  if (a <= 3) return uint8_t(0x20 | (es << 4) | (uint32_t(a - 2) << 3) | M);
  if (a <= 7) return uint8_t(0x40 | (es << 4) | (uint32_t(a - 4) << 2) | M);
  return uint8_t(0x60 | (es << 4) | (uint32_t(a - 8) << 1) | M);
}

// float → HiF8 code, TA rounding.
OSP_HD uint8_t hif8_encode_ta(float x, bool saturate) {
  uint32_t u = f32_bits(x);
  uint8_t s = uint8_t((u >> 24) & 0x80u);
  uint32_t a = u & 0x7fffffffu;
  if (a > kF32Inf) return kHiF8NaN;
  if (a >= kF32Overflow) return uint8_t(s | (saturate ? kHiF8MaxFinite : kHiF8Inf));
  int be = int(a >> 23);
  if (be < 127 - 23) return 0x00;  // |x| < 2^-23 (fp32 subnormals and ±0 included)
  int E = be - 127;
  if (E == -23) return uint8_t(s | 0x01);  // [2^-23, 2^-22) → 2^-22 (2^-23 is the tie)
  uint32_t f = a & 0x7fffffu;
  int mb = hif8_mant_bits(E);
  int shift = 23 - mb;
  uint32_t q = (f + (1u << (shift - 1))) >> shift;  // ties away (on the magnitude)
  if (q == (1u << mb)) {                          // carry into the next binade
    E += 1;
    q = 0;
  }
  return uint8_t(s | hif8_assemble(E, q));
}

// HiF8 code → float (exact: every HiF8 value is an fp32 value).
OSP_HD float hif8_decode(uint8_t c) {
  if (c == 0x00) return 0.0f;
  if (c == kHiF8NaN) return bits_f32(0x7fc00000u);
  uint32_t sign = uint32_t(c & 0x80) << 24;
  uint32_t p = c & 0x7f;
  if (p == kHiF8Inf) return bits_f32(sign | kF32Inf);
  int E;
  uint32_t M;
  int mb;
  if ((p >> 3) == 0) {  // DML
    E = int(p & 7) - 23;
    M = 0;
    mb = 0;
  } else {
    int D;
    if ((p >> 3) == 1) D = 0, mb = 3;
    else if ((p >> 4) == 1) D = 1, mb = 3;
    else if ((p >> 5) == 1) D = 2, mb = 3;
    else if ((p >> 5) == 2) D = 3, mb = 2;
    else D = 4, mb = 1;
    M = p & ((1u << mb) - 1);
    if (D == 0) {
      E = 0;
    } else {
      uint32_t fld = (p >> mb) & ((1u << D) - 1);
      uint32_t es = fld >> (D - 1);
      int mag = int((1u << (D - 1)) | (fld & ((1u << (D - 1)) - 1)));
      E = es ? -mag : mag;
    }
  }
  // 2^E · (1 + M/2^mb) as fp32 bits: E ∈ [−22, 15] is always a normal fp32 exponent.
  uint32_t bits = sign | (uint32_t(E + 127) << 23) | (M << (23 - mb));
  return bits_f32(bits);
}

// Quant-dequant: the nearest HiF8 value (TA), as a float. −0 → +0, NaN → NaN.
OSP_HD float hif8_round_ta(float x, bool saturate) {
  return hif8_decode(hif8_encode_ta(x, saturate));
}

// Hybrid rounding (HR): TA in the 3-bit-mantissa band (|E| ≤ 3), at and above 2^15 (so that a
// finite input never rounds up into the Inf code, the HR hazard of spec §1.6), on overflow,
// NaN and below 2^-23; stochastic rounding everywhere else. `r` is a uniform 32-bit random
// number; the value rounds up with probability exactly (discarded fraction) / step, using the
// top bits of r — unbiased in expectation (the Huawei reference's ">=" bias is not copied).
OSP_HD uint8_t hif8_encode_hybrid(float x, bool saturate, uint32_t r) {
  uint32_t u = f32_bits(x);
  uint8_t s = uint8_t((u >> 24) & 0x80u);
  uint32_t a = u & 0x7fffffffu;
  if (a > kF32Inf || a >= kF32Overflow) return hif8_encode_ta(x, saturate);
  int be = int(a >> 23);
  if (be < 127 - 23) return 0x00;
  int E = be - 127;
  if ((E >= -3 && E <= 3) || E >= 15) return hif8_encode_ta(x, saturate);
  uint32_t f = a & 0x7fffffu;
  if (E == -23) {
    // between 0 and 2^-22: P(up) = |x| / 2^-22 = (2^23 + f) / 2^24
    uint32_t frac = (1u << 23) | f;  // 24-bit fraction
    return (r >> 8) < frac ? uint8_t(s | 0x01) : uint8_t(0x00);
  }
  int mb = hif8_mant_bits(E);
  int shift = 23 - mb;  // 20..23 bits discarded
  uint32_t keep = f >> shift;
  uint32_t rem = f & ((1u << shift) - 1u);
  uint32_t q = keep + (((r >> (32 - shift)) < rem) ? 1u : 0u);
  if (q == (1u << mb)) {
    E += 1;
    q = 0;
  }
  return uint8_t(s | hif8_assemble(E, q));
}

}  // namespace osp::quant::detail
