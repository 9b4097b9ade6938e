// FP8 E4M3 (OCP "E4M3FN": bias 7, no Inf, NaN = S.1111.111, max ±448, subnormals m·2^-9)
// scalar conversion on fp32 bits, host + device, round to nearest even, saturating to ±448
// (the behaviour of __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)). NaN → 0x7F/0xFF.
// The one E4M3 codec of osp: core's dtype conversions (f32_to_e4m3) and osp::quant's FP8 code
// (quant/e4m3_scalar.h) both use it.
#pragma once
#include <cstdint>

#include "osp/core/host_device.h"  // OSP_HD, f32_bits, bits_f32

namespace osp::detail {

OSP_HD uint8_t e4m3_encode_rne(float x) {
  uint32_t u = f32_bits(x);
  uint8_t s = uint8_t((u >> 24) & 0x80u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint8_t(s | 0x7f);
  if (a >= 0x43e00000u) return uint8_t(s | 0x7e);  // ≥ 448 (incl. Inf): saturate
  int E = int(a >> 23) - 127;
  if (E < -6) {  // E4M3 subnormal range: units of 2^-9, RNE
    if (E < -10) return s;  // < 2^-10: rounds to 0 (2^-10 itself is the tie → even 0)
    uint32_t m = (a & 0x7fffffu) | 0x800000u;  // value = m · 2^(E−23)
    int shift = 14 - E;                        // to units of 2^-9: 21..24
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return uint8_t(s | q);  // q == 8 is exactly the smallest normal code 0x08
  }
  uint32_t t = a + 0x7ffffu + ((a >> 20) & 1u);  // RNE to 3 mantissa bits
  int E2 = int(t >> 23) - 127;
  uint32_t code = (uint32_t(E2 + 7) << 3) | ((t >> 20) & 7u);
  return uint8_t(s | (code > 0x7e ? 0x7e : code));
}

OSP_HD float e4m3_decode_bits(uint8_t v) {
  uint32_t sign = uint32_t(v & 0x80) << 24;
  uint32_t e = (v >> 3) & 0xf, m = v & 7;
  if (e == 15 && m == 7) return bits_f32(0x7fc00000u | sign);
  if (e == 0) {
    // m · 2^-9 exactly
    float r = float(m) * (1.0f / 512.0f);
    return bits_f32(f32_bits(r) | sign);
  }
  return bits_f32(sign | ((e - 7 + 127) << 23) | (m << 20));
}

}  // namespace osp::detail
