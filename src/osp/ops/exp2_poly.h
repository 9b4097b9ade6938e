// 2^x computed with FMAs instead of the special-function unit (the own Hopper attention kernels'
// softmax, OSP_HOPPER_SOFTMAX=2|3, takes a quarter / a third of its exponentials this way so they
// run on the FMA pipe beside the SFU's). Host and device (OSP_HD), so the CPU tests check the
// same code.
//   x clamped to >= -127 (NaN stays NaN); n = round(x) and 2^n's exponent field from one shifted
//   add (r = x + 1.5·2^23 + 127 holds n + 127 in its low bits), f = x - n in [-0.5, 0.5] (both
//   exact); 2^f by a cubic fitted for relative error; the result (2^f)·2^n. Relative error
//   <= 1.1e-4 for x in [-126, 127] (below bf16's 2^-9 and E4M3's 2^-4 rounding of the
//   probabilities); x < -126.5 gives exactly +0 (-inf too: masked scores add nothing), x in
//   [-126.5, -126) a denormal (0 where the GPU flushes them). x must be <= 127.
#pragma once
#include <cmath>

#include "osp/core/host_device.h"

namespace osp::ops {

OSP_HD float exp2_poly(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("max.NaN.f32 %0, %0, 0fC2FE0000;" : "+f"(x));  // max(x, -127), NaN propagated
#else
  x = x != x ? x : fmaxf(x, -127.f);
#endif
  constexpr float kShift = 12583039.f;  // 1.5·2^23 + 127
  const float r = x + kShift;
  const float f = x - (r - kShift);
  float y = fmaf(f, 0.05500898f, 0.24221105f);
  y = fmaf(y, f, 0.69328292f);
  y = fmaf(y, f, 1.f);
  return y * detail::bits_f32(detail::f32_bits(r) << 23);  // · 2^n (n = -127: · 0)
}

}  // namespace osp::ops
