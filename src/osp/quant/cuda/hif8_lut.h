// Table-driven HiF8 encoding for the bandwidth-bound CUDA kernels (host + device inline, so the
// CPU tests check every step against the reference codec of hif8_scalar.h bit for bit).
//
// TA encoding depends only on the top 13 bits of the fp32 pattern (sign, exponent, 4 mantissa
// bits): the rounding of a binade with mb ≤ 3 mantissa bits looks at mantissa bits ≥ 19 only
// (ties away: the bit below the kept ones decides), and every threshold of the codec (the
// overflow 40960 = 0x47200000, the 2^-23 flush, the [2^-23, 2^-22) band) has its low 19 bits
// zero. So one 8192-entry byte table, indexed by `bits >> 19`, gives the code of any float —
// except the NaNs whose top 4 mantissa bits are zero (0x7f800001 .. 0x7f87ffff and negatives),
// which share the Inf prefix. The kernels therefore index with the bits of x·s or x + 0: GPU
// arithmetic turns every NaN into the canonical 0x7fffffff (and a host FPU at least sets the
// quiet bit 22), which lands in a NaN entry. −0 + 0 = +0, and x·s keeps −0 → code 0 either way.
//
// Stochastic (hybrid) rounding reuses the table: the magnitude is first rounded stochastically
// onto the HiF8 grid with integer arithmetic (add random low bits, clear them), and the table
// then names the exact result. The per-exponent parameters come from a 256-entry table
// (hif8_sr_entry), so per element the work is one add, one mask and three table reads.
#pragma once
#include <cstdint>

#include "osp/quant/hif8_scalar.h"

namespace osp::quant::detail {

constexpr int kHiF8LutBits = 13;
constexpr int kHiF8LutSize = 1 << kHiF8LutBits;  // 8192
constexpr int kHiF8LutShift = 32 - kHiF8LutBits;  // 19

// The table index of a float whose NaNs (if any) have the quiet bit set.
OSP_HD uint32_t hif8_lut_index(float canonical_x) { return f32_bits(canonical_x) >> kHiF8LutShift; }

// lut[k] for k in [0, 8192): the TA code of the float with bits k << 19 (prefix k).
OSP_HD uint8_t hif8_lut_entry(uint32_t k, bool saturate) {
  return hif8_encode_ta(bits_f32(k << kHiF8LutShift), saturate);
}

// ---- hybrid rounding ----
// Per biased exponent be (0..255) of the input: `mask_sh` = the AND mask that keeps the
// rounded magnitude's bits, with the shift sh (0..24) for the random word in its low 5 bits
// (the mask's low 19 bits are otherwise zero and bits below 19 never reach the table index);
// `ofs` is added to the pattern (−2^23 only for the [2^-23, 2^-22) band, see below).
//   TA bands (|E| ≤ 3, E ≥ 15, NaN/Inf, |x| < 2^-23): sh = 24 (no random bits), mask keeps
//     bits ≥ 19, so the table does the TA rounding itself.
//   SR bands (mb = 0, 1, 2 mantissa bits): shift = 23 − mb bits are discarded; adding
//     R = ((~r) >> 8) >> (1 + mb) = (~r) >> (32 − shift) and clearing the shift bits rounds up
//     exactly when (r >> (32 − shift)) < rem, the reference's rule.
//   E = −23: the reference rounds between 0 and 2^-22 with P(up) = (2^23 + f) / 2^24, up iff
//     (r >> 8) < 2^23 + f. With R = (~r) >> 8 (24 bits) and ofs = −2^23, the sum lands at
//     exponent 104 or 105 when up (both name code 1 in the table: 2^-23 rounds to 2^-22 by the
//     TA rule) and at 103 when down (code 0).
struct SrEntry {
  uint32_t mask_sh;
  uint32_t ofs;
};

OSP_HD SrEntry hif8_sr_entry(int be) {
  const int E = be - 127;
  const bool ta = be < 104 || be >= 142 || (E >= -3 && E <= 3);  // 142: E = 15 and above
  if (ta) return SrEntry{0xfff80000u | 24u, 0u};
  if (E == -23) return SrEntry{0xff800000u | 0u, 0xff800000u};  // −2^23 mod 2^32
  const int mb = hif8_mant_bits(E);                               // 0, 1 or 2 here
  const int shift = 23 - mb;
  return SrEntry{(0xffffffffu << shift) | uint32_t(1 + mb), 0u};
}

// Right shift by the low 5 bits of s (what the device's funnel shift in wrap mode does).
OSP_HD uint32_t shr_wrap(uint32_t v, uint32_t s) {
#if defined(__CUDA_ARCH__)
  return __funnelshift_r(v, 0u, s);
#else
  return v >> (s & 31u);
#endif
}

// The table index of the hybrid rounding of a float (NaN canonical as above) under random
// word r. `tab` is the 256-entry hif8_sr_entry table.
OSP_HD uint32_t hif8_sr_index(float canonical_x, uint32_t r, const SrEntry* tab) {
  const uint32_t u = f32_bits(canonical_x);
  const SrEntry e = tab[(u >> 23) & 0xffu];
  const uint32_t R = shr_wrap((~r) >> 8, e.mask_sh);
  // the sign bit is never reached by the carry: SR bands have |x| < 2^15 and R < 2^24
  return ((u + R + e.ofs) & e.mask_sh) >> kHiF8LutShift;
}

}  // namespace osp::quant::detail
