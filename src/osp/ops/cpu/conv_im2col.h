// im2col of the CPU conv3d (ops/cpu/conv3d.cpp) and its backward (ops/cpu/vae_backward.cpp).
#pragma once
#include <algorithm>
#include <cstdint>

#include "osp/ops/conv.h"

namespace osp::ops::cpu {

// For the output frame whose tap 0 reads padded input frame t0, output rows [y0, y1):
// col[k, p] with k = ((ci·kt + ta)·kh + b)·kw + c and p = (oy − y0)·Wo + ox (zero where the tap
// falls in the padding). OpenMP only when K·rows·Wo exceeds `parallel_min`; every k writes its
// own row of `col`, so the result does not depend on the thread count.
inline void im2col(const float* xp, int64_t T, int64_t Cin, int64_t H, int64_t W, int64_t kt, int64_t kh,
                   int64_t kw, const Conv3dArgs& a, int64_t t0, int64_t y0, int64_t y1, int64_t Wo, float* col,
                   int64_t parallel_min) {
  const int64_t K = Cin * kt * kh * kw, nb = (y1 - y0) * Wo, HW = H * W;
#pragma omp parallel for schedule(static) if (K * nb > parallel_min)
  for (int64_t k = 0; k < K; ++k) {
    const int64_t c = k % kw, b = (k / kw) % kh, ta = (k / (kw * kh)) % kt, ci = k / (kw * kh * kt);
    float* cr = col + k * nb;
    const int64_t ti = t0 + ta;
    if (ti < 0 || ti >= T) {
      std::fill(cr, cr + nb, 0.f);
      continue;
    }
    const float* xi = xp + (ti * Cin + ci) * HW;
    for (int64_t oy = y0; oy < y1; ++oy) {
      float* row = cr + (oy - y0) * Wo;
      const int64_t iy = oy * a.stride_h - a.pad_top + b;
      if (iy < 0 || iy >= H) {
        std::fill(row, row + Wo, 0.f);
        continue;
      }
      const float* xr = xi + iy * W;
      for (int64_t ox = 0; ox < Wo; ++ox) {
        const int64_t ix = ox * a.stride_w - a.pad_left + c;
        row[ox] = (ix >= 0 && ix < W) ? xr[ix] : 0.f;
      }
    }
  }
}

}  // namespace osp::ops::cpu
