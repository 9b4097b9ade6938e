// CPU fp32 backward (vector-Jacobian products) of the ops in backward.h. OpenBLAS for the GEMMs,
// OpenMP over rows elsewhere. Column sums (parameter gradients) are deterministic: rows are cut
// into a fixed number of chunks that depends only on the row count (not on the thread count),
// each chunk sums in double, and the chunks are added in order.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "osp/ops/cpu/cpu_backward.h"
#include "osp/ops/cpu/cpu_kernels.h"

namespace osp::ops::cpu {
namespace {

// Leading-dims product ("rows") of a tensor whose last dim is C.
int64_t rows_of(const Tensor& t) {
  int64_t r = 1;
  for (int d = 0; d + 1 < t.dim(); ++d) r *= t.size(d);
  return r;
}

// Row loop with up to kSums column sums: row_fn(r, acc) handles row r (writing its per-row
// outputs) and, when acc is non-null, adds its contributions to acc[k·C + c] (double) for every
// wanted sum k. Afterwards outs[k][c] += Σ_r (in that fixed chunk order); null outs[k] are
// skipped. With no wanted sum row_fn gets acc = null.
constexpr int kSums = 2;
template <class RowFn>
void rows_with_column_sums(int64_t R, int64_t C, float* const (&outs)[kSums], RowFn row_fn) {
  const bool want = outs[0] || outs[1];
  const bool par = R * C > kParallelMin;
  if (!want) {
#pragma omp parallel for schedule(static) if (par)
    for (int64_t r = 0; r < R; ++r) row_fn(r, static_cast<double*>(nullptr));
    return;
  }
  const int64_t chunk = std::max<int64_t>(16, (R + 63) / 64);
  const int64_t nchunks = (R + chunk - 1) / chunk;
  std::vector<double> part(size_t(nchunks * kSums * C), 0.0);
#pragma omp parallel for schedule(static) if (par)
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    double* acc = part.data() + ch * kSums * C;
    for (int64_t r = ch * chunk, r1 = std::min(R, r + chunk); r < r1; ++r) row_fn(r, acc);
  }
  for (int k = 0; k < kSums; ++k) {
    float* o = outs[k];
    if (!o) continue;
#pragma omp parallel for schedule(static) if (nchunks * C > kParallelMin)
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t ch = 0; ch < nchunks; ++ch) s += part[size_t((ch * kSums + k) * C + c)];
      o[c] = float(double(o[c]) + s);
    }
  }
}

float* ptr(Tensor* t) { return t ? t->data<float>() : nullptr; }

// LayerNorm backward with a per-column multiplier wm (null: 1) on the normalised row:
//   y = x̂·wm + b, x̂ = (x − mean)·rstd.  dx = rstd·(g − mean(g) − x̂·mean(g·x̂)), g = dy·wm;
//   outs[0] += Σ dy·x̂ (dw / dscale), outs[1] += Σ dy (db / dshift).
void ln_backward(const Tensor& x, const float* wm, float eps, const Tensor& dy, Tensor& dx,
                 float* dwm, float* dbias) {
  const int64_t C = x.size(-1), R = rows_of(x);
  const float* xp = x.data<float>();
  const float* gp = dy.data<float>();
  float* dxp = dx.data<float>();
  float* const outs[kSums] = {dwm, dbias};
  rows_with_column_sums(R, C, outs, [&](int64_t r, double* acc) {
    const float* xr = xp + r * C;
    const float* gr = gp + r * C;
    float* dr = dxp + r * C;
    float mean, rstd;
    row_stats(xr, C, eps, mean, rstd);
    double sg = 0, sgx = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double xh = double((xr[c] - mean) * rstd);
      const double g = double(gr[c]) * (wm ? double(wm[c]) : 1.0);
      sg += g;
      sgx += g * xh;
    }
    const float a = float(sg / double(C)), b = float(sgx / double(C));
    for (int64_t c = 0; c < C; ++c) {
      const float xh = (xr[c] - mean) * rstd;
      const float g = wm ? gr[c] * wm[c] : gr[c];
      dr[c] = rstd * (g - a - xh * b);
    }
    if (!acc) return;
    if (dwm)
      for (int64_t c = 0; c < C; ++c) acc[c] += double(gr[c]) * double((xr[c] - mean) * rstd);
    if (dbias)
      for (int64_t c = 0; c < C; ++c) acc[C + c] += gr[c];
  });
}

}  // namespace

// ---------------------------------------------------------------- GEMM
void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor* dw,
                     Tensor* db) {
  const int64_t K = x.size(-1), N = w.size(0), M = rows_of(x);
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* gp = dy.data<float>();
  if (dx && M > 0 && K > 0) {
    if (N > 0)  // dx[M,K] = dy[M,N] · w[N,K]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(M), int(K), int(N), 1.f, gp,
                  int(N), wp, int(K), 0.f, dx->data<float>(), int(K));
    else
      dx->zero_();
  }
  if (dw && M > 0 && N > 0 && K > 0)  // dw[N,K] += dy[M,N]ᵀ · x[M,K]
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(N), int(K), int(M), 1.f, gp, int(N),
                xp, int(K), 1.f, dw->data<float>(), int(K));
  if (db && M > 0 && N > 0) {
    float* const outs[kSums] = {db->data<float>(), nullptr};
    rows_with_column_sums(M, N, outs, [&](int64_t r, double* acc) {
      const float* gr = gp + r * N;
      for (int64_t c = 0; c < N; ++c) acc[c] += gr[c];
    });
  }
}

void sum_rows(const Tensor& x, Tensor& out) {
  const int64_t C = x.size(-1), R = rows_of(x);
  if (R == 0 || C == 0) return;
  const float* xp = x.data<float>();
  float* const outs[kSums] = {out.data<float>(), nullptr};
  rows_with_column_sums(R, C, outs, [&](int64_t r, double* acc) {
    const float* xr = xp + r * C;
    for (int64_t c = 0; c < C; ++c) acc[c] += xr[c];
  });
}

// ---------------------------------------------------------------- norms
void layer_norm_backward(const Tensor& x, const Tensor* w, float eps, const Tensor& dy,
                         Tensor& dx, Tensor* dw, Tensor* db) {
  ln_backward(x, w ? w->data<float>() : nullptr, eps, dy, dx, ptr(dw), ptr(db));
}

void layer_norm_modulate_backward(const Tensor& x, const Tensor& scale, float eps,
                                  const Tensor& dy, Tensor& dx, Tensor* dshift, Tensor* dscale) {
  const int64_t C = x.size(-1);
  const float* sc = scale.data<float>();
  std::vector<float> w1(static_cast<size_t>(C));  // the forward's multiplier (1 + scale), in fp32
  for (int64_t c = 0; c < C; ++c) w1[c] = 1.f + sc[c];
  ln_backward(x, w1.data(), eps, dy, dx, ptr(dscale), ptr(dshift));
}

// y = x·rr·w, rr = 1/sqrt(mean(x²) + eps):  dx = rr·g − x·rr³·mean(g·x), g = dy·w;
// dw += Σ dy·x·rr.
void rms_norm_backward(const Tensor& x, const Tensor& w, float eps, const Tensor& dy, Tensor& dx,
                       Tensor* dw) {
  const int64_t C = x.size(-1), R = rows_of(x);
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* gp = dy.data<float>();
  float* dxp = dx.data<float>();
  float* const outs[kSums] = {ptr(dw), nullptr};
  rows_with_column_sums(R, C, outs, [&](int64_t r, double* acc) {
    const float* xr = xp + r * C;
    const float* gr = gp + r * C;
    float* dr = dxp + r * C;
    double ss = 0, sgx = 0;
    for (int64_t c = 0; c < C; ++c) {
      ss += double(xr[c]) * double(xr[c]);
      sgx += double(gr[c]) * double(wp[c]) * double(xr[c]);
    }
    const double rrd = 1.0 / std::sqrt(ss / double(C) + double(eps));
    const float rr = float(rrd), k = float(rrd * rrd * rrd * sgx / double(C));
    for (int64_t c = 0; c < C; ++c) dr[c] = rr * gr[c] * wp[c] - xr[c] * k;
    if (acc)
      for (int64_t c = 0; c < C; ++c) acc[c] += double(gr[c]) * double(xr[c]) * rrd;
  });
}

// ---------------------------------------------------------------- elementwise
// gelu_tanh'(x) = 0.5·(1 + t) + 0.5·x·(1 − t²)·k·(1 + 3a·x²), t = tanh(k·(x + a·x³)).
void gelu_tanh_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  const int64_t n = x.numel();
  const float* xp = x.data<float>();
  const float* gp = dy.data<float>();
  float* o = dx.data<float>();
  const float k = 0.7978845608028654f, a = 0.044715f;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const float v = xp[i], v2 = v * v;
    const float t = std::tanh(k * (v + a * v2 * v));
    o[i] = gp[i] * (0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * k * (1.f + 3.f * a * v2));
  }
}

// silu'(x) = s·(1 + x·(1 − s)), s = sigmoid(x).
void silu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  const int64_t n = x.numel();
  const float* xp = x.data<float>();
  const float* gp = dy.data<float>();
  float* o = dx.data<float>();
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const float s = 1.f / (1.f + std::exp(-xp[i]));
    o[i] = gp[i] * s * (1.f + xp[i] * (1.f - s));
  }
}

void add_gated_backward(const Tensor& dx, const Tensor& y, const Tensor& gate, Tensor& dy,
                        Tensor* dgate) {
  const int64_t C = dx.size(-1), R = rows_of(dx);
  const float* gp = dx.data<float>();
  const float* yp = y.data<float>();
  const float* g = gate.data<float>();
  float* o = dy.data<float>();
  float* const outs[kSums] = {ptr(dgate), nullptr};
  rows_with_column_sums(R, C, outs, [&](int64_t r, double* acc) {
    const float* gr = gp + r * C;
    float* orow = o + r * C;
    for (int64_t c = 0; c < C; ++c) orow[c] = gr[c] * g[c];
    if (!acc) return;
    const float* yr = yp + r * C;
    for (int64_t c = 0; c < C; ++c) acc[c] += double(gr[c]) * double(yr[c]);
  });
}

// ---------------------------------------------------------------- RoPE
// The forward rotates each pair by θ; the adjoint (= inverse) rotates by −θ. Each pair is read
// before it is written, so dx may be dy.
void rope_backward(const Tensor& dy, const Tensor& cos_sin, Tensor& dx) {
  const int64_t R = dy.size(0), L = dy.size(1), H = dy.size(2), D = dy.size(3);
  const int64_t Rt = cos_sin.size(0), P = D / 2;
  const float* gp = dy.data<float>();
  const float* cs = cos_sin.data<float>();
  float* o = dx.data<float>();
#pragma omp parallel for collapse(2) schedule(static) if (dy.numel() > kParallelMin)
  for (int64_t r = 0; r < R; ++r)
    for (int64_t l = 0; l < L; ++l) {
      const float* tab = cs + ((r % Rt) * L + l) * P * 2;
      for (int64_t h = 0; h < H; ++h) {
        const int64_t base = ((r * L + l) * H + h) * D;
        for (int64_t p = 0; p < P; ++p) {
          const float c = tab[2 * p], s = tab[2 * p + 1];
          const float g0 = gp[base + 2 * p], g1 = gp[base + 2 * p + 1];
          o[base + 2 * p] = g0 * c + g1 * s;
          o[base + 2 * p + 1] = g1 * c - g0 * s;
        }
      }
    }
}

}  // namespace osp::ops::cpu
