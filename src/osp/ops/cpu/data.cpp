// CPU data movement: row gather (any dtype), patchify (im2col), unpatchify.
#include <cstring>

#include "osp/ops/cpu/cpu_kernels.h"
#include "osp/ops/cpu/cpu_ops.h"

namespace osp::ops::cpu {

void gather_rows(const Tensor& src, const Tensor& index, Tensor& out) {
  const int64_t M = index.size(0);
  const size_t row_bytes = size_t(src.size(1)) * dtype_size(src.dtype());
  const char* s = static_cast<const char*>(src.raw());
  char* o = static_cast<char*>(out.raw());
  const int32_t* ip = index.data<int32_t>();
#pragma omp parallel for schedule(static) if (M * int64_t(row_bytes) > 4 * kParallelMin)
  for (int64_t i = 0; i < M; ++i) {
    if (ip[i] >= 0)
      std::memcpy(o + i * row_bytes, s + int64_t(ip[i]) * row_bytes, row_bytes);
    else
      std::memset(o + i * row_bytes, 0, row_bytes);
  }
}

// out[(f·hh + i)·ww + j, (c·ph + q)·pw + r] = z[c, f, i·ph + q, j·pw + r]
void patchify(const Tensor& z, int pt, int ph, int pw, Tensor& out) {
  const int64_t C = z.size(0), T = z.size(1), H = z.size(2), W = z.size(3);
  const int64_t hh = H / ph, ww = W / pw, K = C * ph * pw;
  const float* zp = z.data<float>();
  float* o = out.data<float>();
#pragma omp parallel for collapse(2) schedule(static) if (z.numel() > kParallelMin)
  for (int64_t f = 0; f < T; ++f)
    for (int64_t i = 0; i < hh; ++i)
      for (int64_t j = 0; j < ww; ++j) {
        float* row = o + ((f * hh + i) * ww + j) * K;
        for (int64_t c = 0; c < C; ++c)
          for (int q = 0; q < ph; ++q)
            for (int r = 0; r < pw; ++r)
              row[(c * ph + q) * pw + r] = zp[((c * T + f) * H + i * ph + q) * W + j * pw + r];
      }
}

// out[c, f, i·ph + q, j·pw + r] = y[(f·h + i)·w + j, (q·pw + r)·C + c]
void unpatchify(const Tensor& y, int64_t T, int64_t h, int64_t w, int pt, int ph, int pw,
                Tensor& out) {
  const int64_t C = y.size(1) / (int64_t(pt) * ph * pw);
  const int64_t H = h * ph, W = w * pw, K = y.size(1);
  const float* yp = y.data<float>();
  float* o = out.data<float>();
#pragma omp parallel for collapse(2) schedule(static) if (y.numel() > kParallelMin)
  for (int64_t c = 0; c < C; ++c)
    for (int64_t f = 0; f < T; ++f)
      for (int64_t yy = 0; yy < H; ++yy)
        for (int64_t xx = 0; xx < W; ++xx) {
          const int64_t i = yy / ph, q = yy % ph, j = xx / pw, r = xx % pw;
          o[((c * T + f) * H + yy) * W + xx] = yp[((f * h + i) * w + j) * K + (q * pw + r) * C + c];
        }
}

}  // namespace osp::ops::cpu
