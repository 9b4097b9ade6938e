// CPU norms: LayerNorm (optionally affine), LayerNorm + modulation, RMSNorm. Row statistics are
// accumulated in double; everything else is fp32.
#include <cmath>

#include "osp/core/dtype.h"
#include "osp/ops/cpu/cpu_kernels.h"
#include "osp/ops/cpu/cpu_ops.h"

namespace osp::ops::cpu {

void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& out) {
  const int64_t C = x.size(-1), R = x.numel() / C;
  const float* xp = x.data<float>();
  float* op = out.data<float>();
  const float* wp = w ? w->data<float>() : nullptr;
  const float* bp = b ? b->data<float>() : nullptr;
#pragma omp parallel for schedule(static) if (R * C > kParallelMin)
  for (int64_t r = 0; r < R; ++r) {
    const float* xr = xp + r * C;
    float* orow = op + r * C;
    float mean, rstd;
    row_stats(xr, C, eps, mean, rstd);
    if (wp)
      for (int64_t c = 0; c < C; ++c) orow[c] = (xr[c] - mean) * rstd * wp[c] + bp[c];
    else
      for (int64_t c = 0; c < C; ++c) orow[c] = (xr[c] - mean) * rstd;
  }
}

void layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps,
                         Tensor& out, bool round_ln_to_bf16) {
  const int64_t C = x.size(-1), R = x.numel() / C;
  const float* xp = x.data<float>();
  float* op = out.data<float>();
  const float* sh = shift.data<float>();
  const float* sc = scale.data<float>();
#pragma omp parallel for schedule(static) if (R * C > kParallelMin)
  for (int64_t r = 0; r < R; ++r) {
    const float* xr = xp + r * C;
    float* orow = op + r * C;
    float mean, rstd;
    row_stats(xr, C, eps, mean, rstd);
    for (int64_t c = 0; c < C; ++c) {
      float n = (xr[c] - mean) * rstd;
      if (round_ln_to_bf16) n = round_bf16(n);
      orow[c] = n * (1.f + sc[c]) + sh[c];
    }
  }
}

void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  const int64_t C = x.size(-1), R = x.numel() / C;
  const float* xp = x.data<float>();
  float* op = out.data<float>();
  const float* wp = w.data<float>();
#pragma omp parallel for schedule(static) if (R * C > kParallelMin)
  for (int64_t r = 0; r < R; ++r) {
    const float* xr = xp + r * C;
    float* orow = op + r * C;
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += double(xr[c]) * double(xr[c]);
    const float rr = float(1.0 / std::sqrt(ss / double(C) + double(eps)));
    for (int64_t c = 0; c < C; ++c) orow[c] = xr[c] * rr * wp[c];
  }
}

}  // namespace osp::ops::cpu
