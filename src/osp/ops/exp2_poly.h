// 2^x from fp32 adds, multiplies and integer ops only — no SFU (MUFU.EX2) instruction — for
// kernels whose special-function unit is the bound (the Hopper FP8 attention kernel computes a
// share of its exponentials with it). x <= 127; x below -125 gives 2^-125. Relative error below
// 8e-5 (a cubic on [-1/2, 1/2], fitted to the relative error; tests/ops/exp2_poly_test.cpp).
#pragma once
#include "osp/core/host_device.h"

namespace osp::ops {

OSP_HD float exp2_poly(float x) {
  x = x > -125.f ? x : -125.f;         // (NaN and -inf too) keeps the exponent field >= 1
  const float t = x + 12582912.f;      // 1.5 · 2^23: rint(x) lands in t's low mantissa bits
  const float f = x - (t - 12582912.f);  // in [-1/2, 1/2]
  const float p = ((0.055171676f * f + 0.24261117f) * f + 0.69326097f) * f + 0.99992806f;  // 2^f
  // rint(x) · 2^23 added to p's bits: the low bits of t's pattern are 0x4B400000 + rint(x),
  // and 0x4B400000 · 2^23 vanishes mod 2^32
  return detail::bits_f32(detail::f32_bits(p) + (detail::f32_bits(t) << 23));
}

}  // namespace osp::ops
