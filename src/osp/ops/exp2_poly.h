// 2^x computed with FMAs instead of the special-function unit (the own Hopper attention kernels'
// softmax, OSP_HOPPER_SOFTMAX=2, takes a quarter of its exponentials this way so they run on the
// FMA pipe beside the SFU's). Host and device (OSP_HD), so the CPU tests check the same code.
//   x clamped to >= -127 (there the result is exactly +0); n = round(x) by the 1.5·2^23 shift,
//   f = x - n in [-0.5, 0.5] (both exact); 2^f by a cubic fitted for relative error; n added to
//   the exponent field. Relative error <= 1.1e-4 for x in [-126, 127] (below bf16's 2^-9 and
//   E4M3's 2^-4 rounding of the probabilities); for x in (-127, -126) the result is a denormal
//   of the right order but not that accuracy (such weights vanish beside a row's maximum of 1).
//   x must be <= 127 and not NaN.
#pragma once
#include <cmath>

#include "osp/core/host_device.h"

namespace osp::ops {

OSP_HD float exp2_poly(float x) {
  x = fmaxf(x, -127.f);
  const float r = x + 12582912.f;      // 1.5·2^23: r's low mantissa bits hold n = round(x)
  const float f = x - (r - 12582912.f);
  float y = fmaf(f, 0.05500898f, 0.24221105f);
  y = fmaf(y, f, 0.69328292f);
  y = fmaf(y, f, 1.f);
  return detail::bits_f32(detail::f32_bits(y) + (detail::f32_bits(r) << 23));
}

}  // namespace osp::ops
