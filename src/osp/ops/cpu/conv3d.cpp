// CPU conv3d: im2col over bands of output rows, then one sgemm per band (OpenBLAS).
#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "osp/ops/conv.h"
#include "osp/ops/cpu/conv_im2col.h"

namespace osp::ops::cpu {

void conv3d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv3dArgs& a, Tensor& out) {
  const int64_t T = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Cout = w.size(0), kt = w.size(2), kh = w.size(3), kw = w.size(4);
  const int64_t To = out.size(0), Ho = out.size(2), Wo = out.size(3);
  const int64_t K = Cin * kt * kh * kw, HWo = Ho * Wo, HW = H * W;
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  float* op = out.data<float>();
  const float* bp = bias ? bias->data<float>() : nullptr;

  const bool pointwise = kt == 1 && kh == 1 && kw == 1 && a.stride_h == 1 && a.stride_w == 1 &&
                         a.pad_top == 0 && a.pad_bottom == 0 && a.pad_left == 0 &&
                         a.pad_right == 0;
  // Band of output rows so that the column buffer stays ≤ 64 MiB.
  const int64_t max_cols = std::max<int64_t>(Wo, (int64_t(64) << 20) / (4 * std::max<int64_t>(K, 1)));
  const int64_t band = std::clamp<int64_t>(max_cols / Wo, 1, Ho);
  std::vector<float> col(pointwise ? 0 : size_t(K * band * Wo));

  for (int64_t to = 0; to < To; ++to) {
    float* o = op + to * Cout * HWo;
    const int64_t t0 = to * a.stride_t - a.pad_front;  // padded frame index of tap 0
    if (pointwise) {
      if (t0 < 0) {
        std::fill(o, o + Cout * HWo, 0.f);
      } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(Cout), int(HWo), int(Cin), 1.f,
                    wp, int(Cin), xp + t0 * Cin * HW, int(HW), 0.f, o, int(HWo));
      }
    } else {
      for (int64_t y0 = 0; y0 < Ho; y0 += band) {
        const int64_t y1 = std::min(Ho, y0 + band), nb = (y1 - y0) * Wo;
        im2col(xp, T, Cin, H, W, kt, kh, kw, a, t0, y0, y1, Wo, col.data(), int64_t(1) << 16);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(Cout), int(nb), int(K), 1.f, wp,
                    int(K), col.data(), int(nb), 0.f, o + y0 * Wo, int(HWo));
      }
    }
    if (bp) {
#pragma omp parallel for schedule(static) if (Cout * HWo > (1 << 16))
      for (int64_t co = 0; co < Cout; ++co) {
        float* r = o + co * HWo;
        const float bv = bp[co];
        for (int64_t i = 0; i < HWo; ++i) r[i] += bv;
      }
    }
  }
}

}  // namespace osp::ops::cpu
